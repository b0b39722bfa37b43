"""Compiled sparse Jacobians and Hessians: one compressed sweep per colour, as graph nodes.

``sparse_jacobian(ys, wrt)`` reads the structure off the graph (``sparsity.py``), colours the
columns (forward mode: one ``jvp`` per colour, seeded with the colour's columns) or the rows
(reverse mode: one vector-Jacobian product per colour), whichever needs fewer sweeps, builds
the sweeps in a copy of the graph and compiles them into one function. ``sparse_hessian`` does
the same with Hessian-vector products, forward over reverse (the tangent of the gradient along
the colour's columns), over a star colouring of the Hessian's columns. Each entry is read
straight from one sweep: for a Jacobian no two columns (rows) of a colour share a row (column);
for a Hessian, each entry is alone of its colour in its row or, by symmetry, in its column. So
nothing is solved for.

The result is a ``SparseDerivative``: called like the ``CompiledFunction`` of ``ys``, it returns
a ``scipy.sparse.csr_array`` of the fixed structure (entries that happen to be zero at this
point are kept); ``.values(...)`` returns only the data, in the structure's order (the
IPOPT/pyoptsparse convention, and for a batch of points of a scalar function, one row per
point); ``.rows``, ``.cols``, ``.colors``, ``.shape``, ``.nnz``, ``.mode``.
"""

from __future__ import annotations

import math

import numpy as np

from symgrad.compile import _reachable_inputs
from symgrad.compile import compile as compile_outputs
from symgrad.errors import ArgumentError, GradError
from symgrad.forward import jvp
from symgrad.grad import vjp
from symgrad.graph import Expr
from symgrad.sparsity import (
    _checked,
    _scipy_sparse,
    color_columns,
    csr_rows,
    dependencies,
    expanded_copy,
    gradient_copy,
    hessian_pattern,
    recovery,
    star_color,
)


class SparseDerivative:
    """A compiled sparse Jacobian or Hessian of fixed structure (see the module docstring)."""

    def __init__(self, compiled, pattern, positions: np.ndarray, colors: int, mode: str, names):
        self._fn, self._one_block = compiled
        self._names = tuple(names)
        self.shape = pattern.shape
        self._indptr, self._indices = pattern.indptr.copy(), pattern.indices.copy()
        self.rows = csr_rows(pattern)
        self.cols = self._indices.copy()
        self.nnz = len(self.cols)
        self.colors = colors
        self.mode = mode
        self._positions = positions  # entry k is the sweeps' flat output at positions[k]

    @property
    def pattern(self):
        """The structure, a boolean csr_array."""
        data = np.ones(self.nnz, dtype=bool)
        return _scipy_sparse().csr_array((data, self._indices, self._indptr), shape=self.shape)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The argument names, in order (those of the graph as written)."""
        return self._names

    def values(self, /, *args, **kwargs) -> np.ndarray:
        """The nonzero entries' values at a point, in the order of ``rows`` and ``cols``."""
        if self._fn is None:  # no entry: nothing to compute
            return np.zeros(0)
        parts = self._fn(*args, **kwargs)
        # Scalar sweeps come as one array (batch shape + (outputs,)), tensors one per output.
        block = parts[0] if self._one_block else np.concatenate([np.ravel(p) for p in parts])
        return block[..., self._positions]

    def __call__(self, /, *args, **kwargs):
        data = self.values(*args, **kwargs)
        if data.ndim != 1:
            raise ArgumentError(
                "a sparse derivative is a matrix at one point: call .values(...) for a batch"
            )
        sparse = _scipy_sparse()
        return sparse.csr_array((data, self._indices, self._indptr), shape=self.shape)

    def __repr__(self) -> str:
        return (
            f"SparseDerivative(shape={self.shape}, nnz={self.nnz}, colors={self.colors}, "
            f"mode={self.mode!r}, inputs={self.inputs})"
        )


def sparse_jacobian(ys, wrt, mode: str = "auto", **options) -> SparseDerivative:
    """The Jacobian of ``ys`` (Exprs, scalars or tensors) with respect to ``wrt`` as a compiled
    sparse matrix: one row per output element, one column per wrt element (each flattened in C
    order). ``mode`` is ``"forward"`` (columns coloured), ``"reverse"`` (rows coloured) or
    ``"auto"`` (fewer colours; forward on a tie). ``options`` go to ``sg.compile``.

    >>> import symgrad as sg
    >>> g = sg.Graph(); x = g.input("x", shape=(4,))
    >>> J = sparse_jacobian(x[1:] * x[:-1], [x])
    >>> J.shape, J.nnz, J.colors
    ((3, 4), 6, 2)
    >>> J(x=[1.0, 2.0, 3.0, 4.0]).toarray().tolist()
    [[2.0, 1.0, 0.0, 0.0], [0.0, 3.0, 2.0, 0.0], [0.0, 0.0, 4.0, 3.0]]
    """
    if mode not in ("auto", "forward", "reverse"):
        raise GradError(
            f"sparse_jacobian: mode must be 'auto', 'forward' or 'reverse', got {mode!r}"
        )
    names = _input_shapes(*_checked(ys, wrt, "sparse_jacobian"))
    ys, wrt = expanded_copy(ys, wrt, "sparse_jacobian")
    pattern = dependencies(ys, wrt)
    mode, colors = _jacobian_colors(pattern, mode)
    m, n = pattern.shape
    if mode == "forward":
        sweeps = [_tangents(ys, wrt, colors == c) for c in range(_count(colors))]
        positions = colors[pattern.indices] * m + csr_rows(pattern)
    else:
        sweeps = [_cotangents(ys, wrt, colors == c) for c in range(_count(colors))]
        positions = colors[csr_rows(pattern)] * n + pattern.indices
    compiled = _compiled(sweeps, names, options)
    return SparseDerivative(compiled, pattern, positions, _count(colors), mode, names)


def sparse_hessian(y, wrt, lower: bool = False, **options) -> SparseDerivative:
    """The Hessian of the scalar ``y`` with respect to ``wrt`` as a compiled sparse matrix (one
    row and column per wrt element), by forward-over-reverse products, one per colour of its
    columns. ``lower=True`` keeps the lower triangle only (row >= column), as IPOPT takes it.

    >>> import symgrad as sg
    >>> g = sg.Graph(); x = g.input("x", shape=(5,))
    >>> H = sparse_hessian(sg.sum((x[1:] - x[:-1] ** 2) ** 2), [x])
    >>> H.nnz, H.colors
    (13, 3)
    """
    if type(lower) is not bool:
        raise ArgumentError(f"sparse_hessian: lower must be True or False, got {lower!r}")
    grads, wrt_copy = gradient_copy(y, wrt, "sparse_hessian")
    names = _input_shapes(*_checked([y], wrt, "sparse_hessian"))
    pattern = hessian_pattern(grads, wrt_copy)
    colors, positions = _hessian_colors(pattern)
    if lower:
        keep = csr_rows(pattern) >= pattern.indices  # CSR order of the triangle: a subsequence
        positions = positions[keep]
        sparse = _scipy_sparse()
        pattern = sparse.csr_array(sparse.tril(pattern), dtype=bool)
        pattern.sort_indices()
    sweeps = [_tangents(grads, wrt_copy, colors == c) for c in range(_count(colors))]
    compiled = _compiled(sweeps, names, options)
    return SparseDerivative(
        compiled, pattern, positions, _count(colors), "forward-over-reverse", names
    )


def _jacobian_colors(pattern, mode: str) -> tuple[str, np.ndarray]:
    """The mode and the colours of the columns (forward) or rows (reverse). ``"auto"`` colours
    the rows too only if they might need fewer colours than the columns took: rows need at
    least as many colours as the fullest column has entries. No entry: no colour, no sweep."""
    if pattern.nnz == 0:
        side = pattern.shape[0] if mode == "reverse" else pattern.shape[1]
        return ("forward" if mode == "auto" else mode), np.full(side, -1, np.int64)
    if mode == "reverse":
        return mode, color_columns(pattern.T)
    by_column = color_columns(pattern)
    if mode == "forward":
        return mode, by_column
    fullest = int(np.diff(pattern.tocsc().indptr).max(initial=0))
    if _count(by_column) <= fullest:
        return "forward", by_column
    by_row = color_columns(pattern.T)
    if _count(by_column) <= _count(by_row):
        return "forward", by_column
    return "reverse", by_row


def _hessian_colors(pattern) -> tuple[np.ndarray, np.ndarray]:
    """Colours of the Hessian's columns and where each entry is read: a star colouring (fewer
    colours; an entry read from its row or, mirrored, from its column), else distance-2. No
    entry: no colour, no sweep."""
    if pattern.nnz == 0:
        return np.full(pattern.shape[0], -1, np.int64), np.zeros(0, np.int64)
    colors = star_color(pattern)
    if colors is not None:
        positions = recovery(pattern, colors)
        if positions is not None:
            return colors, positions
    colors = color_columns(pattern)
    return colors, colors[pattern.indices] * pattern.shape[0] + csr_rows(pattern)


def _count(colors: np.ndarray) -> int:
    return int(colors.max()) + 1 if len(colors) else 0


def _input_shapes(ys: list[Expr], wrt: list[Expr]) -> dict[str, tuple[int, ...]]:
    """The arguments: the inputs ``ys`` reach in their graph as written and the inputs among
    ``wrt`` (a column the outputs do not read is still a column, of zeros), in creation order,
    with their shapes."""
    graph = ys[0].graph
    names = set(_reachable_inputs(graph, ys)) | {w.name for w in wrt if w.op == "input"}
    return {name: e.shape for name, e in graph.inputs.items() if name in names}


def _split(selected: np.ndarray, exprs: list[Expr]) -> list[np.ndarray]:
    """``selected`` (one flag per element of ``exprs`` together) as one array per Expr."""
    out, start = [], 0
    for e in exprs:
        size = math.prod(e.shape)
        out.append(selected[start : start + size].reshape(e.shape).astype(float))
        start += size
    return out


def _tangents(ys: list[Expr], wrt: list[Expr], columns: np.ndarray) -> list[Expr]:
    """The tangents of ``ys`` along the seed that is 1 on ``columns``: one sweep."""
    seeds = _split(columns, wrt)
    used = [k for k, s in enumerate(seeds) if s.any()]
    seed = [float(seeds[k]) if not wrt[k].shape else seeds[k] for k in used]
    return jvp(ys, [wrt[k] for k in used], seed)


def _cotangents(ys: list[Expr], wrt: list[Expr], rows: np.ndarray) -> list[Expr]:
    """The vector-Jacobian product of ``ys`` with the cotangent 1 on ``rows``: one sweep."""
    graph = ys[0].graph
    seeds = [graph.const(float(s) if not y.shape else s) for s, y in zip(_split(rows, ys), ys)]
    return vjp(ys, seeds, wrt)


def _compiled(sweeps: list[list[Expr]], shapes: dict[str, tuple[int, ...]], options: dict):
    """One function of every sweep's outputs, flattened in order, and whether it returns them
    as one array (a list output, when they are all scalars) or one array per output."""
    flat = [e for sweep in sweeps for e in sweep]
    if not flat:
        return None, True
    graph = flat[0].graph
    present = graph.inputs
    for name, shape in shapes.items():  # an input the derivative does not read is still one
        if name not in present:
            graph.input(name, shape=shape)
    one_block = all(not e.shape for e in flat)
    fn = compile_outputs([flat] if one_block else flat, inputs=list(shapes), **options)
    return fn, one_block
