"""Forward mode: ``sg.jvp``, parametrized over the registry.

Every op's tangent is checked both ways against reverse mode (``<u, J v>`` from ``jvp`` equals
``<J^T u, v>`` from ``build_grad``) and against central differences; second order through
forward over reverse (the JVP of a gradient is a Hessian-vector product).
"""

from __future__ import annotations

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import GradError
from symgrad.ops import OPS
from tests.toolbox import (
    DIFF_OPS,
    EXAMPLES,
    TENSOR_OPS,
    central_difference,
    example,
    snapshot,
)

# Tensor ops without attributes, by the shapes of their operands.
PLAIN = {"matmul": [(3, 4), (4, 2)]}


def _case(name: str, rng):
    """(graph, operand inputs, output, values) of op ``name`` at a random point of its domain."""
    if name in EXAMPLES:
        g, operands, attrs = example(name)
    else:
        g = sg.Graph()
        shapes = PLAIN.get(name, [(3,)] * OPS[name].arity)
        operands, attrs = [g.input(f"x{k}", s) for k, s in enumerate(shapes)], {}
    y = g.apply(name, *operands, **attrs)
    # Constant operands (a take's indices) are no variables: their domain entry is skipped.
    domain = OPS[name].domain or [(-3.0, 3.0)] * len(operands)  # none: a variadic op's
    ranges = [r for r, o in zip(domain, operands) if o.op == "input"]
    xs = [o for o in operands if o.op == "input"]
    values = {x.name: rng.uniform(lo, hi, x.shape) for x, (lo, hi) in zip(xs, ranges)}
    if name in ("amax", "max_pool2d"):  # no ties: the derivative exists
        values = {k: v + 1e-3 * np.arange(v.size).reshape(v.shape) for k, v in values.items()}
    return g, xs, y, values


def test_every_op_is_covered():
    assert set(TENSOR_OPS) <= set(EXAMPLES) | set(PLAIN)
    assert len(DIFF_OPS) >= 30


def _probe(name: str, seed: int):
    """``_case`` of op ``name`` with a random tangent direction v per operand and a random
    cotangent u of the output."""
    rng = np.random.default_rng(seed)
    g, xs, y, values = _case(name, rng)
    v = [rng.normal(size=x.shape) for x in xs]
    return g, xs, y, values, v, rng.normal(size=y.shape)


def _weighted(y, u):
    """The scalar sum(y * u), whose gradient is the VJP of y with cotangent u."""
    return sg.sum(y * u) if y.shape else y * float(u)


@pytest.mark.parametrize("name", DIFF_OPS + TENSOR_OPS)
def test_jvp_is_the_transpose_of_the_vjp(name):
    g, xs, y, values, v, u = _probe(name, 0)
    [tangent] = sg.jvp(y, xs, v)
    forward = float(np.sum(u * sg.evaluate(tangent, **values)))
    grads = sg.build_grad(_weighted(y, u), xs)
    reverse = sum(float(np.sum(gk * vk)) for gk, vk in zip(sg.evaluate(grads, **values), v))
    assert forward == pytest.approx(reverse, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", DIFF_OPS + TENSOR_OPS)
def test_jvp_matches_central_differences(name):
    rng = np.random.default_rng(1)
    g, xs, y, values = _case(name, rng)
    v = [rng.normal(size=x.shape) for x in xs]
    [tangent] = sg.jvp(y, xs, v)
    got = sg.evaluate(tangent, **values)

    def along(s):
        moved = {x.name: values[x.name] + s * vk for x, vk in zip(xs, v)}
        return sg.evaluate(y, **moved)

    want = central_difference(along, 0.0, step=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_forward_over_reverse_is_a_hessian_vector_product():
    g = sg.Graph()
    x = g.input("x", (4,))
    w = g.input("w", (4, 4))
    f = sg.sum(sg.tanh(w @ x) ** 2) + sg.logsumexp(x * x)
    [grad] = sg.build_grad(f, [x])
    direction = np.array([0.5, -1.0, 2.0, 0.25])
    [forward] = sg.jvp(grad, [x], [direction])
    [reverse] = sg.hvp(f, [x], [direction])
    rng = np.random.default_rng(2)
    values = {"x": rng.normal(size=4), "w": rng.normal(size=(4, 4))}
    np.testing.assert_allclose(sg.evaluate(forward, **values), sg.evaluate(reverse, **values),
                               rtol=1e-12, atol=1e-14)  # fmt: skip
    # ... and it compiles to the same values.
    fn = sg.compile([forward])
    np.testing.assert_allclose(fn(**values)[0], sg.evaluate(reverse, **values), rtol=1e-12)


def test_second_order_forward_over_forward():
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    f = sg.sin(x * y) + x**3
    [dx] = sg.jvp(f, [x, y], [1.0, 0.0])
    [dxx] = sg.jvp(dx, [x, y], [1.0, 0.0])
    point = {"x": 0.7, "y": 1.3}
    want = -(1.3**2) * np.sin(0.7 * 1.3) + 6 * 0.7
    assert float(sg.evaluate(dxx, **point)) == pytest.approx(want, rel=1e-13)


def test_outputs_that_do_not_depend_on_wrt_get_zeros_of_their_shape():
    g = sg.Graph()
    x, z = g.input("x"), g.input("z", (2, 3))
    t_scalar, t_tensor = sg.jvp([x * 2.0, z + 1.0], [x], [1.0])
    assert float(sg.evaluate(t_scalar, x=1.0)) == 2.0
    assert t_tensor.shape == (2, 3) and not np.any(sg.evaluate(t_tensor))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda e: sg.jvp(e["f"], [e["x"]], [1.0, 2.0]), "2 tangents for 1 wrt"),
        (lambda e: sg.jvp(e["f"], [e["x"]], [np.ones(3)]), r"shape \(3,\), but its wrt"),
        (lambda e: sg.jvp(e["f"], [e["other"]], [1.0]), "wrt.0. must be an Expr of"),
        (lambda e: sg.jvp(e["f"], [e["x"]], ["a"]), "must be an Expr or a number"),
        (lambda e: sg.jvp([e["f"], e["other"]], [e["x"]], [1.0]), "different graphs"),
        (lambda e: sg.jvp(e["f"], e["x"], None), "must be an Expr or a number"),
        (lambda e: sg.jvp("f", [e["x"]], [1.0]), "must be a list"),
    ],
)
def test_bad_calls_are_grad_errors_and_change_nothing(call, match):
    g = sg.Graph()
    x = g.input("x")
    env = {"x": x, "f": sg.sin(x), "other": sg.Graph().input("o")}
    before = snapshot(g)
    with pytest.raises(GradError, match=match):
        call(env)
    assert snapshot(g) == before


@pytest.mark.parametrize("checkpoint", ["store", "recompute", 2])
def test_jvp_through_a_scan_is_a_tangent_scan(checkpoint):
    g = sg.Graph()
    a, xs, w = g.input("a"), g.input("xs", (5,)), g.input("w", (2,))

    def step(c, x):
        h, v = c
        return (sg.sin(h * a + x) + sg.sum(v * w), v * sg.cos(h)), h * h

    (h, v), ys = sg.scan(step, (a, w), xs=xs, checkpoint=checkpoint)
    loss = h + sg.sum(v) + sg.sum(ys * ys)
    direction = [1.0, np.linspace(0.0, 1.0, 5), np.array([0.5, -1.0])]
    [tangent] = sg.jvp(loss, [a, xs, w], direction)
    values = {"a": 0.7, "xs": np.linspace(-1.0, 1.0, 5), "w": np.array([0.3, -0.2])}
    grads = sg.evaluate(sg.build_grad(loss, [a, xs, w]), **values)
    want = sum(float(np.sum(gk * dk)) for gk, dk in zip(grads, direction))
    assert float(sg.evaluate(tangent, **values)) == pytest.approx(want, rel=1e-12)
    assert float(sg.compile([tangent])(**values)[0]) == pytest.approx(want, rel=1e-12)
    # Forward over reverse through the loop: the tangent of the reverse scan.
    [grad_a] = sg.build_grad(loss, [a])
    [forward] = sg.jvp(grad_a, [a], [1.0])
    [reverse] = sg.hvp(loss, [a], [1.0])
    assert float(sg.evaluate(forward, **values)) == pytest.approx(
        float(sg.evaluate(reverse, **values)), rel=1e-11
    )


def test_hvp_forward_over_reverse_equals_reverse_over_reverse():
    g = sg.Graph()
    x, w = g.input("x", (3,)), g.input("w")
    f = sg.sum(sg.exp(x * w) * x) + sg.logsumexp(x) * w**2
    v = [np.array([1.0, -2.0, 0.5]), 0.3]
    values = {"x": np.array([0.1, 0.2, -0.4]), "w": 0.7}
    got = sg.evaluate(sg.hvp(f, [x, w], v, mode="forward-over-reverse"), **values)
    want = sg.evaluate(sg.hvp(f, [x, w], v), **values)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(GradError, match="mode must be"):
        sg.hvp(f, [x, w], v, mode="forward")


@pytest.mark.parametrize("name", DIFF_OPS + TENSOR_OPS)
def test_second_order_forward_over_reverse_matches_differences(name):
    # The tangent of each op's VJP (its second derivative along v, weighted by u) against
    # central differences of the VJP itself.
    g, xs, y, values, v, u = _probe(name, 2)
    grads = sg.build_grad(_weighted(y, u), xs)
    got = np.concatenate([np.ravel(t) for t in sg.evaluate(sg.jvp(grads, xs, v), **values)])

    def along(s):
        moved = {x.name: values[x.name] + s * vk for x, vk in zip(xs, v)}
        return np.concatenate([np.ravel(d) for d in sg.evaluate(grads, **moved)])

    want = central_difference(along, 0.0, step=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
