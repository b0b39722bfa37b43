"""Probes of graph creation under hostile input (issue 10): the limits of ``Graph``, hostile
attribute values for every op with attributes, indices that are arrays or lists, ``abs``,
mutation of ``g.nx`` and the per-node element limit ``max_elements``.

Every bad input must end in a ShapeError or GraphError that names the op (or the argument), never
another exception, and the graph must be exactly as it was before the failed call (node count and
``list(g.nx.nodes(data=True))``, and more: tests/toolbox.py ``snapshot``). ``EXAMPLES`` and
``HOSTILE`` (tests/toolbox.py) are shared with test_pickle.py, which feeds the same values to
unpickling.
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import GraphError, ShapeError, SymgradError
from symgrad.graph import DEFAULT_MAX_ELEMENTS, MAX_ELEMENTS, NX_MUTATORS
from symgrad.ops import MAX_NDIM, OPS
from tests.toolbox import (
    EXAMPLES,
    HOSTILE,
    LOOP_OPS,
    Evil,
    example,
    hostile_cases,
    input_values,
    snapshot,
)


def assert_refused(g: sg.Graph, call, *words: str):
    """``call()`` raises a ShapeError or GraphError naming ``words``; the graph is unchanged."""
    before = snapshot(g)
    with pytest.raises((ShapeError, GraphError)) as info:
        call()
    message = str(info.value)
    assert "bad attributes" not in message  # the safety net of Graph.create is never needed
    for word in words:
        assert word in message, message
    assert snapshot(g) == before
    return message


# --- the registry: every op with attributes has an example and a normalize -----------------


def test_every_op_with_attributes_has_an_example_and_a_normalize():
    # Loop ops' attributes hold a body graph: their probes are in tests/test_scan.py.
    with_attrs = {
        name for name, op in OPS.items() if op.attrs and op.arity and name not in LOOP_OPS
    }
    assert with_attrs == set(EXAMPLES)
    assert all(OPS[name].normalize is not None for name in with_attrs)


@pytest.mark.parametrize("op", sorted(EXAMPLES))
def test_examples_are_valid(op):
    g, operands, attrs = example(op)
    e = g.apply(op, *operands, **attrs)
    values = input_values(operands, np.ones)
    assert np.asarray(sg.evaluate(e, **values)).shape == e.shape


# --- hostile attribute values through g.apply ----------------------------------------------


@pytest.mark.parametrize(("op", "attr"), hostile_cases())
def test_hostile_attribute_values_are_refused_or_valid(op, attr):
    refused = 0
    for value in HOSTILE:
        g, operands, attrs = example(op)
        before = snapshot(g)
        try:
            e = g.apply(op, *operands, **{**attrs, attr: value})
        except (ShapeError, GraphError) as err:
            refused += 1
            assert str(err).startswith(op) and "bad attributes" not in str(err), str(err)
            assert snapshot(g) == before
            continue
        # Accepted: a valid node, whose canonical attrs normalize to themselves and evaluate.
        node = g.node(e.id)
        canonical = dict(node["attrs"])
        shapes = tuple(s.shape for s in operands)
        assert OPS[op].normalize(op, shapes, canonical) == canonical
        values = input_values(operands, np.ones)
        assert np.asarray(sg.evaluate(e, **values)).shape == e.shape
    assert refused >= len(HOSTILE) // 2  # most hostile values are refused


def test_conv_stride_zero_and_negative_padding_are_shape_errors():
    g = sg.Graph()
    x, w = g.input("x", (1, 1, 4, 4)), g.input("w", (1, 1, 2, 2))
    assert_refused(g, lambda: sg.conv2d(x, w, stride=0), "conv2d", "stride")
    assert_refused(g, lambda: sg.conv2d(x, w, stride=(1, 0)), "conv2d", "stride")
    assert_refused(g, lambda: sg.conv2d(x, w, padding=-1), "conv2d", "padding")
    # An array operand becomes a constant: the failure removes it again.
    assert_refused(g, lambda: g.apply("conv2d", x, np.ones((1, 1, 2, 2)), stride=0), "stride")
    assert_refused(g, lambda: sg.max_pool2d(x, kernel_size=0), "max_pool2d", "kernel_size")
    assert_refused(g, lambda: sg.avg_pool2d(x, stride=(2, 2, 2)), "avg_pool2d", "stride")


def test_shape_attributes_must_be_positive():
    g = sg.Graph()
    x = g.input("x", (2,))
    assert_refused(g, lambda: g.apply("embed", x, index=(slice(None),), shape=(-1,)), "embed")
    assert_refused(g, lambda: sg.broadcast_to(x, (0, 2)), "broadcast_to")
    assert_refused(g, lambda: x.reshape(-2, -1), "reshape")
    assert_refused(g, lambda: x.reshape((1,) * (MAX_NDIM + 1)), "reshape", "entries")


def test_huge_ints_in_messages_do_not_break_them():
    g = sg.Graph()
    x = g.input("x", (3,))
    assert_refused(g, lambda: x[10**5000], "getitem", "bits")
    assert_refused(g, lambda: g.input("y", (10**5000,)), "input 'y'")
    assert_refused(g, lambda: sg.sum(x, axis=Evil()), "sum", "axis", "Evil")


# --- Graph(max_nodes=, max_elements=) -------------------------------------------------------

BAD_LIMITS = [None, "5", 1.5, 5.0, True, False, np.bool_(True), 0, -1, [5], (5,), np.array(5),
              1 + 0j, float("nan"), Evil()]  # fmt: skip


@pytest.mark.parametrize("name", ["max_nodes", "max_elements"])
@pytest.mark.parametrize("value", BAD_LIMITS, ids=lambda v: type(v).__name__)
def test_bad_limits_are_graph_errors_naming_the_argument(name, value):
    with pytest.raises(GraphError, match=f"Graph: {name} must be a positive int"):
        sg.Graph(**{name: value})
    g = sg.Graph(max_nodes=7, max_elements=11)
    with pytest.raises(GraphError, match=name):
        setattr(g, name, value)
    assert (g.max_nodes, g.max_elements) == (7, 11)


def test_max_elements_has_a_ceiling():
    with pytest.raises(GraphError, match=f"at most {MAX_ELEMENTS}"):
        sg.Graph(max_elements=MAX_ELEMENTS + 1)
    assert sg.Graph(max_elements=MAX_ELEMENTS).max_elements == MAX_ELEMENTS


def test_good_limits_are_plain_ints():
    g = sg.Graph(max_nodes=np.int64(5), max_elements=np.int32(100))
    assert (g.max_nodes, g.max_elements) == (5, 100)
    assert type(g.max_nodes) is int and type(g.max_elements) is int
    assert sg.Graph().max_elements == DEFAULT_MAX_ELEMENTS == 2**28


# --- abs ----------------------------------------------------------------------------------


def test_python_abs_builds_the_abs_node():
    g = sg.Graph()
    x = g.input("x", (3,))
    assert abs(x).op == "abs" and abs(x).id == sg.abs(x).id
    got = sg.evaluate(abs(x - 1.0), x=np.array([-2.0, 1.0, 3.0]))
    assert np.array_equal(got, [3.0, 0.0, 2.0])
    [d] = sg.build_grad(abs(g.input("s")), [g.input("s")])
    assert float(sg.evaluate(d, s=-2.0)) == -1.0


# --- getitem with arrays, lists and other objects -------------------------------------------

BAD_INDICES = [
    np.array([0, 3]), np.array([True, False, True]), np.array(1.5), [0, -4], [], None, 1.5,
    "a", b"a", True, np.bool_(False), 3, -4, 2**41, 10**5000, (0, np.array([1])), (0, 0),
    (Ellipsis, Ellipsis), slice(0.5), slice("a", None), slice(None, None, 0), slice(5, 9),
    slice(np.array([1]), None), {"a": 1}, {0}, object(), Evil(), 1 + 1j, (("s", 0, 0, 1),),
    (("s", 0, 1, 0),), (("s", "a", 1, 1),), (("s", np.array([1]), 1, 1),),
    ((np.array([0, 1]), 0, 1, 1),), (Evil(), 0, 1, 1), sg.Graph().input("i"), [[0], [1.5]],
    ([0], [1]), [0, None], np.array(["a"]), [Evil()],
]  # fmt: skip


@pytest.mark.parametrize("index", BAD_INDICES, ids=lambda v: type(v).__name__)
def test_bad_index_is_a_shape_error_naming_the_index(index):
    g = sg.Graph()
    x = g.input("x", (3,))
    message = assert_refused(g, lambda: x[index], "getitem")
    assert "ind" in message or "slice" in message  # index, indices


def test_index_entry_message_says_what_is_supported():
    g = sg.Graph()
    x = g.input("x", (3,))
    message = assert_refused(g, lambda: x[None], "getitem", "index entry")
    assert "None (newaxis) is not supported" in message and "take" in message
    assert x[np.int64(1)].shape == () and x[np.int64(-1)].id == x[2].id  # numpy ints are ints


ARRAY_ENTRIES = [1, slice(None), Ellipsis, [2, 0], slice(1, 3), np.array([[2, 0]]), -1]


def test_array_indices_are_takes_as_numpy_indexes():
    # One array (or list) entry among ints, slices and '...': numpy's result, shape and order,
    # including numpy's rule that ints apart from the array move its axes to the front.
    g = sg.Graph()
    x = g.input("x", (4, 3, 5))
    xv = np.random.default_rng(0).standard_normal((4, 3, 5))
    seen = 0
    for index in itertools.product(ARRAY_ENTRIES, repeat=3):
        arrays = sum(isinstance(i, (list, np.ndarray)) for i in index)
        if arrays != 1 or sum(i is Ellipsis for i in index) > 1:
            continue
        try:
            want = xv[index]
        except IndexError:  # numpy refuses it too (out of range)
            assert_refused(g, lambda index=index: x[index], "getitem")
            continue
        e = x[index]
        assert "take" in {g.node(i)["op"] for i in range(len(g))}
        np.testing.assert_array_equal(sg.evaluate(e, x=xv), want, err_msg=repr(index))
        seen += 1
    assert seen >= 40


# --- g.nx is read-only --------------------------------------------------------------------

MUTATIONS = {
    "add_node": lambda n: n.add_node(99),
    "add_nodes_from": lambda n: n.add_nodes_from([99]),
    "remove_node": lambda n: n.remove_node(0),
    "remove_nodes_from": lambda n: n.remove_nodes_from([0]),
    "add_edge": lambda n: n.add_edge(2, 0),
    "add_edges_from": lambda n: n.add_edges_from([(2, 0)]),
    "add_weighted_edges_from": lambda n: n.add_weighted_edges_from([(2, 0, 1.0)]),
    "remove_edge": lambda n: n.remove_edge(0, 2),
    "remove_edges_from": lambda n: n.remove_edges_from([(0, 2)]),
    "update": lambda n: n.update(nodes=[99]),
    "clear": lambda n: n.clear(),
    "clear_edges": lambda n: n.clear_edges(),
    "relabel_nodes": lambda n: nx.relabel_nodes(n, {0: 99}, copy=False),
    "contracted_nodes": lambda n: nx.contracted_nodes(n, 0, 1, copy=False),
}


def test_every_mutator_is_probed():
    assert set(NX_MUTATORS) <= set(MUTATIONS)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_mutating_g_nx_is_refused_and_the_graph_keeps_working(mutation):
    f = sg.parse("sin(x) * y")
    g = f.graph
    assert_refused(g, lambda: MUTATIONS[mutation](g.nx), "read-only")
    x, y = g.inputs["x"], g.inputs["y"]
    grads = sg.build_grad(f, [x, y])
    assert [round(float(v), 12) for v in sg.compile([f, *grads])(0.5, 2.0)] == [
        round(v, 12) for v in (np.sin(0.5) * 2.0, np.cos(0.5) * 2.0, np.sin(0.5))
    ]
    assert "digraph" in sg.to_dot(g) and len(sg.optimize([f])[0].graph) == 4


def test_replacing_g_nx_is_refused_and_copies_are_mutable():
    g = sg.parse("x + 1").graph
    before = snapshot(g)
    with pytest.raises(GraphError, match="read-only"):
        g.nx = nx.DiGraph()
    assert snapshot(g) == before and nx.is_frozen(g.nx)
    for copy in (g.nx.copy(), nx.DiGraph(g.nx)):
        copy.remove_node(0)
        copy.add_edge("a", "b")
    assert snapshot(g) == before


# --- max_elements at creation ---------------------------------------------------------------


def test_broadcast_to_beyond_max_elements_is_refused_before_anything_runs():
    g = sg.Graph()
    x = g.input("x")
    message = assert_refused(g, lambda: sg.mean(sg.broadcast_to(x, (2**31, 2**31))))
    assert message == (
        "broadcast_to: result shape (2147483648, 2147483648) has 4.6e+18 elements, more than "
        "max_elements=268435456: raise Graph(max_elements=...)"
    )


def test_max_elements_counts_every_node_and_can_be_raised():
    g = sg.Graph(max_elements=100)
    a, b = g.input("a", (20, 1)), g.input("b", (1, 20))
    assert_refused(g, lambda: a + b, "add: result", "400 elements", "max_elements=100")
    assert_refused(g, lambda: a @ b, "matmul: result", "400")
    assert_refused(g, lambda: sg.matmul(a, b), "matmul")
    assert_refused(g, lambda: sg.broadcast_to(a, (20, 20)), "broadcast_to")
    assert_refused(g, lambda: g.input("big", (11, 10)), "input 'big'", "110 elements")
    assert_refused(g, lambda: g.const(np.ones((11, 10))), "constant array", "110")
    assert_refused(g, lambda: a + np.ones((1, 20)), "add: result")  # the constant is undone
    assert (a @ g.input("small", (1, 5))).shape == (20, 5)  # 100 elements: at the limit
    g.max_elements = 400
    assert (a + b).shape == (20, 20) and g.input("big", (11, 10)).shape == (11, 10)


def test_reshape_and_conv_padding_are_bounded_too():
    g = sg.Graph(max_elements=1000)
    x = g.input("x", (1, 1, 4, 4))
    w = g.input("w", (1, 1, 1, 1))
    assert_refused(g, lambda: sg.conv2d(x, w, padding=20), "conv2d: result", "max_elements")
    assert_refused(g, lambda: x.reshape(16, 16), "reshape")  # 256 != 16 elements
    assert_refused(g, lambda: x.reshape((1,) * (MAX_NDIM + 1)), "reshape")
    assert_refused(g, lambda: g.input("deep", (1,) * (MAX_NDIM + 1)), "input 'deep'")
    assert sg.conv2d(x, w, padding=2).shape == (1, 1, 8, 8)


def test_max_elements_travels_in_pickles():
    import pickle

    g = sg.Graph(max_nodes=50, max_elements=1000)
    g.input("x", (10, 10))
    copy = pickle.loads(pickle.dumps(g))
    assert (copy.max_nodes, copy.max_elements) == (50, 1000)
    with pytest.raises(ShapeError, match="max_elements=1000"):
        copy.input("y", (10, 101))


def test_hostile_shapes_of_inputs():
    g = sg.Graph()
    for shape in [(0,), (-1,), (1.5,), ("a",), (True,), None, "ab", b"ab", {2: 3}, Evil(),
                  (Evil(),), np.ones((2, 2), dtype=int), range(10**9), (2**41,), [2**20] * 3,
                  (np.bool_(True),), 1.5]:  # fmt: skip
        if shape is None:
            continue  # None means a scalar input
        assert_refused(g, lambda s=shape: g.input("x", s), "input 'x'")
    assert len(g) == 0
    assert g.input("x", np.array([2, 3])).shape == (2, 3) and g.input("y", 4).shape == (4,)


def test_all_errors_are_symgrad_errors():
    assert issubclass(ShapeError, SymgradError) and issubclass(GraphError, SymgradError)
