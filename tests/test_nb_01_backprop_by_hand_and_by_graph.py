"""notebooks/01_backprop_by_hand_and_by_graph.ipynb: its RESULTS against the numbers the seeds
print (seed 000: OneFlow's loss, gradients and SGD step; seed 001: ``(a+b)*c`` and its update),
against SGD iterated here on SymPy's derivative of the loss, and its graph sizes rebuilt here."""

import numpy as np
import pytest
import sympy

import symgrad as sg

NAME = "01_backprop_by_hand_and_by_graph.ipynb"
SEED_000_LOSS = 3600.0
SEED_000_GRADS = [-4800.0, -4800.0, -2640.0]  # w1.grad, b1.grad, w2.grad as OneFlow printed
SEED_000_AFTER_STEP = [34.0, 25.0, 33.2]  # w1, b1, w2 after optimizer.step(), lr = 0.005
SEED_001_VALUE = -7.0  # forward(5, -6, 7)
SEED_001_GRADS = [7.0, 7.0, -1.0]  # derivative_f_a, derivative_f_b, derivative_f_c
SEED_001_AFTER_STEP = -6.0113999999999965  # update(5, -6, 7) with h = 0.01


def test_seed_000_as_oneflow_printed(results):
    assert results["seed000_loss"] == SEED_000_LOSS
    assert results["seed000_grads"] == SEED_000_GRADS
    assert results["seed000_grads_by_hand"] == SEED_000_GRADS
    np.testing.assert_allclose(results["seed000_after_sgd"], SEED_000_AFTER_STEP, rtol=1e-12)


def test_seed_001_as_the_seed_printed(results):
    assert results["seed001_value"] == SEED_001_VALUE
    assert results["seed001_grads"] == SEED_001_GRADS
    assert results["seed001_after_step"] == pytest.approx(SEED_001_AFTER_STEP, rel=1e-12)


def sympy_sgd_losses(lr: float, steps: int) -> list[float]:
    """Losses before each SGD step, with the gradient taken by SymPy, stopping at overflow."""
    w1, b1, w2, x, label = sympy.symbols("w1 b1 w2 x label")
    loss = (2 * w2 * (w1 * x + b1) - label) ** 2
    params = (w1, b1, w2)
    fn = sympy.lambdify([*params, x, label], [loss, *(sympy.diff(loss, p) for p in params)])
    values, losses = np.array([10.0, 1.0, 20.0]), []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            out = np.array(fn(*values, np.float64(1.0), np.float64(500.0)), dtype=float)
            values = values - lr * out[1:]
            if not np.all(np.isfinite(out)) or not np.all(np.isfinite(values)):
                break
            losses.append(float(out[0]))
    return losses


def test_loss_curves_match_sgd_on_sympys_gradient(results):
    np.testing.assert_allclose(results["seed000_losses_lr0.005"], sympy_sgd_losses(0.005, 30),
                               rtol=1e-9)  # fmt: skip
    expected = sympy_sgd_losses(0.0001, 5)
    np.testing.assert_allclose(results["seed000_losses_lr0.0001_first5"], expected, rtol=1e-9)


@pytest.mark.parametrize(
    "key, text, wrt",
    [
        ("seed000_nodes_f_grad_optimized", "(2*w2*(w1*x + b1) - label)**2", ("w1", "b1", "w2")),
        ("seed001_nodes_f_grad_optimized", "(a + b)*c", ("a", "b", "c")),
    ],
)
def test_node_counts(results, key, text, wrt):
    f = sg.parse(text)
    before = len(f.graph)
    grads = sg.build_grad(f, [f.graph.inputs[n] for n in wrt])
    assert results[key] == [before, len(f.graph), len(sg.optimize([f, *grads])[0].graph)]
