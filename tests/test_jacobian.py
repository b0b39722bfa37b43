"""Jacobians of tensor outputs with respect to tensor inputs, both modes, Hessians of tensor
wrt, and ``sg.stack`` (issue 13 item 2)."""

from __future__ import annotations

import numpy as np
import pytest

import symgrad as sg
from tests.toolbox import central_difference


@pytest.fixture
def model():
    """y (2, 2) and s (scalar) of x (3,), W (2, 3) and a scalar b, with values."""
    rng = np.random.default_rng(5)
    g = sg.Graph()
    x, W, b = g.input("x", shape=(3,)), g.input("W", shape=(2, 3)), g.input("b")
    h = sg.tanh(W @ x + b)  # (2,)
    y = sg.reshape(h, (2, 1)) * sg.reshape(sg.exp(x[:2]), (1, 2))  # (2, 2)
    s = sg.sum(y * y) + b * b
    values = {"x": rng.normal(size=3), "W": rng.normal(size=(2, 3)), "b": 0.3}
    return g, (x, W, b), (y, s), values


def _differences(fn, values: dict, name: str) -> np.ndarray:
    """d fn / d values[name], with the wrt shape last (the Jacobian's layout)."""
    point = dict(values)

    def at(v):
        [out] = fn(**{**point, name: v})  # a compiled function of one output
        return np.asarray(out)

    fd = central_difference(at, np.asarray(values[name], dtype=float), step=1e-6)
    wrt_ndim = np.ndim(values[name])
    return np.moveaxis(fd, list(range(wrt_ndim)), list(range(fd.ndim - wrt_ndim, fd.ndim)))


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_tensor_jacobian_shapes_and_values(model, mode):
    g, wrt, (y, s), values = model
    J = sg.jacobian([y, s], list(wrt), mode=mode)
    assert [[e.shape for e in row] for row in J] == [
        [(2, 2, 3), (2, 2, 2, 3), (2, 2)],
        [(3,), (2, 3), ()],
    ]
    got = sg.evaluate([e for row in J for e in row], **values)
    for k, (out, name) in enumerate([(o, n) for o in (y, s) for n in ("x", "W", "b")]):
        want = _differences(sg.compile(out, backend="numpy"), values, name)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-8)


def test_both_modes_agree_bit_for_bit_when_compiled(model):
    g, wrt, (y, s), values = model
    fwd = sg.jacobian([y], list(wrt), mode="forward")[0]
    rev = sg.jacobian([y], list(wrt), mode="reverse")[0]
    compiled = sg.compile([*fwd, *rev])(**values)
    interpreted = sg.evaluate([*fwd, *rev], **values)
    for got, want in zip(compiled, interpreted):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(compiled[:3], compiled[3:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def _nodes_of_jacobian(mode: str, wrt_name: str) -> int:
    g = sg.Graph()
    x, W, b = g.input("x", shape=(3,)), g.input("W", shape=(2, 3)), g.input("b")
    h = sg.tanh(W @ x + b)
    y = sg.reshape(h, (2, 1)) * sg.reshape(sg.exp(x[:2]), (1, 2))
    start = len(g)
    sg.jacobian([y], [{"x": x, "W": W, "b": b}[wrt_name]], mode=mode)
    return len(g) - start


def test_auto_takes_the_mode_with_fewer_sweeps():
    # d y / d b: 1 tangent against 4 gradients; d y / d W: 6 tangents against 4 gradients.
    assert _nodes_of_jacobian("auto", "b") == _nodes_of_jacobian("forward", "b")
    assert _nodes_of_jacobian("forward", "b") < _nodes_of_jacobian("reverse", "b")
    assert _nodes_of_jacobian("auto", "W") == _nodes_of_jacobian("reverse", "W")


def test_hessian_of_a_tensor_wrt(model):
    g, (x, W, b), (y, s), values = model
    H = sg.hessian(s, [x, W])
    assert [[e.shape for e in row] for row in H] == [[(3, 3), (3, 2, 3)], [(2, 3, 3), (2, 3, 2, 3)]]
    flat = sg.compile([e for row in H for e in row])(**values)  # entries of unlike shapes
    got = [flat[:2], flat[2:]]
    grads = sg.build_grad(s, [x, W])
    for i, gi in enumerate(grads):
        for j, name in enumerate(("x", "W")):
            want = _differences(sg.compile(gi, backend="numpy"), values, name)
            np.testing.assert_allclose(got[i][j], want, rtol=1e-6, atol=1e-7)
    # Symmetric: d²s/dx dW is the transpose of d²s/dW dx.
    np.testing.assert_allclose(got[0][1], np.moveaxis(got[1][0], 2, 0), rtol=1e-12)
    # Against a Hessian-vector product along a random direction of x.
    v = np.random.default_rng(1).normal(size=3)
    [hv, _] = sg.hvp(s, [x, W], [v, np.zeros((2, 3))])
    np.testing.assert_allclose(sg.evaluate(hv, **values), got[0][0] @ v, rtol=1e-10)


def test_stack_matches_numpy_and_is_differentiable():
    rng = np.random.default_rng(2)
    g = sg.Graph()
    a, b = g.input("a", shape=(2, 3)), g.input("b", shape=(2, 3))
    values = {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=(2, 3))}
    for axis in (0, 1, 2, -1, -3):
        st = sg.stack([a, sg.sin(b), a * b], axis=axis)
        want = np.stack([values["a"], np.sin(values["b"]), values["a"] * values["b"]], axis=axis)
        assert st.shape == want.shape
        np.testing.assert_array_equal(sg.evaluate(st, **values), want)
        np.testing.assert_allclose(sg.compile(st)(**values)[0], want, rtol=1e-15)
    weights = rng.normal(size=(3, 2, 3))
    loss = sg.sum(sg.stack([a, sg.sin(b), a * b]) * g.const(weights))
    ga, gb = sg.evaluate(sg.build_grad(loss, [a, b]), **values)
    np.testing.assert_allclose(ga, weights[0] + weights[2] * values["b"], rtol=1e-12)
    np.testing.assert_allclose(gb, weights[1] * np.cos(values["b"]) + weights[2] * values["a"])
    one = sg.stack([a])
    assert one.op == "reshape" and one.shape == (1, 2, 3)


def test_concatenate_cross_norm_and_triangles_match_numpy():
    rng = np.random.default_rng(4)
    g = sg.Graph()
    a, b = g.input("a", shape=(2, 3)), g.input("b", shape=(4, 3))
    u, v = g.input("u", shape=(3,)), g.input("v", shape=(5, 3))
    values = {k: rng.normal(size=s) for k, s in
              {"a": (2, 3), "b": (4, 3), "u": (3,), "v": (5, 3)}.items()}  # fmt: skip
    A, B, U, V = (values[k] for k in "abuv")
    cases = [
        (sg.concatenate([a, b, a]), np.concatenate([A, B, A])),
        (sg.concatenate([b, sg.sin(b)], axis=-1), np.concatenate([B, np.sin(B)], axis=1)),
        (sg.cross(u, v), np.cross(U, V)),
        (sg.norm(v, axis=1, keepdims=True), np.linalg.norm(V, axis=1, keepdims=True)),
        (sg.norm(a), np.linalg.norm(A)),
        (sg.tril(b[:3], -1), np.tril(B[:3], -1)),
        (sg.triu(b, 1), np.triu(B, 1)),
    ]
    got = sg.compile([e for e, _ in cases])(**values)
    for (expr, want), compiled in zip(cases, got):
        assert expr.shape == want.shape
        np.testing.assert_allclose(sg.evaluate(expr, **values), want, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(compiled, want, rtol=1e-13, atol=1e-15)
    # Gradients: d/du of w . (u x v_k) is v_k x w, summed over k.
    w = rng.normal(size=(5, 3))
    [gu] = sg.build_grad(sg.sum(sg.cross(u, v) * g.const(w)), [u])
    np.testing.assert_allclose(sg.evaluate(gu, **values), np.cross(V, w).sum(0), rtol=1e-12)
    weights = g.const(np.arange(18.0).reshape(6, 3))
    [ga, gb] = sg.build_grad(sg.sum(sg.concatenate([a, b]) * weights), [a, b])
    np.testing.assert_array_equal(sg.evaluate(ga), np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(sg.evaluate(gb), np.arange(6.0, 18.0).reshape(4, 3))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_small_det_inv_solve_match_numpy_with_gradients(n):
    rng = np.random.default_rng(n)
    g = sg.Graph()
    a, b = g.input("a", shape=(4, n, n)), g.input("b", shape=(4, n))
    values = {"a": rng.normal(size=(4, n, n)) + 3.0 * np.eye(n), "b": rng.normal(size=(4, n))}
    exprs = [sg.det(a), sg.inv(a), sg.solve(a, b)]
    wants = [np.linalg.det(values["a"]), np.linalg.inv(values["a"]),
             np.linalg.solve(values["a"], values["b"][..., None])[..., 0]]  # fmt: skip
    for got, want in zip(sg.compile(exprs)(**values), wants):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # d det(A) / dA = det(A) inv(A)^T (Jacobi's formula).
    [grad] = sg.build_grad(sg.sum(sg.det(a)), [a])
    jacobi = wants[0][:, None, None] * np.swapaxes(wants[1], -1, -2)
    np.testing.assert_allclose(sg.evaluate(grad, **values), jacobi, rtol=1e-11, atol=1e-13)
