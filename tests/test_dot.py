"""to_dot: deterministic text that Graphviz (pydot) parses, with the graph's nodes, edges, operand
positions, kinds of node and derivative orders visible."""

from __future__ import annotations

import math
import re

import pydot
import pytest

import symgrad as sg
from symgrad.dot import ORDER_COLOURS, to_dot
from symgrad.errors import SymgradError
from symgrad.graph import Graph

NODE_NAME = re.compile(r"n\d+\Z")


def _seed(g: Graph):
    """The seed loss (2*w2*(w1*x + b1) - label)**2 in ``g``."""
    x, label, w1, b1, w2 = (g.input(n) for n in ("x", "label", "w1", "b1", "w2"))
    return (2.0 * w2 * (w1 * x + b1) - label) ** 2.0


def _with_derivatives(g: Graph):
    """A primal output and hand-stamped order-1 and order-2 nodes, as build_grad would add."""
    x, y = g.input("x"), g.input("y")
    f = x * y - x
    with g.stamped("grad", 1):
        d1 = f * 3.0 + y
    with g.stamped("grad", 2):
        d2 = d1 / x
    return f, d1, d2


def _parse(text: str) -> pydot.Dot:
    graphs = pydot.graph_from_dot_data(text)
    assert graphs is not None and len(graphs) == 1
    return graphs[0]


def _nodes(dot: pydot.Dot) -> dict[int, dict]:
    """Node id -> its attributes (quotes stripped), for the graph's own nodes (``nK``)."""
    return {
        int(n.get_name()[1:]): {k: v.strip('"') for k, v in n.get_attributes().items()}
        for n in dot.get_nodes()
        if NODE_NAME.match(n.get_name())
    }


def _edges(dot: pydot.Dot) -> dict[tuple[int, int], str | None]:
    """(source id, target id) -> the edge's label, or None."""
    out = {}
    for e in dot.get_edges():
        label = e.get_attributes().get("label")
        key = (int(e.get_source()[1:]), int(e.get_destination()[1:]))
        assert key not in out
        out[key] = label.strip('"') if label else None
    return out


def test_same_graph_gives_same_text():
    g = Graph()
    f = _seed(g)
    assert to_dot(f) == to_dot(f)
    assert to_dot(g) == to_dot(g)


def test_graphs_built_twice_give_identical_text():
    texts = []
    for _ in range(2):
        g = Graph()
        _with_derivatives(g)
        texts.append(to_dot(g))
    assert texts[0] == texts[1]


def test_text_parses_and_counts_match_the_graph():
    g = Graph()
    _seed(g)
    _with_derivatives(g)
    dot = _parse(to_dot(g))
    assert sorted(_nodes(dot)) == sorted(g.nx.nodes)
    assert set(_edges(dot)) == set(g.nx.edges)
    assert len(dot.get_edges()) == g.nx.number_of_edges()


def test_outputs_select_the_reachable_nodes_in_list_order():
    g = Graph()
    x, y = g.input("x"), g.input("y")
    a, b = x * y, g.apply("sin", y)
    g.input("unused")
    dot = _parse(to_dot([[b], a]))
    nodes = _nodes(dot)
    assert sorted(nodes) == sorted({x.id, y.id, a.id, b.id})
    assert nodes[b.id]["xlabel"] == "out0" and nodes[a.id]["xlabel"] == "out1"
    assert nodes[b.id]["peripheries"] == "2"
    assert "xlabel" not in nodes[x.id]
    assert set(_edges(dot)) == {(x.id, a.id), (y.id, a.id), (y.id, b.id)}


def test_a_node_given_twice_lists_both_output_labels():
    g = Graph()
    x = g.input("x")
    e = x + 1.0
    assert _nodes(_parse(to_dot([e, x, e])))[e.id]["xlabel"] == "out0,out2"


def test_graph_sinks_are_its_outputs():
    g = Graph()
    x = g.input("x")
    a, b = x * 2.0, g.apply("exp", x)
    nodes = _nodes(_parse(to_dot(g)))
    assert [i for i, attrs in sorted(nodes.items()) if "xlabel" in attrs] == [a.id, b.id]


def test_operand_order_is_visible_on_edges():
    g = Graph()
    x, y = g.input("x"), g.input("y")
    ab, ba = x - y, y - x
    edges = _edges(_parse(to_dot([ab, ba])))
    assert edges[(x.id, ab.id)] == "0" and edges[(y.id, ab.id)] == "1"
    assert edges[(y.id, ba.id)] == "0" and edges[(x.id, ba.id)] == "1"


def test_commutative_ops_have_unlabelled_edges_but_a_repeated_operand_lists_positions():
    g = Graph()
    x, y = g.input("x"), g.input("y")
    xy, xx = x * y, x * x
    edges = _edges(_parse(to_dot([xy, xx])))
    assert edges[(x.id, xy.id)] is None and edges[(y.id, xy.id)] is None
    assert edges[(x.id, xx.id)] == "0,1"  # a DiGraph has one edge for x*x


def test_where_labels_its_three_operands():
    g = Graph()
    c, a, b = g.input("c"), g.input("a"), g.input("b")
    w = g.apply("where", c, a, b)
    edges = _edges(_parse(to_dot(w)))
    assert [edges[(v.id, w.id)] for v in (c, a, b)] == ["0", "1", "2"]


def test_kinds_of_node_are_distinct():
    g = Graph()
    x, two = g.input("x"), g.const(2.0)
    sin = g.apply("sin", x)
    nodes = _nodes(_parse(to_dot(sin * two)))
    inp, const, op = nodes[x.id], nodes[two.id], nodes[sin.id]
    assert inp["label"] == "x" and inp["shape"] == "ellipse" and inp["fillcolor"] == "palegreen"
    assert const["label"] == "2" and const["shape"] == "box"
    assert op["label"] == "sin" and "fillcolor" not in op


def test_derivative_orders_have_distinct_fill_colours_and_a_legend():
    g = Graph()
    f, d1, d2 = _with_derivatives(g)
    text = to_dot(g)
    nodes = _nodes(_parse(text))
    assert "fillcolor" not in nodes[f.id]
    assert nodes[d1.id]["fillcolor"] == ORDER_COLOURS[0]
    assert nodes[d2.id]["fillcolor"] == ORDER_COLOURS[1]
    assert ORDER_COLOURS[0] != ORDER_COLOURS[1]
    assert "derivative order 2" in nodes[d2.id]["tooltip"]
    legend = _parse(text).get_subgraph("cluster_legend")[0]
    assert [n.get_name() for n in legend.get_nodes()] == ["legend1", "legend2"]


def test_a_derivative_constant_keeps_its_box_and_shows_the_order_in_its_border():
    g = Graph()
    x = g.input("x")
    with g.stamped("grad", 1):
        c = g.const(7.0)
        e = x * c
    nodes = _nodes(_parse(to_dot(e)))
    assert nodes[c.id]["shape"] == "box" and nodes[c.id]["color"] == ORDER_COLOURS[0]
    assert list(nodes[c.id]).count("color") == 1


def test_a_primal_graph_has_no_legend():
    g = Graph()
    assert "legend" not in to_dot(_seed(g))


@pytest.mark.parametrize(
    "value, label",
    [
        (2.0, "2"),
        (0.5, "0.5"),
        (-1e-08, "-1e-08"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (-0.0, "-0"),
        (0.0, "0"),
        (math.pi, "3.14159"),
        (1e300, "1e+300"),
    ],
)
def test_constants_render_short_labels(value, label):
    g = Graph()
    c = g.const(value)
    attrs = _nodes(_parse(to_dot(g)))[c.id]
    assert attrs["label"] == label
    assert attrs["tooltip"] == f"{c.id}: const {value!r}"  # the exact value


def test_zero_and_negative_zero_are_two_nodes():
    g = Graph()
    x = g.input("x")
    nodes = _nodes(_parse(to_dot([x + 0.0, x + -0.0])))
    assert sorted(a["label"] for a in nodes.values()) == ["+", "+", "-0", "0", "x"]


@pytest.mark.parametrize("name", ['a"b', "a\\b", "a\nb", "x y", "1x", "__x", ""])
def test_names_with_odd_characters_cannot_be_created(name):
    with pytest.raises(SymgradError):
        Graph().input(name)


def test_quotes_backslashes_and_newlines_are_escaped():
    g = Graph()
    g.input("x")
    odd = 'we"ird\\name\nline\r2'
    dot = _parse(to_dot(g, name=odd))
    assert dot.get_name() == '"we\\"ird\\\\name\\nline\\n2"'
    assert len(_nodes(dot)) == 1


def test_rankdir_is_set_and_checked():
    g = Graph()
    g.input("x")
    assert "rankdir=LR" in to_dot(g, rankdir="LR")
    with pytest.raises(SymgradError, match="rankdir"):
        to_dot(g, rankdir="sideways")


@pytest.mark.parametrize("bad", [3, "x", [], [[]], None])
def test_bad_arguments_raise(bad):
    with pytest.raises(SymgradError):
        to_dot(bad)


def test_outputs_of_two_graphs_raise():
    with pytest.raises(SymgradError, match="different graphs"):
        to_dot([Graph().input("x"), Graph().input("x")])


def test_a_100000_node_chain_exports_without_recursion():
    g = Graph()
    e = g.input("x")
    for _ in range(100_000):
        e = g.apply("sin", e)
    text = to_dot(e)
    assert text.count(' [label="sin"') == 100_000
    assert text.count(" -> ") == 100_000
    assert to_dot(g) == text


def test_nodes_build_grad_adds_are_coloured_by_their_order():
    import symgrad as sg

    g = Graph()
    x, y = g.input("x"), g.input("y")
    f = g.apply("sin", x * y)
    (dx, dy) = sg.build_grad(f, [x, y])
    (dxx,) = sg.build_grad(dx, [x])
    nodes = _nodes(_parse(to_dot([f, [dx, dy], dxx])))
    fills: dict[int, set] = {}
    for i, attrs in nodes.items():
        if g.node(i)["op"] not in ("input", "const"):
            fills.setdefault(g.node(i)["order"], set()).add(attrs.get("fillcolor"))
    assert fills == {0: {None}, 1: {ORDER_COLOURS[0]}, 2: {ORDER_COLOURS[1]}}
    assert nodes[dxx.id]["xlabel"] == "out3"


def test_labels_name_the_outputs(g):
    x = g.input("x")
    e = sg.exp(x)
    nodes = _nodes(_parse(to_dot([e, x, e], labels=["f", "x itself", "f again"])))
    assert nodes[e.id]["xlabel"] == "f,f again" and nodes[x.id]["xlabel"] == "x itself"


@pytest.mark.parametrize(
    "labels, fragment",
    [("f", "a list of 2 texts"), (["f"], "1 texts for 2 outputs"), (["f", 3], "labels[1]"),
     (["f", "a\0b"], "labels[1]"), (("f", "g", "h"), "3 texts for 2 outputs")],
)  # fmt: skip
def test_bad_labels_are_argument_errors(g, labels, fragment):
    x = g.input("x")
    outputs = [x * 2.0, x]
    before = len(g)
    with pytest.raises(sg.ArgumentError, match=re.escape(fragment)):
        to_dot(outputs, labels=labels)
    assert len(g) == before


def test_to_svg_checks_labels_as_to_dot_does(g):
    x = g.input("x")
    with pytest.raises(sg.ArgumentError, match="labels"):
        sg.to_svg([x, x * 2.0], labels=["only one"])


def test_without_labels_outputs_are_numbered(g):
    x = g.input("x")
    y = x * 3.0
    nodes = _nodes(_parse(to_dot([y, x])))
    assert nodes[y.id]["xlabel"] == "out0" and nodes[x.id]["xlabel"] == "out1"
    assert to_dot([y, x]) == to_dot([y, x], labels=None)
