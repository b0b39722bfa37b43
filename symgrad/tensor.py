"""The tensor API: functions that build tensor nodes, with their attributes as keywords.

Every function here is a thin, documented front for one registry op (``sg.sum`` -> ``sum``,
``sg.conv2d`` -> ``conv2d``) or a small composition of them (the losses, ``log_softmax``,
``min``). Shapes are checked when a node is created (``ShapeError`` naming the op, the operand
and the shapes), never when it runs. ``@`` on vectors reshapes them to matrices around the one
``matmul`` op, as numpy does.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from symgrad.errors import ArgumentError, GraphError, ShapeError
from symgrad.graph import Expr, index_operand, matmul  # a @ b and x[i] live with Expr

_NONE = object()


def _graph_of(op: str, *operands):
    for v in operands:
        if isinstance(v, Expr):
            return v.graph
    raise GraphError(f"{op}: needs at least one Expr operand (numbers alone have no graph)")


def _as_expr(op: str, x) -> Expr:
    if isinstance(x, Expr):
        return x
    raise GraphError(f"{op}: operand is a {type(x).__name__}, not an Expr")


def _atomic(fn):
    """For a function that builds several nodes: if it fails part-way (a ShapeError after the
    reshape of a vector or the constant of an array operand), the graph is left as it was."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        graph = next((v.graph for v in args if isinstance(v, Expr)), None)
        if graph is None:
            return fn(*args, **kwargs)
        with graph.atomic():
            return fn(*args, **kwargs)

    return wrapper


def sum(x, axis=None, keepdims=False) -> Expr:  # noqa: A001 (numpy's name)
    """Sum over all elements or over ``axis`` (an int or a tuple); ``keepdims`` as numpy.

    >>> from symgrad.graph import Graph
    >>> x = Graph().input("x", shape=(2, 3))
    >>> sum(x).shape, sum(x, axis=0).shape, sum(x, axis=-1, keepdims=True).shape
    ((), (3,), (2, 1))
    """
    return _as_expr("sum", x).graph.apply("sum", x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False) -> Expr:
    """Mean over all elements or over ``axis``."""
    return _as_expr("mean", x).graph.apply("mean", x, axis=axis, keepdims=keepdims)


def max(a, b=_NONE, *, axis=None, keepdims=False) -> Expr:  # noqa: A001
    """``max(a, b)``: elementwise maximum (ties split the adjoint 1/2-1/2). ``max(x, axis=...)``:
    the largest element over all elements or ``axis`` (ties share the adjoint evenly)."""
    if b is not _NONE:
        _no_reduction("max", axis, keepdims)
        return _graph_of("max", a, b).apply("max", a, b)
    return _as_expr("max", a).graph.apply("amax", a, axis=axis, keepdims=keepdims)


@_atomic
def min(a, b=_NONE, *, axis=None, keepdims=False) -> Expr:  # noqa: A001
    """``min(a, b)`` elementwise, or the smallest element over ``axis`` (``-max(-x)``)."""
    if b is not _NONE:
        _no_reduction("min", axis, keepdims)
        return _graph_of("min", a, b).apply("min", a, b)
    a = _as_expr("min", a)
    return -a.graph.apply("amax", -a, axis=axis, keepdims=keepdims)


def _no_reduction(op: str, axis, keepdims) -> None:
    if axis is not None or keepdims:
        raise GraphError(f"{op}(a, b) is elementwise: axis and keepdims apply to {op}(x) only")


def transpose(x, axes=None) -> Expr:
    """Axes permuted (reversed by default, as ``x.T``)."""
    return _as_expr("transpose", x).graph.apply("transpose", x, axes=axes)


def reshape(x, shape) -> Expr:
    """The same elements in C order with a new ``shape`` (one entry may be -1)."""
    return _as_expr("reshape", x).graph.apply("reshape", x, shape=shape)


def broadcast_to(x, shape) -> Expr:
    """``x`` repeated to ``shape`` by numpy's broadcasting rules."""
    return _as_expr("broadcast_to", x).graph.apply("broadcast_to", x, shape=shape)


def logsumexp(x, axis=None, keepdims=False) -> Expr:
    """``log(sum(exp(x)))`` computed stably (shifted by the max): finite at logits of ±1000."""
    return _as_expr("logsumexp", x).graph.apply("logsumexp", x, axis=axis, keepdims=keepdims)


def softmax(x, axis=-1) -> Expr:
    """``exp(x) / sum(exp(x))`` along ``axis``, shifted by the max so nothing overflows."""
    return _as_expr("softmax", x).graph.apply("softmax", x, axis=axis)


@_atomic
def log_softmax(x, axis=-1) -> Expr:
    """``x - logsumexp(x, axis, keepdims=True)``: the stable log of ``softmax``."""
    x = _as_expr("log_softmax", x)
    return x - logsumexp(x, axis=axis, keepdims=True)


def conv2d(x, w, stride=1, padding=0) -> Expr:
    """2-d cross-correlation (what deep-learning libraries call convolution), NCHW.

    ``x``: N x C x H x W, ``w``: O x C x kH x kW, zero ``padding`` and ``stride`` an int or a pair;
    the result is N x O x H' x W' with H' = (H + 2 padding - kH) // stride + 1.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); x, w = g.input("x", shape=(2, 3, 8, 8)), g.input("w", shape=(4, 3, 3, 3))
    >>> conv2d(x, w).shape, conv2d(x, w, stride=2, padding=1).shape
    ((2, 4, 6, 6), (2, 4, 4, 4))
    """
    return _graph_of("conv2d", x, w).apply("conv2d", x, w, stride=stride, padding=padding)


def avg_pool2d(x, kernel_size=2, stride=None) -> Expr:
    """Mean over each ``kernel_size`` window of the last two axes (``stride`` = kernel default)."""
    return _as_expr("avg_pool2d", x).graph.apply(
        "avg_pool2d", x, kernel_size=kernel_size, stride=stride
    )


def max_pool2d(x, kernel_size=2, stride=None) -> Expr:
    """Max over each ``kernel_size`` window of the last two axes (``stride`` = kernel default)."""
    return _as_expr("max_pool2d", x).graph.apply(
        "max_pool2d", x, kernel_size=kernel_size, stride=stride
    )


# Losses: small compositions, each the mean over every element (or every row) of the batch.


@_atomic
def _same_graph(op: str, exprs) -> list[Expr]:
    """``exprs`` as a non-empty list of Exprs of one graph (ArgumentError, GraphError else)."""
    if not isinstance(exprs, (list, tuple)) or not exprs:
        raise ArgumentError(f"{op}: exprs must be a non-empty list of Exprs")
    items = [_as_expr(f"{op}: exprs[{k}]", e) for k, e in enumerate(exprs)]
    for k, e in enumerate(items[1:], 1):
        if e.graph is not items[0].graph:
            raise GraphError(f"{op}: exprs[{k}] belongs to another graph than exprs[0]")
    return items


def _axis(op: str, axis, ndim: int) -> int:
    """``axis`` of ``ndim`` dimensions, negative counted from the end (ArgumentError else)."""
    if type(axis) is not int or not -ndim <= axis < ndim:
        raise ArgumentError(f"{op}: axis must be an int in [{-ndim}, {ndim - 1}], got {axis!r}")
    return axis % ndim


def stack(exprs, axis=0) -> Expr:
    """The ``Expr``s of ``exprs`` (all of one shape and graph) stacked along a new ``axis``, as
    ``numpy.stack``: one ``concatenate`` node of the items given a new axis of 1 (a reshape,
    free), so each item is copied once into its slab of the result.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); a, b = g.input("a", shape=(3,)), g.input("b", shape=(3,))
    >>> stack([a, b]).shape, stack([a, b], axis=1).shape, stack([g.input("c")] * 2).shape
    ((2, 3), (3, 2), (2,))
    """
    items = _same_graph("stack", exprs)
    graph, shape = items[0].graph, items[0].shape
    for k, e in enumerate(items[1:], 1):
        if e.shape != shape:
            raise ShapeError(f"stack: exprs[{k}] has shape {e.shape} but exprs[0] has {shape}")
    axis = _axis("stack", axis, len(shape) + 1)
    one = (*shape[:axis], 1, *shape[axis:])
    with graph.atomic():
        slabs = [graph.apply("reshape", e, shape=one) for e in items]
        if len(items) == 1:
            return slabs[0]
        return graph.apply("concatenate", *slabs, axis=axis)


def concatenate(exprs, axis=0) -> Expr:
    """The ``Expr``s of ``exprs`` joined along an existing ``axis``, as ``numpy.concatenate``:
    one ``concatenate`` node, each operand copied once into its slab of the result.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); a, b = g.input("a", shape=(2, 3)), g.input("b", shape=(4, 3))
    >>> concatenate([a, b]).shape, concatenate([a, a], axis=1).shape
    ((6, 3), (2, 6))
    """
    items = _same_graph("concatenate", exprs)
    graph, shape = items[0].graph, items[0].shape
    if not shape:
        raise ShapeError("concatenate: exprs[0] is a scalar: stack scalars instead")
    axis = _axis("concatenate", axis, len(shape))
    for k, e in enumerate(items[1:], 1):
        if len(e.shape) != len(shape) or any(
            n != m for d, (n, m) in enumerate(zip(e.shape, shape)) if d != axis
        ):
            raise ShapeError(
                f"concatenate: exprs[{k}] has shape {e.shape}, which does not join exprs[0]'s "
                f"{shape} along axis {axis}"
            )
    if len(items) == 1:
        return items[0]
    return graph.apply("concatenate", *items, axis=axis)


@_atomic
def cross(a, b) -> Expr:
    """The cross product of two 3-vectors (the last axis of each, which must be 3; the others
    broadcast), as ``numpy.cross``.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); u, v = g.input("u", shape=(3,)), g.input("v", shape=(5, 3))
    >>> cross(u, v).shape
    (5, 3)
    """
    a, b = _as_expr("cross", a), _as_expr("cross", b)
    if a.graph is not b.graph:
        raise GraphError("cross: b belongs to another graph than a")
    for name, x in (("a", a), ("b", b)):
        if not x.shape or x.shape[-1] != 3:
            raise ShapeError(f"cross: {name} has shape {x.shape}: its last axis must be 3")
    ax, ay, az = (a[..., k] for k in range(3))
    bx, by, bz = (b[..., k] for k in range(3))
    parts = [ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx]
    shape = parts[0].shape
    parts = [p if p.shape == shape else broadcast_to(p, shape) for p in parts]
    return stack(parts, axis=-1)


@_atomic
def norm(x, axis=None, keepdims=False) -> Expr:
    """The Euclidean norm over all elements or over ``axis``: ``sqrt(sum(x * x))``. Its
    gradient at 0 is nan (0/0), as ``sqrt``'s is.

    >>> from symgrad.graph import Graph
    >>> x = Graph().input("x", shape=(4, 3))
    >>> norm(x).shape, norm(x, axis=1).shape
    ((), (4,))
    """
    x = _as_expr("norm", x)
    return x.graph.apply("sqrt", sum(x * x, axis=axis, keepdims=keepdims))


def _triangle(op: str, x, k, lower: bool) -> Expr:
    x = _as_expr(op, x)
    if len(x.shape) < 2:
        raise ShapeError(f"{op}: x has shape {x.shape}, not a matrix (or a stack of them)")
    if type(k) is not int:
        raise ArgumentError(f"{op}: k must be an int, got {k!r}")
    rows, cols = x.shape[-2:]
    ones = np.ones((rows, cols))
    mask = np.tril(ones, k) if lower else np.triu(ones, k)
    return x * x.graph.const(mask)


def tril(x, k=0) -> Expr:
    """``x`` with the entries above the ``k``-th diagonal set to 0, as ``numpy.tril`` (the last
    two axes; a constant 0/1 mask, so entries above get no gradient)."""
    return _triangle("tril", x, k, lower=True)


def triu(x, k=0) -> Expr:
    """``x`` with the entries below the ``k``-th diagonal set to 0, as ``numpy.triu``."""
    return _triangle("triu", x, k, lower=False)


@_atomic
def fill_tril(v, k=0) -> Expr:
    """The entries of ``v`` (its last axis) placed row by row in the lower triangle of a square
    matrix, zeros elsewhere: the inverse of ``m[numpy.tril_indices(n, k)]``. ``k=0`` fills the
    diagonal too (``n(n+1)/2`` entries), ``k=-1`` only below it (``n(n-1)/2``). Leading axes
    are kept: ``v`` of shape (..., m) gives (..., n, n). One take of ``v`` with a zero appended
    (the upper triangle reads the zero), so its adjoint gathers the triangle back.

    >>> from symgrad.graph import Graph
    >>> g = Graph()
    >>> fill_tril(g.input("v", shape=(6,))).shape, fill_tril(g.input("w", shape=(5, 3)), -1).shape
    ((3, 3), (5, 3, 3))
    """
    v = _as_expr("fill_tril", v)
    if k not in (0, -1) or type(k) is not int:
        raise ArgumentError(f"fill_tril: k must be 0 or -1, got {k!r}")
    if not v.shape:
        raise ShapeError("fill_tril: v is a scalar, not a vector of triangle entries")
    m = v.shape[-1]
    n = next((n for n in range(1, m + 2) if n * (n + 1) // 2 + k * n == m), None)
    if n is None:
        what = "n(n+1)/2" if k == 0 else "n(n-1)/2"
        raise ShapeError(f"fill_tril: v has {m} entries on its last axis, not {what} for any n")
    rows, cols = np.tril_indices(n, k)
    where = np.full((n, n), m, dtype=np.int64)  # m: the zero appended below
    where[rows, cols] = np.arange(m)
    zero = v.graph.apply("broadcast_to", v.graph.const(0.0), shape=(*v.shape[:-1], 1))
    padded = v.graph.apply("concatenate", v, zero, axis=v.ndim - 1)
    return take(padded, where.astype(np.float64), axis=v.ndim - 1)


def _small_square(op: str, a) -> tuple[Expr, int]:
    a = _as_expr(op, a)
    if len(a.shape) < 2 or a.shape[-1] != a.shape[-2] or a.shape[-1] not in (1, 2, 3):
        raise ShapeError(
            f"{op}: a has shape {a.shape}: closed forms are for 1x1, 2x2 and 3x3 matrices "
            "(the last two axes; leading axes are a batch)"
        )
    return a, a.shape[-1]


def _entries(a: Expr, n: int) -> list[list[Expr]]:
    return [[a[..., i, j] for j in range(n)] for i in range(n)]


def _cofactors(m: list[list[Expr]], n: int) -> list[list[Expr]]:
    """C[i][j] = (-1)^(i+j) times the minor of m without row i and column j."""
    if n == 1:
        return [[m[0][0].graph.const(1.0)]]
    if n == 2:
        return [[m[1][1], -m[1][0]], [-m[0][1], m[0][0]]]
    out = []
    for i in range(3):
        r1, r2 = [r for r in range(3) if r != i]
        row = []
        for j in range(3):
            c1, c2 = [c for c in range(3) if c != j]
            minor = m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
            row.append(minor if (i + j) % 2 == 0 else -minor)
        out.append(row)
    return out


@_atomic
def det(a) -> Expr:
    """The determinant of a 1x1, 2x2 or 3x3 matrix (or of each of a batch: the last two
    axes), in closed form (cofactor expansion along the first row)."""
    a, n = _small_square("det", a)
    m = _entries(a, n)
    if n == 1:
        return m[0][0]
    c = _cofactors(m, n)
    total = m[0][0] * c[0][0]
    for j in range(1, n):
        total = total + m[0][j] * c[0][j]
    return total


@_atomic
def inv(a) -> Expr:
    """The inverse of a 1x1, 2x2 or 3x3 matrix (or of each of a batch), in closed form: the
    adjugate over the determinant (no pivoting: ill-conditioned matrices lose accuracy as the
    formula does; a singular one gives inf or nan)."""
    a, n = _small_square("inv", a)
    m = _entries(a, n)
    c = _cofactors(m, n)
    d = det(a)
    rows = [stack([c[j][i] / d for j in range(n)], axis=-1) for i in range(n)]
    return stack(rows, axis=-2)


@_atomic
def solve(a, b) -> Expr:
    """x with a @ x = b for a 1x1, 2x2 or 3x3 matrix ``a`` (or a batch) and a vector ``b`` of
    its size (or a batch), as ``inv(a) @ b`` written elementwise."""
    a, n = _small_square("solve", a)
    b = _as_expr("solve", b)
    if b.graph is not a.graph:
        raise GraphError("solve: b belongs to another graph than a")
    if not b.shape or b.shape[-1] != n:
        raise ShapeError(f"solve: b has shape {b.shape}: its last axis must be {n}, as a's")
    return sum(inv(a) * reshape(b, (*b.shape[:-1], 1, n)), axis=-1)


def einsum(spec, *operands) -> Expr:
    """A sum of products over named axes, as ``numpy.einsum``: ``"ij,jk->ik"`` is a matrix
    product, ``"bij,bjk->bik"`` a batched one, ``"kij,nkj->nki"`` each of n points times each of
    K matrices. Without ``->`` the output is the letters used once, sorted (numpy's rule). Each
    letter is one axis of one length in every operand; '...', a letter repeated within one
    operand (a diagonal) and broadcasting of length-1 axes are not supported. Operands are
    ``Expr``s or arrays (constants); one node, compiled as one loop nest over every letter (the
    output's last letter innermost, on vectors), differentiated by einsums.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); a, b = g.input("a", shape=(5, 2, 3)), g.input("b", shape=(5, 3, 4))
    >>> einsum("bij,bjk->bik", a, b).shape, einsum("bij->", a).shape, einsum("bij,bjk", a, b).shape
    ((5, 2, 4), (), (2, 4))
    """
    if type(spec) is not str:
        raise ShapeError(
            f"einsum: spec must be a str such as 'ij,jk->ik', got {type(spec).__name__}"
        )
    graph = _graph_of("einsum", *operands)
    with graph.atomic():
        exprs = [e if isinstance(e, Expr) else graph.const(e) for e in operands]
        for k, e in enumerate(exprs):
            if e.graph is not graph:
                raise GraphError(f"einsum: operand {k} belongs to another graph")
        return graph.apply("einsum", *exprs, spec=spec)


def take(x, indices, axis=0) -> Expr:
    """The elements of ``x`` at ``indices`` along ``axis``, as ``numpy.take``: the result has
    shape ``x.shape[:axis] + indices.shape + x.shape[axis+1:]``. ``indices`` is an int, an array
    of ints (checked here) or an ``Expr`` holding integers (a graph input: an index that is not
    an integer in [-n, n) gives nan, never a read outside ``x``). Its adjoint is
    ``scatter_add``; there is no derivative in the indices.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); x = g.input("x", shape=(4, 3))
    >>> take(x, [3, 0, 3]).shape, take(x, [[0, 1]], axis=1).shape, take(x, g.input("i")).shape
    ((3, 3), (4, 1, 2), (3,))
    """
    x = _as_expr("take", x)
    if not x.shape:
        raise ShapeError("take: x is a scalar: there is no axis to take along")
    axis = _axis("take", axis, x.ndim)
    with x.graph.atomic():
        idx = index_operand("take", x.graph, indices, x.shape[axis])
        return x.graph.apply("take", x, idx, axis=axis)


def scatter_add(values, indices, axis=0, size=None) -> Expr:
    """Zeros with ``size`` elements along ``axis``, and ``values`` added at ``indices`` there
    (repeated indices add up): the adjoint of ``take``, as ``numpy.add.at`` into zeros.
    ``values`` has shape ``lead + indices.shape + trail`` with ``len(lead) == axis``; the result
    ``lead + (size,) + trail``. Indices as in ``take`` (an invalid one adds nothing).

    >>> from symgrad.graph import Graph
    >>> g = Graph(); v = g.input("v", shape=(2, 3))
    >>> scatter_add(v, [4, 4], size=5).shape, scatter_add(v, [0, 1, 0], axis=1, size=2).shape
    ((5, 3), (2, 2))
    """
    v = _as_expr("scatter_add", values)
    if type(size) is not int or size < 1:
        raise ShapeError(f"scatter_add: size must be a positive int, got {size!r}")
    with v.graph.atomic():
        idx = index_operand("scatter_add", v.graph, indices, size)
        return v.graph.apply("scatter_add", v, idx, axis=axis, size=size)


@_atomic
def multigammaln(a, d) -> Expr:
    """The multivariate log-gamma function, elementwise in ``a`` (``scipy.special.multigammaln``):
    ``log Γ_d(a) = d(d-1)/4 log(π) + Σ_{j=1..d} lgamma(a + (1 - j)/2)``, ``d`` a positive int;
    finite for ``a > (d - 1)/2``. Its derivative is ``Σ_j digamma(a + (1 - j)/2)``.

    >>> from symgrad.graph import Graph
    >>> multigammaln(Graph().input("a", shape=(3,)), 2).shape
    (3,)
    """
    a = _as_expr("multigammaln", a)
    if type(d) is not int or d < 1:
        raise ArgumentError(f"multigammaln: d must be a positive int, got {d!r}")
    out = a.graph.apply("lgamma", a)
    for j in range(2, d + 1):
        out = out + a.graph.apply("lgamma", a - (j - 1) / 2)
    if d > 1:
        out = out + d * (d - 1) / 4 * math.log(math.pi)
    return out


def mse(prediction, target) -> Expr:
    """Mean squared error ``mean((prediction - target)**2)``."""
    d = prediction - target
    return mean(d * d)


@_atomic
def binary_cross_entropy(p, y) -> Expr:
    """``mean(-(y log p + (1 - y) log(1 - p)))`` for probabilities ``p`` in (0, 1)."""
    from symgrad.graph import OP_FUNCTIONS as FUNCTIONS

    log = FUNCTIONS["log"]
    return mean(-(y * log(p) + (1 - y) * FUNCTIONS["log1p"](-p)))


@_atomic
def binary_cross_entropy_with_logits(z, y) -> Expr:
    """Binary cross-entropy of ``sigmoid(z)``, as ``mean(softplus(z) - y z)``: finite for any z."""
    from symgrad.graph import OP_FUNCTIONS as FUNCTIONS

    return mean(FUNCTIONS["softplus"](z) - y * z)


@_atomic
def softmax_cross_entropy(logits, labels, axis=-1) -> Expr:
    """Mean over rows of ``-sum(labels * log_softmax(logits), axis)``; ``labels`` one-hot or
    probabilities of the same shape as ``logits``."""
    return mean(-sum(labels * log_softmax(logits, axis=axis), axis=axis))


TENSOR_FUNCTIONS = {
    "matmul": matmul,
    "sum": sum,
    "mean": mean,
    "max": max,
    "min": min,
    "transpose": transpose,
    "reshape": reshape,
    "broadcast_to": broadcast_to,
    "logsumexp": logsumexp,
    "softmax": softmax,
    "log_softmax": log_softmax,
    "conv2d": conv2d,
    "avg_pool2d": avg_pool2d,
    "max_pool2d": max_pool2d,
    "mse": mse,
    "binary_cross_entropy": binary_cross_entropy,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "softmax_cross_entropy": softmax_cross_entropy,
    "take": take,
    "scatter_add": scatter_add,
    "cross": cross,
    "norm": norm,
    "det": det,
    "inv": inv,
    "solve": solve,
}
