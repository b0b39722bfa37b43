"""notebooks/04_native_code.ipynb: its RESULTS against independent computations.

Nothing is imported from the notebook or from symgrad. The IR's shape is checked against the
ABI that docs/llvm.md fixes (three functions per scalar kernel; sg_point loads each input once
and stores each output once; no fast-math); values against SciPy's ``rosen`` / ``rosen_der``,
SymPy's derivative of the transcendental mix and a numpy backprop of the tanh layer from the same
seeded data. Timings are not in RESULTS, and nothing there depends on JAX being installed.
"""

import numpy as np
import pytest
import sympy
from scipy.optimize import rosen, rosen_der

NAME = "04_native_code.ipynb"
MIX = "exp(-x**2-y**2)*cos(3*x)*log(1+y**2) + tanh(x*y)/(1+x**2) + sqrt(1+x**2+y**2)"


def test_scalar_module_has_the_five_functions_of_the_abi(results):
    r = results
    assert r["scalar_defines_sg_point"] and r["scalar_defines_sg_batch"]
    assert r["scalar_defines_sg_fast"]
    # sg_point, sg_batch, sg_fast, sg_batch_fast and the internal sg_batch_run
    assert r["scalar_function_count"] == 5


def test_point_kernel_loads_each_input_once_and_stores_each_output_once(results):
    # Rosenbrock's value and gradient: inputs x, y; outputs f, df/dx, df/dy.
    r = results
    assert r["point_loads"] == 2
    assert r["point_stores"] == 3


def test_no_fast_math_flags_anywhere(results):
    r = results
    assert r["fast_math_flags"] == 0


def test_rosenbrock_value_and_gradient_match_scipy(results):
    r = results
    p = np.array([1.5, 2.0])
    expected = [rosen(p), *rosen_der(p)]
    np.testing.assert_allclose(r["rosen_value_grad_at_1.5_2"], expected, rtol=1e-15)
    assert r["rosen_value_grad_at_1.5_2"] == [6.5, 151.0, -50.0]  # by hand


def test_mix_value_and_gradient_match_sympy(results):
    r = results
    x, y = sympy.symbols("x y")
    f = sympy.sympify(MIX)
    at = {x: sympy.Rational(1, 2), y: sympy.Rational(-7, 10)}
    expected = [float(e.subs(at).evalf(30)) for e in (f, f.diff(x), f.diff(y))]
    np.testing.assert_allclose(r["mix_value_grad_at_0.5_-0.7"], expected, rtol=1e-14)


def test_batch_results_agree_with_the_interpreter(results):
    r = results
    assert r["rosen_batch_equals_interpreter"] is True  # + - * only: bit for bit
    assert r["mix_batch_close_to_interpreter"] is True
    assert r["one_thread_equals_default"] is True
    assert r["sympy_close_to_interpreter"] is True
    assert r["numpy_by_hand_close_to_interpreter"] is True


def tanh_layer():
    """The notebook's seeded data (same draws, same order) and numpy backprop of
    L = mean((tanh(X W + b) - Y)**2) with respect to W and b."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 32))
    W = 0.2 * rng.standard_normal((32, 48))
    b = 0.1 * rng.standard_normal(48)
    Y = 0.5 * rng.standard_normal((64, 48))
    Z = np.tanh(X @ W + b)
    delta = 2 * (Z - Y) * (1 - Z**2) / Z.size
    return np.mean((Z - Y) ** 2), X.T @ delta, delta.sum(axis=0)


def test_tensor_layer_matches_numpy_backprop(results):
    r = results
    loss, dW, db = tanh_layer()
    assert r["tensor_loss"] == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(r["tensor_grad_b"], db, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(r["tensor_grad_W_row0"], dW[0], rtol=1e-12, atol=1e-16)
    assert r["tensor_grad_W_norm"] == pytest.approx(np.linalg.norm(dW), rel=1e-13)
    assert r["tensor_close_to_interpreter"] is True


def test_tensor_kernel_calls_dgemm_for_both_products(results):
    # X @ W (64x32 @ 32x48) and X^T @ delta (32x64 @ 64x48): each 98,304 multiply-adds, above
    # the 32**3 threshold of docs/tensors.md; dL/dX is not asked for, so no third product.
    r = results
    assert r["tensor_defines_sg_tensor"] is True
    assert r["tensor_dgemm_calls"] == 2
