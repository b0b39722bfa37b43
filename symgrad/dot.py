"""DOT export: ``to_dot`` writes a graph, or the part of it some outputs reach, as Graphviz text.

The text is deterministic: nodes are named by their ids (``n12``) and written in id order, so the
same graph always gives the same bytes and golden tests stay easy. Inputs are green ellipses,
constants plain grey boxes, outputs have a double border and an ``outK`` label, and the nodes of
a k-th derivative are filled with the colour of order k (a legend lists the orders present).
Edges into an op whose operand order matters carry the operand position; a node that fills
several positions (``x*x``: a DiGraph keeps one edge) lists them all, as in ``0,1``.
"""

from __future__ import annotations

import re

from symgrad.errors import ArgumentError, GraphError
from symgrad.graph import Expr, Graph, reachable
from symgrad.ops import OPS

# Fill of the nodes of the k-th derivative: ORDER_COLOURS[(k - 1) % len(ORDER_COLOURS)].
ORDER_COLOURS = ("#fdae6b", "#9ecae1", "#bcbddc", "#fc9272", "#a1d99b", "#fdd0a2")
INPUT_STYLE = "shape=ellipse, style=filled, fillcolor=palegreen"
CONST_STYLE = "shape=box, style=filled, fillcolor=gray90"
RANKDIRS = ("TB", "LR", "BT", "RL")
_SURROGATE = re.compile("[\ud800-\udfff]")


def to_dot(outputs_or_graph, *, name: str = "symgrad", rankdir: str = "TB", labels=None) -> str:
    """DOT text of a ``Graph`` (every node; its sinks are the outputs), of one ``Expr``, or of a
    (nested) list of ``Expr`` (only the nodes they reach; outputs numbered in list order).

    ``labels`` names the outputs (one text per output, in order: ``["loss", "∂loss/∂w"]``);
    by default they are ``out0``, ``out1``, ...

    >>> g = Graph(); x = g.input("x")
    >>> print(to_dot(x - 2.0), end="")
    digraph "symgrad" {
      // symgrad: 3 nodes, 1 output
      graph [rankdir=TB, forcelabels=true];
      n0 [label="x", tooltip="0: input", shape=ellipse, style=filled, fillcolor=palegreen];
      n1 [label="2", tooltip="1: const 2.0", shape=box, style=filled, fillcolor=gray90];
      n2 [label="-", tooltip="2: sub", peripheries=2, xlabel="out0"];
      n0 -> n2 [label="0"];
      n1 -> n2 [label="1"];
    }
    """
    if rankdir not in RANKDIRS:
        raise GraphError(f"to_dot: rankdir must be one of {', '.join(RANKDIRS)}, not {rankdir!r}")
    # Any text is escaped by _quote, but Graphviz stops reading at a NUL, and a lone surrogate
    # has no UTF-8 bytes to write.
    if not isinstance(name, str) or "\0" in name or _SURROGATE.search(name):
        raise GraphError(f"to_dot: name must be text without NUL or surrogates, got {name!r:.60}")
    graph, ids, outputs = _select(outputs_or_graph)
    names = _output_names(labels, len(outputs))
    out_labels: dict[int, list[str]] = {}
    for i, label in zip(outputs, names):
        out_labels.setdefault(i, []).append(label)
    lines = [
        f"digraph {_quote(name)} {{",
        f"  // symgrad: {len(ids)} nodes, {len(outputs)} output{'s' * (len(outputs) != 1)}",
        f"  graph [rankdir={rankdir}, forcelabels=true];",
    ]
    lines.extend(_graph_lines(graph, ids, out_labels))
    lines.extend(_legend(sorted({graph.node(i)["order"] for i in ids} - {0})))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _output_names(labels, n: int) -> list[str]:
    """The outputs' labels: ``labels`` checked (n texts a DOT file can hold), or out0, out1, ..."""
    if labels is None:
        return [f"out{k}" for k in range(n)]
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise ArgumentError(f"to_dot: labels must be a list of {n} texts, got {labels!r:.60}")
    if len(labels) != n:
        raise ArgumentError(f"to_dot: labels has {len(labels)} texts for {n} outputs")
    for k, text in enumerate(labels):
        if not isinstance(text, str) or "\0" in text or _SURROGATE.search(text):
            raise ArgumentError(
                f"to_dot: labels[{k}] must be text without NUL or surrogates, got {text!r:.60}"
            )
    return list(labels)


def to_svg(outputs_or_graph, **options) -> str | None:
    """The graph drawn as SVG by Graphviz's ``dot``, or None where Graphviz is not installed.

    Notebooks show the picture where they can and the DOT text where they cannot.
    """
    import shutil
    import subprocess

    text = to_dot(outputs_or_graph, **options)
    exe = shutil.which("dot")
    if exe is None:
        return None
    done = subprocess.run([exe, "-Tsvg"], input=text.encode(), capture_output=True, timeout=60)
    return done.stdout.decode() if done.returncode == 0 else None


def _select(obj) -> tuple[Graph, list[int], list[int]]:
    """(graph, node ids to draw in id order, output ids in order) for what ``to_dot`` was given."""
    if isinstance(obj, Graph):
        ids = sorted(obj.nx.nodes)
        return obj, ids, [i for i in ids if obj.nx.out_degree(i) == 0]
    exprs = _flatten(obj)
    if not exprs:
        raise GraphError("to_dot: no outputs given")
    graph = exprs[0].graph
    if any(e.graph is not graph for e in exprs):
        raise GraphError("to_dot: the outputs belong to different graphs")
    outputs = [e.id for e in exprs]
    return graph, reachable(graph, outputs), outputs


def _flatten(obj) -> list[Expr]:
    """The ``Expr`` leaves of a nested list, in order (an explicit stack, no recursion)."""
    found, stack = [], [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Expr):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        else:
            raise GraphError(
                f"to_dot: expected a Graph, an Expr or a list of Expr, got {type(item).__name__}"
            )
    return found


def _graph_lines(graph: Graph, ids: list[int], out_labels: dict) -> list[str]:
    """The nodes ``ids`` and their edges, then the body of each scan as a cluster, its
    placeholders fed by the scan's operands (dashed edges). Bodies, nested ones included, are
    queued and drawn one after another (no recursion); node names carry the path, ``n4b2``."""
    lines: list[str] = []
    work = [(graph, ids, out_labels, "n", None)]
    while work:
        graph, ids, out_labels, prefix, title = work.pop(0)
        indent = "  " if title is None else "    "
        if title is not None:
            lines += [f"  subgraph cluster_{prefix} {{", f"    label={title};"]
        links = []
        for i in ids:
            lines.append(f"{indent}{prefix}{i} [{_node_attrs(graph, i, out_labels.get(i))}];")
            lines.extend(indent[2:] + line for line in _edge_lines(graph, i, prefix))
            body = dict(graph.node(i)["attrs"]).get("body")
            if body is not None:
                inner = f"{prefix}{i}b"
                links += _body_links(graph, i, body, prefix, inner)
                length = dict(graph.node(i)["attrs"])["length"]
                label = _quote(f"body of {prefix}{i}: {length} steps")
                work.append((body.graph, sorted(body.graph.nx.nodes), _body_outputs(body), inner,
                             label))  # fmt: skip
        if title is not None:
            lines.append("  }")
        lines += links
    return lines


def _body_links(graph: Graph, i: int, body, prefix: str, inner: str) -> list[str]:
    """Dashed edges from a scan's operands into its body's placeholders."""
    holders = [*body.carry, *body.xs, *body.captures]
    return [
        f"  {prefix}{a} -> {inner}{h} [style=dashed];"
        for a, h in zip(graph.node(i)["args"], holders)
    ]


def _body_outputs(body) -> dict[int, list[str]]:
    """A body's outputs labelled by role: carry0, ..., y0, ..."""
    labels: dict[int, list[str]] = {}
    for k, j in enumerate(body.carry_out):
        labels.setdefault(j, []).append(f"carry{k}")
    for k, j in enumerate(body.ys):
        labels.setdefault(j, []).append(f"y{k}")
    return labels


def _node_attrs(graph: Graph, i: int, outs: list[str] | None) -> str:
    node = graph.node(i)
    op, order = node["op"], node["order"]
    if op == "input":
        label, style = graph.attr(i, "name"), INPUT_STYLE
    elif op == "const" and node["shape"]:
        label, style = "array", CONST_STYLE
    elif op == "const":
        label, style = _short(graph.attr(i, "value")), CONST_STYLE
    else:
        label, style = OPS[op].label + _attr_text(node["attrs"]), ""
    scalar_const = op == "const" and not node["shape"]
    tip = f"{i}: {op}" + (f" {graph.attr(i, 'value')!r}" if scalar_const else "")
    tip += f", derivative order {order}" if order else ""
    parts = [f"label={_quote(label, *_shape_line(node['shape']))}", f"tooltip={_quote(tip)}"]
    parts += [style] if style else []
    if order:
        colour = _quote(ORDER_COLOURS[(order - 1) % len(ORDER_COLOURS)])
        # Leaves keep the fill of their kind and show the order in their border.
        fill = f"style=filled, fillcolor={colour}"
        parts.append(f"color={colour}, penwidth=2" if style else fill)
    if outs:
        parts.append(f"peripheries=2, xlabel={_quote(','.join(outs))}")
    return ", ".join(parts)


def _attr_text(attrs: tuple) -> str:
    # A tensor op's attributes, short: "sum axis=(1,)", "conv2d stride=(1, 1) padding=(0, 0)".
    # A scan's body is drawn as a cluster of its own, not as text.
    return "".join(f" {k}={v}" for k, v in attrs if k not in ("index", "body")) + (
        " [index]" if any(k == "index" for k, _ in attrs) else ""
    )


def _shape_line(shape: tuple) -> list[str]:
    return [] if shape == () else [str(shape)]


def _edge_lines(graph: Graph, i: int, prefix: str = "n") -> list[str]:
    """``a -> i`` for each distinct operand, in operand order, labelled with its positions."""
    args = graph.node(i)["args"]
    opdef = OPS[graph.node(i)["op"]]
    positions: dict[int, list[str]] = {}
    for pos, a in enumerate(args):
        positions.setdefault(a, []).append(str(pos))
    lines = []
    for a, pos in positions.items():
        labelled = len(pos) > 1 or (len(args) > 1 and not opdef.commutative)
        attrs = f" [label={_quote(','.join(pos))}]" if labelled else ""
        lines.append(f"  {prefix}{a} -> {prefix}{i}{attrs};")
    return lines


def _legend(orders: list[int]) -> list[str]:
    """A boxed key from fill colour to derivative order, for the orders present."""
    if not orders:
        return []
    lines = ["  subgraph cluster_legend {", '    label="derivative order";']
    for k in orders:
        colour = _quote(ORDER_COLOURS[(k - 1) % len(ORDER_COLOURS)])
        lines.append(
            f'    legend{k} [label="order {k}", shape=box, style=filled, fillcolor={colour}];'
        )
    lines.append("  }")
    return lines


def _short(v: float) -> str:
    """A short label for a constant: 2.0 -> '2', 0.5 -> '0.5', -1e-08, nan, inf, -0.0 -> '-0'."""
    text = repr(v)
    text = text[:-2] if text.endswith(".0") else text
    return text if len(text) <= 10 else f"{v:.6g}"


def _quote(*lines: str) -> str:
    """A DOT double-quoted string: each line escaped, joined by DOT's ``\\n`` line break."""
    escaped = (
        s.replace("\\", "\\\\").replace('"', '\\"').replace("\r\n", "\n").replace("\r", "\n")
        for s in lines
    )
    return '"' + "\\n".join(s.replace("\n", "\\n") for s in escaped) + '"'
