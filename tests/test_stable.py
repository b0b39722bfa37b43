"""Stability rewrites in ``optimize``, each checked against a 50-digit reference (mpmath).

``log(1+x) -> log1p(x)``, ``exp(x)-1 -> expm1(x)``, ``log(sum(exp(x))) -> logsumexp(x)``,
``log(sigmoid(x)) -> -softplus(-x)``, ``log(1-sigmoid(x)) -> -softplus(x)`` and
``log(softmax(x)) -> x - logsumexp(x)``: the rewritten graph is within a few ulp of the exact
value everywhere the tests sample, including where the naive formula is inaccurate or infinite;
and build_grad of a naive cross-entropy is the stable form's derivative, exact at logits of ±1000,
whether optimize runs before it, after it or not at all (build_grad stabilizes ``y`` first).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

import symgrad as sg

mpmath.mp.dps = 50


def ops_of(e):
    return {e.graph.node(i)["op"] for i in range(len(e.graph))}


def ulps(got, exact):
    got, exact = np.asarray(got, float), np.asarray(exact, float)
    spacing = np.spacing(np.maximum(np.abs(exact), np.finfo(float).tiny))
    return np.abs(got - exact) / spacing


SCALAR_CASES = [
    # text, op it becomes, the exact function, points
    ("log(1 + x)", "log1p", lambda x: mpmath.log(1 + x),
     [1e-20, -1e-17, 3e-10, 1e-5, 0.5, 7.0, 1e300, -0.999]),
    ("log(1 - x)", "log1p", lambda x: mpmath.log(1 - x), [1e-20, -3e-12, 0.25, 0.999]),
    ("exp(x) - 1", "expm1", lambda x: mpmath.expm1(x), [1e-20, -1e-12, 2e-8, 0.3, -5.0, 700.0]),
    ("log(sigmoid(x))", "softplus", lambda x: -mpmath.log(1 + mpmath.exp(-x)),
     [-1000.0, -40.0, -1.0, 0.0, 2.0, 40.0, 1000.0]),
    ("log(1 - sigmoid(x))", "softplus", lambda x: -mpmath.log(1 + mpmath.exp(x)),
     [-1000.0, -30.0, 0.0, 3.0, 50.0, 1000.0]),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("text, op, exact, points", SCALAR_CASES, ids=lambda c: str(c)[:20])
def test_scalar_rewrites_are_accurate(text, op, exact, points, backend):
    f = sg.parse(text)
    small = sg.optimize(f)
    assert op in ops_of(small)
    t = np.array(points)
    got = sg.compile(small, backend=backend)(t)[0]
    want = np.array([float(exact(mpmath.mpf(float(v)))) for v in t])
    assert np.all(ulps(got, want) <= 2), (got, want)
    # The naive formula is worse somewhere in these points: the rewrite earns its place.
    with np.errstate(all="ignore"):
        naive = sg.compile(f, backend="numpy", optimize=False)(t)[0]
    assert np.any(~np.isfinite(naive) | (ulps(naive, want) > 2))


def test_logsumexp_and_log_softmax_rewrites():
    g = sg.Graph()
    x = g.input("x", shape=(3, 4))
    lse = sg.log(sg.sum(sg.exp(x), axis=1))
    lsm = sg.log(sg.softmax(x, axis=0))
    small = sg.optimize([lse, lsm])
    assert "logsumexp" in ops_of(small[0]) and "softmax" not in ops_of(small[0])
    rng = np.random.default_rng(0)
    v = rng.standard_normal((3, 4)) * 1000  # exp overflows for most entries
    got_lse, got_lsm = sg.compile(small)(v)
    for r in range(3):
        row = [mpmath.mpf(float(a)) for a in v[r]]
        exact = mpmath.log(sum(mpmath.exp(a) for a in row))
        assert ulps(got_lse[r], float(exact)) <= 2
    for c in range(4):
        col = [mpmath.mpf(float(a)) for a in v[:, c]]
        norm = mpmath.log(sum(mpmath.exp(a) for a in col))
        want = np.array([float(a - norm) for a in col])
        np.testing.assert_allclose(got_lsm[:, c], want, rtol=1e-13, atol=1e-10)
    with np.errstate(all="ignore"):
        naive = sg.compile([lse, lsm], backend="numpy", optimize=False)(v)
    assert not np.all(np.isfinite(naive[0]))


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_naive_cross_entropy_gradient_is_finite_at_extreme_logits(backend):
    g = sg.Graph()
    z, y = g.input("z", shape=(4,)), g.input("y", shape=(4,))
    p = sg.sigmoid(z)
    loss = sg.sum(-(y * sg.log(p) + (1 - y) * sg.log(1 - p)))
    loss = sg.optimize(loss)
    z2, y2 = loss.graph.inputs["z"], loss.graph.inputs["y"]
    [dz] = sg.build_grad(loss, [z2])
    [hv] = sg.hvp(loss, [z2], [np.ones(4)])
    zv = np.array([-1000.0, -30.0, 30.0, 1000.0])
    yv = np.array([1.0, 0.0, 1.0, 0.0])
    value, grad, hess_v = sg.compile([loss, dz, hv], inputs=[z2, y2], backend=backend)(zv, yv)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.all(np.isfinite(hess_v))
    exact_value = sum(
        float(mpmath.log(1 + mpmath.exp(-a if t else a))) for a, t in zip(zv, yv)
    )  # softplus of the wrong-side logit
    np.testing.assert_allclose(value, exact_value, rtol=1e-14)
    exact = [float(1 / (1 + mpmath.exp(-a)) - t) for a, t in zip(zv, yv)]  # sigmoid(z) - y
    np.testing.assert_allclose(grad, exact, rtol=1e-12, atol=1e-300)


def test_stable_derivatives():
    # softplus' = sigmoid, sigmoid' = s(1-s), logsumexp' = exp(x - lse), log1p' = 1/(1+x):
    # finite and exact-ish at extreme arguments.
    g = sg.Graph()
    x = g.input("x")
    outs = []
    for f in (sg.softplus(x), sg.sigmoid(x), sg.log1p(x)):
        outs += sg.build_grad(f, [x])
    v = sg.Graph()
    xs = v.input("xs", shape=(3,))
    [dl] = sg.build_grad(sg.logsumexp(xs), [xs])
    fn = sg.compile(outs)
    for point in (-1000.0, 1000.0):
        got = fn(point)
        assert all(np.isfinite(a) for a in got[:2])
    # exp(x - lse): lse ~ 1000 carries an absolute rounding of ulp(1000) ~ 1e-13, hence rtol.
    np.testing.assert_allclose(sg.compile(dl)(np.array([1000.0, 999.0, -1000.0]))[0],
                               [1 / (1 + np.exp(-1)), 1 / (1 + np.e), 0.0], rtol=1e-12)  # fmt: skip


def naive_cross_entropy():
    g = sg.Graph()
    z, t = g.input("z", shape=(2,)), g.input("t", shape=(2,))
    p = sg.sigmoid(z)
    return sg.sum(-(t * sg.log(p) + (1 - t) * sg.log(1 - p))), z, t


# z = (1000, -1000), t = (0, 1): both logits on the wrong side by 1000.
Z, T = np.array([1000.0, -1000.0]), np.array([0.0, 1.0])


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
@pytest.mark.parametrize("order", ["grad, then optimize", "optimize, then grad", "grad only"])
def test_naive_cross_entropy_is_stable_in_any_order_of_calls(order, backend):
    loss, z, _ = naive_cross_entropy()
    if order == "optimize, then grad":
        loss = sg.optimize(loss)
        z = loss.graph.inputs["z"]
    [dz] = sg.build_grad(loss, [z])
    outputs = sg.optimize([loss, dz]) if order == "grad, then optimize" else [loss, dz]
    # Compiled as it comes: compile optimizes by default, so the value is the stable one too.
    value, grad = sg.compile(outputs, backend=backend)(Z, T)
    # build_grad differentiates the stable form: sigmoid(z) - t, exactly.
    np.testing.assert_array_equal(grad, [1.0, -1.0])
    assert float(value) == 2000.0  # softplus(1000) twice


@pytest.mark.parametrize("backend", ["numpy", "llvm"])
def test_the_issues_cross_entropy_compiled_directly(backend):
    # Issue 11's example, one logit at a time: value 1000 at z = 1000, t = 0 and at z = -1000,
    # t = 1; gradient sigmoid(z) - t = (1, -1).
    f = sg.parse("-(t*log(sigmoid(z)) + (1 - t)*log(1 - sigmoid(z)))")
    z = f.graph.inputs["z"]
    fn = sg.compile([f, *sg.build_grad(f, [z])], backend=backend)
    value, grad = fn(z=Z, t=T)
    np.testing.assert_array_equal(value, [1000.0, 1000.0])
    np.testing.assert_array_equal(grad, [1.0, -1.0])
    # Compiled exactly as written (the opt-out), the value overflows: optimizing made it finite.
    raw = sg.compile(f, backend=backend, optimize=False)(z=Z, t=T)[0]
    assert np.all(np.isinf(raw))


def test_build_grad_leaves_a_stable_graph_alone():
    g = sg.Graph()
    x = g.input("x")
    f = sg.log1p(sg.exp(x)) * x
    before = len(g)
    sg.build_grad(f, [x])
    assert all(g.node(i)["op"] != "log" for i in range(len(g)))
    assert len(g) > before  # the gradient, and no copy of f: nothing to rewrite
    assert all(g.node(i)["role"] == "grad" for i in range(before, len(g)))


def test_a_rewrite_never_drops_a_wrt_from_the_path():
    # d log(s) / d s with s = sigmoid(x) is 1/s: log(sigmoid(x)) -> -softplus(-x) would lose s.
    g = sg.Graph()
    x = g.input("x")
    s = sg.sigmoid(x)
    [d] = sg.build_grad(sg.log(s), [s])
    assert float(sg.evaluate(d, x=0.3)) == pytest.approx(1 + np.exp(-0.3), rel=1e-15)
    [dx] = sg.build_grad(sg.log(s), [x])  # wrt the input: the stable form's derivative
    assert float(sg.evaluate(dx, x=-1000.0)) == 1.0
