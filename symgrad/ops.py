"""The op registry: one frozen ``OpDef`` per op, every concern of that op a field.

An op's arity, shape rule, numpy evaluation, derivative rules (VJP, written in graph ops so that
derivatives can be differentiated again), LLVM lowering (declared as data: this file never imports
llvmlite), SymPy mapping, DOT label, algebraic flags and test sampling domain all live in the one
``_register`` call that defines it. Tests are parametrized over ``OPS``: adding an op adds its
gradient, interpreter-vs-compiled and shape tests.

VJP rules take ``(g, out, *args)`` — the output cotangent, the node itself and its operands, all
``Expr`` — and return the operand's cotangent contribution as an ``Expr``. A rule of ``None`` means
the operand gets no gradient (comparisons, the condition of ``where``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from symgrad.errors import ShapeError


@dataclass(frozen=True)
class Lowering:
    """How the LLVM backend emits an op, as data.

    kind: ``"instr"`` (an LLVM instruction such as ``fadd``), ``"intrinsic"`` (``llvm.sqrt``),
    ``"libm"`` (a C symbol, with an optional libmvec 4-lane variant in ``vector``), ``"fcmp"``
    (an ordered/unordered compare predicate, result 1.0/0.0) or ``"custom"`` (an emitter of
    ``symgrad.llvm.lower`` named ``name``).
    """

    kind: str
    name: str
    vector: str | None = None


@dataclass(frozen=True)
class OpDef:
    """Everything symgrad knows about one op."""

    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    vjp: tuple[Callable | None, ...]
    llvm: Lowering | None
    label: str
    text: str  # how the op is written: an infix symbol or a function name
    infix: bool = False
    commutative: bool = False
    linear: bool = False
    domain: tuple[tuple[float, float], ...] = ()
    sympy: Callable | None = None  # (sympy_module, *sympy_args) -> sympy expression
    attrs: tuple[str, ...] = ()
    differentiable: bool = True  # False: the op is piecewise constant (derivative 0 a.e.)
    shape: Callable[..., tuple[int, ...]] = field(default=None)  # type: ignore[assignment]

    def infer_shape(self, shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
        """Shape of the output for operand shapes ``shapes``; ShapeError if they do not fit."""
        return (self.shape or broadcast_shape)(self.name, shapes)


def broadcast_shape(op: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """numpy broadcasting of elementwise operands; names the op and the shapes on failure."""
    try:
        return tuple(np.broadcast_shapes(*shapes)) if shapes else ()
    except ValueError:
        listed = ", ".join(f"operand {i}: {s}" for i, s in enumerate(shapes))
        raise ShapeError(f"{op}: operand shapes do not broadcast ({listed})") from None


OPS: dict[str, OpDef] = {}


def _register(name: str, arity: int, numpy, vjp, llvm, **kw) -> OpDef:
    kw.setdefault("label", kw.get("text", name))
    kw.setdefault("text", name)
    op = OpDef(name=name, arity=arity, numpy=numpy, vjp=tuple(vjp), llvm=llvm, **kw)
    OPS[name] = op
    return op


def ap(name: str, *args):
    """Apply op ``name`` to ``args`` in the graph of the first ``Expr`` among them."""
    for a in args:
        if hasattr(a, "graph"):
            return a.graph.apply(name, *args)
    raise TypeError(f"{name}: no Expr operand")


def _libm(name: str, arity: int = 1) -> Lowering:
    # libmvec's AVX2 4-lane variant: one 'v' per vector argument (_ZGVdN4vv_pow for pow).
    return Lowering("libm", name, f"_ZGVdN4{'v' * arity}_{name}")


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x):
    # Two one-sided forms so neither exp overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): finite for every finite x.
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _cmp(ufunc):
    return lambda a, b: ufunc(a, b).astype(np.float64)


SMALL = (-3.0, 3.0)
POS = (0.2, 4.0)
UNIT = (-0.9, 0.9)

# Leaves: inputs (by name) and constants (by value). They have no operands and no rules.
_register("input", 0, None, (), None, label="input", attrs=("name",))
_register("const", 0, None, (), None, label="const", attrs=("value",))

# Arithmetic.
_register(
    "add", 2, np.add, (lambda g, o, a, b: g, lambda g, o, a, b: g), Lowering("instr", "fadd"),
    text="+", infix=True, commutative=True, linear=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: a + b,
)  # fmt: skip
_register(
    "sub", 2, np.subtract, (lambda g, o, a, b: g, lambda g, o, a, b: -g),
    Lowering("instr", "fsub"), text="-", infix=True, linear=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: a - b,
)  # fmt: skip
_register(
    "mul", 2, np.multiply, (lambda g, o, a, b: g * b, lambda g, o, a, b: g * a),
    Lowering("instr", "fmul"), text="*", infix=True, commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: a * b,
)  # fmt: skip
_register(
    "div", 2, np.divide, (lambda g, o, a, b: g / b, lambda g, o, a, b: -(g * o) / b),
    Lowering("instr", "fdiv"), text="/", infix=True, domain=(SMALL, (0.5, 3.0)),
    sympy=lambda sp, a, b: a / b,
)  # fmt: skip
_register(
    "neg", 1, np.negative, (lambda g, o, a: -g,), Lowering("instr", "fneg"),
    text="-", linear=True, domain=(SMALL,), sympy=lambda sp, a: -a,
)  # fmt: skip


def _pow_base_vjp(g, o, a, b):
    # d/da a**b = b * a**(b-1). With a constant exponent, b-1 is computed here, so the
    # derivative of x**2 is 2*x**1.0 (which lowers to x), never pow(x, 2-1).
    exponent = b.value - 1 if b.op == "const" else b - 1
    return g * (b * a**exponent)


_register(
    "pow", 2, np.power,
    (_pow_base_vjp, lambda g, o, a, b: g * (o * ap("log", a))),
    _libm("pow", 2), text="**", infix=True, domain=((0.5, 3.0), (-2.0, 2.0)),
    sympy=lambda sp, a, b: a**b,
)  # fmt: skip

# Elementary functions of one operand.
_register("sin", 1, np.sin, (lambda g, o, a: g * ap("cos", a),), _libm("sin"),
          domain=(SMALL,), sympy=lambda sp, a: sp.sin(a))  # fmt: skip
_register("cos", 1, np.cos, (lambda g, o, a: -(g * ap("sin", a)),), _libm("cos"),
          domain=(SMALL,), sympy=lambda sp, a: sp.cos(a))  # fmt: skip
_register("tan", 1, np.tan, (lambda g, o, a: g * (1 + o * o),), _libm("tan"),
          domain=((-1.2, 1.2),), sympy=lambda sp, a: sp.tan(a))  # fmt: skip
_register("asin", 1, np.arcsin, (lambda g, o, a: g / ap("sqrt", 1 - a * a),), _libm("asin"),
          domain=(UNIT,), sympy=lambda sp, a: sp.asin(a))  # fmt: skip
_register("acos", 1, np.arccos, (lambda g, o, a: -(g / ap("sqrt", 1 - a * a)),),
          _libm("acos"), domain=(UNIT,), sympy=lambda sp, a: sp.acos(a))  # fmt: skip
_register("atan", 1, np.arctan, (lambda g, o, a: g / (1 + a * a),), _libm("atan"),
          domain=(SMALL,), sympy=lambda sp, a: sp.atan(a))  # fmt: skip
_register("sinh", 1, np.sinh, (lambda g, o, a: g * ap("cosh", a),), _libm("sinh"),
          domain=(SMALL,), sympy=lambda sp, a: sp.sinh(a))  # fmt: skip
_register("cosh", 1, np.cosh, (lambda g, o, a: g * ap("sinh", a),), _libm("cosh"),
          domain=(SMALL,), sympy=lambda sp, a: sp.cosh(a))  # fmt: skip
_register("tanh", 1, np.tanh, (lambda g, o, a: g * (1 - o * o),), _libm("tanh"),
          domain=(SMALL,), sympy=lambda sp, a: sp.tanh(a))  # fmt: skip
_register("asinh", 1, np.arcsinh, (lambda g, o, a: g / ap("sqrt", a * a + 1),),
          _libm("asinh"), domain=(SMALL,), sympy=lambda sp, a: sp.asinh(a))  # fmt: skip
_register("acosh", 1, np.arccosh,
          (lambda g, o, a: g / (ap("sqrt", a - 1) * ap("sqrt", a + 1)),), _libm("acosh"),
          domain=((1.2, 4.0),), sympy=lambda sp, a: sp.acosh(a))  # fmt: skip
_register("atanh", 1, np.arctanh, (lambda g, o, a: g / (1 - a * a),), _libm("atanh"),
          domain=(UNIT,), sympy=lambda sp, a: sp.atanh(a))  # fmt: skip
_register("exp", 1, np.exp, (lambda g, o, a: g * o,), _libm("exp"),
          domain=(SMALL,), sympy=lambda sp, a: sp.exp(a))  # fmt: skip
_register("expm1", 1, np.expm1, (lambda g, o, a: g * (o + 1),), _libm("expm1"),
          domain=(SMALL,), sympy=lambda sp, a: _cfunc("expm1")(a))  # fmt: skip
_register("log", 1, np.log, (lambda g, o, a: g / a,), _libm("log"),
          domain=(POS,), sympy=lambda sp, a: sp.log(a))  # fmt: skip
_register("log1p", 1, np.log1p, (lambda g, o, a: g / (1 + a),), _libm("log1p"),
          domain=((-0.8, 4.0),), sympy=lambda sp, a: _cfunc("log1p")(a))  # fmt: skip
_register("sqrt", 1, np.sqrt, (lambda g, o, a: g / (2 * o),), Lowering("intrinsic", "llvm.sqrt"),
          domain=(POS,), sympy=lambda sp, a: sp.sqrt(a))  # fmt: skip
# abs'(0) = 0: the derivative is sign(a), and sign(0) = 0.
_register("abs", 1, np.abs, (lambda g, o, a: g * ap("sign", a),),
          Lowering("intrinsic", "llvm.fabs"), domain=(SMALL,),
          sympy=lambda sp, a: sp.Abs(a))  # fmt: skip
_register("sign", 1, np.sign, (None,), Lowering("custom", "sign"), domain=(SMALL,),
          differentiable=False, sympy=lambda sp, a: sp.sign(a))  # fmt: skip
_register("sigmoid", 1, _sigmoid, (lambda g, o, a: g * (o * (1 - o)),),
          Lowering("custom", "sigmoid"), domain=(SMALL,),
          sympy=lambda sp, a: 1 / (1 + sp.exp(-a)))  # fmt: skip
# relu'(0) = 0: the derivative is the indicator of a > 0.
_register("relu", 1, lambda a: np.maximum(a, 0.0), (lambda g, o, a: g * ap("gt", a, 0.0),),
          Lowering("custom", "relu"), domain=(SMALL,),
          sympy=lambda sp, a: sp.Max(a, 0))  # fmt: skip
_register("softplus", 1, _softplus, (lambda g, o, a: g * ap("sigmoid", a),),
          Lowering("custom", "softplus"), domain=(SMALL,),
          sympy=lambda sp, a: sp.log(1 + sp.exp(a)))  # fmt: skip
_register("erf", 1, _erf,
          (lambda g, o, a: g * (2 / math.sqrt(math.pi)) * ap("exp", -(a * a)),),
          _libm("erf"), domain=(SMALL,),
          sympy=lambda sp, a: sp.erf(a))  # fmt: skip

# Functions of two operands.
_register(
    "atan2", 2, np.arctan2,
    (lambda g, o, y, x: g * x / (x * x + y * y), lambda g, o, y, x: -(g * y) / (x * x + y * y)),
    _libm("atan2", 2), domain=(SMALL, POS),
    sympy=lambda sp, y, x: sp.atan2(y, x),
)  # fmt: skip


def _tie_share(a, b):
    """The share of a max's adjoint that goes to ``a``: 1 if a > b, 1/2 on a tie, else 0."""
    return ap("gt", a, b) + 0.5 * ap("eq", a, b)


_register(
    "max", 2, np.maximum,
    (lambda g, o, a, b: g * _tie_share(a, b), lambda g, o, a, b: g * _tie_share(b, a)),
    Lowering("intrinsic", "llvm.maximum"), commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: sp.Max(a, b),
)  # fmt: skip
_register(
    "min", 2, np.minimum,
    (lambda g, o, a, b: g * _tie_share(b, a), lambda g, o, a, b: g * _tie_share(a, b)),
    Lowering("intrinsic", "llvm.minimum"), commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: sp.Min(a, b),
)  # fmt: skip

# Comparisons give 1.0 or 0.0 (numpy's bool cast to float) and carry no gradient.
for _name, _sym, _uf, _pred, _comm, _rel in (
    ("lt", "<", np.less, "olt", False, "Lt"),
    ("le", "<=", np.less_equal, "ole", False, "Le"),
    ("gt", ">", np.greater, "ogt", False, "Gt"),
    ("ge", ">=", np.greater_equal, "oge", False, "Ge"),
    ("eq", "==", np.equal, "oeq", True, "Eq"),
    ("ne", "!=", np.not_equal, "une", True, "Ne"),
):
    _register(
        _name, 2, _cmp(_uf), (None, None), Lowering("fcmp", _pred), text=_sym, infix=True,
        commutative=_comm, domain=(SMALL, SMALL), differentiable=False,
        sympy=(lambda rel: lambda sp, a, b: sp.Piecewise((1, getattr(sp, rel)(a, b)), (0, True)))(
            _rel
        ),
    )  # fmt: skip

# where(c, a, b): a where c is nonzero (NaN counts as nonzero, as in numpy's truth test), else b.
_register(
    "where", 3, lambda c, a, b: np.where(c != 0, a, b),
    (None, lambda g, o, c, a, b: ap("where", c, g, 0.0),
     lambda g, o, c, a, b: ap("where", c, 0.0, g)),
    Lowering("custom", "where"), domain=((-1.0, 1.0), SMALL, SMALL),
    sympy=lambda sp, c, a, b: sp.Piecewise((a, sp.Ne(c, 0)), (b, True)),
)  # fmt: skip


def _cfunc(name: str):
    from sympy.codegen import cfunctions

    return getattr(cfunctions, name)


# Names of the functions of the expression language, as written, mapped to op names.
# ``pow`` is ``**`` written as a call.
FUNCTIONS: dict[str, str] = {
    op.text: op.name for op in OPS.values() if not op.infix and op.arity and op.name != "neg"
}
FUNCTIONS["pow"] = "pow"
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
COMPARISONS: dict[str, str] = {
    op.text: op.name for op in OPS.values() if op.infix and not op.differentiable
}
