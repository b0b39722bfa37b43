"""Pass: optimize the body of every scan, as the rest of the graph is.

A scan's body is a graph of its own, so ``fold`` on the enclosing graph never sees inside it:
this pass optimizes each body (the same ``optimize``, so nested bodies too) for the values the
enclosing graph reads from it — the carries out, the ys, and the stacked nodes its
``scan_out`` projections name — and rewrites those projections to the optimized body's ids.
Invariant: same values; each body holds only what its reads need, with its placeholders all
kept (a body's operands are fixed by its scan node).
"""

from __future__ import annotations

from symgrad.graph import Expr, Graph, reachable
from symgrad.ops import OPS
from symgrad.optimize.prune import rebuild
from symgrad.outputs import flatten_outputs
from symgrad.scan import Body, copy_nodes


def bodies(outputs, optimize):
    """``outputs`` with each scan's body replaced by ``optimize`` of it (the caller's pass)."""
    flat, _ = flatten_outputs(outputs)
    if not flat[0].graph._has_parts:
        return outputs  # no scan anywhere in the graph (the common case: no walk)
    read = _stacks_read(flat[0].graph, [e.id for e in flat])
    if not read:
        return outputs
    done = {body: _optimized(body, sorted(stacks), optimize) for body, stacks in read.items()}
    by_new = {new: ids for new, ids in done.values()}

    def make_rule(graph: Graph):
        def rule(op, args, attrs):
            if "body" in attrs:
                return graph.apply(op, *args, **{**attrs, "body": done[attrs["body"]][0]})
            if args and OPS[args[0].op].multiple and attrs["part"][0] == "stack":
                ids = by_new[graph.attr(args[0].id, "body")]
                return graph.apply(op, args[0], part=("stack", ids[attrs["part"][1]]))
            return None

        return rule

    return rebuild(outputs, make_rule)


def _stacks_read(graph: Graph, roots: list[int]) -> dict[Body, set[int]]:
    """Each body of a scan the roots reach, with the body nodes read as stacks."""
    read: dict[Body, set[int]] = {}
    for i in reachable(graph, roots):
        node = graph.node(i)
        if OPS[node["op"]].multiple:
            read.setdefault(graph.attr(i, "body"), set())
        elif len(node["args"]) == 1 and OPS[graph.node(node["args"][0])["op"]].multiple:
            kind, j = graph.attr(i, "part")
            if kind == "stack":
                read.setdefault(graph.attr(node["args"][0], "body"), set()).add(j)
    return read


def _optimized(body: Body, stacked: list[int], optimize) -> tuple[Body, dict[int, int]]:
    """The body optimized for its carries out, ys and ``stacked``; and old id -> new id."""
    roots = [*body.carry_out, *body.ys, *stacked]
    outs = optimize([Expr(body.graph, j) for j in roots])
    src = outs[0].graph
    new = Graph(max_nodes=body.graph.max_nodes, max_elements=body.graph.max_elements)
    holders = [*body.carry, *body.xs, *body.captures]
    ids = {i: new.input(body.graph.attr(i, "name"), body.shape(i)).id for i in holders}
    mapped = {src.inputs[body.graph.attr(i, "name")].id: ids[i] for i in holders
              if body.graph.attr(i, "name") in src.inputs}  # fmt: skip
    copy_nodes(src, new, [e.id for e in outs], mapped)
    ids.update((old, mapped[e.id]) for old, e in zip(roots, outs))
    nc, ny = len(body.carry_out), len(body.ys)
    out_ids = [mapped[e.id] for e in outs]
    holder_ids = [[ids[i] for i in role] for role in (body.carry, body.xs, body.captures)]
    rebuilt = Body(new, *holder_ids, out_ids[:nc], out_ids[nc : nc + ny])
    return rebuilt, ids
