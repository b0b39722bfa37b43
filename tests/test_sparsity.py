"""Structural sparsity off the graph, colourings, and compiled sparse Jacobians and Hessians
(issue 13 items 3 and 4)."""

from __future__ import annotations

import numpy as np
import pytest

import symgrad as sg
from symgrad.ops import OPS
from symgrad.sparsity import color_columns
from tests.test_forward import _case
from tests.toolbox import DIFF_OPS, FLAT_OPS, TENSOR_OPS, snapshot


def _dense_jacobian(ys, wrt, values) -> np.ndarray:
    """The Jacobian as numbers (sg.jacobian, evaluated), one row per output element."""
    J = sg.jacobian(ys, wrt, mode="reverse")
    rows = []
    for y, row in zip(ys, J):
        got = sg.evaluate(row, **values)
        rows.append(np.hstack([np.reshape(b, (max(y.size, 1), -1)) for b in got]))
    return np.vstack(rows)


# Ops whose rule is exact: at a random point every structural entry is a nonzero number.
EXACT = sorted(n for n in TENSOR_OPS if OPS[n].pattern is not None and n != "amax")


@pytest.mark.parametrize("name", DIFF_OPS + FLAT_OPS + TENSOR_OPS)
def test_every_op_pattern_covers_its_derivative(name):
    rng = np.random.default_rng(3)
    g, xs, y, values = _case(name, rng)
    before = snapshot(g)
    pattern = sg.jacobian_sparsity([y], xs).toarray()
    assert snapshot(g) == before  # read off a copy: the graph is unchanged
    numbers = _dense_jacobian([y], xs, values)
    assert pattern.shape == numbers.shape
    assert not np.any((numbers != 0) & ~pattern), "a nonzero derivative outside the pattern"
    if name in EXACT:
        np.testing.assert_array_equal(pattern, numbers != 0)
    if name in FLAT_OPS:
        assert not pattern.any()


@pytest.mark.parametrize("name", ["add", "mul", "atan2", "sin"])
def test_elementwise_ops_are_diagonal_as_broadcast(name):
    g = sg.Graph()
    shapes = [(2, 3), (3,)][: OPS[name].arity]
    xs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)]
    pattern = sg.jacobian_sparsity(g.apply(name, *xs), xs).toarray()
    np.testing.assert_array_equal(pattern[:, :6], np.eye(6, dtype=bool))
    if len(xs) == 2:  # row r reads element r % 3 of the broadcast vector
        np.testing.assert_array_equal(pattern[:, 6:], np.tile(np.eye(3, dtype=bool), (2, 1)))


def test_where_condition_and_comparisons_add_nothing():
    g = sg.Graph()
    x, y, z = g.input("x"), g.input("y"), g.input("z")
    f = sg.where(sg.lt(x * z, 0.0), y * y, sg.sign(z) + 1.0)
    np.testing.assert_array_equal(sg.jacobian_sparsity(f, [x, y, z]).toarray(), [[0, 1, 0]])


def _rosenbrock_vector(n):
    g = sg.Graph()
    x = g.input("x", shape=(n,))
    return sg.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2), x


def _rosenbrock_scalars(n):
    g = sg.Graph()
    xs = [g.input(f"x{k}") for k in range(n)]
    total = None
    for a, b in zip(xs, xs[1:]):
        term = 100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2
        total = term if total is None else total + term
    return total, xs


@pytest.mark.parametrize("form", ["vector", "scalars"])
def test_chained_rosenbrock_hessian_is_exact_with_three_colors(form):
    n = 40
    f, wrt = _rosenbrock_vector(n) if form == "vector" else _rosenbrock_scalars(n)
    wrt = [wrt] if form == "vector" else wrt
    before = snapshot(f.graph)
    pattern = sg.hessian_sparsity(f, wrt)
    band = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1
    np.testing.assert_array_equal(pattern.toarray(), band)
    assert pattern.nnz == 3 * n - 2
    H = sg.sparse_hessian(f, wrt)
    assert snapshot(f.graph) == before
    assert (H.nnz, H.colors, H.shape) == (3 * n - 2, 3, (n, n))
    point = np.random.default_rng(4).uniform(-1.5, 1.5, n)
    args = [point] if form == "vector" else list(map(float, point))
    dense = sg.hessian(f, wrt)
    if form == "vector":
        want = sg.evaluate(dense[0][0], x=point)
    else:
        want = np.array(sg.compile([dense], backend="numpy")(*args)[0])
    np.testing.assert_allclose(H(*args).toarray(), want, rtol=1e-12, atol=1e-12)
    lower = sg.sparse_hessian(f, wrt, lower=True)
    assert lower.nnz == 2 * n - 1 and np.all(lower.rows >= lower.cols)
    np.testing.assert_allclose(lower(*args).toarray(), np.tril(want), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(H.values(*args), want[H.rows, H.cols], rtol=1e-12, atol=1e-12)


def _heat_residual(n):
    """A 1-D heat equation's implicit-step residual: banded in u, diagonal in the source."""
    g = sg.Graph()
    u, s = g.input("u", shape=(n,)), g.input("s", shape=(n - 2,))
    lap = u[2:] - 2.0 * u[1:-1] + u[:-2]
    return u[1:-1] - 0.1 * lap - sg.exp(-u[1:-1]) * s, [u, s]


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_sparse_jacobian_matches_the_dense_one(mode):
    n = 30
    r, wrt = _heat_residual(n)
    J = sg.sparse_jacobian([r], wrt, mode=mode)
    values = {"u": np.linspace(0.1, 1.0, n), "s": np.linspace(-1.0, 1.0, n - 2)}
    want = _dense_jacobian([r], wrt, values)
    assert J.shape == want.shape and J.nnz == 3 * (n - 2) + (n - 2)
    np.testing.assert_allclose(J(**values).toarray(), want, rtol=1e-12, atol=1e-14)
    # A row holds 4 entries (3 of u, 1 of s), so columns need at least 4 colours; rows meet
    # when they are at most 2 apart, so 3 colours of rows do: auto takes reverse.
    assert J.mode == ("reverse" if mode == "auto" else mode)
    assert 4 <= J.colors <= 5 if J.mode == "forward" else J.colors == 3


def test_explicit_zeros_keep_the_structure():
    g = sg.Graph()
    x = g.input("x", shape=(4,))
    J = sg.sparse_jacobian(x[1:] * x[:-1], [x])
    at_zero = J(x=np.zeros(4))
    assert at_zero.nnz == J.nnz == 6 and not at_zero.data.any()
    np.testing.assert_array_equal(at_zero.indices, J.cols)


def test_values_over_a_batch_of_points_of_scalar_inputs():
    f, xs = _rosenbrock_scalars(6)
    J = sg.sparse_jacobian([f * f, sg.sin(xs[0]) * xs[1]], xs)
    points = np.random.default_rng(5).uniform(-1.0, 1.0, (6, 7))
    batch = J.values(*points)
    assert batch.shape == (7, J.nnz)
    for k in range(7):
        np.testing.assert_allclose(batch[k], J.values(*points[:, k]), rtol=1e-13)
    with pytest.raises(sg.ArgumentError, match="one point"):
        J(*points)


@pytest.mark.parametrize("seed", range(6))
def test_a_coloring_never_puts_two_columns_of_one_row_together(seed):
    import scipy.sparse as sparse

    rng = np.random.default_rng(seed)
    pattern = sparse.random_array((40, 30), density=0.08, rng=rng, format="csr") != 0
    colors = color_columns(pattern)
    dense = pattern.toarray()
    for row in dense:
        used = colors[np.flatnonzero(row)]
        assert len(set(used.tolist())) == len(used)
    # Greedy: at most one colour more than the most columns one column meets.
    meets = (pattern.T.astype(int) @ pattern.astype(int)).toarray() != 0
    assert colors.max() + 1 <= (meets.sum(axis=1) - 1).max() + 1


def test_a_chain_of_additions_is_walked_in_linear_work():
    # Each scalar node's set of columns is grown in place on its last read: the n-term sum's
    # walk copies only the one-column sets of the sines, so the elements it copies grow with n
    # (copying the running total at each addition would be n^2 / 2).
    from symgrad import sparsity

    copied = []
    real = sparsity._Walk._scalar_union

    def counting(self, args, deps, live):
        out = real(self, args, deps, live)
        if all(out is not deps[k] for k in live):
            copied.append(len(out))
        return out

    sizes = {}
    for n in (200, 400):
        g = sg.Graph()
        xs = [g.input(f"x{k}") for k in range(n)]
        total = xs[0]
        for x in xs[1:]:
            total = total + sg.sin(x)
        copied.clear()
        sparsity._Walk._scalar_union = counting
        try:
            assert sg.jacobian_sparsity(total, xs).nnz == n
        finally:
            sparsity._Walk._scalar_union = real
        sizes[n] = sum(copied)
    assert sizes[200] <= 2 * 200 and sizes[400] <= 2 * 400, sizes


def _bicoloured_paths(pattern, colors) -> int:
    """Paths a-b-c-d of the adjacency graph coloured x-y-x-y (a star colouring has none)."""
    dense = pattern.toarray()
    np.fill_diagonal(dense, False)
    adj = [np.flatnonzero(row).tolist() for row in dense]
    found = 0
    for a, near in enumerate(adj):
        for b in near:
            for c in adj[b]:
                if c != a and colors[c] == colors[a]:
                    found += sum(colors[d] == colors[b] for d in adj[c] if d not in (a, b))
    return found


@pytest.mark.parametrize("seed", range(8))
def test_star_coloring_is_proper_without_bicoloured_paths(seed):
    import scipy.sparse as sparse

    from symgrad.sparsity import recovery, star_color

    rng = np.random.default_rng(seed)
    m = int(rng.integers(10, 50))
    dense = rng.random((m, m)) < rng.uniform(0.03, 0.3)
    pattern = sparse.csr_array(dense | dense.T | np.eye(m, dtype=bool))
    colors = star_color(pattern)
    assert colors is not None
    rows, cols = pattern.nonzero()
    off = rows != cols
    assert np.all(colors[rows[off]] != colors[cols[off]])
    assert _bicoloured_paths(pattern, colors) == 0
    assert colors.max() <= color_columns(pattern).max()  # never more than distance-2
    # Each entry is read from one product: recovering a random symmetric H from H S exactly.
    values = sparse.csr_array((rng.normal(size=pattern.nnz), pattern.indices, pattern.indptr))
    values = (values + values.T).tocsr()
    values.sort_indices()
    seeds = np.eye(int(colors.max()) + 1)[colors]  # S: column j is 1 in its colour
    products = (values @ seeds).T.ravel()  # (H S)[row, colour] at colour * m + row
    positions = recovery(values != 0, colors)
    np.testing.assert_allclose(products[positions], values.data, rtol=1e-12)


def test_an_arrowhead_hessian_takes_two_colours():
    g = sg.Graph()
    x, a = g.input("x", shape=(30,)), g.input("a")
    f = sg.sum((x - a) ** 2 * sg.exp(a * x))  # every term reads a: row and column a are full
    H = sg.sparse_hessian(f, [x, a])
    assert (H.nnz, H.colors) == (30 + 2 * 30 + 1, 2)
    values = {"x": np.linspace(0.0, 1.0, 30), "a": 0.3}
    dense = [[sg.evaluate(e, **values) for e in row] for row in sg.hessian(f, [x, a])]
    xx, xa, ax, aa = dense[0][0], dense[0][1], dense[1][0], dense[1][1]
    want = np.block([[xx, np.reshape(xa, (30, 1))], [np.reshape(ax, (1, 30)), aa]])
    np.testing.assert_allclose(H(**values).toarray(), want, rtol=1e-12, atol=1e-13)
    lower = sg.sparse_hessian(f, [x, a], lower=True)
    np.testing.assert_allclose(lower(**values).toarray(), np.tril(want), rtol=1e-12, atol=1e-13)


def test_a_wrt_the_outputs_do_not_read_is_a_column_of_zeros():
    g = sg.Graph()
    x, y = g.input("x", shape=(3,)), g.input("y")
    J = sg.sparse_jacobian([x * 2.0], [x, y])
    assert J.inputs == ("x", "y") and J.shape == (3, 4)
    np.testing.assert_array_equal(J(x=np.ones(3), y=5.0).toarray(), np.c_[2 * np.eye(3), [0, 0, 0]])
    r = sg.scipy_residuals([x * 2.0], [x, y])
    np.testing.assert_array_equal(r.fun(np.ones(4)), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(r.jac(np.ones(4)).toarray(), np.c_[2 * np.eye(3), [0, 0, 0]])
    h = sg.scipy_objective(sg.sum(x * x), [x, y]).sparse_hess(np.ones(4)).toarray()
    np.testing.assert_array_equal(h, np.diag([2.0, 2.0, 2.0, 0.0]))


def test_no_entry_means_no_sweep():
    g = sg.Graph()
    x, y = g.input("x", shape=(3,)), g.input("y")
    H = sg.sparse_hessian(x[0] + y, [x, y])  # linear: the Hessian is structurally zero
    J = sg.sparse_jacobian([sg.sign(x)], [x])  # piecewise constant
    for D, shape in ((H, (4, 4)), (J, (3, 3))):
        assert (D.nnz, D.colors, D.shape) == (0, 0, shape)
    assert H.inputs == ("x", "y")
    assert not H(x=np.ones(3), y=1.0).toarray().any()
