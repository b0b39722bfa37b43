"""notebooks/06_loops.ipynb: its RESULTS against independent computations.

Nothing is imported from the notebook or from symgrad. The RK4 integration of Lotka-Volterra is
written again here as a loop on Python numbers; it runs on complex numbers too, so the gradient
is checked against complex-step derivatives (exact to rounding: no difference of nearby values),
and the Hessian column against central differences of those. The counts of floats kept in
per-step stacks are checked against what each checkpoint choice keeps by its definition.
"""

import math

import numpy as np
import pytest

NAME = "06_loops.ipynb"
NAMES = ["alpha", "beta", "delta", "gamma", "x0", "y0"]
POINT = [1.1, 0.4, 0.1, 0.4, 10.0, 5.0]
T_END = 10.0


def loss_of(v, n):
    """Loss on the final state of n RK4 steps from t = 0 to 10, on floats or complex numbers."""
    alpha, beta, delta, gamma, x, y = v
    h = T_END / n

    def f(x, y):
        return alpha * x - beta * x * y, delta * x * y - gamma * y

    for _ in range(n):
        k1 = f(x, y)
        k2 = f(x + h / 2 * k1[0], y + h / 2 * k1[1])
        k3 = f(x + h / 2 * k2[0], y + h / 2 * k2[1])
        k4 = f(x + h * k3[0], y + h * k3[1])
        x = x + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        y = y + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return (x - 1.0) ** 2 + (y - 1.0) ** 2, (x, y)


def complex_step_gradient(v, n, h=1e-30):
    out = []
    for j in range(len(v)):
        w = [complex(a) for a in v]
        w[j] += 1j * h
        out.append(loss_of(w, n)[0].imag / h)
    return np.array(out)


@pytest.fixture(scope="module")
def reference(results):
    n = results["n_steps"]
    loss, state = loss_of(POINT, n)
    return {"n": n, "loss": loss, "state": state, "gradient": complex_step_gradient(POINT, n)}


def test_the_scan_integrates_like_the_float_loop(results, reference):
    assert results["n_steps"] == 1000
    np.testing.assert_allclose(results["final_state"], reference["state"], rtol=1e-14)
    assert results["loss"] == pytest.approx(reference["loss"], rel=1e-14)
    assert results["trajectory_gap_to_float_loop"] <= 1e-12


def test_the_gradient_equals_complex_step_derivatives(results, reference):
    np.testing.assert_allclose(results["gradient"], reference["gradient"], rtol=1e-11)
    # The notebook's own check: central differences within their truncation error.
    np.testing.assert_allclose(results["central_differences"], reference["gradient"], rtol=1e-7)
    assert results["worst_central_difference_gap"] < 1e-7


def test_the_hessian_column_equals_differences_of_complex_step_gradients(results, reference):
    n, d = reference["n"], 1e-5
    up = complex_step_gradient([POINT[0] + d, *POINT[1:]], n)
    down = complex_step_gradient([POINT[0] - d, *POINT[1:]], n)
    np.testing.assert_allclose(results["hessian_column_alpha"], (up - down) / (2 * d), rtol=1e-6)


def test_stacks_keep_what_each_checkpoint_choice_promises(results):
    # One RK4 step: 2 carries, and 14 intermediates its derivative reads.
    per_step = 2 + 14
    steps, ks = results["steps"], results["k"]
    assert steps == [50, 100, 200, 400]
    assert ks == [round(math.sqrt(n)) for n in steps]
    for n, k, store, recompute, every_k in zip(
        steps, ks, results["stacked_store"], results["stacked_recompute"],
        results["stacked_every_k"],
    ):  # fmt: skip
        assert store == per_step * n
        assert recompute == 2 * n
        # The carries between segments, one segment stored, and the leftover steps stored.
        assert every_k == 2 * (n // k) + per_step * k + per_step * (n % k)
        assert recompute < store
        if n >= 100:  # 2n/k + 16k < 2n once sqrt(n) > 9
            assert every_k < recompute


def test_recompute_peaks_below_store(results):
    assert results["recompute_peak_below_store"] is True
