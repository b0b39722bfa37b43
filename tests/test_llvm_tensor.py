"""Compiled tensor code (``llvm/loops.py`` through ``TensorKernel``) against the numpy interpreter.

Every tensor op of the registry over many attribute settings, the fusion and layout edge cases of
the loop writer (vector loop and scalar remainder, broadcasting, gathers, stages), every kind of
output, compiled gradients (each tensor op, an MLP's hvp and training step), the call contract
(argument errors, threads, IR text) and random tensor programs (hypothesis); the object cache
of a tensor function: test_cache.py.
The oracle is ``sg.compile(outputs, backend="numpy")``.

Tolerances, and why each is what it is:

- ``EXACT`` (``assert_array_equal``; nan positions must agree): views, copies, embed, amax and
  the max pool, and elementwise chains of IEEE-exact operations (``+ - * /``, sqrt, abs, max,
  min, comparisons, where, sign, relu). The compiled loop does the very operations numpy does,
  one rounding each, in the same order. (``assert_array_equal`` does not see the sign of a zero:
  numpy's ``maximum(-0.0, 0.0)`` depends on operand order, symgrad's max is commutative;
  test_llvm.py covers that convention.)
- ``LIBM`` (rtol 1e-13, about 450 ulp, atol 0): transcendental functions. The 4-lane loop calls
  glibc's libmvec (within 4 ulp), the scalar remainder glibc's libm (within 1 ulp), numpy its own
  SIMD kernels; derived values (sigmoid, softplus) compound a few of these, as in test_llvm.py.
- ``SUMMED`` (rtol 1e-12, atol 1e-12): anything that adds many terms (sum, mean, logsumexp,
  softmax, matmul, conv2d, avg pool, gradients). numpy adds pairwise with 8 accumulators and its
  BLAS with FMA in blocks; the compiled loops add in 4 lanes then pairwise, or sequentially in
  the i-k-j matmul loop. Both are within n eps sum|x| of the exact sum: with standard normal
  inputs and at most a few hundred terms, that is below 1e-12 absolute.
- Random programs (hypothesis) compose all of the above: 1e-9 relative to 1 + |value|.
"""

from __future__ import annotations

import itertools
import re
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad.graph import reachable
from symgrad.llvm.jit import blas_dgemm
from symgrad.llvm.loops import BLAS_MIN_FLOPS
from symgrad.llvm.lower import hex_double
from symgrad.ops import OPS, indexed_shape, normalize_index
from tests.toolbox import (
    ELEMENTWISE_OPS,
    EXACT,
    TENSOR_OPS,
    big_matmul,
    compare,
    domain_sample,
    values_for,
)

LIBM = {"rtol": 1e-13, "atol": 0.0}
SUMMED = {"rtol": 1e-12, "atol": 1e-12}
SPECIAL = np.array([
    [0.0, -0.0, 1.0, -1.0, 0.5],
    [np.inf, -np.inf, np.nan, 1e-310, 700.0],
    [-700.0, 2.5, -3.0, 0.9, 1e300],
])  # fmt: skip


pytestmark = pytest.mark.usefixtures("no_cache")  # tests/conftest.py


@pytest.fixture
def no_blas(monkeypatch):
    """``SYMGRAD_BLAS=off``: every matmul is the inline loop. The cached lookup is cleared on
    the way in and out, so later tests find BLAS again."""
    monkeypatch.setenv("SYMGRAD_BLAS", "off")
    blas_dgemm.cache_clear()
    yield
    monkeypatch.delenv("SYMGRAD_BLAS")
    blas_dgemm.cache_clear()


# --- comparing compiled and interpreted ---------------------------------------------------------


def check(outputs, tol=EXACT, values=None, seed=0, label="", **options):
    """Compile ``outputs`` both ways, call both on the same values, compare; return both."""
    fn = sg.compile(outputs, **options)
    ref = sg.compile(outputs, backend="numpy")
    assert fn.inputs == ref.inputs
    vals = values_for(fn, seed)
    vals.update(values or {})
    got, want = fn(**vals), ref(**vals)
    compare(got, want, tol, label)
    return got, want


# --- 1. every tensor op of the registry ----------------------------------------------------------

# Shapes by rank: an innermost axis of 9 runs the reductions' 4-lane accumulators and remainder.
RANK_SHAPES = {1: (9,), 2: (3, 10), 3: (2, 5, 9), 4: (2, 3, 2, 9)}


def _reduction_cases(op: str):
    fn = {"amax": lambda x, **kw: x.max(**kw)}.get(op, getattr(sg, op, None))
    tol = EXACT if op == "amax" else SUMMED
    for nd, shape in RANK_SHAPES.items():
        # Every subset of the axes, the empty one included, and None (all of them).
        subsets = [c for r in range(nd + 1) for c in itertools.combinations(range(nd), r)]
        for axes in [None, *subsets]:

            def build(g, shape=shape, axes=axes):
                x = g.input("x", shape)
                return [fn(x, axis=axes, keepdims=False), fn(x, axis=axes, keepdims=True)]

            yield f"{shape} axis={axes}", build, tol


def _transpose_cases():
    for perm in itertools.permutations(range(3)):
        yield (
            f"3-d {perm}",
            lambda g, p=perm: _with_use(g.input("x", (2, 3, 4)).transpose(p)),
            EXACT,
        )
    for perm in [(3, 2, 1, 0), (1, 3, 0, 2), (0, 1, 3, 2)]:
        yield (
            f"4-d {perm}",
            lambda g, p=perm: _with_use(g.input("x", (2, 3, 2, 5)).transpose(p)),
            EXACT,
        )
    yield "2-d .T", lambda g: _with_use(g.input("x", (3, 7)).T), EXACT


def _with_use(view):
    # The view as an output (a copy) and read by a fused loop (a gather).
    return [view, view * 2.0 + 1.0]


def _reshape_cases():
    for shape in [(24,), (4, 6), (6, 4), (2, 12), (4, 3, 2), (1, 24, 1), (-1, 2)]:

        def build(g, shape=shape):
            x = g.input("x", (2, 3, 4))
            return [
                x.reshape(shape),  # contiguous: a view
                x.transpose(2, 0, 1).reshape(shape),  # not contiguous: the copy path
                (x * 2.0).T.reshape(shape) + 1.0,  # a copy of a stored elementwise node
                x[:, :, ::-1].reshape(shape) * 3.0,  # reversed: copy
                x.reshape(shape).reshape(2, 3, 4),  # view of a view
            ]

        yield f"to {shape}", build, EXACT
    yield "sliced", lambda g: [g.input("x", (4, 3, 5))[:, 1:, ::2].reshape(-1)], EXACT
    yield "rows", lambda g: [g.input("x", (4, 3, 5))[1:3].reshape(2, 15) - 1.0], EXACT
    yield "column", lambda g: [g.input("x", (4, 6))[:, 2:3].reshape(4)], EXACT


def _broadcast_cases():
    for src, dst in [((4,), (3, 4)), ((3, 1), (3, 4)), ((1,), (2, 3, 4)), ((), (3, 2)),
                     ((2, 1, 4), (2, 3, 4)), ((1, 1), (5, 7)), ((5,), (5,))]:  # fmt: skip
        yield (
            f"{src}->{dst}",
            lambda g, s=src, d=dst: _with_use(sg.broadcast_to(g.input("x", s), d)),
            EXACT,
        )


INDEXES = [
    0, -1, (1,), (slice(None), 2), (..., 1), (..., slice(None, None, -1)),
    (slice(None, None, -1), slice(1, None, 2)), (1, -2, slice(3, 0, -2)), (...,),
    (slice(1, 2), ..., slice(0, 1)), (-1, -1, -1),
    (slice(None, None, -2), ..., slice(None, None, 3)),
    (slice(-2, None), slice(None, -1), slice(-1, -5, -1)),
]  # fmt: skip


def _getitem_cases():
    for ix in INDEXES:

        def build(g, ix=ix):
            v = g.input("x", (2, 3, 4))[ix]
            return [v, v * 2.0] if v.shape else [v, v + 1.0]

        yield f"[{ix}]", build, EXACT


EMBEDS = [
    ((slice(1, 3),), (5,)), ((slice(None), slice(1, None, 2)), (3, 6)),
    ((1, slice(None, None, -1)), (3, 4)), ((..., 0), (2, 3)), ((slice(4, 0, -2), 2), (6, 3)),
    ((slice(1, 3), slice(None), slice(2, 7, 2)), (4, 2, 8)),
]  # fmt: skip


def _embed_cases():
    for ix, shape in EMBEDS:

        def build(g, ix=ix, shape=shape):
            sub = indexed_shape(normalize_index("embed", shape, ix))
            e = g.apply("embed", g.input("x", sub), index=ix, shape=shape)
            return [e, e + 1.0, g.apply("embed", g.input("x", sub) * 2.0, index=ix, shape=shape)]

        yield f"{ix} in {shape}", build, EXACT


def _softmax_cases():
    for axis in range(-3, 3):
        yield (
            f"axis={axis}",
            lambda g, a=axis: [sg.softmax(g.input("x", (2, 3, 9)), axis=a)],
            SUMMED,
        )
    yield "1-d", lambda g: [sg.softmax(g.input("x", (11,)))], SUMMED


CONVS = [  # (N, C, H, W), (O, kH, kW), stride, padding
    ((1, 1, 5, 5), (1, 3, 3), 1, 0), ((2, 3, 7, 6), (4, 3, 2), 2, 1),
    ((2, 2, 8, 8), (3, 3, 3), (2, 1), (0, 2)), ((1, 3, 5, 4), (2, 1, 1), 1, 0),
    ((2, 1, 6, 7), (5, 3, 3), 3, (1, 0)), ((1, 4, 4, 4), (2, 4, 4), 1, 0),
    ((1, 8, 9, 9), (6, 3, 3), 1, 1),  # 8 channels x 81 pixels: taps through BLAS
]  # fmt: skip


def _conv_cases():
    for (n, c, h, w), (o, kh, kw), stride, padding in CONVS:

        def build(g, xs=(n, c, h, w), ws=(o, c, kh, kw), s=stride, p=padding):
            y = sg.conv2d(g.input("x", xs), g.input("w", ws), stride=s, padding=p)
            return [y, sg.relu(y)]

        yield f"x{(n, c, h, w)} w{(o, c, kh, kw)} s={stride} p={padding}", build, SUMMED


POOLS = [  # shape, kernel_size, stride (None: the kernel)
    ((1, 1, 4, 4), 2, None), ((2, 3, 5, 7), 2, None), ((2, 3, 5, 7), 3, 1),
    ((2, 6, 6), (2, 3), (1, 2)), ((5, 5), 3, 2), ((1, 2, 7, 7), (3, 2), (2, 3)), ((4, 4), 4, None),
    ((3, 8, 9), 2, 1),
]  # fmt: skip


def _pool_cases(op: str):
    for shape, k, s in POOLS:

        def build(g, shape=shape, k=k, s=s):
            return [getattr(sg, op)(g.input("x", shape), kernel_size=k, stride=s)]

        yield f"{shape} k={k} s={s}", build, EXACT if op == "max_pool2d" else SUMMED


def _window_cases(op: str):
    for shape, k, s in POOLS:
        k2 = (k, k) if isinstance(k, int) else k
        s2 = (s, s) if isinstance(s, int) else (k2 if s is None else s)

        def build(g, shape=shape, k=k2, s=s2):
            x = g.input("x", shape)
            if op == "windows":
                win = g.apply("windows", x, kernel_size=k, stride=s)
                return [win, win * 2.0, sg.sum(win, axis=(-2, -1))]
            win_shape = g.apply("windows", x, kernel_size=k, stride=s).shape
            w = g.input("w", win_shape)
            return [g.apply("window_sum", w, kernel_size=k, stride=s, shape=shape)]

        yield f"{shape} k={k2} s={s2}", build, SUMMED  # the windows case sums too


MATMULS = [(1, 1, 1), (2, 3, 4), (5, 7, 3), (8, 8, 8), (31, 32, 33), (32, 32, 32), (40, 50, 60),
           (64, 1, 64), (1, 64, 600), (100, 3, 200), (3, 100, 2)]  # fmt: skip


def _matmul_cases():
    for m, k, n in MATMULS:

        def build(g, m=m, k=k, n=n):
            x, y = g.input("x", (m, k)), g.input("y", (k, n))
            xt, yt = g.input("xt", (k, m)), g.input("yt", (n, k))
            return [x @ y, xt.T @ y, x @ yt.T, xt.T @ yt.T, sg.relu(x @ y + 1.0)]

        yield f"{m}x{k}x{n}", build, SUMMED

    def views(g):
        w, v, u = g.input("W", (6, 8)), g.input("v", (4,)), g.input("u", (6,))
        return [w[:, 1:5] @ v, u @ w, (u @ w) @ w.T, w[::-1, ::2] @ w[1:5, ::-1],
                w[::2, :].T @ w[1::2, :], u @ u, w.T @ u, w[2] @ w[3]]  # fmt: skip

    def big_views(g):
        w, v = g.input("W", (40, 60)), g.input("v", (40,))
        col = sg.broadcast_to(v.reshape(40, 1), (40, 40))
        return [w[:, 1:50].T @ w[:, 2:42], w[::-1].T @ w, col @ w, w[::2].T @ w[1::2], v @ w,
                w.T @ v, w[3:36, 5:45] @ w[:, 10:50], w[:, ::-1] @ w.T]  # fmt: skip

    yield "sliced, transposed and 1-d operands", views, SUMMED
    yield "views of a 40x60 matrix", big_views, SUMMED


TAKES = [  # x's shape, constant indices (repeated, negative; None: an input), axis
    ((7,), [6, 0, -1, 6, 2], 0), ((4, 9), [[1, 3], [0, -4]], 0), ((2, 5, 9), [2, 2, 0], 1),
    ((2, 3, 4), 3, 2), ((3, 2), [1, 0, 1, 1, 0, 1, 0, 0, 1], -1), ((6, 5), None, 0),
    ((3, 6, 2), None, 1),
]  # fmt: skip


def _indices(g, idx, n: int):
    """Constant indices, or (None) input ones: sign(i) + sign(i - 0.5) holds integers in
    [-2, 2] and i / 4 fractions, so the kernel meets valid, negative and invalid (nan) ones."""
    if idx is not None:
        return idx
    i = g.input("i", (n,))
    return sg.where(i > 1.5, i * 0.25, sg.sign(i) + sg.sign(i - 0.5))


def _take_cases(op: str):
    for shape, idx, axis in TAKES:

        def build(g, shape=shape, idx=idx, axis=axis):
            x, idx = g.input("x", shape), _indices(g, idx, 8)
            t = sg.take(x, idx, axis=axis)
            if op == "take":
                return [t, t * 2.0]
            v = g.input("v", t.shape)
            return [sg.scatter_add(v, idx, axis=axis, size=shape[axis]), t]

        yield f"{shape} {idx} axis={axis}", build, EXACT


JOINS = [  # operand shapes, axis
    ([(9,), (3,), (1,)], 0), ([(2, 5), (2, 3)], 1), ([(1, 4, 9), (2, 4, 9), (1, 4, 9)], 0),
    ([(2, 3, 4), (2, 1, 4), (2, 5, 4)], 1), ([(3, 2, 1), (3, 2, 7)], -1), ([(4, 6)], 0),
    ([(2, 30, 3), (2, 9, 3)], 1), ([(5, 33)], -1),  # longer than JOIN_COLUMNS: slab by slab
]  # fmt: skip


def _concatenate_cases():
    for shapes, axis in JOINS:

        def build(g, shapes=shapes, axis=axis):
            xs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)]
            joined = g.apply("concatenate", *xs, axis=axis)
            # Through views too: a transposed or reversed operand is copied as it reads.
            flipped = g.apply("concatenate", *(x[::-1] for x in xs), axis=axis)
            return [joined, flipped * 2.0]

        yield f"{shapes} axis={axis}", build, EXACT

    def stacked(g):
        a, b = g.input("a", (3, 4)), g.input("b", (4, 3))
        return [sg.stack([a, b.T, a * 2.0], axis=k) for k in range(3)]

    yield "sg.stack of views on every axis", stacked, EXACT


EINSUMS = [  # spec, operand shapes: the output's last letter innermost (vectors, remainder)
    ("ij,jk->ik", [(3, 5), (5, 9)]), ("bij,bjk->bik", [(2, 3, 4), (2, 4, 7)]),
    ("kij,nkj->nki", [(3, 4, 4), (5, 3, 4)]), ("ij->", [(3, 9)]), ("i,i", [(9,), (9,)]),
    ("ij->ji", [(5, 6)]), ("ij,jk,k->i", [(2, 3), (3, 5), (5,)]), ("i,j->ij", [(3,), (6,)]),
    ("ijk,j->ki", [(2, 3, 5), (3,)]),
    # Big enough for dgemm per batch element (reversed views fall back to the loops):
    ("kij,nkj->nki", [(3, 40, 40), (30, 3, 40)]), ("bij,bjk->bik", [(2, 32, 33), (2, 33, 40)]),
    ("ij,jk->ki", [(40, 50), (50, 30)]),
]  # fmt: skip


def _einsum_cases():
    for spec, shapes in EINSUMS:

        def build(g, spec=spec, shapes=shapes):
            xs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)]
            e = sg.einsum(spec, *xs)
            # Through views: reversed (negative strides) and transposed operands.
            flipped = sg.einsum(spec, *(x[::-1] for x in xs))
            return [e, flipped * 2.0]

        yield f"{spec} {shapes}", build, SUMMED


CASES = {
    "sum": lambda: _reduction_cases("sum"),
    "mean": lambda: _reduction_cases("mean"),
    "amax": lambda: _reduction_cases("amax"),
    "logsumexp": lambda: _reduction_cases("logsumexp"),
    "matmul": _matmul_cases,
    "transpose": _transpose_cases,
    "reshape": _reshape_cases,
    "broadcast_to": _broadcast_cases,
    "getitem": _getitem_cases,
    "embed": _embed_cases,
    "softmax": _softmax_cases,
    "conv2d": _conv_cases,
    "avg_pool2d": lambda: _pool_cases("avg_pool2d"),
    "max_pool2d": lambda: _pool_cases("max_pool2d"),
    "windows": lambda: _window_cases("windows"),
    "window_sum": lambda: _window_cases("window_sum"),
    "concatenate": _concatenate_cases,
    "einsum": _einsum_cases,
    "take": lambda: _take_cases("take"),
    "scatter_add": lambda: _take_cases("scatter_add"),
}


def test_cases_cover_every_tensor_op():
    # A new tensor op fails here until it has compiled-vs-interpreted cases (and gradient ones).
    assert set(CASES) == set(TENSOR_OPS)
    assert set(GRAD_CASES) == set(TENSOR_OPS)


@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_compiled_equals_interpreted(name):
    count = 0
    for label, build, tol in CASES[name]():
        outputs = build(sg.Graph())
        assert any(name in _ops_below(o) for o in outputs), label
        check(outputs, tol, label=f"{name} {label}")
        count += 1
    assert count >= 5


def _ops_below(e) -> set[str]:
    return {e.graph.node(i)["op"] for i in reachable(e.graph, [e.id])}


def test_views_are_numpy_views_exactly():
    g = sg.Graph()
    x = g.input("x", (2, 3, 4))
    xv = np.random.default_rng(1).standard_normal((2, 3, 4))
    perms = list(itertools.permutations(range(3)))
    # Views of views: slices of reversed or transposed views start from a moved offset.
    chains = [
        lambda v: v[::-1][1:],
        lambda v: v[:, ::-1][:, 1::2][1],
        lambda v: v.transpose(2, 0, 1)[::-1][1:3, ::-1],
        lambda v: v[::-1, ::-1, ::-1][1, 1:, 2:0:-1],
        lambda v: v.reshape(6, 4)[::-2][1:].T[::-1],
        lambda v: v[..., ::-2][..., 1:][1].T,
    ]
    got = sg.compile(
        [x.transpose(p) for p in perms] + [x[ix] for ix in INDEXES] + [c(x) for c in chains]
    )(xv)
    want = [xv.transpose(p) for p in perms] + [xv[ix] for ix in INDEXES] + [c(xv) for c in chains]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", range(1, 18))
def test_reductions_of_views_on_every_innermost_length(n):
    # n < 8: one scalar loop; n >= 8: 4-lane partial results, combined pairwise, then the rest.
    # Sources are strided (gathers), reversed, transposed and broadcast (stride 0); nan and inf
    # must propagate through max and sum wherever they sit.
    g = sg.Graph()
    x, v = g.input("x", (3, n)), g.input("v", (n,))
    rows = sg.broadcast_to(v, (3, n))
    col = sg.broadcast_to(x.sum(axis=1, keepdims=True), (3, n))
    exact = [x.max(axis=1), x[:, ::-1].max(axis=1), x.T.max(axis=0), rows.max(axis=1),
             (-x).max(axis=1, keepdims=True), x.max(axis=0), x.max()]  # fmt: skip
    summed = [x.sum(axis=1), x[::2, ::-1].sum(axis=1), rows.sum(axis=1), x.T.sum(axis=0),
              col.sum(axis=1), x.sum(axis=0), x.sum(), sg.logsumexp(x, axis=1)]  # fmt: skip
    xv = np.random.default_rng(n).standard_normal((3, n))
    xv[1, n // 2] = np.nan
    xv[2, -1] = np.inf
    vals = {"x": xv, "v": np.random.default_rng(n + 100).standard_normal(n)}
    check(exact, EXACT, vals)
    check(summed, SUMMED, vals)


# --- 2. fusion and layout edge cases -----------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9])
def test_fused_loops_on_every_innermost_length(n):
    # 4-lane loop plus scalar remainder on every innermost length; broadcasting of a bias,
    # an outer product, a scalar input, a scalar constant, a scalar computed node; gathers
    # (transposed, reversed) and where/comparisons with broadcasting.
    g = sg.Graph()
    x, b, c, s = g.input("x", (3, n)), g.input("b", (n,)), g.input("c", (3, 1)), g.input("s")
    r, t = g.input("r", (1, n)), g.input("t", (n, 3))
    exact = [
        x * x + b,  # bias (n,) + (m, n)
        c * r,  # (m, 1) * (1, n)
        s * x,  # scalar input * matrix
        x * 2.5 - 1.0,  # scalar constants
        sg.relu(x.T * 3.0),  # a transposed operand: a gather
        x[:, ::-1] + x,  # a reversed operand
        t.T / (sg.abs(x) + 1.0),  # transposed input next to a contiguous one
        sg.where(x > b, x, c),  # where with three broadcast shapes
        sg.max(x, b) / (sg.abs(c) + 1.0),
        (x <= c) + (x == x) * 2.0 + sg.ne(b, 0.5),
        x - x.max(axis=1, keepdims=True),  # a stage behind a reduction
        x.T.T + sg.broadcast_to(c, (3, n)),
        sg.sqrt(sg.abs(x) + 1.0) * sg.sign(x),
    ]
    summed = [
        x * sg.sum(x),  # a scalar computed node read inside a matrix loop
        sg.sqrt(sg.abs(x) + sg.sum(x * x, axis=0)),
        x / sg.sum(sg.abs(x), axis=1, keepdims=True) - s,
    ]
    e = sg.exp(x - x.max(axis=1, keepdims=True))
    softmax = e / sg.sum(e, axis=1, keepdims=True)
    mixed = [softmax, e, sg.log(softmax), sg.tanh(x) * b + sg.sum(sg.sin(x))]
    check(exact, EXACT, seed=n)
    check(summed, SUMMED, seed=n)
    check(mixed, SUMMED, seed=n)


def test_elementwise_of_strided_and_transposed_3d_views():
    g = sg.Graph()
    x = g.input("x", (4, 5, 6))
    outputs = [
        x.transpose(2, 0, 1) * 2.0 + 1.0,
        x.transpose(1, 2, 0) + x.transpose(1, 2, 0),
        x[::2, 1:, ::-3] * x[1::2, :4, 1::3],
        x.transpose(0, 2, 1)[:, ::2, 1:4] - 1.0,
        x[1] * x[2],
        x[:, 2].T[::-1] * x[0, :4].T,  # (6, 4) from two differently strided views
        x[..., 0:1] * x,  # a size-1 axis broadcast against the full array
    ]
    check(outputs, EXACT)


def test_stages_interleave_reductions_views_and_elementwise():
    # Elementwise nodes of several stages read from memory, views of stored nodes, a reshape copy
    # of a stored node, and barriers reading barriers.
    g = sg.Graph()
    x, w = g.input("x", (6, 7)), g.input("w", (7, 5))
    h = sg.tanh(x @ w)
    centered = h - h.mean(axis=0, keepdims=True)
    norm = centered / sg.sqrt((centered * centered).sum(axis=0) + 1e-3)
    outputs = [
        norm,
        norm.T @ norm,
        (norm.T * 2.0).reshape(30),
        sg.softmax(norm[::-1], axis=0),
        sg.sum(norm * h) / h.max(),
        norm.max(axis=1).reshape(2, 3).T,
    ]
    check(outputs, SUMMED)


@pytest.mark.parametrize("name", ELEMENTWISE_OPS)
def test_every_elementwise_op_on_a_matrix(name):
    # A 3x5 input is 15 contiguous elements (three 4-lane steps and three scalar ones); its
    # transpose is a gather. Special values include nan, ±inf, ±0, a subnormal, ±700, 1e300:
    # compiled and interpreted must agree on nan positions. Then points of the op's domain.
    op = OPS[name]
    low = op.llvm
    exact = low.kind in ("instr", "intrinsic", "fcmp") or name in ("sign", "relu", "where")
    tol = EXACT if exact else LIBM
    g = sg.Graph()
    args = [g.input(f"a{k}", (3, 5)) for k in range(op.arity)]
    outputs = [g.apply(name, *args), g.apply(name, *(a.T for a in args))]
    special = {f"a{k}": np.roll(SPECIAL, k, axis=1) for k in range(op.arity)}
    check(outputs, tol, special, label=f"{name} special")
    inside = {f"a{k}": v for k, v in enumerate(domain_sample(name, (3, 5), seed=7))}
    check(outputs, tol, inside, label=f"{name} domain")


def test_pure_ieee_chains_are_bit_identical_on_many_lengths():
    g = sg.Graph()
    x, y = g.input("x", (5, 13)), g.input("y", (13,))
    z = (x * y - x / (y * y + 1.0)) * 0.5 + sg.sqrt(sg.abs(x)) - sg.max(x, -y)
    outputs = [z, sg.where(z > 0.0, z, -z * 2.0), sg.min(z, x).T, z[:, 3:12] * z[:, :9]]
    vals = {"x": np.random.default_rng(2).standard_normal((5, 13)) * 100}
    check(outputs, EXACT, vals)


# --- 3. outputs ----------------------------------------------------------------------------------


def test_every_kind_of_output():
    g = sg.Graph()
    x, s = g.input("x", (3, 4)), g.input("s")
    const = np.arange(12.0).reshape(3, 4)
    c = g.const(const)
    y = sg.exp(x)
    outputs = [x, c, g.const(3.0), x.T, x[0], [x, x], x, [x * 2.0, x + 1.0, c], sg.sum(x), s,
               s * 2.0, c.T @ x, y, y.T, [y, y.T.T], sg.mean(x), sg.sum(x) / 12.0,
               sg.broadcast_to(g.const(2.0), (2, 3))]  # fmt: skip
    xv = np.random.default_rng(3).standard_normal((3, 4))
    got, want = check(outputs, SUMMED, {"x": xv, "s": 1.5})
    np.testing.assert_array_equal(got[0], xv)
    np.testing.assert_array_equal(got[1], const)
    assert got[2].shape == () and got[2] == 3.0
    np.testing.assert_array_equal(got[5], np.stack([xv, xv]))
    np.testing.assert_array_equal(got[7][2], const)
    assert got[9].shape == () and got[9] == 1.5
    np.testing.assert_array_equal(got[13], got[12].T)
    np.testing.assert_array_equal(got[17], np.full((2, 3), 2.0))
    # The input returned as an output is a copy, and no two results share memory.
    assert not np.shares_memory(got[0], xv)
    for a, b in itertools.combinations(got, 2):
        assert not np.shares_memory(a, b)


def test_scalar_loss_next_to_matrix_gradients():
    g = sg.Graph()
    x, w = g.input("x", (5, 3)), g.input("w", (3, 2))
    loss = sg.mse(sg.tanh(x @ w), g.const(np.ones((5, 2))))
    [dw] = sg.build_grad(loss, [w])
    got, _ = check([loss, dw, [w, dw]], SUMMED)
    assert got[0].shape == () and got[1].shape == (3, 2) and got[2].shape == (2, 3, 2)


def test_results_are_fresh_arrays_per_call():
    g = sg.Graph()
    x = g.input("x", (4, 4))
    fn = sg.compile([x * 2.0, x, sg.sum(x), x.T])
    a, b = np.eye(4), np.ones((4, 4))
    first = fn(a)
    kept = [r.copy() for r in first]
    second = fn(b)
    for r1, r2, k in zip(first, second, kept):
        assert not np.shares_memory(r1, r2)
        np.testing.assert_array_equal(r1, k)  # the second call wrote elsewhere
    first[0][...] = -1.0  # writing into a result changes neither the input nor later calls
    np.testing.assert_array_equal(a, np.eye(4))
    np.testing.assert_array_equal(fn(a)[0], 2 * np.eye(4))


def test_barriers_of_scalar_constants():
    # Regression: a sum, max or embed of a scalar constant raised KeyError in the planner (the
    # constant had no memory to read); now it is a one-element global (loops.plan).
    g = sg.Graph()
    x = g.input("x", (3,))
    two = g.const(2.0)
    outputs = [sg.sum(two) * x, two.max() + x, g.apply("embed", two, index=(1,), shape=(3,)) * x,
               sg.mean(two), sg.sum(sg.broadcast_to(two, (2, 2)))]  # fmt: skip
    got, _ = check(outputs, EXACT, {"x": np.array([1.0, 2.0, 3.0])})
    np.testing.assert_array_equal(got[2], [0.0, 4.0, 0.0])
    # The natural way to get there: the gradient of one element is embed(1.0) into zeros.
    m = g.input("m", (2, 3))
    [d] = sg.build_grad(m[1, 2], [m])
    got, _ = check([d, sg.build_grad(m[0, 1] * m[1, 2], [m])[0]], EXACT)
    np.testing.assert_array_equal(got[0], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_array_constants_in_every_role():
    g = sg.Graph()
    s = g.input("s")
    c = g.const(np.arange(12.0).reshape(3, 4) - 5.0)
    outputs = [c * s, sg.sum(c * s), (c @ c.T) * s, c.sum(axis=0) + s, c.max(axis=1) * s,
               c[::-1] @ c.T, sg.softmax(c * s, axis=0)]  # fmt: skip
    check(outputs, SUMMED, {"s": 1.5})


def test_scalar_inputs_of_a_tensor_graph():
    # A 0-d input stays 0-d in tensor mode (np.ascontiguousarray once made it shape (1,), and
    # the interpreter failed on embed and transpose of it).
    g = sg.Graph()
    s, x = g.input("s"), g.input("x", (3,))
    outputs = [g.apply("embed", s, index=(2,), shape=(3,)), s.T * x, s.reshape(1, 1) * x,
               sg.sum(s) + x, s, s.reshape(1, 1) @ x.reshape(1, 3), (s * 2.0 + 1.0) * x,
               (s * 2.0).reshape(1, 1) - x, sg.broadcast_to(sg.sqrt(s), (2, 3))]  # fmt: skip
    got, _ = check(outputs, EXACT, {"s": 3.0, "x": np.ones(3)})
    np.testing.assert_array_equal(got[0], [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(got[1], [3.0, 3.0, 3.0])
    assert got[4].shape == ()


# --- 4. compiled gradients -----------------------------------------------------------------------


def _of_x(f):
    """A gradient case of one operand ``x`` of shape (2, 3, 4, 5): (y, [x])."""

    def build(g):
        x = g.input("x", (2, 3, 4, 5))
        return f(g, x), [x]

    return build


def _matmul_grad(g):
    a, b = g.input("a", (3, 4)), g.input("b", (4, 5))
    return a @ b + a[:, :2] @ b[1:3], [a, b]


def _conv2d_grad(g):
    x, w = g.input("x", (2, 3, 4, 5)), g.input("w", (2, 3, 2, 2))
    return sg.conv2d(x, w, stride=(2, 1), padding=1), [x, w]


def _square_windows_summed(g, x):
    win = g.apply("windows", x, kernel_size=(2, 3), stride=(1, 2))
    return g.apply("window_sum", win * win, kernel_size=(2, 3), stride=(1, 2), shape=x.shape)


def _taken(g, x):
    # Repeated and negative constant indices, then input ones (some invalid: nan, masked).
    picked = sg.take(x, [[3, 0], [-1, 3]], axis=2)
    i = g.input("i", (3,))
    other = sg.take(x, [4, 4, 0], axis=3)[:, :, :2].reshape(2, 3, 2, 1, 3)
    return sg.take(picked, sg.sign(i) + 1.0, axis=-1) * other


def _scattered(g, x):
    s = sg.scatter_add(x * x, [1, 0, 1, 2, 1], axis=3, size=3)
    return sg.scatter_add(s, [[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, -1]], axis=1, size=2)


def _joined(g, x):
    # The same x twice (its cotangents add up) and a slice of it, along axis 2.
    return sg.concatenate([x, sg.sin(x[:, :, 1:3]), x * x], axis=2)


def _contracted(g, x):
    # x (2, 3, 4, 5) against a matrix of its own entries and a constant: three operands.
    w = x[0, 0] * 0.5
    return sg.einsum("abcd,cd,d->ba", x, w, np.linspace(-1.0, 1.0, 5))


GRAD_CASES = {
    "sum": _of_x(lambda g, x: x.sum(axis=(1, 3))),
    "mean": _of_x(lambda g, x: x.mean(axis=2, keepdims=True)),
    "amax": _of_x(lambda g, x: x.max(axis=(0, 3))),
    "matmul": _matmul_grad,
    "transpose": _of_x(lambda g, x: x.transpose(3, 1, 0, 2)),
    "reshape": _of_x(lambda g, x: x.transpose(1, 0, 2, 3).reshape(6, 20)),
    "broadcast_to": _of_x(lambda g, x: sg.broadcast_to(x[0, 0], (2, 4, 5))),
    "getitem": _of_x(lambda g, x: x[1, ::-1, 1:3, ::2]),
    "embed": _of_x(
        lambda g, x: g.apply("embed", x, index=(slice(1, None, 2),), shape=(5, 3, 4, 5))
    ),
    "logsumexp": _of_x(lambda g, x: sg.logsumexp(x, axis=(1, 2))),
    "softmax": _of_x(lambda g, x: sg.softmax(x, axis=1)),
    "conv2d": _conv2d_grad,
    "avg_pool2d": _of_x(lambda g, x: sg.avg_pool2d(x, kernel_size=2, stride=1)),
    "max_pool2d": _of_x(lambda g, x: sg.max_pool2d(x, kernel_size=(2, 3), stride=(1, 2))),
    "windows": _of_x(lambda g, x: g.apply("windows", x, kernel_size=(2, 3), stride=(1, 2))),
    "window_sum": _of_x(lambda g, x: _square_windows_summed(g, x)),
    "concatenate": _of_x(_joined),
    "einsum": _of_x(_contracted),
    "take": _of_x(_taken),
    "scatter_add": _of_x(_scattered),
}


@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_gradient_compiled_equals_interpreted(name):
    g = sg.Graph()
    y, wrt = GRAD_CASES[name](g)
    r = g.input("r", y.shape)
    loss = sg.sum(sg.tanh(y) * r)
    grads = sg.build_grad(loss, wrt)
    # Second order too: the gradient of the gradient's sum, through the same op's VJP rule.
    [dd] = sg.build_grad(sg.sum(grads[0] * grads[0]), wrt[:1])
    check([loss, y, *grads, dd], SUMMED)


def _mlp(g, batch: int, sizes: tuple[int, int, int]):
    x, y = g.input("x", (batch, sizes[0])), g.input("y", (batch, sizes[2]))
    w1, b1 = g.input("W1", sizes[:2]), g.input("b1", (sizes[1],))
    w2, b2 = g.input("W2", sizes[1:]), g.input("b2", (sizes[2],))
    logits = sg.relu(x @ w1 + b1) @ w2 + b2
    return sg.softmax_cross_entropy(logits, y), [w1, b1, w2, b2]


def _mlp_values(fn, batch: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    vals = {n: 0.3 * v for n, v in values_for(fn, seed).items()}
    vals["y"] = np.eye(classes)[np.random.default_rng(seed).integers(0, classes, batch)]
    return vals


def test_mlp_training_step():
    g = sg.Graph()
    loss, params = _mlp(g, 12, (16, 32, 8))
    grads = sg.build_grad(loss, params)
    step = [p - 0.1 * d for p, d in zip(params, grads)]
    outputs = [loss, *grads, *step]
    fn, ref = sg.compile(outputs), sg.compile(outputs, backend="numpy")
    vals = _mlp_values(fn, 12, 8, seed=4)
    got = fn(**vals)
    compare(got, ref(**vals), SUMMED)
    # Three more steps, each fed the compiled parameters: still the interpreter's values.
    for _ in range(3):
        vals.update(zip(["W1", "b1", "W2", "b2"], got[5:]))
        got = fn(**vals)
        compare(got, ref(**vals), SUMMED)
    assert np.isfinite(got[0])


def test_mlp_hvp():
    g = sg.Graph()
    loss, params = _mlp(g, 5, (4, 6, 3))
    vs = [g.input("v" + p.name, p.shape) for p in params]
    hv = sg.hvp(loss, params, vs)
    fn = sg.compile([loss, *hv])
    vals = _mlp_values(fn, 5, 3, seed=5)
    compare(fn(**vals), sg.compile([loss, *hv], backend="numpy")(**vals), SUMMED)


# --- 5. matmul through BLAS or the loop, calls, threads, text ----------------------------------


def test_matmul_calls_blas_only_when_big_and_laid_out_for_it():
    blas = blas_dgemm()
    if blas is None:
        pytest.skip("numpy's OpenBLAS dgemm is not found in this process")
    assert 40 * 50 * 60 >= BLAS_MIN_FLOPS > 8 * 8 * 8
    fn = sg.compile(big_matmul())
    assert f"call void @{blas}(" in fn.llvm_ir
    check(big_matmul(), SUMMED)
    g = sg.Graph()
    small = sg.compile([g.input("a", (8, 8)) @ g.input("b", (8, 8))])
    assert blas not in small.llvm_ir
    g = sg.Graph()
    a = g.input("a", (40, 40))
    reversed_rows = sg.compile([a[::-1] @ a[:, ::-1]])  # negative strides: no BLAS layout
    assert blas not in reversed_rows.llvm_ir
    check([a[::-1] @ a[:, ::-1]], SUMMED)


def test_einsum_calls_blas_per_batch_element_where_it_is_a_product():
    blas = blas_dgemm()
    if blas is None:
        pytest.skip("numpy's OpenBLAS dgemm is not found in this process")
    g = sg.Graph()
    chol, x = g.input("L", (3, 40, 40)), g.input("x", (30, 3, 40))
    products = [sg.einsum("kij,nkj->nki", chol, x), sg.einsum("ij,jk->ki", x[:, 0], chol[0])]
    fn = sg.compile(products)
    # One call in each product's batch loop (3 matrices) and one for the plain product.
    assert fn.llvm_ir.count(f"call void @{blas}(") == 2
    check(products, SUMMED)
    g = sg.Graph()
    x = g.input("x", (30, 3, 40))
    others = [
        sg.einsum("nkj,nkj->k", x, x),  # n in both operands, not the output: not one product
        sg.einsum("kij,nkj->nki", g.input("L", (3, 4, 4)), x[:, :, :4]),  # too small
        sg.einsum("nki,nkj->ij", x[::-1], x),  # a reversed view: no BLAS layout
    ]
    assert blas not in sg.compile(others).llvm_ir
    check(others, SUMMED)


@pytest.mark.usefixtures("no_blas")
def test_matmul_without_blas_is_the_loop():
    assert blas_dgemm() is None
    fn = sg.compile(big_matmul())
    assert "dgemm" not in fn.llvm_ir
    check(big_matmul(), SUMMED)
    for label, build, tol in _matmul_cases():
        check(build(sg.Graph()), tol, label=f"no BLAS {label}")


def test_matmul_results_do_not_depend_on_blas(monkeypatch):
    # The two paths differ only in the order of additions: within SUMMED of each other.
    with_blas = sg.compile(big_matmul())
    vals = values_for(with_blas)
    first = with_blas(**vals)
    monkeypatch.setenv("SYMGRAD_BLAS", "off")
    blas_dgemm.cache_clear()
    try:
        without = sg.compile(big_matmul())(**vals)
    finally:
        monkeypatch.delenv("SYMGRAD_BLAS")
        blas_dgemm.cache_clear()
    compare(without, first, SUMMED)


def _call_fixture():
    g = sg.Graph()
    x, w, s = g.input("x", (3, 4)), g.input("w", (4, 2)), g.input("s")
    return sg.compile([sg.tanh(x @ w) * s])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"x": np.ones((3, 5)), "w": np.ones((4, 2)), "s": 1.0}, "x"),
        ({"x": np.ones((3, 4)), "w": np.ones((2, 4)), "s": 1.0}, "w"),
        ({"x": np.ones((3, 4)), "w": np.ones((4, 2)), "s": np.ones((2, 2))}, "s"),
        ({"x": 1.0, "w": np.ones((4, 2)), "s": 1.0}, "x"),
        ({"x": np.ones((3, 4), complex), "w": np.ones((4, 2)), "s": 1.0}, "x"),
        ({"x": np.ones((3, 4), bool), "w": np.ones((4, 2)), "s": 1.0}, "x"),
        ({"x": np.ones((3, 4)), "w": "w", "s": 1.0}, "w"),
        ({"x": np.ones((3, 4)), "w": np.ones((4, 2)), "s": None}, "s"),
        ({"x": np.ones((3, 4)), "s": 1.0}, "w"),
        ({"x": np.ones((3, 4)), "w": np.ones((4, 2)), "s": 1.0, "z": 1.0}, "z"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    fn = _call_fixture()
    with pytest.raises(sg.ArgumentError, match=f"'{name}'"):
        fn(**kwargs)


def test_good_arguments_in_every_form():
    fn = _call_fixture()
    x, w = np.arange(12).reshape(4, 3).T, np.ones((4, 2), np.float32)  # ints, strided, float32
    want = fn(x=np.ascontiguousarray(x, float), w=w.astype(float), s=2.0)
    for got in (fn(x, w, 2), fn(x, w=w, s=2.0), fn(s=2.0, w=w, x=x.tolist())):
        compare(got, want, EXACT)
    with pytest.raises(sg.ArgumentError):
        fn(x, w, 2.0, 1.0)
    with pytest.raises(sg.ArgumentError, match="'x'"):
        fn(x, x=x, w=w, s=1.0)


def test_explicit_inputs_order_and_unused_inputs():
    g = sg.Graph()
    x, y = g.input("x", (4, 3)), g.input("y", (3,))
    g.input("z", (2, 2))  # an argument the outputs do not use
    outputs = [sg.exp(x) * y, sg.sum(x)]
    fn = sg.compile(outputs, inputs=["y", "z", "x"])
    ref = sg.compile(outputs, inputs=["y", "z", "x"], backend="numpy")
    assert fn.inputs == ("y", "z", "x")
    args = (np.arange(3.0), np.zeros((2, 2)), np.ones((4, 3)))
    compare(fn(*args), ref(*args), LIBM)
    with pytest.raises(sg.ArgumentError, match="'z'"):
        fn(np.arange(3.0), np.zeros((2, 3)), np.ones((4, 3)))


def test_eight_threads_get_the_serial_results():
    # Each thread has its own scratch arena: the softmax's stored stages (exp, the column sums,
    # the centered matrix) live there between loops, so a shared arena would mix threads' values.
    g = sg.Graph()
    x, w = g.input("x", (40, 60)), g.input("w", (60, 200))
    h = sg.tanh(x @ w)  # 480,000 multiply-adds: through BLAS when it is there
    centered = h - h.mean(axis=0, keepdims=True)
    outputs = [sg.sum(sg.softmax(centered, axis=0) * h), sg.logsumexp(centered * 3.0, axis=1)]
    fn = sg.compile(outputs)
    rng = np.random.default_rng(8)
    wv = rng.standard_normal((60, 200))
    xs = [rng.standard_normal((40, 60)) for _ in range(8)]
    serial = [fn(xv, wv) for xv in xs]
    start = threading.Barrier(8)
    results: list = [None] * 8

    def worker(k: int) -> None:
        start.wait()
        results[k] = [fn(xs[(k + j) % 8], wv) for j in range(16)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(8):
        for j in range(16):
            compare(results[k][j], serial[(k + j) % 8], EXACT)


def test_ir_and_asm_text():
    g = sg.Graph()
    x = g.input("x", (3, 4))
    fn = sg.compile([sg.exp(x).sum(axis=1)])
    assert "define void @sg_tensor" in fn.llvm_ir
    assert "<4 x double>" in fn.llvm_ir
    assert isinstance(fn.asm, str) and fn.asm.strip()
    assert fn.llvm_ir == sg.compile([sg.exp(x).sum(axis=1)]).llvm_ir  # deterministic text


def test_compile_options_in_tensor_mode():
    g = sg.Graph()
    x = g.input("x", (5, 6))
    outputs = [sg.softmax(x, axis=1), x.T @ x]
    want = sg.compile(outputs, backend="numpy")(x=np.eye(5, 6))
    for options in ({"opt": 0}, {"threads": 2}, {"opt": 1, "threads": None}):
        compare(sg.compile(outputs, **options)(x=np.eye(5, 6)), want, SUMMED)
    with pytest.raises(sg.ArgumentError, match="opt"):
        sg.compile(outputs, opt=3)


# --- 6. random tensor programs (hypothesis) ------------------------------------------------------

UNARY = ("tanh", "sin", "sigmoid", "relu", "abs", "neg", "softplus", "atan", "sqrt1", "log1",
         "exp_tanh")  # fmt: skip
BINARY = ("add", "sub", "mul", "max", "min", "div1", "where_gt")
SHAPES = [(3, 4), (4,), (3, 1), (2, 3, 4), (), (4, 5), (5, 4), (1, 9)]


def _unary(op: str, a):
    if op == "sqrt1":
        return sg.sqrt(1.0 + a * a)
    if op == "log1":
        return sg.log(1.0 + a * a)
    if op == "exp_tanh":
        return sg.exp(sg.tanh(a))
    return a.graph.apply(op, a)


def _binary(op: str, a, b):
    if op == "div1":
        return a / (1.0 + b * b)
    if op == "where_gt":
        return sg.where(a > b, a, b * 0.5)
    return a.graph.apply(op, a, b)


@st.composite
def tensor_programs(draw):
    """A graph and some of its nodes: elementwise ops with broadcasting, reductions over random
    axes, transposes, slices, reshapes, matmul of compatible shapes, softmax."""
    g = sg.Graph()
    n_inputs = draw(st.integers(1, 3))
    pool = [g.input(f"in{k}", draw(st.sampled_from(SHAPES))) for k in range(n_inputs)]
    if not any(e.shape for e in pool):
        pool.append(g.input("m", (3, 4)))
    for _ in range(draw(st.integers(3, 12))):
        a = draw(st.sampled_from(pool))
        kind = draw(st.sampled_from(["unary", "binary", "reduce", "transpose", "slice",
                                     "reshape", "matmul", "softmax"]))  # fmt: skip
        try:
            e = _step(draw, g, pool, a, kind)
        except sg.ShapeError:
            continue  # shapes that do not broadcast
        if e is not None:
            pool.append(e)
    # The last node built (the deepest, usually) and a few others, inputs possibly among them.
    return g, [pool[-1], *draw(st.lists(st.sampled_from(pool), max_size=3))]


def _step(draw, g, pool, a, kind):
    if kind == "unary":
        return _unary(draw(st.sampled_from(UNARY)), a)
    if kind == "binary":
        b = draw(st.sampled_from([*pool, g.const(2.0), g.const(-0.5)]))
        a, b = (a, b) if draw(st.booleans()) else (b, a)
        return _binary(draw(st.sampled_from(BINARY)), a, b)
    if not a.ndim:
        return None
    if kind == "reduce":
        axes = tuple(sorted(draw(st.sets(st.integers(0, a.ndim - 1), min_size=1))))
        method = draw(st.sampled_from(["sum", "max", "mean"]))
        return getattr(a, method)(axis=axes, keepdims=draw(st.booleans()))
    if kind == "transpose":
        return a.transpose(tuple(draw(st.permutations(range(a.ndim)))))
    if kind == "slice":
        index = []
        for n in a.shape:
            choice = draw(st.sampled_from(["int", "slice", "all"]))
            if choice == "int":
                index.append(draw(st.integers(-n, n - 1)))
            elif choice == "slice":
                start = draw(st.integers(0, n - 1))
                index.append(slice(start, None, draw(st.sampled_from([1, 2, -1, -2]))))
            else:
                index.append(slice(None))
        return a[tuple(index)]
    if kind == "reshape":
        return a.reshape(-1) if draw(st.booleans()) else a.T.reshape(a.size, 1)
    if kind == "matmul" and a.ndim == 2:
        partners = [b for b in pool if b.ndim == 2 and b.shape[0] == a.shape[1]]
        return a @ draw(st.sampled_from(partners)) if partners else a @ a.T
    if kind == "softmax":
        return sg.softmax(a, axis=draw(st.integers(0, a.ndim - 1)))
    return None


@settings(max_examples=40)
@given(tensor_programs(), st.integers(0, 2**32 - 1))
def test_random_tensor_programs(program, seed):
    _, outputs = program
    fn = sg.compile(outputs)
    vals = values_for(fn, seed, scale=1.5)
    got = fn(**vals)
    want = sg.compile(outputs, backend="numpy")(**vals)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(b)
        np.testing.assert_array_equal(a[~finite], b[~finite])
        assert np.all(np.abs(a[finite] - b[finite]) <= 1e-9 * (1.0 + np.abs(b[finite])))


def test_big_constant_arrays_are_passed_not_inlined():
    g = sg.Graph()
    x = g.input("x", shape=(20, 30))
    rng = np.random.default_rng(5)
    big, small = rng.standard_normal((20, 30)), rng.standard_normal(30)[:8]
    e = sg.sum(sg.tanh(x * big) * big) + sg.sum(g.const(small) * 2.0)
    outputs = [e, *sg.build_grad(e, [x])]
    fn = sg.compile(outputs, optimize=False)  # as written: folding would make small a scalar
    assert len(fn._native.plan.passed) == 1
    assert hex_double(float(big[3, 7])) not in fn.llvm_ir
    assert hex_double(float(small[3])) in fn.llvm_ir
    value = rng.standard_normal((20, 30))
    for got, want in zip(fn(value), sg.compile(outputs, backend="numpy")(value)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_tensor_ops_on_scalars_compile():
    # A scalar graph holding a tensor op runs through the loop writer, not the scalar kernels
    # (which have no lowering for sum/mean/amax): it once failed with "no LLVM lowering".
    g = sg.Graph()
    w = g.input("w")
    f = sg.sum(w) * 2.0 + sg.mean(w * w) + sg.max(w, axis=None)
    outputs = [f, *sg.build_grad(f, [w])]
    got = sg.compile(outputs)(3.0)
    assert [float(v) for v in got] == [18.0, 9.0]


# --- compile work grows linearly (issue 12 item 4): counted, never timed -------------------------


def _planning_work(outputs, monkeypatch) -> int:
    """Lines run in plan.py and loops.py while lowering ``outputs``, plus the elements of every
    set plan.py builds (a set's construction is one C call: lines do not show its size)."""
    import sys

    from symgrad.llvm import plan as plan_module
    from symgrad.llvm.loops import lower_tensor
    from symgrad.program import Program

    counted = (plan_module.__file__, sys.modules["symgrad.llvm.loops"].__file__)
    work = [0]

    def sized(kind):
        def build(items=()):
            items = list(items)
            work[0] += len(items)
            return kind(items)

        return build

    monkeypatch.setattr(plan_module, "set", sized(set), raising=False)
    monkeypatch.setattr(plan_module, "frozenset", sized(frozenset), raising=False)

    def trace(frame, event, arg):
        if frame.f_code.co_filename not in counted:
            return None
        if event == "line":
            work[0] += 1
        return trace

    ids = [e.id for e in outputs]
    program = Program.of(outputs[0].graph, ids)
    sys.settrace(trace)
    try:
        lower_tensor(program, tuple(outputs[0].graph.inputs), ids, lambda name: False, None)
    finally:
        sys.settrace(None)
    return work[0]


def _fused_chain(n: int) -> list:
    # One fused loop group of 2n elementwise nodes: each member once made a set of all of them.
    g = sg.Graph()
    v = g.input("v", (8,))
    x = v
    for _ in range(n):
        x = x * 1.5 + v
    return [sg.sum(x)]


def _staged_chain(n: int) -> list:
    # n reductions, each a barrier between loops: 2n steps, whose freed buffers were once
    # found by a scan of every buffer at every step.
    g = sg.Graph()
    v = g.input("v", (8,))
    for _ in range(n):
        v = sg.tanh(v * sg.sum(v))
    return [v]


@pytest.mark.parametrize("build", [_fused_chain, _staged_chain])
def test_planning_work_grows_linearly(build, monkeypatch):
    small = _planning_work(build(150), monkeypatch)
    big = _planning_work(build(300), monkeypatch)
    assert big <= 2.2 * small, (small, big)


def _long_chain(n: int) -> tuple[list, dict]:
    """An unrolled recurrence over slices of a vector (IEEE operations only), value and
    gradient: one fused group of a few thousand nodes unless cut."""
    g = sg.Graph()
    w, seq = g.input("w", (6,)), g.input("seq", (n, 6))
    h = w
    for t in range(n):
        h = h * w / (1.0 + h * h) + seq[t]
    loss = sg.sum(h * h)
    rng = np.random.default_rng(3)
    values = {"w": rng.uniform(-1, 1, 6), "seq": rng.uniform(-1, 1, (n, 6))}
    return [loss, *sg.build_grad(loss, [w, seq])], values


def test_a_long_fused_group_is_cut_into_loops_and_functions(monkeypatch):
    from symgrad.llvm import loops, plan

    monkeypatch.setattr(plan, "GROUP_MAX", 40)
    monkeypatch.setattr(loops, "PART_LINES", 300)
    outputs, values = _long_chain(60)
    fn = sg.compile(outputs, optimize=False)
    loops_written = [step for step in fn._native.plan.steps if step[1] == 1]
    assert max(len(step[2]) for step in loops_written) <= 40
    assert len(loops_written) >= 10
    parts = re.findall(r"define internal void @sg_tensor\d+", fn.llvm_ir)
    assert len(parts) >= 5
    for got, want in zip(fn(**values), sg.evaluate(outputs, **values)):
        np.testing.assert_array_equal(got, want)


def test_a_big_tensor_module_is_generated_at_level_0():
    from symgrad.llvm import jit

    small, big = "\n" * jit.LEVEL2_MAX_LINES, "\n" * (jit.LEVEL2_MAX_LINES + 1)
    assert jit.loop_target_for(small) is jit._loop_target()
    assert jit.loop_target_for(big) is jit._target()[0]


def test_a_constant_of_another_memory_order_compiles_to_its_values():
    # Constants over INLINE_CONST_SIZE elements are read by the kernel in place, in C order: a
    # transposed (Fortran-ordered) array must be stored in C order, and so must what optimize
    # folds transpose(const) into.
    rng = np.random.default_rng(11)
    g = sg.Graph()
    s, x = g.input("s", shape=(8, 10)), g.input("x", shape=(1, 10))
    a, c = rng.normal(size=(10, 8)), rng.normal(size=(10, 10))
    scaled = g.const(a.T) * s
    [grad] = sg.build_grad(sg.sum(sg.sin(x @ g.const(c))), [x])
    values = {"s": rng.normal(size=(8, 10)), "x": rng.normal(size=(1, 10))}
    want = sg.evaluate([scaled, grad], **values)
    for got, expected in zip(sg.compile([scaled, grad])(**values), want):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-14)
