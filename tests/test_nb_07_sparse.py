"""notebooks/07_sparse.ipynb: its RESULTS against independent computations.

Nothing is imported from the notebook or from symgrad. The chained Rosenbrock Hessian is written
here by hand (and checked against SciPy's ``rosen_hess``), the colourings against their
definition (no row holds two entries of one colour), the heat step's Jacobian from its formula,
and every profile the notebook marched with ``least_squares`` against a Newton iteration on the
same implicit step, in numpy with the tridiagonal Jacobian written out.
"""

import numpy as np
import pytest
from scipy.optimize import rosen_hess

NAME = "07_sparse.ipynb"


def rosenbrock_hessian(x):
    """The Hessian of sum 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2, entry by entry."""
    n = len(x)
    H = np.zeros((n, n))
    for i in range(n - 1):
        H[i, i] += 1200.0 * x[i] ** 2 - 400.0 * x[i + 1] + 2.0
        H[i + 1, i + 1] += 200.0
        H[i, i + 1] = H[i + 1, i] = -400.0 * x[i]
    return H


def arrowhead_hessian(y):
    """The Hessian of sum over i >= 1 of (y[i] - y[0])^2 y[i], entry by entry."""
    n = len(y)
    H = np.zeros((n, n))
    for i in range(1, n):
        d = y[i] - y[0]
        H[0, 0] += 2.0 * y[i]
        H[i, i] = 2.0 * y[i] + 4.0 * d
        H[0, i] = H[i, 0] = -2.0 * y[i] - 2.0 * d
    return H


def read_directly(pattern, colors):
    """Every entry (i, j) of a symmetric pattern is the only one of its colour in row i, or
    (mirrored) the only one of row i's colour in row j: one product gives it, nothing solved."""
    for i, j in zip(*np.nonzero(pattern)):
        alone_in_row = np.sum(pattern[i] & (colors == colors[j])) == 1
        alone_mirrored = np.sum(pattern[j] & (colors == colors[i])) == 1
        if not (alone_in_row or alone_mirrored):
            return False
    return True


def band(n):
    return np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 1


def keeps_colours_apart(pattern, colors):
    """No row of ``pattern`` has two entries in columns of one colour."""
    return all(len(set(colors[row].tolist())) == row.sum() for row in pattern)


def csr_order(pattern):
    """(rows, cols) of the entries of a boolean matrix, row by row, columns in order."""
    return np.nonzero(pattern)


def heat_parts(m, dt):
    grid = np.linspace(0.0, 1.0, m)
    u0 = 5.0 * np.sin(np.pi * grid) + 2.0 * np.sin(4 * np.pi * grid)
    return u0, dt * (m - 1) ** 2


def heat_residual(u, p, lam, dt):
    r = np.empty_like(u)
    r[0], r[-1] = u[0], u[-1]
    r[1:-1] = u[1:-1] - p[1:-1] - lam * (u[:-2] - 2.0 * u[1:-1] + u[2:]) + dt * u[1:-1] ** 3
    return r


def heat_jacobian(u, lam, dt):
    m = len(u)
    J = np.zeros((m, m))
    J[0, 0] = J[-1, -1] = 1.0
    for i in range(1, m - 1):
        J[i, i - 1] = J[i, i + 1] = -lam
        J[i, i] = 1.0 + 2.0 * lam + 3.0 * dt * u[i] ** 2
    return J


@pytest.fixture(scope="module")
def rosen(results):
    n = results["n"]
    x = np.array(results["point"])
    assert n == 30 and len(x) == n
    np.testing.assert_array_equal(x, np.linspace(-1.5, 1.5, n))
    return n, x, rosenbrock_hessian(x)


def test_the_hessian_pattern_is_the_band(results, rosen):
    n, _, _ = rosen
    rows, cols = csr_order(band(n))
    assert results["hessian_nnz"] == 3 * n - 2
    assert results["hessian_pattern_rows"] == rows.tolist()
    assert results["hessian_pattern_cols"] == cols.tolist()
    # sg.sparse_hessian's structure is the same pattern, in csr order.
    assert results["hessian_rows"] == rows.tolist()
    assert results["hessian_cols"] == cols.tolist()
    # Read off a copy: the caller's graph has as many nodes after as before.
    before, after = results["graph_nodes_before_after"]
    assert before == after


def test_three_colours_keep_every_row_apart(results, rosen):
    n, _, _ = rosen
    colors = np.array(results["hessian_colors"])
    assert len(colors) == n
    assert keeps_colours_apart(band(n), colors)
    # A row of the band holds 3 entries: 3 colours is the fewest possible.
    assert colors.max() + 1 == 3 == results["hessian_n_colors"]
    assert results["big_n_nnz_colors"] == [3 * 10_000 - 2, 3]


def test_the_sparse_hessian_values_are_the_rosenbrock_hessian(results, rosen):
    n, x, H = rosen
    np.testing.assert_allclose(H, rosen_hess(x), rtol=1e-15)  # the hand-written one is right
    rows, cols = results["hessian_rows"], results["hessian_cols"]
    np.testing.assert_allclose(results["hessian_values"], H[rows, cols], rtol=1e-13, atol=1e-12)
    # The notebook's own checks: against the dense sg.hessian and the 3 products by hand.
    assert results["gap_to_dense"] < 1e-10
    assert results["gap_to_by_hand"] < 1e-10


def test_star_colourings_read_every_entry_directly(results, rosen):
    n, _, _ = rosen
    star = np.array(results["band_star_colouring"])
    assert star.max() + 1 == 3 and read_directly(band(n), star)
    arrow = arrowhead_hessian(np.ones(n)) != 0
    arrow_star = np.array(results["arrow_star_colouring"])
    assert read_directly(arrow, arrow_star)
    # Distance-2 needs a colour per column (all meet in row 0); the star colouring needs 2.
    assert results["arrow_colors_distance2_star"] == [n, 2] and arrow_star.max() + 1 == 2


def test_the_arrowhead_hessian_values(results, rosen):
    n, _, _ = rosen
    y = np.array(results["arrow_point"])
    np.testing.assert_array_equal(y, np.linspace(-1.0, 2.0, n))
    H = arrowhead_hessian(y)
    rows, cols = csr_order(arrowhead_hessian(np.ones(n)) != 0)
    assert len(rows) == 3 * n - 2
    assert results["arrow_rows"] == rows.tolist() and results["arrow_cols"] == cols.tolist()
    np.testing.assert_allclose(results["arrow_values"], H[rows, cols], rtol=1e-13, atol=1e-13)
    assert results["arrow_gap_to_dense"] < 1e-10


def test_explicit_zeros_keep_the_structure_at_zero(results, rosen):
    n, _, _ = rosen
    H = rosenbrock_hessian(np.zeros(n))
    assert np.count_nonzero(H) == n  # the off-diagonal entries -400 x_i all vanish at 0
    assert results["zero_point_stored_and_nonzero"] == [3 * n - 2, n]


def test_the_lower_triangle_in_csr_order(results, rosen):
    n, _, H = rosen
    rows, cols = csr_order(np.tril(band(n)))
    assert len(rows) == 2 * n - 1
    assert results["lower_rows"] == rows.tolist()
    assert results["lower_cols"] == cols.tolist()
    np.testing.assert_allclose(results["lower_values"], H[rows, cols], rtol=1e-13, atol=1e-12)


def test_the_heat_jacobian_is_its_formula(results):
    m, dt = results["heat_m"], results["heat_dt"]
    assert (m, dt) == (40, 0.005)
    u0, lam = heat_parts(m, dt)
    np.testing.assert_allclose(results["heat_profiles"][0], u0, rtol=0, atol=0)
    J = heat_jacobian(u0, lam, dt)
    rows, cols = csr_order(J != 0)
    assert results["heat_jacobian_rows"] == rows.tolist()
    assert results["heat_jacobian_cols"] == cols.tolist()
    np.testing.assert_allclose(
        results["heat_jacobian_values_at_profile_0"], J[rows, cols], rtol=1e-13
    )


def test_the_heat_colourings(results):
    m = results["heat_m"]
    pattern = heat_jacobian(np.ones(m), 1.0, 1.0) != 0
    forward = np.array(results["heat_forward_colouring"])
    reverse = np.array(results["heat_reverse_colouring"])
    assert keeps_colours_apart(pattern, forward)  # columns: no row has two of one colour
    assert keeps_colours_apart(pattern.T, reverse)  # rows: no column has two of one colour
    assert results["heat_colors_forward_reverse"] == [3, 3]
    assert forward.max() + 1 == 3 and reverse.max() + 1 == 3
    # One more row that reads every unknown: columns all meet in it, rows need one more colour.
    with_total = np.vstack([pattern, np.ones((1, m), bool)])
    total_reverse = np.array(results["total_reverse_colouring"])
    assert keeps_colours_apart(with_total.T, total_reverse)
    assert results["total_colors_forward_reverse"] == [m, 4]
    assert total_reverse.max() + 1 == 4 == results["total_auto_colors"]
    assert results["total_auto_is_reverse"] is True
    np.testing.assert_allclose(results["total_row"], np.full(m, 1.0 / (m - 1)), rtol=1e-15)


def test_each_marched_profile_solves_the_implicit_step(results):
    m, dt = results["heat_m"], results["heat_dt"]
    _, lam = heat_parts(m, dt)
    profiles = [np.array(v) for v in results["heat_profiles"]]
    assert len(profiles) == 11
    assert all(results["heat_success"]) and len(results["heat_success"]) == 10
    assert results["heat_worst_residual"] < 1e-10
    for previous, got in zip(profiles, profiles[1:]):
        u = previous.copy()  # Newton on the same step, from the same previous profile
        for _ in range(50):
            step = np.linalg.solve(heat_jacobian(u, lam, dt), heat_residual(u, previous, lam, dt))
            u -= step
            if np.abs(step).max() < 1e-15:
                break
        assert np.abs(heat_residual(u, previous, lam, dt)).max() < 1e-12
        np.testing.assert_allclose(got, u, rtol=1e-11, atol=1e-11)
    # Finite differences with the pattern land on the same first step.
    assert results["heat_differences_gap"] < 1e-8


def test_trust_constr_reaches_the_minimum_with_the_sparse_hessian(results):
    assert results["rosen50_hessian_nnz_colors"] == [3 * 50 - 2, 3]
    assert results["rosen50_scipy_hessian_gap"] < 1e-9
    assert results["rosen50_success"] is True
    assert results["rosen50_distance"] < 1e-6
    assert 0 < results["rosen50_nhev"] <= results["rosen50_nit"]
