"""Pass: prune. Copies the nodes the outputs depend on into a fresh graph, and nothing else.

``rebuild`` is the one walk every pass shares: reachable ids in ascending order (a topological
order), each node re-created in a new graph through hash-consing, optionally through a rewrite
rule. Invariant of ``prune``: same values; no node unreachable from an output.
"""

from __future__ import annotations

from collections.abc import Callable

from symgrad.graph import Expr, Graph, paused_gc, reachable
from symgrad.outputs import flatten_outputs, restructure

# A rewrite rule sees the op, the already-mapped operands and the attrs, and returns a
# replacement Expr or None to build the node as it is. A pass hands ``rebuild`` a factory that
# makes the rule for the new graph.
Rule = Callable[[str, tuple[Expr, ...], dict], "Expr | None"]


def rebuild(outputs, make_rule: Callable[[Graph], Rule] | None = None):
    """``outputs`` (Expr, list or list of lists) re-created in a fresh graph, through a rule."""
    flat, _ = flatten_outputs(outputs)
    old = flat[0].graph
    new = Graph(max_nodes=old.max_nodes, max_elements=old.max_elements)
    rule = make_rule(new) if make_rule else None
    mapped: dict[int, int] = {}
    with paused_gc():
        for i in reachable(old, [e.id for e in flat]):
            node = old.node(i)
            new._stamp = (node["role"], node["order"])  # the copy keeps its primal/grad role
            mapped[i] = _copy(new, node, mapped, rule)
    new._stamp = ("primal", 0)
    return restructure(outputs, new, mapped)


def _copy(new: Graph, node: dict, mapped: dict[int, int], rule: Rule | None) -> int:
    op, attrs = node["op"], node["attrs"]
    if op == "input":
        return new.input(attrs[0][1], shape=node["shape"]).id
    if op == "const":
        return new.const_id(attrs[0][1])
    ids = tuple(mapped[a] for a in node["args"])
    if rule is None:
        # A plain copy: ids map in ascending order (so sorted operands stay sorted), and the
        # node's shape and attributes were checked when it was made: no shape rule again.
        return new._add(op, ids, attrs, node["shape"])
    replacement = rule(op, tuple(Expr(new, j) for j in ids), dict(attrs))
    if replacement is not None:
        return replacement.id
    return new.node_id(op, ids, attrs)


def prune(outputs):
    """Only what the outputs depend on, in a fresh graph (same values)."""
    return rebuild(outputs)
