"""symgrad: a symbol-to-symbol differentiation compiler.

A formula becomes a networkx graph; ``build_grad`` appends derivative nodes to that same graph (so
second derivatives are just more graph); ``optimize`` prunes, de-duplicates and folds it;
``compile`` runs it — natively through LLVM or with the numpy reference interpreter.

>>> import symgrad as sg
>>> f = sg.parse("(2*w2*(w1*x + b1) - label)**2")
>>> w1, b1, w2 = (f.graph.inputs[n] for n in ("w1", "b1", "w2"))
>>> fn = sg.compile([f, *sg.build_grad(f, [w1, b1, w2])], backend="numpy")
>>> [float(v) for v in fn(x=1.0, label=500.0, w1=10.0, b1=1.0, w2=20.0)]
[3600.0, -4800.0, -4800.0, -2640.0]
"""

from symgrad.compile import CompiledFunction, compile
from symgrad.errors import (
    ArgumentError,
    GradError,
    GraphError,
    LoweringError,
    ParseError,
    ShapeError,
    SizeError,
    SymgradError,
)
from symgrad.forward import jvp
from symgrad.grad import build_grad, hessian, hvp, jacobian
from symgrad.graph import OP_FUNCTIONS as _FUNCTIONS
from symgrad.graph import Expr, Graph
from symgrad.interp import evaluate
from symgrad.optimize import optimize
from symgrad.parse import parse  # after the submodule import, so sg.parse is the function
from symgrad.scan import scan
from symgrad.scipy_bridge import ScipyObjective, scipy_objective, scipy_residuals
from symgrad.sparse import SparseDerivative, sparse_hessian, sparse_jacobian
from symgrad.sparsity import hessian_sparsity, jacobian_sparsity
from symgrad.tensor import TENSOR_FUNCTIONS as _TENSOR_FUNCTIONS
from symgrad.tensor import (  # not in the text language
    concatenate,
    einsum,
    fill_tril,
    multigammaln,
    stack,
    tril,
    triu,
)

__version__ = "0.1.0"

# sg.sin, sg.exp, sg.where, sg.max, sg.lt, ... : one function per op of the registry.
globals().update(_FUNCTIONS)
# sg.sum, sg.matmul, sg.softmax, sg.conv2d, sg.mse, ... : the tensor API.
globals().update(_TENSOR_FUNCTIONS)


def __getattr__(name):
    # DOT export and the SymPy bridge load on first use: importing sympy costs ~0.3 s.
    lazy = {
        "to_dot": "symgrad.dot",
        "to_svg": "symgrad.dot",
        "from_sympy": "symgrad.sympy_bridge",
        "to_sympy": "symgrad.sympy_bridge",
    }
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'symgrad' has no attribute {name!r}")


__all__ = [
    "ArgumentError",
    "CompiledFunction",
    "Expr",
    "Graph",
    "GradError",
    "GraphError",
    "LoweringError",
    "ParseError",
    "ShapeError",
    "SizeError",
    "SymgradError",
    "build_grad",
    "compile",
    "evaluate",
    "from_sympy",
    "hessian",
    "hessian_sparsity",
    "hvp",
    "jacobian",
    "jacobian_sparsity",
    "jvp",
    "optimize",
    "parse",
    "scan",
    "ScipyObjective",
    "scipy_objective",
    "scipy_residuals",
    "SparseDerivative",
    "sparse_hessian",
    "sparse_jacobian",
    "stack",
    "concatenate",
    "einsum",
    "fill_tril",
    "multigammaln",
    "tril",
    "triu",
    "to_dot",
    "to_svg",
    "to_sympy",
    # sg.max and sg.min are both an op and a reduction (one function): listed once.
    *dict.fromkeys([*_FUNCTIONS, *_TENSOR_FUNCTIONS]),
]
