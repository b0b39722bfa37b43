"""A failed call changes nothing (DESIGN.md §5), for every public function that takes a graph.

Each case is one bad call of the public API on a fresh graph that already holds scalar, vector,
matrix and image inputs, an array constant and a formula. It must raise the SymgradError subclass
stated (never another exception) with a message that names the bad thing, and leave the graph
exactly as it was: the same nodes with the same data, the same edges, the same inputs and limits,
and the next node created gets the next id, as a primal node. ``test_every_public_name_has_a_case``
keeps the table complete as ``sg.__all__`` grows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.errors import (
    ArgumentError,
    GradError,
    GraphError,
    ParseError,
    ShapeError,
    SymgradError,
)
from symgrad.graph import OP_FUNCTIONS as FUNCTIONS
from symgrad.ops import OPS
from tests.toolbox import snapshot


class Env:
    """The graph every case starts from, and a second graph for foreign operands."""

    def __init__(self):
        g = self.g = sg.Graph()
        self.x, self.y = g.input("x"), g.input("y")
        self.W = g.input("W", shape=(2, 3))
        self.v = g.input("v", shape=(3,))
        self.u = g.input("u", shape=(4,))
        self.img = g.input("img", shape=(1, 1, 4, 4))
        self.k = g.input("k", shape=(1, 1, 2, 2))
        self.f = sg.parse("x * y + sin(x)", graph=g)
        self.F = sg.sum(g.const(np.arange(6.0).reshape(2, 3)) * self.W * self.W) + self.x
        self.other = sg.Graph()
        self.ox = self.other.input("x")
        self.obj = None


class Case(NamedTuple):
    api: str  # the name in sg.__all__ the case covers
    label: str
    call: Callable
    error: type
    match: str
    setup: Callable | None = None
    xfail: str | None = None


CASES: list[Case] = []


def case(api, label, error, match, setup=None, xfail=None):
    def register(call):
        CASES.append(Case(api, label, call, error, match, setup, xfail))
        return call

    return register


def add(api, label, error, match, call, setup=None, xfail=None):
    CASES.append(Case(api, label, call, error, match, setup, xfail))


# --- parse ------------------------------------------------------------------------------------
add("parse", "dangling operator", ParseError, "column 3", lambda e: sg.parse("x +", graph=e.g))
add("parse", "caret", ParseError, r"use \*\*", lambda e: sg.parse("x ^ 2", graph=e.g))
add("parse", "new input then unknown function", ParseError, "unknown function 'nofn'",
    lambda e: sg.parse("fresh + nofn(x)", graph=e.g))  # fmt: skip
add("parse", "shape error after new nodes", ShapeError, r"matmul.*\(2, 3\)",
    lambda e: sg.parse("sin(fresh) * W @ W", graph=e.g))  # fmt: skip
add("parse", "text not str", ParseError, "text: expected str", lambda e: sg.parse(12, graph=e.g))
add("parse", "graph not a Graph", ArgumentError, "graph: expected a symgrad Graph",
    lambda e: sg.parse("x", graph="g"))  # fmt: skip
add("parse", "too long", ParseError, "max_length=3", lambda e: sg.parse("x + y", e.g, max_length=3))
add("parse", "shape of existing input", ShapeError, r"input 'W' has shape \(2, 3\)",
    lambda e: sg.parse("W + 1", e.g, shapes={"W": (3,)}))  # fmt: skip
add("parse", "index out of range", ShapeError, "index 5 is out of range",
    lambda e: sg.parse("exp(fresh) + W[5]", graph=e.g))  # fmt: skip

# --- from_sympy / to_sympy ---------------------------------------------------------------------
X = sp.Symbol("x")
add("from_sympy", "Dummy beside Symbol", GraphError, "Dummy symbol 'x'",
    lambda e: sg.from_sympy(sp.Dummy("x") + X, graph=e.g))  # fmt: skip
add("from_sympy", "two symbols named x", GraphError, "two different SymPy symbols are named 'x'",
    lambda e: sg.from_sympy(sp.sin(X) + sp.Symbol("x", positive=True), graph=e.g))  # fmt: skip
add("from_sympy", "new input then gamma", GraphError, "gamma",
    lambda e: sg.from_sympy(sp.Symbol("fresh") ** 3 + sp.gamma(X), graph=e.g))  # fmt: skip
add("from_sympy", "10**400", GraphError, r"\(401 digits\) is too large",
    lambda e: sg.from_sympy(sp.cos(X) + sp.Integer(10) ** 400, graph=e.g))  # fmt: skip
add("from_sympy", "Float 1e500", GraphError, r"1\.00000E\+500 is too large",
    lambda e: sg.from_sympy(sp.cos(X) * sp.Float("1e500"), graph=e.g))  # fmt: skip
add("from_sympy", "imaginary unit", GraphError, "ImaginaryUnit",
    lambda e: sg.from_sympy(sp.exp(X) + sp.I, graph=e.g))  # fmt: skip
add("from_sympy", "Derivative", GraphError, "Derivative",
    lambda e: sg.from_sympy(sp.Derivative(sp.Function("h")(X), X), graph=e.g))  # fmt: skip
add("from_sympy", "Matrix", GraphError, "Matrix",
    lambda e: sg.from_sympy(sp.Matrix([X, 1]), graph=e.g))  # fmt: skip
add("from_sympy", "text", GraphError, "not a SymPy expression",
    lambda e: sg.from_sympy("x + 1", graph=e.g))  # fmt: skip
add("from_sympy", "graph not a Graph", GraphError, "graph must be a symgrad Graph",
    lambda e: sg.from_sympy(X, graph=[e.g]))  # fmt: skip
add("from_sympy", "bad input name", GraphError, "'1x' is not a name",
    lambda e: sg.from_sympy(sp.sin(sp.Symbol("fresh")) + sp.Symbol("1x"), graph=e.g))  # fmt: skip
add("to_sympy", "tensor node", GraphError, "scalar graphs only", lambda e: sg.to_sympy(e.W))
add("to_sympy", "not an Expr", GraphError, "expected an Expr", lambda e: sg.to_sympy([e.x, "y"]))
add("to_sympy", "two graphs", GraphError, "different graphs", lambda e: sg.to_sympy([e.x, e.ox]))

# --- build_grad, jacobian, hessian, hvp -------------------------------------------------------
add("build_grad", "tensor y", GradError, r"y must be a scalar, got shape \(2, 3\)",
    lambda e: sg.build_grad(e.W, [e.W]))  # fmt: skip
add("build_grad", "y not an Expr", GradError, "y must be an Expr, got float",
    lambda e: sg.build_grad(1.0, [e.x]))  # fmt: skip
add("build_grad", "wrt None", GradError, "wrt must be a list", lambda e: sg.build_grad(e.f, None))
add("build_grad", "wrt of another graph", GradError, r"wrt\[1\] belongs to another graph",
    lambda e: sg.build_grad(e.f, [e.x, e.ox]))  # fmt: skip
add("build_grad", "wrt a str", GradError, r"wrt\[1\] must be an Expr, got str",
    lambda e: sg.build_grad(e.f, [e.x, "y"]))  # fmt: skip
add("build_grad", "vector seed, scalar y", GradError, r"seed has shape \(3,\) but y has shape \(\)",
    lambda e: sg.build_grad(e.f, [e.x], seed=np.array([1.0, 2.0, 3.0])))  # fmt: skip
add("build_grad", "vector Expr seed", GradError, r"seed has shape \(3,\) but y has shape \(\)",
    lambda e: sg.build_grad(e.F, [e.W], seed=e.v))  # fmt: skip
add("build_grad", "seed a str", GradError, "seed must be an Expr or a number.*str",
    lambda e: sg.build_grad(e.f, [e.x], seed="a"))  # fmt: skip
add("build_grad", "seed 10**400", GradError, "seed must be an Expr or a number.*too large",
    lambda e: sg.build_grad(e.f, [e.x], seed=10**400))  # fmt: skip
add("build_grad", "seed of another graph", GradError, "seed belongs to another graph",
    lambda e: sg.build_grad(e.f, [e.x], seed=e.ox))  # fmt: skip
add("build_grad", "max_nodes reached part-way", GraphError, "max_nodes",
    lambda e: sg.build_grad(e.F, [e.W, e.x]),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 3))  # fmt: skip
add("jacobian", "mode misspelt", GradError, "mode must be 'auto', 'forward' or 'reverse'",
    lambda e: sg.jacobian([e.f, e.v], [e.x, e.y], mode="fwd"))  # fmt: skip
add("jacobian", "max_nodes reached stacking a tensor output", GraphError, "max_nodes",
    lambda e: sg.jacobian([e.f, e.v], [e.x, e.y], mode="reverse"),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 11))  # fmt: skip
add("jacobian", "second output a str", GradError, r"ys\[1\] must be an Expr",
    lambda e: sg.jacobian([e.f, "f"], [e.x]))  # fmt: skip
add("jacobian", "outputs of two graphs", GradError, r"ys\[1\] belongs to another graph",
    lambda e: sg.jacobian([e.f, e.ox], [e.x]))  # fmt: skip
add("jacobian", "wrt None", GradError, "wrt must be a list", lambda e: sg.jacobian([e.f], None))
add("jacobian", "ys None", GradError, "ys must be a list", lambda e: sg.jacobian(None, [e.x]))


def _tight_jacobian(e):
    e.h = sg.exp(e.f)
    e.g.max_nodes = len(e.g) + 8


add("jacobian", "max_nodes reached at the second output", GraphError, "max_nodes",
    lambda e: sg.jacobian([e.f, e.h], [e.x, e.y]),
    setup=_tight_jacobian)  # fmt: skip
add("hessian", "max_nodes reached with a tensor wrt", GraphError, "max_nodes",
    lambda e: sg.hessian(e.F, [e.W]),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 20))  # fmt: skip
add("hessian", "wrt None entry", GradError, r"wrt\[1\] must be an Expr",
    lambda e: sg.hessian(e.f, [e.x, None]))  # fmt: skip
add("hessian", "tensor y", GradError, "y must be a scalar", lambda e: sg.hessian(e.v, [e.x]))
add("hessian", "max_nodes reached in the second pass", GraphError, "max_nodes",
    lambda e: sg.hessian(e.f, [e.x, e.y]),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 6))  # fmt: skip
add("jacobian_sparsity", "wrt of another graph", GradError, r"wrt\[0\] belongs to another graph",
    lambda e: sg.jacobian_sparsity([e.f], [e.ox]))  # fmt: skip
add("jacobian_sparsity", "empty wrt", GradError, "wrt must be an Expr or a non-empty list",
    lambda e: sg.jacobian_sparsity(e.f, []))  # fmt: skip
add("hessian_sparsity", "tensor y", GradError, r"y must be a scalar, got shape \(3,\)",
    lambda e: sg.hessian_sparsity(e.v, [e.v]))  # fmt: skip
add("hessian_sparsity", "wrt a str", GradError, r"wrt\[0\] must be an Expr",
    lambda e: sg.hessian_sparsity(e.f, ["x"]))  # fmt: skip
add("sparse_jacobian", "mode misspelt", GradError, "mode must be 'auto', 'forward' or 'reverse'",
    lambda e: sg.sparse_jacobian([e.f], [e.x], mode="rev"))  # fmt: skip
add("sparse_jacobian", "ys None", GradError, "ys must be an Expr or a non-empty list",
    lambda e: sg.sparse_jacobian(None, [e.x]))  # fmt: skip
add("sparse_hessian", "lower a str", ArgumentError, "lower must be True or False",
    lambda e: sg.sparse_hessian(e.F, [e.W], lower="yes"))  # fmt: skip
add("sparse_hessian", "y of another graph than wrt", GradError, "belongs to another graph",
    lambda e: sg.sparse_hessian(e.f, [e.ox]))  # fmt: skip
add("SparseDerivative", "called with a batch", ArgumentError, "matrix at one point",
    lambda e: sg.sparse_jacobian([e.f], [e.x, e.y])(x=np.ones(3), y=2.0))  # fmt: skip
add("jvp", "tangent of the wrong shape", GradError, r"shape \(3,\), but its wrt",
    lambda e: sg.jvp(e.f, [e.x], [np.ones(3)]))  # fmt: skip
add("jvp", "wrt of another graph", GradError, "must be an Expr of the outputs' graph",
    lambda e: sg.jvp(e.f, [e.ox], [1.0]))  # fmt: skip
add("jvp", "max_nodes reached by the tangent scan", GraphError, "max_nodes",
    lambda e: sg.jvp(e.s, [e.y], [1.0]),
    setup=lambda e: (setattr(e, "s", sg.scan(lambda c, x: (c * e.y, None), e.x,
                                             length=2)[0]),
                     setattr(e.g, "max_nodes", len(e.g) + 2)))  # fmt: skip
add("scan", "carry changes shape", ShapeError, r"carry\[0\] of shape \(2, 3\)",
    lambda e: sg.scan(lambda c, x: (c * e.W, None), e.x, length=3))  # fmt: skip
add("scan", "outer node made, then the step fails", ArgumentError, "a pair",
    lambda e: sg.scan(lambda c, x: e.g.const(123.0) * c, e.x, length=3))  # fmt: skip
add("scan", "node of another graph", GraphError, "another graph",
    lambda e: sg.scan(lambda c, x: (c * e.ox, None), e.x, length=3))  # fmt: skip
add("scan", "xs lengths differ", ShapeError, "leading axes",
    lambda e: sg.scan(lambda c, x: (c, None), e.x, xs=(e.v, e.W)))  # fmt: skip
add("scan", "no length", ArgumentError, "length", lambda e: sg.scan(lambda c, x: (c, None), e.x))
add("scan", "max_nodes reached by the reverse scan", GraphError, "max_nodes",
    lambda e: sg.build_grad(e.s, [e.x, e.y]),
    setup=lambda e: (setattr(e, "s", sg.scan(lambda c, x: (sg.sin(c) * e.y, None), e.x,
                                             length=4)[0]),
                     setattr(e.g, "max_nodes", len(e.g) + 3)))  # fmt: skip
add("hvp", "wrt None", GradError, "wrt must be a list", lambda e: sg.hvp(e.f, None, [1.0]))
add("hvp", "v too short", GradError, "v has 1 entries but wrt has 2",
    lambda e: sg.hvp(e.f, [e.x, e.y], [1.0]))  # fmt: skip
add("hvp", "v entry a str", GradError, r"v\[1\] must be an Expr or a number",
    lambda e: sg.hvp(e.f, [e.x, e.y], [1.0, "a"]))  # fmt: skip
add("hvp", "v entry of the wrong shape", GradError, r"v\[0\] has shape \(3,\) but wrt\[0\]",
    lambda e: sg.hvp(e.F, [e.W], [np.ones(3)]))  # fmt: skip
add("hvp", "v None", GradError, "v must be a list", lambda e: sg.hvp(e.f, [e.x], None))
add("hvp", "v of another graph", GradError, r"v\[0\] belongs to another graph",
    lambda e: sg.hvp(e.f, [e.x], [e.ox]))  # fmt: skip

# --- optimize, evaluate, compile, CompiledFunction, to_dot, to_svg -----------------------------
add("optimize", "outputs of two graphs", GraphError, "different graphs",
    lambda e: sg.optimize([e.f, e.ox]))  # fmt: skip
add("optimize", "a str output", GraphError, "str", lambda e: sg.optimize([e.f, "f"]))
add("evaluate", "missing input", ArgumentError, "missing argument 'y'",
    lambda e: sg.evaluate(e.f, x=1.0))  # fmt: skip
add("evaluate", "value a str", ArgumentError, "'x'",
    lambda e: sg.evaluate(e.f, x="a", y=1.0))  # fmt: skip
add("evaluate", "unknown input", ArgumentError, "'z'",
    lambda e: sg.evaluate(e.f, x=1.0, y=1.0, z=2.0))  # fmt: skip
add(
    "evaluate", "wrong shape", ArgumentError, "'W'", lambda e: sg.evaluate(e.F, x=1.0, W=np.ones(5))
)
add("compile", "unknown backend", ArgumentError, "backend must be one of",
    lambda e: sg.compile(e.f, backend="gpu"))  # fmt: skip
add("compile", "no outputs", GraphError, "no outputs", lambda e: sg.compile([]))
add("compile", "a str output", GraphError, r"outputs\[1\] is a str",
    lambda e: sg.compile([e.f, "g"], backend="numpy"))  # fmt: skip
add("compile", "outputs of two graphs", GraphError, "different graphs",
    lambda e: sg.compile([e.f, e.ox], backend="numpy"))  # fmt: skip
add("compile", "unknown option", ArgumentError, "unknown option 'fast'",
    lambda e: sg.compile(e.f, fast=True))  # fmt: skip
add("compile", "input not reached", ArgumentError, "nope",
    lambda e: sg.compile(e.f, inputs=["x", "y", "nope"], backend="numpy"))  # fmt: skip
add("CompiledFunction", "ragged matrix output", GraphError, "rows of a matrix output differ",
    lambda e: sg.CompiledFunction([[[e.x, e.y], [e.f]]], backend="numpy"))  # fmt: skip
add("CompiledFunction", "call with a str", ArgumentError, "'x'",
    lambda e: sg.compile(e.f, backend="numpy")(x="a", y=1.0))  # fmt: skip
add("to_dot", "a str", GraphError, "str", lambda e: sg.to_dot("f"))
add("to_dot", "outputs of two graphs", GraphError, "different graphs",
    lambda e: sg.to_dot([e.f, e.ox]))  # fmt: skip
add("to_dot", "bad rankdir", GraphError, "rankdir", lambda e: sg.to_dot(e.f, rankdir="XY"))
add("to_dot", "no outputs", GraphError, "no outputs", lambda e: sg.to_dot([]))
add("to_svg", "bad rankdir", GraphError, "rankdir", lambda e: sg.to_svg(e.g, rankdir="XY"))


# --- scipy_objective and ScipyObjective ---------------------------------------------------------
def _objective(e):
    e.obj = sg.scipy_objective(e.f, [e.x], values={"y": 2.0}, backend="numpy")


add("scipy_objective", "no value for y", ArgumentError, "no value for input y",
    lambda e: sg.scipy_objective(e.f, [e.x], backend="numpy"))  # fmt: skip
add("scipy_objective", "value of an unused input", ArgumentError, r"values for \['z'\]",
    lambda e: sg.scipy_objective(e.f, [e.x], values={"y": 1.0, "z": 2.0}))  # fmt: skip
add("scipy_objective", "unknown backend", ArgumentError, "backend must be one of",
    lambda e: sg.scipy_objective(e.f, [e.x], values={"y": 1.0}, backend="gpu"))  # fmt: skip
add("scipy_objective", "wrt not an input", GradError, r"wrt\[0\] must be an input",
    lambda e: sg.scipy_objective(e.f, [e.f]))  # fmt: skip
add("scipy_objective", "wrt repeated", GradError, r"wrt\[1\] repeats wrt\[0\] \(x\)",
    lambda e: sg.scipy_objective(e.f, [e.x, e.x]))  # fmt: skip
add("scipy_objective", "wrt None", GradError, "wrt must be a non-empty list",
    lambda e: sg.scipy_objective(e.f, None))  # fmt: skip
add("scipy_objective", "values not a dict", ArgumentError, "values must be a dict",
    lambda e: sg.scipy_objective(e.f, [e.x], values=[("y", 1.0)]))  # fmt: skip
add("scipy_objective", "value a str", ArgumentError, r"values\['y'\] must be real numbers",
    lambda e: sg.scipy_objective(e.f, [e.x], values={"y": "a"}))  # fmt: skip
add("scipy_objective", "f a tensor", GradError, "f must be a scalar Expr",
    lambda e: sg.scipy_objective(e.v, [e.v]))  # fmt: skip
add("scipy_residuals", "no value for y", ArgumentError, "no value for input y",
    lambda e: sg.scipy_residuals([e.f, e.x], [e.x], backend="numpy"))  # fmt: skip
add("scipy_residuals", "ys None", GradError, "ys must be an Expr or a non-empty list",
    lambda e: sg.scipy_residuals(None, [e.x]))  # fmt: skip
add("ScipyObjective", "f not an Expr", GradError, "f must be a scalar Expr",
    lambda e: sg.ScipyObjective(2.0, [e.x]))  # fmt: skip
for _label, _call, _match in [
    ("fun of a str", lambda e: e.obj.fun("a"), "x must be real numbers, got str"),
    ("fun of two values", lambda e: e.obj.fun([1.0, 2.0]), r"x must have shape \(1,\)"),
    ("fun of a complex", lambda e: e.obj.fun([1j]), "x must be real numbers.*complex"),
    ("fun of None", lambda e: e.obj.fun(None), "x must be real numbers.*NoneType"),
    ("jac of a ragged list", lambda e: e.obj.jac([[1.0], []]), "x must be"),
    ("hess of a 2-d x", lambda e: e.obj.hess([[1.0]]), r"x must have shape \(1,\)"),
    ("hessp of a str p", lambda e: e.obj.hessp([1.0], "b"), "p must be real numbers, got str"),
    ("hessp of a long p", lambda e: e.obj.hessp([1.0], [1.0, 2.0]), r"p must have shape \(1,\)"),
    ("split of a str", lambda e: e.obj.split("a"), "x must be real numbers"),
    ("flatten of a dict without x", lambda e: e.obj.flatten({"y": 1.0}), r"keys \['x'\]"),
    ("flatten of too many", lambda e: e.obj.flatten([1.0, 2.0]), "a list of 1 values"),
    ("flatten of a vector for a scalar", lambda e: e.obj.flatten([[1.0, 2.0]]), "has 2 values"),
]:
    add("ScipyObjective", _label, ArgumentError, _match, _call, setup=_objective)

# --- Graph -------------------------------------------------------------------------------------
add("Graph", "max_nodes 0", GraphError, "max_nodes must be a positive int",
    lambda e: sg.Graph(max_nodes=0))  # fmt: skip
add("Graph", "max_elements a str", GraphError, "max_elements must be a positive int",
    lambda e: sg.Graph(max_elements="many"))  # fmt: skip
add("Graph", "input name not a name", GraphError, "'1x' is not a name", lambda e: e.g.input("1x"))
add("Graph", "input name reserved", GraphError, "'__a' is not a name", lambda e: e.g.input("__a"))
add("Graph", "input name None", GraphError, "None is not a name", lambda e: e.g.input(None))
add("Graph", "input of another shape", ShapeError, r"input 'W' has shape \(2, 3\), not \(3,\)",
    lambda e: e.g.input("W", shape=(3,)))  # fmt: skip
add("Graph", "input of a negative shape", ShapeError, "positive ints",
    lambda e: e.g.input("z", shape=(-1,)))  # fmt: skip
add("Graph", "input beyond max_elements", ShapeError, "max_elements",
    lambda e: e.g.input("z", shape=(2**20, 2**20)))  # fmt: skip
add("Graph", "input of a str shape", ShapeError, "shape must be a tuple",
    lambda e: e.g.input("z", shape="3"))  # fmt: skip
add("Graph", "const of a str", GraphError, "real number, got str", lambda e: e.g.const("a"))
add("Graph", "const 10**400", GraphError, "too large", lambda e: e.g.const(10**400))
add("Graph", "const complex", GraphError, "real number, got complex", lambda e: e.g.const(1j))
add("Graph", "const bool", GraphError, "real number, got bool", lambda e: e.g.const(True))
add("Graph", "const list with a str", GraphError, "real numbers", lambda e: e.g.const([1.0, "a"]))
add(
    "Graph",
    "const ragged list",
    GraphError,
    "real numbers",
    lambda e: e.g.const([[1.0, 2.0], [3.0]]),
)
add("Graph", "const empty array", ShapeError, "empty", lambda e: e.g.const(np.zeros(0)))
add("Graph", "const complex array", GraphError, "complex128", lambda e: e.g.const(np.ones(2) * 1j))
add("Graph", "apply unknown op", GraphError, "unknown op 'nope'", lambda e: e.g.apply("nope", e.x))
add("Graph", "apply of a leaf op", GraphError, "unknown op 'input'", lambda e: e.g.apply("input"))
add(
    "Graph",
    "apply arity",
    GraphError,
    "add takes 2 operands, got 1",
    lambda e: e.g.apply("add", e.x),
)
add("Graph", "apply unknown attribute", GraphError, "sum has no attribute 'foo'",
    lambda e: e.g.apply("sum", e.W, foo=1))  # fmt: skip
add("Graph", "apply const then foreign operand", GraphError, "add: operand 1 belongs to another",
    lambda e: e.g.apply("add", 5.5, e.ox))  # fmt: skip
add("Graph", "apply const then shape error", ShapeError, "matmul",
    lambda e: e.g.apply("matmul", np.ones((7, 7)), e.W))  # fmt: skip
add("Graph", "apply a str operand", GraphError, "add: operand 1 is a str",
    lambda e: e.g.apply("add", 2.5, "a"))  # fmt: skip
add("Graph", "apply reshape to 5", ShapeError, r"cannot reshape operand 0 of shape \(2, 3\)",
    lambda e: e.g.apply("reshape", e.W, shape=(5,)))  # fmt: skip

# --- Expr: operators, indexing, methods -----------------------------------------------------------
add("Expr", "x + str", GraphError, "add: operand 1 is a str", lambda e: e.x + "a")
add("Expr", "str - x", GraphError, "sub: operand 0 is a str", lambda e: "a" - e.x)
add("Expr", "x * foreign", GraphError, "mul: operand 1 belongs to another graph",
    lambda e: e.x * e.ox)  # fmt: skip
add("Expr", "W + u", ShapeError, r"\(4,\).*\(2, 3\)", lambda e: e.W + e.u)
add("Expr", "array / W (const then shape error)", ShapeError, r"\(4,\)",
    lambda e: np.ones(4) / e.W)  # fmt: skip
add("Expr", "W ** array", ShapeError, r"\(2, 3\)", lambda e: e.W ** np.full(4, 3.5))
add("Expr", "x / None", GraphError, "NoneType", lambda e: e.x / None)
add("Expr", "x < str", GraphError, "lt: operand 1 is a str", lambda e: e.x < "a")
add("Expr", "W >= u", ShapeError, r"\(4,\)", lambda e: e.W.__ge__(e.u))
add("Expr", "W @ W", ShapeError, "inner dimensions 3 and 2", lambda e: e.W @ e.W)
add("Expr", "v @ W (reshape then fail)", ShapeError, "inner dimensions",
    lambda e: e.v @ e.W)  # fmt: skip
add("Expr", "array @ W (const then fail)", ShapeError, "inner dimensions",
    lambda e: np.ones((7, 7)) @ e.W)  # fmt: skip
add("Expr", "bool(x)", SymgradError, "no truth value", lambda e: bool(e.f))
add("Expr", "W[5]", ShapeError, "index 5 is out of range", lambda e: e.W[5])
add("Expr", "W['a']", ShapeError, "index", lambda e: e.W["a"])
add("Expr", "W[0, 0, 0]", ShapeError, "3 indices", lambda e: e.W[0, 0, 0])
add("Expr", "x[0]", ShapeError, r"1 indices for operand 0 of shape \(\)", lambda e: e.x[0])
add("Expr", "W[::0]", ShapeError, "step", lambda e: e.W[::0])
add("Expr", "W.transpose(0, 0)", ShapeError, "axes", lambda e: e.W.transpose(0, 0))
add("Expr", "W.reshape(4)", ShapeError, r"cannot reshape operand 0 of shape \(2, 3\)",
    lambda e: e.W.reshape(4))  # fmt: skip
add("Expr", "W.reshape(-1, -1)", ShapeError, "-1", lambda e: e.W.reshape(-1, -1))
add("Expr", "W.reshape('a')", ShapeError, "shape", lambda e: e.W.reshape("a"))
add("Expr", "W.sum(axis=2)", ShapeError, "axis 2 is out of range", lambda e: e.W.sum(axis=2))
add("Expr", "W.sum(axis='a')", ShapeError, "axis", lambda e: e.W.sum(axis="a"))
add("Expr", "W.mean(axis=5)", ShapeError, "axis 5", lambda e: e.W.mean(axis=5))
add("Expr", "W.max(axis=(0, 0))", ShapeError, "axis", lambda e: e.W.max(axis=(0, 0)))

# --- tensor functions ---------------------------------------------------------------------------
add("matmul", "W, W", ShapeError, "inner dimensions 3 and 2", lambda e: sg.matmul(e.W, e.W))
add("matmul", "scalar operand", ShapeError, "operand 0 must be a vector or a matrix",
    lambda e: sg.matmul(e.x, e.W))  # fmt: skip
add("matmul", "numbers only", GraphError, "needs at least one Expr",
    lambda e: sg.matmul(np.ones((3, 3)), np.ones(3)))  # fmt: skip
add("matmul", "W, array (const then fail)", ShapeError, "inner dimensions",
    lambda e: sg.matmul(e.W, np.ones(5)))  # fmt: skip
add("stack", "shapes differ", ShapeError, r"exprs\[1\] has shape \(2, 3\) but exprs\[0\]",
    lambda e: sg.stack([e.v, e.W]))  # fmt: skip
add("stack", "axis 2 of vectors", ArgumentError, r"axis must be an int in \[-2, 1\]",
    lambda e: sg.stack([e.v, e.v], axis=2))  # fmt: skip
add("stack", "empty", ArgumentError, "non-empty list", lambda e: sg.stack([]))
add("stack", "of two graphs", GraphError, r"exprs\[1\] belongs to another graph",
    lambda e: sg.stack([e.f, e.ox]))  # fmt: skip
add("stack", "max_nodes reached part-way", GraphError, "max_nodes",
    lambda e: sg.stack([e.v, e.v, e.v]),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 1))  # fmt: skip
add("concatenate", "shapes do not join", ShapeError, "does not join",
    lambda e: sg.concatenate([e.W, e.u]))  # fmt: skip
add("concatenate", "axis 2 of matrices", ArgumentError, r"axis must be an int in \[-2, 1\]",
    lambda e: sg.concatenate([e.W, e.W], axis=2))  # fmt: skip
add("concatenate", "scalars", ShapeError, "stack scalars instead",
    lambda e: sg.concatenate([e.x, e.y]))  # fmt: skip
add("concatenate", "max_nodes reached", GraphError, "max_nodes",
    lambda e: sg.concatenate([e.W, e.W, e.W]),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g)))  # fmt: skip
add("cross", "last axis 4", ShapeError, r"b has shape \(4,\): its last axis must be 3",
    lambda e: sg.cross(e.v, e.u))  # fmt: skip
add("cross", "of two graphs", GraphError, "another graph",
    lambda e: sg.cross(e.v, e.ox))  # fmt: skip
add("cross", "max_nodes reached part-way", GraphError, "max_nodes",
    lambda e: sg.cross(e.v, e.v),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 9))  # fmt: skip
add("norm", "axis 2 of a vector", ShapeError, "axis 2 is out of range",
    lambda e: sg.norm(e.v, axis=2))  # fmt: skip
add("norm", "a str", GraphError, "norm: operand is a str", lambda e: sg.norm("v"))
add("tril", "a vector", ShapeError, r"x has shape \(3,\), not a matrix", lambda e: sg.tril(e.v))
add("triu", "k a float", ArgumentError, "k must be an int", lambda e: sg.triu(e.W, 0.5))
add("det", "a 2x3 matrix", ShapeError, r"a has shape \(2, 3\): closed forms",
    lambda e: sg.det(e.W))  # fmt: skip
add("inv", "a vector", ShapeError, r"a has shape \(3,\)", lambda e: sg.inv(e.v))
add("inv", "max_nodes reached part-way", GraphError, "max_nodes",
    lambda e: sg.inv(e.k),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 12))  # fmt: skip
add("solve", "b of the wrong size", ShapeError, r"b has shape \(3,\): its last axis must be 2",
    lambda e: sg.solve(e.k, e.v))  # fmt: skip
add("multigammaln", "d zero", ArgumentError, "d must be a positive int",
    lambda e: sg.multigammaln(e.v, 0))  # fmt: skip
add("einsum", "a diagonal", ShapeError, "repeated within operand 0",
    lambda e: sg.einsum("ii->i", e.W))  # fmt: skip
add("einsum", "letter lengths differ (const then fail)", ShapeError, "letter 'j' is 3 long",
    lambda e: sg.einsum("ij,jk->ik", e.W, np.ones((2, 2))))  # fmt: skip
add("einsum", "spec not a str", ShapeError, "spec must be a str", lambda e: sg.einsum(3, e.W))
add("einsum", "of two graphs", GraphError, "another graph",
    lambda e: sg.einsum("i,->i", e.v, e.ox))  # fmt: skip
add("fill_tril", "not a triangle's count", ShapeError, "v has 4 entries on its last axis",
    lambda e: sg.fill_tril(e.u))  # fmt: skip
add("fill_tril", "k 1", ArgumentError, "k must be 0 or -1", lambda e: sg.fill_tril(e.v, 1))
add("fill_tril", "max_nodes reached part-way", GraphError, "max_nodes",
    lambda e: sg.fill_tril(e.v),
    setup=lambda e: setattr(e.g, "max_nodes", len(e.g) + 2))  # fmt: skip
add("take", "index out of range", ShapeError, r"index 3 is not an int in \[-3, 2\]",
    lambda e: sg.take(e.v, [0, 3]))  # fmt: skip
add("take", "a fraction", ShapeError, r"index 0.5 is not an int", lambda e: sg.take(e.W, [0.5]))
add("take", "axis 1 of a vector", ArgumentError, r"axis must be an int in \[-1, 0\]",
    lambda e: sg.take(e.v, [0], axis=1))  # fmt: skip
add("take", "indices of another graph", GraphError, "another graph",
    lambda e: sg.take(e.v, e.ox))  # fmt: skip
add("take", "a scalar", ShapeError, "x is a scalar", lambda e: sg.take(e.x, 0))
add("take", "x[array] out of range", ShapeError, "getitem: take: index -4",
    lambda e: e.W[:, [0, -4]])  # fmt: skip
add("scatter_add", "values not holding the indices (const then fail)", ShapeError,
    r"does not hold the indices' shape \(3,\)",
    lambda e: sg.scatter_add(e.W, [0, 1, 1], size=4))  # fmt: skip
add("scatter_add", "size 0", ShapeError, "size must be a positive int",
    lambda e: sg.scatter_add(e.v, [0, 0, 0], size=0))  # fmt: skip
add("scatter_add", "index past size", ShapeError, r"index 2 is not an int in \[-2, 1\]",
    lambda e: sg.scatter_add(e.v, [0, 2, 0], size=2))  # fmt: skip
add("sum", "axis 3", ShapeError, "axis 3 is out of range", lambda e: sg.sum(e.W, axis=3))
add("sum", "a str", GraphError, "sum: operand is a str", lambda e: sg.sum("a"))
add("sum", "keepdims a str", ShapeError, "keepdims", lambda e: sg.sum(e.W, keepdims="yes"))
add("mean", "axis repeated", ShapeError, "axis", lambda e: sg.mean(e.W, axis=(0, 0)))
add("max", "axis 2", ShapeError, "axis 2", lambda e: sg.max(e.W, axis=2))
add("max", "elementwise shapes", ShapeError, r"\(4,\)", lambda e: sg.max(e.W, e.u))
add("max", "elementwise with axis", GraphError, "elementwise", lambda e: sg.max(e.x, e.y, axis=0))
add("min", "axis 5 (neg then fail)", ShapeError, "axis 5", lambda e: sg.min(e.W, axis=5))
add("min", "numbers only", GraphError, "needs at least one Expr", lambda e: sg.min(2.0, 3.0))
add("min", "elementwise shapes", ShapeError, r"\(4,\)", lambda e: sg.min(e.u, e.W))
add("transpose", "too few axes", ShapeError, "axes", lambda e: sg.transpose(e.W, axes=(0,)))
add("transpose", "axis out of range", ShapeError, "axes", lambda e: sg.transpose(e.W, axes=(0, 2)))
add("reshape", "7 elements", ShapeError, r"\(7,\)", lambda e: sg.reshape(e.W, (7,)))
add("reshape", "a str", GraphError, "reshape: operand is a str", lambda e: sg.reshape("W", (6,)))
add("broadcast_to", "incompatible", ShapeError, r"\(3, 2\)",
    lambda e: sg.broadcast_to(e.W, (3, 2)))  # fmt: skip
add("broadcast_to", "beyond max_elements", ShapeError, "max_elements",
    lambda e: sg.broadcast_to(e.W, (2**30, 2, 3)))  # fmt: skip
add("logsumexp", "axis 2", ShapeError, "axis 2", lambda e: sg.logsumexp(e.W, axis=2))
add("softmax", "axis 5", ShapeError, "axis 5", lambda e: sg.softmax(e.W, axis=5))
add("softmax", "axis a str", ShapeError, "axis", lambda e: sg.softmax(e.W, axis="last"))
add("log_softmax", "axis 3", ShapeError, "axis 3", lambda e: sg.log_softmax(e.W, axis=3))
add("log_softmax", "a number", GraphError, "operand is a float", lambda e: sg.log_softmax(1.5))
add("conv2d", "matrix input", ShapeError, "conv2d", lambda e: sg.conv2d(e.W, e.k))
add("conv2d", "stride 0", ShapeError, "stride", lambda e: sg.conv2d(e.img, e.k, stride=0))
add("conv2d", "padding -1", ShapeError, "padding", lambda e: sg.conv2d(e.img, e.k, padding=-1))
add("conv2d", "kernel larger than the image", ShapeError, "conv2d",
    lambda e: sg.conv2d(e.img, np.ones((1, 1, 5, 5))))  # fmt: skip
add("avg_pool2d", "kernel 0", ShapeError, "kernel_size", lambda e: sg.avg_pool2d(e.img, 0))
add("avg_pool2d", "kernel larger than W", ShapeError, "avg_pool2d",
    lambda e: sg.avg_pool2d(e.W, kernel_size=5))  # fmt: skip
add("max_pool2d", "kernel 9", ShapeError, "max_pool2d", lambda e: sg.max_pool2d(e.img, 9))
add("max_pool2d", "a scalar", ShapeError, "max_pool2d", lambda e: sg.max_pool2d(e.x))
add("max_pool2d", "stride a str", ShapeError, "stride",
    lambda e: sg.max_pool2d(e.img, 2, stride="2"))  # fmt: skip
add("mse", "shapes", ShapeError, r"\(4,\)", lambda e: sg.mse(e.W, e.u))
add("mse", "array target (const then fail)", ShapeError, r"\(4,\)",
    lambda e: sg.mse(e.W, np.full(4, 0.25)))  # fmt: skip
add("binary_cross_entropy", "log built, then shapes", ShapeError, r"\(4,\)",
    lambda e: sg.binary_cross_entropy(e.W, np.full(4, 0.5)))  # fmt: skip
add("binary_cross_entropy_with_logits", "softplus built, then shapes", ShapeError, r"\(4,\)",
    lambda e: sg.binary_cross_entropy_with_logits(e.W, e.u))  # fmt: skip
add("softmax_cross_entropy", "log_softmax built, then shapes", ShapeError, r"\(4,\)",
    lambda e: sg.softmax_cross_entropy(e.W, np.ones(4)))  # fmt: skip
add("softmax_cross_entropy", "axis 5", ShapeError, "axis 5",
    lambda e: sg.softmax_cross_entropy(e.W, e.W, axis=5))  # fmt: skip

# --- every elementwise function of the registry ---------------------------------------------
for _name in sorted(FUNCTIONS):
    _arity = OPS[_name].arity
    _fn = FUNCTIONS[_name]
    if _arity == 1:
        add(_name, "arity", GraphError, f"{_name} takes 1 operands, got 2",
            lambda e, fn=_fn: fn(e.x, e.y))  # fmt: skip
        add(_name, "a str", GraphError, "needs at least one Expr", lambda e, fn=_fn: fn("a"))
        add(_name, "foreign Expr", GraphError, "",
            lambda e, fn=_fn, name=_name: e.g.apply(name, e.ox))  # fmt: skip
        continue
    ops = (lambda e: (e.W, e.u), lambda e: (e.W, e.u, e.x))[_arity - 2]
    add(_name, "shapes", ShapeError, r"\(2, 3\).*\(4,\)|\(4,\).*\(2, 3\)",
        lambda e, fn=_fn, ops=ops: fn(*ops(e)))  # fmt: skip
    # A constant is made for the array first; the shape error after it must remove it again.
    consts = (lambda e: (np.full(4, 7.25), e.W), lambda e: (e.x, np.full(4, 7.25), e.W))
    add(_name, "const then shapes", ShapeError, r"\(2, 3\).*\(4,\)|\(4,\).*\(2, 3\)",
        lambda e, fn=_fn, c=consts[_arity - 2]: fn(*c(e)))  # fmt: skip
    if _arity == 3:
        add(_name, "const then a str", GraphError, "operand 2 is a str",
            lambda e, fn=_fn: fn(e.x, 7.25, "a"))  # fmt: skip
    add(_name, "arity", GraphError, f"{_name} takes {_arity} operands",
        lambda e, fn=_fn: fn(e.x))  # fmt: skip


def _param(c: Case):
    marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
    return pytest.param(c, id=f"{c.api}-{c.label}", marks=marks)


@pytest.mark.parametrize("c", [_param(c) for c in CASES])
def test_a_failed_call_changes_nothing(c: Case):
    e = Env()
    if c.setup:
        c.setup(e)
    before, before_other = snapshot(e.g), snapshot(e.other)
    with pytest.raises(SymgradError) as info:
        c.call(e)
    assert isinstance(info.value, c.error), f"{type(info.value).__name__}: {info.value}"
    assert info.match(c.match)
    assert snapshot(e.g) == before
    assert snapshot(e.other) == before_other
    # The hash-consing tables and the derivative stamp are back as well: a new node gets the
    # next id, as a primal node.
    e.g.max_nodes = max(e.g.max_nodes, len(e.g) + 2)
    probe = sg.tanh(e.g.input("probe_after_failure"))
    assert probe.args[0].id == before[0] and probe.id == before[0] + 1
    assert (e.g.node(probe.id)["role"], e.g.node(probe.id)["order"]) == ("primal", 0)


# Names of sg.__all__ that take no graph argument, so no call of theirs can change one.
NO_GRAPH = {
    "ArgumentError": "an exception class",
    "GradError": "an exception class",
    "GraphError": "an exception class",
    "LoweringError": "an exception class",
    "ParseError": "an exception class",
    "ShapeError": "an exception class",
    "SizeError": "an exception class",
    "SymgradError": "an exception class",
}


def test_every_public_name_has_a_case():
    covered = {c.api for c in CASES}
    missing = sorted(set(sg.__all__) - covered - set(NO_GRAPH))
    assert not missing, f"public names without a bad-input case: {missing}"
    assert not covered - set(sg.__all__), "cases for names that are not public"
    assert set(NO_GRAPH) <= set(sg.__all__)
    for name in NO_GRAPH:
        assert issubclass(getattr(sg, name), SymgradError)
    assert len(CASES) >= 100


def test_cases_per_error_class():
    # The table's shape, so a refactoring cannot silently drop a whole class of bad inputs.
    counts = Counter(c.error.__name__ for c in CASES)
    assert set(counts) == {"ParseError", "ShapeError", "GraphError", "GradError",
                           "ArgumentError", "SymgradError"}  # fmt: skip
    assert all(n >= 5 for name, n in counts.items() if name != "SymgradError")
