"""notebooks/03_higher_order.ipynb: its RESULTS against independent computations.

Nothing is imported from the notebook or from symgrad. The references are the hand-derived
derivatives of exp(x*y) + x**3, SciPy's hand-written Rosenbrock derivatives (``rosen_der``,
``rosen_hess``, ``rosen_hess_prod``), Newton's method replayed with them, and
``scipy.optimize.minimize`` rerun on SciPy's own ``rosen`` with the same methods and options.
"""

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess, rosen_hess_prod

NAME = "03_higher_order.ipynb"

# The notebook's METHODS, in its order: (method, derivatives given to minimize).
METHODS = [
    ("BFGS", ()),
    ("L-BFGS-B", ()),
    ("BFGS", ("jac",)),
    ("Newton-CG", ("jac", "hessp")),
    ("trust-ncg", ("jac", "hessp")),
    ("trust-exact", ("jac", "hess")),
]
SCIPY_DERIVATIVES = {"jac": rosen_der, "hess": rosen_hess, "hessp": rosen_hess_prod}
COUNTS = ("nit", "nfev", "njev", "nhev")


# --- 1. the small function -----------------------------------------------------------------------


def test_small_function_derivatives_match_the_hand_formulas(results):
    r = results
    x, y = r["small_point"]
    assert (x, y) == (0.5, -1.0)
    e = np.exp(x * y)
    assert r["small_value"] == pytest.approx(e + x**3, rel=1e-15)
    np.testing.assert_allclose(r["small_gradient"], [y * e + 3 * x**2, x * e], rtol=1e-15)
    hessian = np.array([[y**2 * e + 6 * x, (1 + x * y) * e], [(1 + x * y) * e, x**2 * e]])
    np.testing.assert_allclose(r["small_hessian"], hessian, rtol=1e-15)
    v = np.array(r["small_hvp_v"])
    assert v.tolist() == [1.0, 2.0]
    np.testing.assert_allclose(r["small_hvp"], hessian @ v, rtol=1e-14)


# --- 2. Newton's method ---------------------------------------------------------------------------

X0 = np.array([-1.2, 1.0])


def newton(x0, damped, tol=1e-10, max_iter=100):
    """Newton's method on 2-d Rosenbrock with SciPy's derivatives (the notebook's algorithm)."""
    p = np.array(x0, float)
    for k in range(max_iter):
        g = rosen_der(p)
        if np.linalg.norm(g) <= tol:
            return k, p
        s = np.linalg.solve(rosen_hess(p), -g)
        t = 1.0
        while damped and rosen(p + t * s) > rosen(p) + 1e-4 * t * (g @ s):
            t /= 2
        p = p + t * s
    raise AssertionError("Newton did not converge")


def test_rosenbrock_hessian_and_gradient_at_the_start(results):
    r = results
    np.testing.assert_allclose(r["rosen2_hessian_at_start"], rosen_hess(X0), rtol=1e-15)
    np.testing.assert_allclose(r["rosen2_gradient_at_start"], rosen_der(X0), rtol=1e-14)
    # By hand: d2f/dx2 = 2 - 400 (y - 3 x^2), d2f/dxdy = -400 x, d2f/dy2 = 200.
    assert r["rosen2_hessian_at_start"] == [[1330.0, 480.0], [480.0, 200.0]]


def test_newton_iterations_match_a_replay_with_scipys_derivatives(results):
    r = results
    for kind, damped in [("pure", False), ("damped", True)]:
        iterations, final = newton(X0, damped)
        assert r[f"newton_{kind}_iterations"] == iterations, kind
        np.testing.assert_allclose(r[f"newton_{kind}_final"], final, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r[f"newton_{kind}_final"], [1.0, 1.0], rtol=0, atol=1e-12)
    assert r["newton_pure_iterations"] == 7
    assert r["newton_damped_iterations"] == 22


# --- 3. SciPy -------------------------------------------------------------------------------------

N = 100
X0_100 = np.linspace(-1.5, 1.5, N)


def test_hessian_in_100_variables_matches_rosen_hess(results):
    r = results
    H = rosen_hess(X0_100)
    np.testing.assert_allclose(r["rosen100_hessian_diagonal"], np.diag(H), rtol=1e-13)
    np.testing.assert_allclose(r["rosen100_hessian_offdiagonal"], np.diag(H, 1), rtol=1e-13,
                               atol=1e-12)  # fmt: skip
    assert r["rosen100_hessian_off_band_max"] == 0.0
    np.testing.assert_allclose(
        r["rosen100_hessp_ones"], rosen_hess_prod(X0_100, np.ones(N)), rtol=1e-12, atol=1e-9
    )


def scipy_runs(x0):
    """The notebook's six minimize runs, on SciPy's own Rosenbrock and derivatives."""
    runs = []
    for method, derivatives in METHODS:
        given = {name: SCIPY_DERIVATIVES[name] for name in derivatives}
        res = minimize(rosen, x0, method=method, **given)
        runs.append({
            "nit": res.nit, "nfev": res.nfev, "njev": getattr(res, "njev", 0),
            "nhev": getattr(res, "nhev", 0), "success": bool(res.success),
            "distance": float(np.linalg.norm(res.x - 1)),
        })  # fmt: skip
    return runs


def test_scipy_in_2_variables_matches_scipys_own_rosenbrock_exactly(results):
    # In 2 variables symgrad's derivatives equal rosen_der / rosen_hess to the last bit, so
    # every minimizer takes the same path: identical counts and end points.
    r = results
    runs = scipy_runs(X0)
    for key in (*COUNTS, "success"):
        assert r[f"scipy2_{key}"] == [run[key] for run in runs], key
    np.testing.assert_allclose(r["scipy2_distance"], [run["distance"] for run in runs],
                               rtol=1e-6, atol=1e-12)  # fmt: skip
    assert all(r["scipy2_success"])
    assert max(r["scipy2_distance"]) < 1e-4


def test_scipy_in_100_variables_is_close_to_scipys_own_rosenbrock(results):
    # In 100 variables symgrad's sum rounds differently from numpy's (1 ulp), and a few hundred
    # iterations amplify that: counts agree to a few percent, outcomes exactly.
    r = results
    runs = scipy_runs(X0_100)
    for key in COUNTS:
        for k, (got, run) in enumerate(zip(r[f"scipy100_{key}"], runs)):
            assert abs(got - run[key]) <= 0.1 * run[key] + 5, (key, METHODS[k], got, run[key])
    # BFGS with finite differences ends within ~1e-5 of the minimum, where a forward-difference
    # gradient is too noisy for gtol = 1e-5: whether SciPy calls that a success (it does on
    # rosen, it reports a precision loss on the notebook's run) is a matter of rounding. L-BFGS-B
    # with finite differences exhausts maxfun = 15000 far from the minimum; the exact methods
    # converge.
    assert r["scipy100_success"][1:] == [run["success"] for run in runs][1:]
    assert r["scipy100_success"][1:] == [False, True, True, True, True]
    d = r["scipy100_distance"]
    assert d[0] < 1e-3 and d[1] > 1.0 and runs[1]["distance"] > 1.0
    assert r["scipy100_nfev"][1] >= 15000
    # Newton-CG stops when its step is small (xtol), which bounds no distance: 1-ulp differences
    # of another CPU's BLAS moved its end point from 3e-5 to 0.012 (SciPy's own: 9e-6).
    assert d[2] < 1e-6 and d[3] < 0.05 and d[4] < 1e-6 and d[5] < 1e-6
    # Finite differences cost n + 1 calls of fun per gradient.
    assert r["scipy100_nfev"][0] >= (N + 1) * r["scipy100_njev"][0] * 0.9
