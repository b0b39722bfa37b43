"""NaN-safe branches: the inactive side of a ``where`` never leaks nan or inf into a derivative.

The derivative of ``where(c, a, b)`` is the derivative of the branch taken at the point. A naive
reverse pass sends ``where(c, g, 0)`` into the untaken branch and multiplies it by that branch's
local derivatives — 0 * inf or 0 * nan is nan. build_grad defers the ``where``'s mask through
elementwise ops and applies it where the branch's cotangent leaves it, so the untaken side is
selected away, not multiplied. Checked through first and second derivatives, interpreted and
compiled (one point, batch, tensor).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import symgrad as sg

BACKENDS = ["numpy", "llvm"]


def derivatives(f, x):
    [d1] = sg.build_grad(f, [x])
    [d2] = sg.build_grad(d1, [x])
    return d1, d2


def run(outputs, backend, **values):
    return [float(v) for v in sg.compile(outputs, backend=backend)(**values)]


# (formula, point, (value, first, second)): the taken branch's derivatives, analytic.
CASES = [
    ("where(x > 0, sqrt(x), 0)", -1.0, (0.0, 0.0, 0.0)),
    ("where(x > 0, sqrt(x), 0)", 4.0, (2.0, 0.25, -1 / 32)),
    ("where(x > 0, sqrt(x), 0)", 0.0, (0.0, 0.0, 0.0)),
    ("where(x != 0, sin(x)/x, 1)", 0.0, (1.0, 0.0, 0.0)),
    ("where(x > 0, log(x), 0)", -2.0, (0.0, 0.0, 0.0)),
    ("where(x > 0, x*log(x), 0)", 0.0, (0.0, 0.0, 0.0)),
    ("where(x < 1, 1/(x - 1), 0) + x**2", 1.0, (1.0, 2.0, 2.0)),
    ("where(x > 0, where(x < 4, sqrt(x)*log(4 - x), 0), 0)", 4.0, (0.0, 0.0, 0.0)),
    ("where(x > 0, where(x < 4, sqrt(x)*log(4 - x), 0), 0)", -1.0, (0.0, 0.0, 0.0)),
    ("where(x > 0, sqrt(x), acosh(-x))", -3.0,
     (math.acosh(3), -1 / math.sqrt(8), -3 / 8**1.5)),
    ("relu(x)", 0.0, (0.0, 0.0, 0.0)),
    ("abs(x)", 0.0, (0.0, 0.0, 0.0)),
    ("max(x, 0) + min(x, 0)", 0.0, (0.0, 1.0, 0.0)),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text, point, expected", CASES, ids=lambda c: str(c))
def test_first_and_second_derivatives_are_finite_and_correct(text, point, expected, backend):
    f = sg.parse(text)
    x = f.graph.inputs["x"]
    d1, d2 = derivatives(f, x)
    got = run([f, d1, d2], backend, x=point)
    assert all(math.isfinite(v) for v in got), got
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


def test_sinc_elsewhere_matches_analytic():
    f = sg.parse("where(x != 0, sin(x)/x, 1)")
    x = f.graph.inputs["x"]
    d1, d2 = derivatives(f, x)
    t = np.array([-2.0, -1e-3, 0.0, 0.5, 3.0])
    got1, got2 = sg.compile([d1, d2])(t)
    with np.errstate(all="ignore"):
        want1 = np.where(t != 0, (t * np.cos(t) - np.sin(t)) / t**2, 0.0)
        want2 = np.where(t != 0, -np.sin(t) / t - 2 * np.cos(t) / t**2 + 2 * np.sin(t) / t**3, 0.0)
    np.testing.assert_allclose(got1, want1, rtol=1e-9, atol=1e-12)
    # At t = -1e-3 the closed form cancels catastrophically; compare where it is well conditioned.
    well = np.abs(t) > 0.1
    np.testing.assert_allclose(got2[well], want2[well], rtol=1e-9)
    assert np.all(np.isfinite(got2))


def test_ties_of_max_split_and_stay_finite():
    f = sg.parse("max(x, y)")
    x, y = f.graph.inputs["x"], f.graph.inputs["y"]
    gx, gy = sg.build_grad(f, [x, y])
    hxx, hxy = sg.build_grad(gx, [x, y])
    assert run([gx, gy, hxx, hxy], "llvm", x=1.5, y=1.5) == [0.5, 0.5, 0.0, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_points_across_the_branch(backend):
    f = sg.parse("where(x > 0, sqrt(x)*log(x), 0)")
    x = f.graph.inputs["x"]
    d1, d2 = derivatives(f, x)
    t = np.array([-3.0, -1.0, 0.0, 0.25, 1.0, 2.0, 9.0])
    got1, got2 = sg.compile([d1, d2], backend=backend)(t)
    with np.errstate(all="ignore"):
        want1 = np.where(t > 0, (np.log(t) + 2) / (2 * np.sqrt(t)), 0.0)
        want2 = np.where(t > 0, -np.log(t) / (4 * t**1.5), 0.0)
    np.testing.assert_allclose(got1, want1, rtol=1e-12)
    np.testing.assert_allclose(got2, want2, rtol=1e-12, atol=1e-15)


def test_a_node_shared_inside_and_outside_the_branch():
    # sqrt(x) is used by the where's branch and, unmasked, by the outer term: only the branch's
    # part is masked.
    g = sg.Graph()
    x = g.input("x")
    r = sg.sqrt(x)
    f = sg.where(x > 1, r * 3.0, 0.0) + r
    [d] = sg.build_grad(f, [x])
    assert math.isnan(float(sg.evaluate(d, x=-1.0)))  # the outer sqrt(x) really is nan there
    np.testing.assert_allclose(float(sg.evaluate(d, x=4.0)), 4 * 0.25, rtol=1e-15)
    np.testing.assert_allclose(float(sg.evaluate(d, x=0.25)), 1.0, rtol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tensor_branches(backend):
    g = sg.Graph()
    X = g.input("X", shape=(3, 4))
    w = g.input("w", shape=(4,))
    inner = X * w
    f = sg.sum(sg.where(inner > 0, sg.sqrt(inner) * sg.log(inner), 0.0))
    gX, gw = sg.build_grad(f, [X, w])
    rng = np.random.default_rng(0)
    Xv, wv = rng.standard_normal((3, 4)), rng.standard_normal(4)
    got_X, got_w = sg.compile([gX, gw], backend=backend)(Xv, wv)
    z = Xv * wv
    with np.errstate(all="ignore"):
        dz = np.where(z > 0, (np.log(z) + 2) / (2 * np.sqrt(z)), 0.0)
    np.testing.assert_allclose(got_X, dz * wv, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got_w, (dz * Xv).sum(0), rtol=1e-12, atol=1e-15)
    # Newton-type use: the Hessian-vector product is finite too.
    V = rng.standard_normal((3, 4))
    [hv] = sg.hvp(f, [X], [V])
    assert np.all(np.isfinite(sg.compile(hv, backend=backend)(Xv, wv)))


def test_the_masked_gradient_is_no_bigger():
    # The mask is one where at the branch's exit, not one per op inside it.
    f = sg.parse("where(x > 0, sqrt(x)*log(x)*exp(-x), 0)")
    x = f.graph.inputs["x"]
    [d] = sg.build_grad(f, [x])
    small = sg.optimize([f, d])
    assert len(small[0].graph) <= 4 * len(sg.optimize(f).graph)
    wheres = [n for n in small[0].graph.nx.nodes if small[0].graph.node(n)["op"] == "where"]
    assert len(wheres) == 2  # the value's and the derivative's
