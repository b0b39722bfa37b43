"""notebooks/05_training_a_network.ipynb: its RESULTS against independent computations.

Nothing is imported from the notebook. The data generators and initialisations are re-created
here with the same code, and every reference number comes from numpy (the seeds' hand-derived
backprop, an explicit-loop convolution) or from a seed document's printout.

- seed 004, Algorithm 3.1 on two spirals: all 3000 mini-batch SGD iterations replayed with numpy
  backprop from the same data, initial weights and sample draws;
- seed 000, part 3: the kernel printed after one SGD step (lr = 0.005);
- the tiny CNN: its initial loss by a numpy forward pass, and that it learned.
"""

import numpy as np
import pytest

from tests.toolbox import two_spirals

NAME = "05_training_a_network.ipynb"


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def bce_with_logits(z, y):
    return np.mean(np.logaddexp(0, z) - y * z)


# --- seed 004: Algorithm 3.1 -------------------------------------------------------------------

M, HIDDEN, BATCH, ALPHA, T = 600, 16, 32, 0.2, 3000


def init_params(rng):
    return [
        rng.standard_normal((2, HIDDEN)) * np.sqrt(2 / 2),
        np.zeros(HIDDEN),
        rng.standard_normal((HIDDEN, HIDDEN)) * np.sqrt(2 / HIDDEN),
        np.zeros(HIDDEN),
        rng.standard_normal((HIDDEN, 1)) * np.sqrt(1 / HIDDEN),
        np.zeros(1),
    ]


def forward(X, W1, b1, W2, b2, W3, b3):
    h1 = np.maximum(X @ W1 + b1, 0)
    h2 = np.maximum(h1 @ W2 + b2, 0)
    return h2 @ W3 + b3


def backprop(X, y, W1, b1, W2, b2, W3, b3):
    """Loss and gradients of the mean binary cross-entropy, by the seed's layer-wise rules."""
    p1 = X @ W1 + b1
    h1 = np.maximum(p1, 0)
    p2 = h1 @ W2 + b2
    h2 = np.maximum(p2, 0)
    z = h2 @ W3 + b3
    dz = (sigmoid(z) - y) / len(X)
    dp2 = (dz @ W3.T) * (p2 > 0)
    dp1 = (dp2 @ W2.T) * (p1 > 0)
    grads = [X.T @ dp1, dp1.sum(0), h1.T @ dp2, dp2.sum(0), h2.T @ dz, dz.sum(0)]
    return bce_with_logits(z, y), grads


@pytest.fixture(scope="module")
def spiral_replay():
    """Algorithm 3.1 in numpy: the full-data loss at w0, after 100 and after T iterations, the
    first batch's loss and the final accuracy."""
    X, labels = two_spirals(M, np.random.default_rng(0))
    y = labels[:, None]
    w = init_params(np.random.default_rng(1))
    rng = np.random.default_rng(2)
    out = {"initial": bce_with_logits(forward(X, *w), y)}
    for t in range(1, T + 1):
        mb = rng.choice(M, BATCH, replace=False)
        loss, grads = backprop(X[mb], y[mb], *w)
        w = [p - ALPHA * dp for p, dp in zip(w, grads)]
        if t == 1:
            out["first_batch"] = loss
        if t == 100:
            out["after_100"] = bce_with_logits(forward(X, *w), y)
    z = forward(X, *w)
    out["final"] = bce_with_logits(z, y)
    out["accuracy"] = np.mean((z[:, 0] > 0) == (labels == 1))
    return out


def test_spiral_losses_match_a_numpy_replay_of_algorithm_3_1(results, spiral_replay):
    r = results
    assert r["spiral_initial_loss"] == pytest.approx(spiral_replay["initial"], rel=1e-12)
    assert r["spiral_first_batch_loss"] == pytest.approx(spiral_replay["first_batch"], rel=1e-12)
    assert r["spiral_loss_after_100_steps"] == pytest.approx(spiral_replay["after_100"], rel=1e-10)
    # 3000 iterations apart, the two float64 runs differ by ~1e-13 (rounding order only).
    assert r["spiral_final_loss"] == pytest.approx(spiral_replay["final"], rel=1e-8)
    assert abs(r["spiral_final_accuracy"] - spiral_replay["accuracy"]) <= 1 / M


def test_spiral_network_learned(results):
    r = results
    assert r["spiral_initial_loss"] > 0.5  # about log 2 for an untrained network
    assert r["spiral_loss_after_100_steps"] < r["spiral_initial_loss"]
    assert r["spiral_final_loss"] < 0.1 * r["spiral_initial_loss"]
    assert r["spiral_final_accuracy"] > 0.95


# --- seed 000, part 3 ---------------------------------------------------------------------------

SEED000_LR = 0.005
SEED000_W_BEFORE = np.array([[0.2621, -0.2583], [-0.1751, -0.0839]])
SEED000_W_AFTER = np.array([[0.2587, -0.2642], [-0.1831, -0.0884]])


def test_conv_step_reproduces_the_seeds_printed_kernel(results):
    r = results
    grad, w_after = np.array(r["conv_grad"]), np.array(r["conv_w_after"])
    # The input was built so that (y - t)^2 = 1 and the gradient is the one the printout implies.
    assert r["conv_loss"] == pytest.approx(1.0, rel=1e-14)
    implied = (SEED000_W_BEFORE - SEED000_W_AFTER) / SEED000_LR
    np.testing.assert_allclose(grad, implied, rtol=0, atol=1e-12)
    assert np.array_equal(np.round(grad, 2), [[0.68, 1.18], [1.60, 0.90]])
    np.testing.assert_allclose(w_after, SEED000_W_BEFORE - SEED000_LR * grad, rtol=0, atol=1e-15)
    assert np.array_equal(np.round(w_after, 4), SEED000_W_AFTER)


def test_conv_input_built_from_the_seed_formula_gives_that_gradient(results):
    # The notebook's construction, redone here: dL/dw = 1/2 (y - t) S with the window sums S of
    # an explicit-loop cross-correlation, then mean pooling; independent of symgrad.
    r = results
    g = (SEED000_W_BEFORE - SEED000_W_AFTER) / SEED000_LR
    x = np.random.default_rng(2023).standard_normal((3, 3))
    for a in range(2):
        for b in range(2):
            x[2 * a, 2 * b] = 0.0
            x[2 * a, 2 * b] = 2 * g[a, b] - x[a : a + 2, b : b + 2].sum()
    conv = [
        [sum(SEED000_W_BEFORE[a, b] * x[i + a, j + b] for a in range(2) for b in range(2))
         for j in range(2)]
        for i in range(2)
    ]  # fmt: skip
    y = np.mean(conv)
    t = y - 1.0
    S = np.array([[x[a : a + 2, b : b + 2].sum() for b in range(2)] for a in range(2)])
    assert r["conv_loss"] == pytest.approx((y - t) ** 2, rel=1e-14)
    np.testing.assert_allclose(r["conv_grad"], 2 * (y - t) / 4 * S, rtol=1e-13, atol=1e-14)


# --- the tiny CNN -------------------------------------------------------------------------------

SIZE, CHANNELS, N_IMG = 8, 4, 400


def bars(n, rng, size=SIZE, noise=0.3):
    X = noise * rng.standard_normal((n, 1, size, size))
    y = rng.integers(0, 2, n).astype(float)
    for k in range(n):
        length = rng.integers(3, 7)
        i, j = rng.integers(0, size), rng.integers(0, size - length + 1)
        if y[k]:
            X[k, 0, j : j + length, i] += 1.0
        else:
            X[k, 0, i, j : j + length] += 1.0
    return X, y


def cnn_init(rng):
    return [
        rng.standard_normal((CHANNELS, 1, 3, 3)) * np.sqrt(2 / 9),
        np.zeros((CHANNELS, 1, 1)),
        rng.standard_normal((CHANNELS * (SIZE // 2) ** 2, 1)) * np.sqrt(1 / (CHANNELS * 16)),
        np.zeros(1),
    ]


def cnn_forward(X, K, c, W, b):
    """conv2d (3x3, zero padding 1, cross-correlation) + bias -> relu -> 2x2 max pool -> linear."""
    n = len(X)
    padded = np.pad(X[:, 0], ((0, 0), (1, 1), (1, 1)))
    conv = np.zeros((n, CHANNELS, SIZE, SIZE))
    for o in range(CHANNELS):
        for a in range(3):
            for bb in range(3):
                conv[:, o] += K[o, 0, a, bb] * padded[:, a : a + SIZE, bb : bb + SIZE]
    h = np.maximum(conv + c, 0)
    pooled = h.reshape(n, CHANNELS, SIZE // 2, 2, SIZE // 2, 2).max(axis=(3, 5))
    return pooled.reshape(n, -1) @ W + b


def test_cnn_initial_loss_matches_numpy_and_the_cnn_learned(results):
    r = results
    X, y = bars(N_IMG, np.random.default_rng(3))
    z = cnn_forward(X, *cnn_init(np.random.default_rng(4)))
    assert r["cnn_initial_loss"] == pytest.approx(bce_with_logits(z, y[:, None]), rel=1e-12)
    assert r["cnn_final_loss"] < 0.2 * r["cnn_initial_loss"]
    assert r["cnn_train_accuracy"] > 0.95
    assert r["cnn_test_accuracy"] > 0.9
