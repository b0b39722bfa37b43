"""``sg.scan``: loops as one graph node, their values, derivatives and errors.

Values are checked against the same loop written in numpy, and against the loop unrolled by
hand in an ordinary graph; derivatives (first and second order, both checkpoints, nested scans,
tensor carries) against central differences and against ``build_grad`` of the unrolled graph.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import ArgumentError, GraphError, ShapeError
from tests.toolbox import HOSTILE, LOOP_OPS, central_difference, snapshot

CHECKPOINTS = ["store", "recompute"]


def test_loop_ops_are_the_scan_and_its_projection():
    assert LOOP_OPS == ["scan", "scan_out"]


# --- values ----------------------------------------------------------------------------------


def test_the_docstring_example():
    g = sg.Graph()
    a = g.input("a")
    final, ys = sg.scan(lambda c, x: (c * a, c), g.const(1.0), length=3)
    assert float(sg.evaluate(final, a=2.0)) == 8.0
    assert sg.evaluate(ys, a=2.0).tolist() == [1.0, 2.0, 4.0]  # the carries entering each step


def _rnn(g, n_steps=6, width=3, checkpoint="store"):
    """A small recurrent cell: h <- tanh(W h + U x_t + b); ys are W-projected states."""
    w, u, b = g.input("W", (width, width)), g.input("U", (width, 2)), g.input("b", (width,))
    xs, h0 = g.input("xs", (n_steps, 2)), g.input("h0", (width,))

    def step(h, x):
        h = sg.tanh(w @ h + u @ x + b)
        return h, sg.sum(h * h)

    return step, sg.scan(step, h0, xs=xs, checkpoint=checkpoint), (w, u, b, xs, h0)


def _rnn_values(n_steps=6, width=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W": rng.normal(size=(width, width)) * 0.5,
        "U": rng.normal(size=(width, 2)),
        "b": rng.normal(size=width) * 0.1,
        "xs": rng.normal(size=(n_steps, 2)),
        "h0": rng.normal(size=width) * 0.3,
    }


def test_a_recurrent_cell_equals_the_loop_in_numpy():
    g = sg.Graph()
    _, (h, ys), _ = _rnn(g)
    v = _rnn_values()
    hv, want = v["h0"], []
    for x in v["xs"]:
        hv = np.tanh(v["W"] @ hv + v["U"] @ x + v["b"])
        want.append(np.sum(hv * hv))
    got_h, got_ys = sg.evaluate([h, ys], **v)
    np.testing.assert_allclose(got_h, hv, rtol=1e-14)
    np.testing.assert_allclose(got_ys, want, rtol=1e-14)
    assert got_ys.shape == (6,) and ys.shape == (6,) and h.shape == (3,)


def test_tuple_carries_tuple_xs_and_tuple_ys():
    g = sg.Graph()
    xs, zs = g.input("xs", (4,)), g.input("zs", (4, 2))

    def step(carry, x):
        s, v = carry
        x1, z = x
        return (s + x1, v * z), (s * x1, sg.sum(v))

    (s, v), (p, q) = sg.scan(step, (g.const(0.0), g.const(np.ones(2))), xs=(xs, zs))
    xv, zv = np.arange(1.0, 5.0), np.linspace(0.5, 2.0, 8).reshape(4, 2)
    got = sg.evaluate([s, v, p, q], xs=xv, zs=zv)
    np.testing.assert_allclose(got[0], xv.sum())
    np.testing.assert_allclose(got[1], np.prod(zv, axis=0))
    np.testing.assert_allclose(got[2], np.concatenate([[0.0], np.cumsum(xv)[:-1]]) * xv)
    np.testing.assert_allclose(got[3], [2.0, *np.prod(zv[:1], 0).sum(keepdims=True), *[
        np.prod(zv[:k], 0).sum() for k in (2, 3)]])  # fmt: skip


def test_y_none_gives_no_ys_and_numbers_become_constants():
    g = sg.Graph()
    a = g.input("a")
    final, ys = sg.scan(lambda c, x: (c + 1.0, None), a, length=5)
    assert ys is None and float(sg.evaluate(final, a=0.5)) == 5.5
    final, ys = sg.scan(lambda c, x: (2.0 * c, 7.0), a, length=2)
    assert sg.evaluate(ys, a=1.0).tolist() == [7.0, 7.0]


def test_equal_scans_are_one_node_and_the_body_is_closed():
    g = sg.Graph()
    a = g.input("a")
    kept = []

    def step(c, x):
        kept.append(c)
        return c * a, None

    f1, _ = sg.scan(step, a, length=4)
    f2, _ = sg.scan(step, a, length=4)
    assert f1.id == f2.id and f1.args[0].id == f2.args[0].id  # hash-consed, body and all
    f3, _ = sg.scan(step, a, length=5)
    assert f3.id != f1.id
    with pytest.raises(GraphError, match="body of a scan"):
        kept[0] * 2.0  # the step's placeholder after tracing: its graph is closed


# --- derivatives -------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_gradient_of_a_recurrent_cell_matches_central_differences(checkpoint):
    g = sg.Graph()
    _, (h, ys), params = _rnn(g, checkpoint=checkpoint)
    loss = sg.sum(h) + sg.sum(ys * ys)
    grads = sg.build_grad(loss, list(params))
    v = _rnn_values()
    got = sg.evaluate(grads, **v)
    for p, gp in zip(params, got):
        name = p.name

        def f(value, name=name):
            return sg.evaluate(loss, **{**v, name: value})

        np.testing.assert_allclose(gp, central_difference(f, v[name]), rtol=1e-6, atol=1e-8)


def _unrolled(g, n_steps=6, width=3):
    """The cell of ``_rnn`` unrolled by hand: the reference for values and derivatives."""
    w, u, b = g.input("W", (width, width)), g.input("U", (width, 2)), g.input("b", (width,))
    xs, h = g.input("xs", (n_steps, 2)), g.input("h0", (width,))
    total = 0.0
    for t in range(n_steps):
        h = sg.tanh(w @ h + u @ xs[t] + b)
        y = sg.sum(h * h)
        total = total + y * y
    return sg.sum(h) + total, (w, u, b, xs, g.inputs["h0"])


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_gradient_and_hvp_equal_the_unrolled_graph(checkpoint):
    g, ref = sg.Graph(), sg.Graph()
    _, (h, ys), params = _rnn(g, checkpoint=checkpoint)
    loss = sg.sum(h) + sg.sum(ys * ys)
    ref_loss, ref_params = _unrolled(ref)
    v = _rnn_values()
    got = sg.evaluate(sg.build_grad(loss, list(params)), **v)
    want = sg.evaluate(sg.build_grad(ref_loss, list(ref_params)), **v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # Second order: a Hessian-vector product differentiates the reverse scan again.
    rng = np.random.default_rng(1)
    direction = [rng.normal(size=p.shape) for p in params]
    got = sg.evaluate(sg.hvp(loss, list(params), direction), **v)
    want = sg.evaluate(sg.hvp(ref_loss, list(ref_params), direction), **v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_store_reads_intermediates_that_recompute_computes_again():
    counts = {}
    for checkpoint in CHECKPOINTS:
        g = sg.Graph()
        _, (h, ys), params = _rnn(g, checkpoint=checkpoint)
        sg.build_grad(sg.sum(h) + sg.sum(ys), list(params))
        [reverse] = [e for e in (sg.Expr(g, i) for i in range(len(g))) if e.op == "scan"][1:]
        body = g.attr(reverse.id, "body")
        ops = [body.graph.node(i)["op"] for i in range(len(body.graph))]
        counts[checkpoint] = (ops.count("tanh"), len(body.xs))
    # recompute: the step's tanh again in the reverse body; store: read as a per-step input.
    assert counts["recompute"][0] == 1 and counts["store"][0] == 0
    assert counts["store"][1] > counts["recompute"][1]


def test_hessian_of_scalar_parameters_matches_differences_of_the_gradient():
    g = sg.Graph()
    a, c0 = g.input("a"), g.input("c0")
    xs = g.input("xs", (5,))
    final, ys = sg.scan(lambda c, x: (sg.sin(c * a + x), c * c), c0, xs=xs)
    loss = final + sg.sum(ys)
    grads = sg.build_grad(loss, [a, c0])
    hess = sg.hessian(loss, [a, c0])
    xv = np.linspace(0.0, 1.0, 5)

    def gradient(p):
        return np.array(sg.evaluate(grads, a=p[0], c0=p[1], xs=xv), dtype=float)

    point = np.array([0.7, 0.3])
    got = np.array(sg.evaluate([hess], a=point[0], c0=point[1], xs=xv)[0])
    np.testing.assert_allclose(got, central_difference(gradient, point), rtol=1e-6, atol=1e-9)


def test_a_scan_inside_a_step_differentiates_through_both():
    g = sg.Graph()
    a, x0 = g.input("a"), g.input("x0")

    def inner_step(c, _):
        return c * a + 0.1, None  # a: a node of the outermost graph, two levels out

    def outer_step(c, _):
        c2, _ = sg.scan(inner_step, c, length=3)
        return sg.sin(c2), c2

    final, ys = sg.scan(outer_step, x0, length=4)
    loss = final + sg.sum(ys)
    grads = sg.build_grad(loss, [a, x0])
    point = {"a": 0.8, "x0": 0.4}
    got = sg.evaluate(grads, **point)
    for k, name in enumerate(("a", "x0")):

        def f(value, name=name):
            return sg.evaluate(loss, **{**point, name: value})

        np.testing.assert_allclose(got[k], central_difference(f, point[name]), rtol=1e-7)


def test_optimize_keeps_the_values_of_a_scan_and_its_gradient():
    g = sg.Graph()
    _, (h, ys), params = _rnn(g)
    outputs = [sg.sum(h) + sg.sum(ys), *sg.build_grad(sg.sum(h) + sg.sum(ys), list(params))]
    v = _rnn_values()
    for a, b in zip(sg.evaluate(sg.optimize(outputs), **v), sg.evaluate(outputs, **v)):
        np.testing.assert_allclose(a, b, rtol=1e-14)


def test_a_scan_of_constants_is_not_folded_into_a_wrong_constant():
    g = sg.Graph()
    final, _ = sg.scan(lambda c, x: (c * 2.0, None), g.const(1.0), length=3)
    [folded] = sg.optimize([final])
    assert float(sg.evaluate(folded)) == 8.0


# --- pickling --------------------------------------------------------------------------------


def test_a_graph_with_scans_pickles_and_its_derivatives_still_evaluate():
    g = sg.Graph()
    _, (h, ys), params = _rnn(g)
    outputs = [sg.sum(h), *sg.build_grad(sg.sum(h) + sg.sum(ys), list(params))]
    again = pickle.loads(pickle.dumps(outputs))
    v = _rnn_values()
    for a, b in zip(sg.evaluate(again, **v), sg.evaluate(outputs, **v)):
        np.testing.assert_array_equal(a, b)
    assert again[0].graph is not g and len(again[0].graph) == len(g)


def test_an_unpickled_body_with_wrong_roles_is_refused():
    from symgrad.scan import _restore_body

    g = sg.Graph()
    a = g.input("a")
    final, _ = sg.scan(lambda c, x: (c * a, None), a, length=2)
    body = g.attr(final.args[0].id, "body")
    graph = body.graph
    with pytest.raises(GraphError, match="carry 0 changes its shape|placeholder|node ids"):
        _restore_body(graph, body.captures, body.xs, body.carry, body.carry_out, body.ys)
    with pytest.raises(GraphError, match="node ids"):
        _restore_body(graph, body.carry, body.xs, body.captures, (99,), body.ys)
    with pytest.raises(GraphError, match="must be a Graph"):
        _restore_body("graph", body.carry, body.xs, body.captures, body.carry_out, body.ys)


# --- errors ----------------------------------------------------------------------------------


def _refused(g, error, match, call):
    before = snapshot(g)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(g) == before  # a failed scan leaves the graph as it was


def test_a_carry_that_changes_shape_is_refused_naming_it():
    g = sg.Graph()
    v = g.input("v", (3,))
    _refused(g, ShapeError, r"carry\[0\] of shape \(\)", lambda: sg.scan(
        lambda c, x: (sg.sum(c), None), v, length=2))  # fmt: skip
    _refused(g, ShapeError, r"carry\[1\] of shape \(3, 3\)", lambda: sg.scan(
        lambda c, x: ((c[0], sg.reshape(c[1], (3, 1)) * c[1]), None),
        (v, v), length=2))  # fmt: skip


def test_a_carry_of_another_structure_is_refused():
    g = sg.Graph()
    a = g.input("a")
    _refused(g, ArgumentError, "another structure", lambda: sg.scan(
        lambda c, x: ((c, c), None), a, length=2))  # fmt: skip
    _refused(g, ArgumentError, "another structure", lambda: sg.scan(
        lambda c, x: (c[0], None), (a, a), length=2))  # fmt: skip
    _refused(g, ArgumentError, "a pair", lambda: sg.scan(lambda c, x: c, a, length=2))


def test_sequences_of_different_lengths_are_refused():
    g = sg.Graph()
    a, xs, zs = g.input("a"), g.input("xs", (4,)), g.input("zs", (5,))
    _refused(g, ShapeError, r"leading axes of xs differ: \[4, 5\]", lambda: sg.scan(
        lambda c, x: (c, None), a, xs=(xs, zs)))  # fmt: skip
    _refused(g, ShapeError, "length=3", lambda: sg.scan(lambda c, x: (c, None), a, xs=xs, length=3))
    _refused(g, ShapeError, "scalar", lambda: sg.scan(lambda c, x: (c, None), a, xs=a))


def test_a_step_using_a_node_of_another_graph_is_refused():
    g, other = sg.Graph(), sg.Graph()
    a, b = g.input("a"), other.input("b")
    _refused(
        g, GraphError, "another graph", lambda: sg.scan(lambda c, x: (c * b, None), a, length=2)
    )
    _refused(g, GraphError, "another graph", lambda: sg.scan(lambda c, x: (b, None), a, length=2))
    _refused(g, GraphError, "inputs of its own", lambda: sg.scan(
        lambda c, x: (c * c.graph.input("w"), None), a, length=2))  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"length": None}, "give xs, or length"),
        ({"length": 0}, "at least 1"),
        ({"length": 2.5}, "length must be an int"),
        ({"length": True}, "length must be an int"),
        ({"length": 2, "checkpoint": "keep"}, "checkpoint must be"),
    ],
)
def test_bad_arguments_are_argument_errors(kwargs, match):
    g = sg.Graph()
    a = g.input("a")
    _refused(g, ArgumentError, match, lambda: sg.scan(lambda c, x: (c, None), a, **kwargs))


def test_bad_step_init_and_xs_are_argument_errors():
    g = sg.Graph()
    a = g.input("a")
    _refused(g, ArgumentError, "step must be a function", lambda: sg.scan(3, a, length=2))
    _refused(
        g,
        ArgumentError,
        "must hold an Expr",
        lambda: sg.scan(lambda c, x: (c, None), 1.0, length=2),
    )
    _refused(g, ArgumentError, "empty tuple", lambda: sg.scan(lambda c, x: (c, None), (), length=2))
    _refused(g, ArgumentError, "not an Expr or a number", lambda: sg.scan(
        lambda c, x: (c, "y"), a, length=2))  # fmt: skip


def test_the_sympy_bridge_refuses_a_scan_by_name():
    g = sg.Graph()
    a = g.input("a")
    final, _ = sg.scan(lambda c, x: (c * a, None), a, length=2)
    with pytest.raises(GraphError, match="scan"):
        sg.to_sympy(final)


# --- hostile attributes of the nodes themselves ----------------------------------------------


def _scan_node():
    g = sg.Graph()
    a, xs = g.input("a"), g.input("xs", (4,))
    final, _ = sg.scan(lambda c, x: (c * a + x, c), a, xs=xs)
    node = final.args[0]
    return g, node, dict(g.node(node.id)["attrs"])


@pytest.mark.parametrize("name", ["body", "length", "reverse", "checkpoint"])
@pytest.mark.parametrize("k", range(len(HOSTILE)))
def test_hostile_scan_attributes_are_refused_and_change_nothing(name, k):
    g, node, attrs = _scan_node()
    value = HOSTILE[k]
    if (
        name == "reverse"
        and isinstance(value, (bool, np.bool_))
        or (name == "reverse" and type(value) is int and value in (0, 1))
    ):
        return  # a valid direction
    before = snapshot(g)
    with pytest.raises((ShapeError, GraphError)):
        g.apply("scan", *node.args, **{**attrs, name: value})
    assert snapshot(g) == before


@pytest.mark.parametrize("k", range(len(HOSTILE)))
def test_hostile_parts_are_refused(k):
    g, node, _ = _scan_node()
    before = snapshot(g)
    with pytest.raises((ShapeError, GraphError)):
        g.apply("scan_out", node, part=HOSTILE[k])
    for part in [("final", 1), ("stack", 99), ("stack", -1), ("final", True), ("carry", 0)]:
        with pytest.raises(ShapeError):
            g.apply("scan_out", node, part=part)
    with pytest.raises(ShapeError, match="must be a scan"):
        g.apply("scan_out", g.inputs["a"], part=("final", 0))
    assert snapshot(g) == before


def test_operands_that_do_not_fit_the_body_are_refused():
    g, node, attrs = _scan_node()
    a, xs = g.inputs["a"], g.inputs["xs"]
    wrong = [(xs, xs, a), (a, a, a), (a, xs), (a, xs, a, a)]
    for operands in wrong:
        with pytest.raises(ShapeError, match="do not fit the body"):
            g.apply("scan", *operands, **attrs)
    with pytest.raises(ShapeError, match="do not fit the body"):
        g.apply("scan", *node.args, **{**attrs, "length": 5})


# --- checkpoint=k: segments --------------------------------------------------------------------


def _decay(g, checkpoint, n=7, with_xs=True):
    a, c0 = g.input("a"), g.input("c0")
    xs = g.input("xs", (n,)) if with_xs else None

    def step(c, x):
        c = sg.sin(c * a + (0.0 if x is None else x))
        return c, (c * c, c + a)

    final, (p, q) = sg.scan(step, c0, xs=xs, length=None if with_xs else n, checkpoint=checkpoint)
    return final + sg.sum(p * q) + sg.sum(q), [a, c0] + ([xs] if with_xs else [])


@pytest.mark.parametrize("k", [1, 2, 3, 7, 50])
@pytest.mark.parametrize("with_xs", [True, False])
def test_every_k_th_carry_gives_the_values_and_derivatives_of_store(k, with_xs):
    g, ref = sg.Graph(), sg.Graph()
    loss, wrt = _decay(g, k, with_xs=with_xs)
    ref_loss, ref_wrt = _decay(ref, "store", with_xs=with_xs)
    v = {"a": 0.7, "c0": 0.3, "xs": np.linspace(0.0, 1.0, 7)}
    v = v if with_xs else {"a": 0.7, "c0": 0.3}
    got = sg.evaluate([loss, *sg.build_grad(loss, wrt), *sg.hvp(loss, wrt[:2], [1.0, -0.5])], **v)
    want = sg.evaluate(
        [ref_loss, *sg.build_grad(ref_loss, ref_wrt), *sg.hvp(ref_loss, ref_wrt[:2], [1.0, -0.5])],
        **v,
    )
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)


def stacked_elements(outputs) -> int:
    """Elements of every per-step stack the program of ``outputs`` keeps, scan bodies included
    (what store, recompute and segments trade: memory counted, not measured)."""
    from symgrad.program import Program

    flat = outputs if isinstance(outputs, list) else [outputs]
    programs = [Program.of(flat[0].graph, [e.id for e in flat])]
    total = 0
    while programs:
        program = programs.pop()
        for i, parts in program.parts.items():
            attrs = dict(program.graph.node(i)["attrs"])
            body = attrs["body"]
            stacked = tuple(j for kind, j in parts if kind == "stack")
            total += sum(attrs["length"] * int(np.prod(body.shape(j))) for j in stacked)
            programs.append(body.program(stacked))
    return total


def test_recompute_and_segments_keep_fewer_stacked_values_than_store():
    kept = {}
    for checkpoint in ("store", "recompute", 10):
        g = sg.Graph()
        w, h0 = g.input("W", (4, 4)), g.input("h0", (4,))

        def step(h, _, w=w):
            h = sg.tanh(w @ h)
            return sg.sigmoid(h) * h, None

        final, _ = sg.scan(step, h0, length=100, checkpoint=checkpoint)
        kept[checkpoint] = stacked_elements(sg.build_grad(sg.sum(final), [w, h0]))
    # store: carries and intermediates at all 100 steps; recompute: the 100 carries of 4;
    # segments of 10: 10 carries between segments, and one segment's 10 steps stored.
    assert kept["recompute"] == 100 * 4
    assert kept["store"] >= 4 * kept["recompute"]
    assert kept[10] <= 10 * 4 + kept["store"] // 10


# --- DOT ---------------------------------------------------------------------------------------


def test_dot_draws_each_body_as_a_cluster_fed_by_the_scans_operands():
    g = sg.Graph()
    a, x0 = g.input("a"), g.input("x0")

    def outer_step(c, _):
        c2, _ = sg.scan(lambda d, __: (d * a, None), c, length=3)
        return sg.sin(c2), None

    final, _ = sg.scan(outer_step, x0, length=4)
    text = sg.to_dot(final)
    outer = final.args[0].id
    outer_body = g.attr(outer, "body")
    [inner] = [i for i in range(len(outer_body.graph)) if outer_body.graph.node(i)["op"] == "scan"]
    assert (
        f"subgraph cluster_n{outer}b {{" in text and f'label="body of n{outer}: 4 steps";' in text
    )
    assert f"subgraph cluster_n{outer}b{inner}b {{" in text  # the nested body, by its path
    assert text.count("[style=dashed]") == 2 + 2  # (x0, a) into the outer, (carry, a) inner
    assert 'xlabel="carry0"' in text and text == sg.to_dot(final)  # deterministic
    assert "body=" not in text  # the body is drawn, not printed


def test_optimize_folds_inside_bodies_and_keeps_the_stacks_it_reads():
    g = sg.Graph()
    a, xs = g.input("a"), g.input("xs", (5,))

    def step(c, x):
        waste = c * 1.0 + 0.0  # folds to c
        return sg.log(1.0 + sg.exp(waste * a + x)), waste * 2.0

    final, ys = sg.scan(step, a, xs=xs)
    outputs = [final, ys, *sg.build_grad(final + sg.sum(ys), [a, xs])]
    optimized = sg.optimize(outputs)

    def body_ops(outs):
        graph = outs[0].graph
        found = [graph.attr(i, "body") for i in range(len(graph)) if graph.node(i)["op"] == "scan"]
        return [[b.graph.node(i)["op"] for i in range(len(b.graph))] for b in found]

    before, after = body_ops(outputs), body_ops(optimized)
    assert len(after) == len(before) == 2
    assert sum(map(len, after)) < sum(map(len, before))
    assert "log1p" in after[0] and "log" not in after[0]  # the stable form, in the body
    v = {"a": 0.3, "xs": np.linspace(-1.0, 2.0, 5)}
    for got, want in zip(sg.evaluate(optimized, **v), sg.evaluate(outputs, **v)):
        np.testing.assert_allclose(got, want, rtol=1e-14)


# --- compiled: the LLVM backend runs the loop around its body's kernel --------------------------


def _nested(g):
    a, x0 = g.input("a"), g.input("x0")

    def outer_step(c, _):
        c2, ys = sg.scan(lambda d, __: (sg.cos(d * a) + 0.1, d), c, length=3)
        return sg.sin(c2) + sg.sum(ys), c2

    final, ys = sg.scan(outer_step, x0, length=4, checkpoint="recompute")
    loss = final + sg.sum(ys * ys)
    return [loss, *sg.build_grad(loss, [a, x0]), *sg.hessian(loss, [a, x0])[0]]


def _tuples(g):
    xs, zs = g.input("xs", (4,)), g.input("zs", (4, 2))
    w = g.input("w", (2,))

    def step(carry, x):
        s, v = carry
        x1, z = x
        return (s + x1 * sg.sum(v), v * z + w), (s * x1, sg.sum(v * w))

    (s, v), (p, q) = sg.scan(step, (g.const(0.0), g.const(np.ones(2))), xs=(xs, zs))
    loss = s + sg.sum(v) + sg.sum(p * q)
    return [s, v, p, q, *sg.build_grad(loss, [xs, zs, w])]


def _rnn_outputs(g, checkpoint):
    _, (h, ys), params = _rnn(g, checkpoint=checkpoint)
    loss = sg.sum(h) + sg.sum(ys * ys)
    direction = [np.full(p.shape, 0.5) for p in params]
    return [loss, h, ys, *sg.build_grad(loss, list(params)), *sg.hvp(loss, list(params), direction)]


SCENARIOS = {
    "rnn-store": lambda g: _rnn_outputs(g, "store"),
    "rnn-recompute": lambda g: _rnn_outputs(g, "recompute"),
    "rnn-segments": lambda g: _rnn_outputs(g, 4),
    "nested": _nested,
    "tuples": _tuples,
    "decay": lambda g: _decay_outputs(g),
}


def _decay_outputs(g):
    loss, wrt = _decay(g, "store")
    return [loss, *sg.build_grad(loss, wrt)]


def _values(fn, seed=0):
    rng = np.random.default_rng(seed)
    graph_inputs = fn.graph.inputs
    return {n: rng.normal(size=graph_inputs[n].shape) * 0.5 if n in graph_inputs else 0.3
            for n in fn.inputs}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("optimize", [True, False])
def test_compiled_scans_equal_the_interpreter(name, optimize):
    g = sg.Graph()
    outputs = SCENARIOS[name](g)
    fn = sg.compile(outputs, optimize=optimize)
    ref = sg.compile(outputs, backend="numpy", optimize=False)
    values = _values(ref)
    for got, want in zip(fn(**values), ref(**values)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_a_compiled_scan_pickles_and_runs_again():
    g = sg.Graph()
    fn = sg.compile(_rnn_outputs(g, "store"))
    again = pickle.loads(pickle.dumps(fn))
    values = _rnn_values()
    for got, want in zip(again(**values), fn(**values)):
        np.testing.assert_array_equal(got, want)


# --- batches of points: a scalar graph holding a scan ------------------------------------------


def _scalar_loop(g):
    a, b = g.input("a"), g.input("b")
    final, ys = sg.scan(lambda c, x: (sg.sin(c * a) + b, c * c), g.const(0.5), length=6)
    loss = final + sg.sum(ys)
    return [loss, sg.build_grad(loss, [a, b]), sg.hessian(loss, [a, b])]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_scalar_graph_with_a_scan_runs_over_a_batch_of_points(threads):
    g = sg.Graph()
    outputs = _scalar_loop(g)
    fn = sg.compile(outputs, threads=threads)
    ref = sg.compile(outputs, backend="numpy")
    assert not fn.tensor
    a = np.linspace(0.1, 2.0, 1200).reshape(30, 40)  # chunks for both threads
    b = np.linspace(-1.0, 1.0, 40)  # broadcast against a
    got, want = fn(a=a, b=b), ref(a=a, b=b)
    for x, y in zip(got, want):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-14)
    assert got[2].shape == (30, 40, 2, 2)
    # One point is the same as that point of the batch, and scalars give 0-d results.
    one = fn(a=float(a[3, 5]), b=float(b[5]))
    np.testing.assert_allclose(one[1], got[1][3, 5], rtol=1e-15)
    assert one[0].shape == ()
