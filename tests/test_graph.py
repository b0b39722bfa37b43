"""Tests of symgrad/graph.py: hash-consed node creation, ids, node data, Expr handles, errors.

DESIGN.md §3 "Nodes": a node's key is ``(op, args, attrs)``, an existing key is never built again
(commutative ops sort their operands), ids grow with creation so id order is a topological order,
and operand order lives in ``args``, not in edges. §5: bad input raises a SymgradError that names
what is wrong, and a failed call changes nothing.
"""

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given

import symgrad as sg
from symgrad.errors import GraphError, SymgradError
from symgrad.ops import OPS
from tests.strategies import expressions
from tests.toolbox import BINARY_OPS, ELEMENTWISE_OPS

NODE_FIELDS = {"op", "args", "attrs", "shape", "role", "order"}
COMMUTATIVE = [n for n in BINARY_OPS if OPS[n].commutative]
ORDERED = [n for n in BINARY_OPS if not OPS[n].commutative]


def snapshot(g):
    """Everything a failed call must leave as it was: node data, edges, inputs."""
    nodes = {i: dict(d) for i, d in g.nx.nodes(data=True)}
    return nodes, sorted(g.nx.edges), list(g.inputs)


def node_keys(g):
    return [(d["op"], d["args"], d["attrs"]) for _, d in g.nx.nodes(data=True)]


# --- hash-consing -----------------------------------------------------------------------------


def test_identical_node_is_built_once(g):
    x, y = g.input("x"), g.input("y")
    first = sg.sin(x * y + 2.0)
    size = len(g)
    again = sg.sin(x * y + 2.0)
    assert again.id == first.id
    assert len(g) == size == 6  # x, y, x*y, 2, +, sin


def test_input_by_name_is_one_node(g):
    x = g.input("x")
    assert g.input("x").id == x.id
    assert len(g) == 1


@pytest.mark.parametrize("name", COMMUTATIVE)
def test_commutative_op_sorts_operands(g, name):
    x, y = g.input("x"), g.input("y")
    xy, yx = g.apply(name, x, y), g.apply(name, y, x)
    assert xy.id == yx.id
    assert g.node(xy.id)["args"] == (x.id, y.id)
    assert len(g) == 3


@pytest.mark.parametrize("name", ORDERED)
def test_ordered_op_keeps_operand_order(g, name):
    x, y = g.input("x"), g.input("y")
    xy, yx = g.apply(name, x, y), g.apply(name, y, x)
    assert xy.id != yx.id
    assert g.node(xy.id)["args"] == (x.id, y.id)
    assert g.node(yx.id)["args"] == (y.id, x.id)
    assert len(g) == 4


def test_mul_is_commutative_sub_is_not(g):
    x, y = g.input("x"), g.input("y")
    assert (x * y).id == (y * x).id
    assert (x + y).id == (y + x).id
    assert (x - y).id != (y - x).id
    assert (x / y).id != (y / x).id


def test_signed_zero_constants_are_distinct(g):
    pos, neg = g.const(0.0), g.const(-0.0)
    assert pos.id != neg.id
    assert not math.copysign(1.0, pos.value) < 0
    assert math.copysign(1.0, neg.value) < 0
    x = g.input("x")
    assert (x + 0.0).id != (x + -0.0).id


def test_nan_constants_dedupe(g):
    a, b = g.const(float("nan")), g.const(math.nan)
    assert a.id == b.id
    assert math.isnan(a.value)
    x = g.input("x")
    assert (x * math.nan).id == (x * float("nan")).id
    assert len(g) == 3


def test_number_types_give_one_constant(g):
    ids = {g.const(v).id for v in (2, 2.0, np.float64(2), np.int64(2), np.float32(2))}
    assert len(ids) == 1
    assert g.const(2).value == 2.0 and type(g.const(2).value) is float


def test_no_key_twice_and_data_matches_key(g):
    x, y = g.input("x"), g.input("y")
    exprs = [x * y, y * x, x - y, sg.sin(x), sg.sin(x), x**2, x**2.0, sg.where(x < y, x, y)]
    assert len(exprs) > len({e.id for e in exprs})
    keys = node_keys(g)
    assert len(keys) == len(set(keys))


@given(expressions(max_steps=12))
def test_random_graphs_hold_each_key_once(f):
    keys = node_keys(f.graph)
    assert len(keys) == len(set(keys))


# --- ids, order and edges -----------------------------------------------------------------------


def check_topological(g):
    assert list(g.nx.nodes) == list(range(len(g)))
    assert all(u < v for u, v in g.nx.edges)
    assert nx.is_directed_acyclic_graph(g.nx)


def check_edges_match_args(g):
    for i, data in g.nx.nodes(data=True):
        assert set(g.nx.predecessors(i)) == set(data["args"]), i
    assert g.nx.number_of_edges() == sum(len(set(d["args"])) for _, d in g.nx.nodes(data=True))


def test_ids_follow_creation(g):
    x = g.input("x")
    s = sg.sin(x)
    c = g.const(3.0)
    p = s * c
    assert [x.id, s.id, c.id, p.id] == [0, 1, 2, 3]
    assert g.input("y").id == 4


def test_ids_are_topological_with_gradients(g):
    f = sg.parse("sin(x*y) * exp(-x) + y**3 / (1 + x*x)", graph=g)
    xs = list(g.inputs.values())
    sg.hessian(f, xs)
    check_topological(g)
    check_edges_match_args(g)


@given(expressions(max_steps=12))
def test_random_graphs_are_topological(f):
    sg.build_grad(f, list(f.graph.inputs.values()))
    check_topological(f.graph)
    check_edges_match_args(f.graph)


def test_square_has_one_edge_and_two_args(g):
    x = g.input("x")
    sq = x * x
    assert g.node(sq.id)["args"] == (x.id, x.id)
    assert list(g.nx.in_edges(sq.id)) == [(x.id, sq.id)]
    assert g.nx.number_of_edges() == 1
    w = sg.where(x, sq, sq)
    assert g.node(w.id)["args"] == (x.id, sq.id, sq.id)
    assert g.nx.in_degree(w.id) == 2


def test_operand_order_lives_in_args(g):
    x, y = g.input("x"), g.input("y")
    d = y - x
    assert g.node(d.id)["args"] == (y.id, x.id)
    assert d.args == (y, x)
    assert sg.evaluate(d, x=1.0, y=5.0) == 4.0


# --- node attributes --------------------------------------------------------------------------


def test_node_attributes(g):
    x = g.input("x")
    c = g.const(2.5)
    m = x * c
    assert g.node(x.id) == {
        "op": "input", "args": (), "attrs": (("name", "x"),), "shape": (), "role": "primal",
        "order": 0,
    }  # fmt: skip
    assert g.node(c.id) == {
        "op": "const", "args": (), "attrs": (("value", 2.5),), "shape": (), "role": "primal",
        "order": 0,
    }  # fmt: skip
    assert g.nx.nodes[m.id] == {
        "op": "mul", "args": (x.id, c.id), "attrs": (), "shape": (), "role": "primal",
        "order": 0,
    }  # fmt: skip
    assert (x.name, x.value, c.name, c.value) == ("x", None, None, 2.5)
    assert (m.op, m.shape, m.args) == ("mul", (), (x, c))


def test_gradient_nodes_carry_role_and_order(g):
    x = g.input("x")
    f = sg.sin(x)
    primal = set(g.nx.nodes)
    [d] = sg.build_grad(f, [x])
    first = set(g.nx.nodes) - primal
    [[d2]] = sg.hessian(f, [x])
    second = set(g.nx.nodes) - primal - first
    assert d.id in first and d2.id in second
    assert {g.node(i)["op"] for i in first} == {"const", "cos", "mul"}  # 1 * cos(x)
    stamps = {i: (g.node(i)["role"], g.node(i)["order"]) for i in g.nx.nodes}
    assert {stamps[i] for i in primal} == {("primal", 0)}
    assert {stamps[i] for i in first} == {("grad", 1)}
    assert {stamps[i] for i in second} == {("grad", 2)}
    for i, data in g.nx.nodes(data=True):
        assert set(data) == NODE_FIELDS, i


def test_inputs_in_creation_order(g):
    for name in ("zeta", "alpha", "m", "b_2"):
        g.input(name)
    g.input("alpha")
    sg.parse("q + alpha + zeta", graph=g)
    assert list(g.inputs) == ["zeta", "alpha", "m", "b_2", "q"]
    assert all(e.op == "input" and e.name == n for n, e in g.inputs.items())
    assert [e.id for e in g.inputs.values()] == sorted(e.id for e in g.inputs.values())


# --- Expr operators ---------------------------------------------------------------------------


def structure(e):
    """(op, operands as op-or-name-or-value) of one node."""
    return e.op, tuple(a.name or (a.value if a.op == "const" else a.op) for a in e.args)


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda x, y: x + y, ("add", ("x", "y"))),
        (lambda x, y: x - y, ("sub", ("x", "y"))),
        (lambda x, y: x * y, ("mul", ("x", "y"))),
        (lambda x, y: x / y, ("div", ("x", "y"))),
        (lambda x, y: x**y, ("pow", ("x", "y"))),
        (lambda x, y: -x, ("neg", ("x",))),
        (lambda x, y: x - 2, ("sub", ("x", 2.0))),
        (lambda x, y: 2 - x, ("sub", (2.0, "x"))),
        (lambda x, y: 2 / x, ("div", (2.0, "x"))),
        (lambda x, y: x / 2, ("div", ("x", 2.0))),
        (lambda x, y: 2**x, ("pow", (2.0, "x"))),
        (lambda x, y: x**2, ("pow", ("x", 2.0))),
        (lambda x, y: 3 + x, ("add", ("x", 3.0))),
        (lambda x, y: 3 * x, ("mul", ("x", 3.0))),
        (lambda x, y: x < y, ("lt", ("x", "y"))),
        (lambda x, y: x <= y, ("le", ("x", "y"))),
        (lambda x, y: x > y, ("gt", ("x", "y"))),
        (lambda x, y: x >= y, ("ge", ("x", "y"))),
        (lambda x, y: 2 < x, ("gt", ("x", 2.0))),  # noqa: SIM300
        (lambda x, y: x >= 0.5, ("ge", ("x", 0.5))),
    ],
)
def test_operators(g, build, expected):
    x, y = g.input("x"), g.input("y")
    e = build(x, y)
    assert isinstance(e, sg.Expr) and e.graph is g
    assert structure(e) == expected


def test_operator_values(g):
    x, y = g.input("x"), g.input("y")
    outs = [x - y, 2 - x, x / y, 2 / x, x**y, 2**x, -x, +x, x < y, x >= y, 2 > x]  # noqa: SIM300
    got = sg.evaluate(outs, x=3.0, y=2.0)
    assert [float(v) for v in got] == [1.0, -1.0, 1.5, 2 / 3, 9.0, 8.0, -3.0, 3.0, 0, 1, 0]


def test_unary_plus_is_the_same_node(g):
    x = g.input("x")
    assert (+x).id == x.id
    assert len(g) == 1


@pytest.mark.parametrize(
    "number", [np.float64(2), np.float32(2), np.int64(2), np.int32(2)], ids=repr
)
def test_numpy_scalars_stay_exprs(g, number):
    x = g.input("x")
    for e in (number * x, x * number, number + x, number - x, number / x, number**x):
        assert isinstance(e, sg.Expr), type(e)
    assert (number * x).id == (x * 2.0).id
    assert (number - x).args == (g.const(2.0), x)


# --- sg.<function> for every op ---------------------------------------------------------------


@pytest.mark.parametrize("name", ELEMENTWISE_OPS)
def test_function_for_every_op(g, name):
    xs = [g.input(f"x{k}") for k in range(OPS[name].arity)]
    e = getattr(sg, name)(*xs)
    assert isinstance(e, sg.Expr) and e.graph is g
    assert e.op == name
    assert e.args == tuple(xs)  # created in order, so a commutative sort keeps it
    assert e.id == g.apply(name, *xs).id


@pytest.mark.parametrize("name", ELEMENTWISE_OPS)
def test_function_takes_numbers_beside_an_expr(g, name):
    x = g.input("x")
    operands = [x] + [1.5] * (OPS[name].arity - 1)
    e = getattr(sg, name)(*operands[::-1])
    assert e.op == name
    assert {a.op for a in e.args} <= {"input", "const"}
    with pytest.raises(GraphError, match=name):
        getattr(sg, name)(*[1.5] * OPS[name].arity)


# --- comparisons, equality, truth ------------------------------------------------------------


def test_equality_compares_handles(g):
    x, y = g.input("x"), g.input("y")
    assert (x == g.input("x")) is True
    assert (x * y == y * x) is True
    assert (x == y) is False
    assert (x != y) is True
    assert (x == 0) is False
    other = sg.Graph().input("x")
    assert other.id == x.id and (x == other) is False
    assert len(g) == 3  # == built nothing


def test_exprs_are_dict_keys(g):
    x, y = g.input("x"), g.input("y")
    table = {x: "x", y * x: "xy"}
    assert table[g.inputs["x"]] == "x"
    assert table[x * y] == "xy"
    assert len({x, g.input("x"), x * 1.0}) == 2


def test_bool_raises(g):
    x, y = g.input("x"), g.input("y")
    with pytest.raises(SymgradError, match="where"):
        bool(x < y)
    with pytest.raises(SymgradError):
        if x:
            pass
    with pytest.raises(SymgradError):
        0 < x < 1  # noqa: B015  (a chained comparison asks for a truth value)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["1x", "a b", "__class__", "__x", "", "x-y", "x\n", "é", 3, None, b"x"], ids=repr
)
def test_bad_input_names(g, name):
    with pytest.raises(GraphError, match="input name") as info:
        g.input(name)
    assert isinstance(info.value, ValueError)
    assert len(g) == 0 and g.inputs == {}


@pytest.mark.parametrize("name", ["x", "_", "_x1", "X_2y", "pi", "e"])
def test_good_input_names(g, name):
    assert g.input(name).name == name


@pytest.mark.parametrize("op", ["nope", "input", "const", "", "SIN", ["sin"], None], ids=repr)
def test_unknown_op(g, op):
    x = g.input("x")
    with pytest.raises(GraphError, match="unknown op"):
        g.apply(op, x)
    assert len(g) == 1


@pytest.mark.parametrize("name, count", [("sin", 2), ("sin", 0), ("add", 1), ("where", 2)])
def test_wrong_arity(g, name, count):
    x = g.input("x")
    with pytest.raises(GraphError, match=rf"{name} takes {OPS[name].arity} operands, got {count}"):
        g.apply(name, *[x] * count)
    with pytest.raises(GraphError, match=name):
        getattr(sg, name)(*[x] * count) if count else getattr(sg, name)(x, x, x, x)
    assert len(g) == 1


def test_unknown_attribute(g):
    x = g.input("x")
    with pytest.raises(GraphError, match="sin.*'base'"):
        g.apply("sin", x, base=2.0)
    assert len(g) == 1


@pytest.mark.parametrize(
    "build, op, pos",
    [
        (lambda x, o: x * o, "mul", 1),
        (lambda x, o: o - x, "sub", 1),  # the foreign graph's own __sub__: x is its operand 1
        (lambda x, o: x - o, "sub", 1),
        (lambda x, o: sg.atan2(x, o), "atan2", 1),
        (lambda x, o: sg.where(x, 1.0, o), "where", 2),
        (lambda x, o: x.graph.apply("pow", o, x), "pow", 0),
    ],
)
def test_operand_from_another_graph(g, build, op, pos):
    x = g.input("x")
    other = sg.Graph().input("y")
    before = snapshot(g), snapshot(other.graph)
    with pytest.raises(GraphError, match=rf"{op}: operand {pos} belongs to another graph"):
        build(x, other)
    assert (snapshot(g), snapshot(other.graph)) == before


@pytest.mark.parametrize(
    "value, kind", [("a", "str"), (None, "NoneType"), (True, "bool"), (np.bool_(False), "bool"),
                    ([1.0], "list"), (1j, "complex")],
    ids=repr,
)  # fmt: skip
def test_non_number_operand(g, value, kind):
    x = g.input("x")
    with pytest.raises(GraphError, match=rf"add: operand 1 is a {kind}"):
        x + value
    with pytest.raises(GraphError, match=rf"sub: operand 0 is a {kind}"):
        g.apply("sub", value, x)
    with pytest.raises(GraphError, match=rf"where: operand 2 is a {kind}"):
        sg.where(x, 5.0, value)
    assert len(g) == 1  # the constant 5.0 made for operand 1 was undone too


def test_constant_too_large(g):
    x = g.input("x")
    with pytest.raises(GraphError, match="mul: operand 1.*too large"):
        x * 10**400
    with pytest.raises(GraphError, match="too large"):
        g.const(-(10**400))
    assert len(g) == 1
    assert (x * 10**300).args[1].value == 1e300


def test_failed_call_keeps_graph(g):
    x, y = g.input("x"), g.input("y")
    sg.sin(x * y)
    before = snapshot(g)
    for bad in (lambda: x + "s", lambda: g.apply("nope", x), lambda: sg.atan2(x, 2.0, 3.0)):
        with pytest.raises(GraphError):
            bad()
    assert snapshot(g) == before
    assert (x * 7.0).id == len(before[0]) + 1  # const 7.0 first, then the product


# --- atomic and max_nodes ---------------------------------------------------------------------


def test_atomic_rollback(g):
    x, y = g.input("x"), g.input("y")
    f = sg.exp(x * y)
    before = snapshot(g)
    with pytest.raises(RuntimeError, match="boom"), g.atomic():
        z = g.input("z")
        sg.sin(f + z) * x
        g.const(42.0)
        assert len(g) > len(before[0])
        raise RuntimeError("boom")
    assert snapshot(g) == before
    assert all(set(g.nx.successors(i)) <= set(before[0]) for i in g.nx.nodes)
    # The next node takes the first free id, and undone keys are free again.
    w = g.input("w")
    assert w.id == len(before[0])
    assert g.input("z").id == w.id + 1
    assert (x * y).id == f.args[0].id
    assert g.const(42.0).id == w.id + 2
    check_topological(g)


def test_atomic_keeps_work_that_succeeds(g):
    x = g.input("x")
    with g.atomic():
        s = sg.sin(x)
    assert len(g) == 2 and g.node(s.id)["op"] == "sin"


def test_build_grad_failure_changes_nothing(g):
    x = g.input("x")
    f = sg.sin(x) * sg.cos(x)
    before = snapshot(g)
    with pytest.raises(SymgradError):
        sg.build_grad(f, [x], seed="two")
    assert snapshot(g) == before


def test_max_nodes(g):
    small = sg.Graph(max_nodes=4)
    x, y = small.input("x"), small.input("y")
    p = x * y
    assert (y * x).id == p.id  # an existing node costs nothing
    before = snapshot(small)
    with pytest.raises(GraphError, match="max_nodes=4"):
        x - y - 1.0
    s = x - y  # the 4th node still fits
    with pytest.raises(GraphError, match="max_nodes=4") as info:
        small.input("z")
    assert isinstance(info.value, ValueError)
    assert len(small) == 4 and list(small.inputs) == ["x", "y"]
    assert snapshot(small)[0] == {**before[0], s.id: small.node(s.id)}


def test_max_nodes_failure_undoes_the_constant():
    small = sg.Graph(max_nodes=3)
    x = small.input("x")
    sg.sin(x)
    with pytest.raises(GraphError, match="max_nodes"):
        x + 2.0  # the constant is the 3rd node, the sum would be the 4th
    assert len(small) == 2
    assert small.const(2.0).id == 2
