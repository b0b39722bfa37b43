"""The tests' toolbox: what several test files need, written once (shared fixtures: conftest.py;
random expressions: strategies.py; counting work: counting.py).

- op lists derived from the registry, so adding an op adds it to every test parametrized by them;
- ``domain_sample``: values inside an op's registry ``domain``;
- ``central_difference``: the one finite-difference routine, for scalars and arrays;
- ``snapshot``: everything a failed call must leave as it was in a graph;
- ``EXAMPLES``, ``example``, ``HOSTILE``, ``hostile_cases``: one valid use of every op with
  attributes, and values no attribute should take blindly (graph probes and unpickling);
- ``values_for``, ``compare``: arguments for a compiled tensor function, and its results
  compared with another's (``EXACT``: equal values); ``big_matmul``: matmuls big enough for BLAS;
- ``compile_formula``: a formula and its gradient, compiled (``FORMULA`` by default);
  ``scalar_fn``, ``tensor_fn``: the functions of the call probes (fixture ``fn``: conftest.py);
  ``rosenbrock``: Rosenbrock's value, gradient and Hessian; ``same``: equal results;
- ``two_spirals``: the data set the seed-004 network learns (and notebook 05 trains on);
- ``run_python``: code in a fresh interpreter at the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

import symgrad as sg
from symgrad.ops import MAX_NDIM, OPS

ROOT = Path(__file__).resolve().parents[1]

# --- op lists from the registry ------------------------------------------------------------------

ELEMENTWISE_OPS = sorted(n for n, op in OPS.items() if op.elementwise and op.arity)
DIFF_OPS = [n for n in ELEMENTWISE_OPS if OPS[n].differentiable]
FLAT_OPS = [n for n in ELEMENTWISE_OPS if not OPS[n].differentiable]  # piecewise constant
BINARY_OPS = [n for n in ELEMENTWISE_OPS if OPS[n].arity == 2]
# Loops: a tuple-valued op (scan) and its projection (an op reading one part). Their attribute
# is a body graph, so they are tested from sg.scan (tests/test_scan.py), not from cases of shapes.
LOOP_OPS = [n for n, op in OPS.items() if op.multiple or "part" in op.attrs]
TENSOR_OPS = [n for n, op in OPS.items() if not op.elementwise and n not in LOOP_OPS]


# --- sampling an op's domain ---------------------------------------------------------------------


def domain_sample(name: str, shape=(), seed: int | np.random.Generator = 0) -> list[np.ndarray]:
    """Values drawn uniformly inside op ``name``'s registry domain: one array per operand, each
    of ``shape`` (a list of shapes gives operand k the shape ``shape[k]``). ``seed`` is a seed or
    a Generator; operands are drawn in order, all of operand 0 first.

    >>> [v.shape for v in domain_sample("atan2", 5)]
    [(5,), (5,)]
    """
    rng = np.random.default_rng(seed)  # a Generator is passed through as it is
    domain = OPS[name].domain
    shapes = shape if isinstance(shape, list) else [shape] * len(domain)
    return [rng.uniform(lo, hi, s) for (lo, hi), s in zip(domain, shapes, strict=True)]


# --- finite differences --------------------------------------------------------------------------


def central_difference(f: Callable, x, step: float = 1e-6) -> np.ndarray:
    """Central differences of ``f`` at ``x``, one for each entry of ``x``: an array of shape
    ``shape(x) + shape(f(x))`` whose entry ``[k]`` estimates the derivative of ``f`` in ``x[k]``.

    ``x`` is a number or an array and ``f`` returns a number or an array (so the differences of
    a gradient are a Hessian, and ``central_difference(lambda t: g(x + t*v), 0.0)`` is the
    derivative of ``g`` along ``v``). The step is chosen per entry, ``step * max(1, |x[k]|)``,
    so it stays relative to large values; the quotient divides by the distance between the two
    points as doubles, not by the step as written.

    >>> round(float(central_difference(lambda v: v**3, 2.0)), 6)  # 3 x**2 at 2
    12.0
    """
    x = np.asarray(x, dtype=np.float64)
    rows = []
    for k in np.ndindex(x.shape):
        h = step * max(1.0, abs(float(x[k])))
        up, down = x.copy(), x.copy()
        up[k] += h
        down[k] -= h
        rows.append((np.asarray(f(up), np.float64) - np.asarray(f(down))) / (up[k] - down[k]))
    return np.array(rows).reshape(x.shape + rows[0].shape)


# --- graphs: a snapshot, and hostile attribute values ---------------------------------------------


def snapshot(g: sg.Graph) -> tuple:
    """Everything a call could change, comparable: array attributes by shape and bytes, floats
    by repr (so a nan compares equal to itself)."""

    def plain(v):
        if isinstance(v, np.ndarray):
            return ("array", v.dtype.str, v.shape, v.tobytes())
        if isinstance(v, tuple):
            return tuple(plain(a) for a in v)
        return repr(v)

    nodes = [(i, sorted((k, plain(d[k])) for k in d)) for i, d in g.nx.nodes(data=True)]
    return (
        len(g),
        g.nx.number_of_nodes(),
        nodes,
        sorted(g.nx.edges),
        list(g.inputs),
        [e.id for e in g.inputs.values()],
        g.max_nodes,
        g.max_elements,
    )


class Evil:
    """A value whose repr, equality, hash, len, iteration and int conversion all raise."""

    def __repr__(self):
        raise RuntimeError("repr")

    def __eq__(self, other):
        raise RuntimeError("eq")

    def __hash__(self):
        raise RuntimeError("hash")

    def __len__(self):
        raise RuntimeError("len")

    def __iter__(self):
        raise RuntimeError("iter")

    def __index__(self):
        raise RuntimeError("index")


# One valid use of every op with attributes: operand shapes and attributes.
EXAMPLES = {
    "getitem": ([(3, 4)], {"index": (1, slice(0, 2))}),
    "embed": ([(2,)], {"index": (1, slice(0, 2)), "shape": (3, 4)}),
    "sum": ([(3, 4)], {"axis": (1,), "keepdims": True}),
    "mean": ([(3, 4)], {"axis": 0, "keepdims": False}),
    "amax": ([(3, 4)], {"axis": -1, "keepdims": True}),
    "logsumexp": ([(3, 4)], {"axis": (-1,), "keepdims": False}),
    "softmax": ([(3, 4)], {"axis": 0}),
    "transpose": ([(2, 3, 4)], {"axes": (2, 0, 1)}),
    "reshape": ([(3, 4)], {"shape": (2, -1)}),
    "broadcast_to": ([(3, 1)], {"shape": (2, 3, 4)}),
    "windows": ([(1, 2, 5, 5)], {"kernel_size": (2, 2), "stride": (1, 2)}),
    "window_sum": ([(1, 2, 4, 2, 2, 2)],
                   {"kernel_size": (2, 2), "stride": (1, 2), "shape": (1, 2, 5, 5)}),
    "conv2d": ([(1, 2, 5, 5), (3, 2, 2, 2)], {"stride": (2, 1), "padding": (1, 0)}),
    "avg_pool2d": ([(1, 2, 5, 5)], {"kernel_size": (2, 3), "stride": (1, 2)}),
    "max_pool2d": ([(1, 2, 5, 5)], {"kernel_size": 2, "stride": None}),
    "concatenate": ([(2, 3), (2, 1), (2, 3)], {"axis": 1}),
    "einsum": ([(2, 3, 4), (3, 4), (2,)], {"spec": "ijk,jk,i->ji"}),
    # An array among the shapes: a constant operand (indices), not an input.
    "take": ([(4, 3), np.array([3.0, 0.0, -1.0, 3.0])], {"axis": 0}),
    "scatter_add": ([(2, 4), np.array([1.0, 0.0, 1.0, 2.0])], {"axis": 1, "size": 3}),
}  # fmt: skip

# Values no attribute should take blindly: zero, negative, huge, bool, float, None, strings,
# nested tuples, numpy scalars and arrays, containers, objects whose every method raises.
HOSTILE = [
    0, -1, -3, 7, 2**41, -(2**41), 2**62, 10**5000, True, False, np.bool_(True), 1.5, -0.0,
    float("nan"), float("inf"), None, "a", "", b"x", (), (0,), (-1,), (1, 2, 3), (2**41, 1),
    ((1,),), ((1, 2), 3), [1, 2], [[1]], (1.0, 2.0), (True, 1), np.int64(1), np.int64(-1),
    np.int64(2**62), np.uint64(2**63), np.float64(2.0), np.array([1, 2]), np.array(1),
    np.array([[1]]), {"a": 1}, {1, 2}, slice(None), slice(0, 2), Ellipsis, object(), Evil(),
    (Evil(),), tuple(range(100)), (1,) * (MAX_NDIM + 1), 1 + 1j, ("s", 0, 1, 1),
    (("s", 0, 1, 1),), (("s", 0, 99, 1),), (("s", "a", 1, 1),), (("s", np.array([1]), 1, 1),),
    ((np.array([0, 1]), 0, 1, 1),), (Ellipsis, Ellipsis), (0, 0, 0, 0, 0),
]  # fmt: skip


def example(op: str, graph: sg.Graph | None = None):
    """``(graph, operands, attrs)``: op ``op``'s EXAMPLES entry, its operands inputs x0, x1, ...
    (an array in the entry is a constant operand instead: the indices of take)."""
    g = graph or sg.Graph()
    shapes, attrs = EXAMPLES[op]
    operands = [
        g.const(s) if isinstance(s, np.ndarray) else g.input(f"x{k}", s)
        for k, s in enumerate(shapes)
    ]
    return g, operands, attrs


def input_values(operands, fill) -> dict[str, np.ndarray]:
    """``fill(shape)`` for each operand that is an input, by its name (constants have none)."""
    return {o.name: fill(o.shape) for o in operands if o.op == "input"}


def hostile_cases():
    """``(op, attribute name)`` for every attribute of every op in EXAMPLES."""
    return [(op, name) for op in sorted(EXAMPLES) for name in OPS[op].attrs]


# --- compiled tensor functions -------------------------------------------------------------------

EXACT = None  # the tolerance of ``compare`` that asks for equal values


def values_for(fn, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Standard normal values (times ``scale``) for the arguments of ``fn``, by their shapes."""
    rng = np.random.default_rng(seed)
    return {n: scale * rng.standard_normal(fn.graph.inputs[n].shape) for n in fn.inputs}


def compare(got, want, tol, label="") -> None:
    """Results ``got`` against ``want``: the same number, shapes and dtype (float64), and values
    equal (``tol`` EXACT) or within ``tol`` (assert_allclose keywords) with nan in the same
    places."""
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        msg = f"{label} output {k}"
        assert a.shape == b.shape, msg
        assert a.dtype == np.float64, msg
        if tol is EXACT:
            np.testing.assert_array_equal(a, b, err_msg=msg)
        else:
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=msg)
            np.testing.assert_allclose(a, b, err_msg=msg, **tol)


def big_matmul() -> list:
    """Three matmuls big enough for BLAS (40x50 by 50x60), two of them through views."""
    g = sg.Graph()
    x, y = g.input("x", (40, 50)), g.input("y", (50, 60))
    return [x @ y, x.T.T @ y[:, ::-1], sg.relu(x @ y[:, 1:41]).T @ x]


# --- compiling a formula, and a fresh interpreter -------------------------------------------------

FORMULA = "sin(x) * y + exp(x / (1 + y*y))"


def compile_formula(text: str = FORMULA):
    """``[f, its gradient]`` for the formula ``text``, compiled; arguments in the inputs' order."""
    f = sg.parse(text)
    xs = list(f.graph.inputs.values())
    return sg.compile([f, sg.build_grad(f, xs)], inputs=xs)


def scalar_fn(backend: str):
    """x*y + x/y and its gradient: IEEE operations only, so both backends agree bitwise."""
    f = sg.parse("x*y + x/y")
    xs = list(f.graph.inputs.values())
    return sg.compile([f, sg.build_grad(f, xs)], inputs=xs, backend=backend)


def tensor_fn(backend: str):
    """sum(W @ v) with W (2, 3), v (3,), and its gradient in W."""
    f = sg.parse("sum(W @ v)", shapes={"W": (2, 3), "v": (3,)})
    W, v = f.graph.inputs.values()
    return sg.compile([f, sg.build_grad(f, [W])], backend=backend)


ROSENBROCK = "(1 - a)**2 + 100*(b - a**2)**2"


def rosenbrock(**options):
    """Rosenbrock's value, gradient and Hessian (one output of each layout), compiled."""
    f = sg.parse(ROSENBROCK)
    wrt = [f.graph.inputs["a"], f.graph.inputs["b"]]
    return sg.compile([f, sg.build_grad(f, wrt), sg.hessian(f, wrt)], **options)


def same(left, right) -> bool:
    """Equal results: as many arrays, of equal shapes and values (nan equal to nan)."""
    return len(left) == len(right) and all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=True) for a, b in zip(left, right)
    )


def two_spirals(n, rng, noise=0.08, turns=1.25):
    """Two interleaved spirals (one the other turned by 180 degrees), standardized."""
    r = np.sqrt(rng.uniform(0.02, 1.0, n // 2))
    theta = 2 * np.pi * turns * r
    arm = np.c_[r * np.cos(theta), r * np.sin(theta)]
    X = np.concatenate([arm, -arm]) + noise * rng.standard_normal((2 * (n // 2), 2))
    y = np.r_[np.zeros(n // 2), np.ones(n // 2)]
    return (X - X.mean(0)) / X.std(0), y


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
