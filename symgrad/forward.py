"""Forward mode: ``jvp`` appends tangent nodes to the graph, as ``build_grad`` appends cotangents.

Tangents flow from the ``wrt`` nodes towards the outputs, in id order (a topological order, so no
recursion over the graph): each node on a path from a ``wrt`` to an output gets its tangent once,
from its operands' tangents, by its op's JVP rule. Tangents are graph nodes built from graph ops,
so they can be differentiated again (forward over reverse: the JVP of a gradient is a
Hessian-vector product), optimized, compiled and drawn like any node.

Where the rules come from, per op of the registry:

- an elementwise op: its Jacobian is diagonal, so its VJP rules (linear in the cotangent) applied
  to the operands' tangents, summed, are its JVP — no second rule to keep in step with the first;
- a tensor op: ``OpDef.jvp`` (``op(tangent)`` for the linear ones: sum, reshape, transpose, ...;
  ``op(ta, b) + op(a, tb)`` for matmul);
- an op with an ``expand`` (mean, conv2d, pooling): the tangents of its expansion.
"""

from __future__ import annotations

from symgrad.errors import GradError, GraphError, ShapeError, SymgradError
from symgrad.graph import Expr, Graph, active_nodes, paused_gc, zeros
from symgrad.ops import OPS


def jvp(outputs, wrt, tangents) -> list[Expr]:
    """Tangents of ``outputs`` along ``tangents`` of ``wrt``: ``J v`` as nodes of the graph.

    ``outputs`` is an ``Expr`` or a list of them (scalars or tensors); ``wrt`` an ``Expr`` or a
    list of them; ``tangents`` one per ``wrt``, each an ``Expr`` or a number or array of that
    ``wrt``'s shape. Returns one tangent per output, of the output's shape (zeros where the
    output does not depend on ``wrt``). If the call fails, no node is left in the graph.

    >>> import symgrad as sg
    >>> g = sg.Graph(); x, y = g.input("x"), g.input("y")
    >>> [t] = jvp(x * y, [x, y], [1.0, 0.0])  # d(x*y)/dx
    >>> float(sg.evaluate(t, x=3.0, y=2.0))
    2.0
    """
    outs = [outputs] if isinstance(outputs, Expr) else _as_list(outputs, "outputs")
    if not outs:
        return []
    graph = _graph_of(outs)
    wrt = [wrt] if isinstance(wrt, Expr) else _as_list(wrt, "wrt")
    single = len(wrt) == 1 and not isinstance(tangents, (list, tuple))
    tangents = [tangents] if single else _as_list(tangents, "tangents")
    if len(tangents) != len(wrt):
        raise GradError(f"jvp: {len(tangents)} tangents for {len(wrt)} wrt")
    for k, w in enumerate(wrt):
        if not isinstance(w, Expr) or w.graph is not graph:
            raise GradError(f"jvp: wrt[{k}] must be an Expr of the outputs' graph")
    with graph.atomic(), paused_gc():
        seeds: dict[int, Expr] = {}
        for k, (w, t) in enumerate(zip(wrt, tangents)):
            t = _tangent(graph, t, w.shape, f"tangents[{k}]")
            seeds[w.id] = t if w.id not in seeds else seeds[w.id] + t
        return forward(graph, outs, seeds)


def forward(graph: Graph, outs: list[Expr], seeds: dict[int, Expr]) -> list[Expr]:
    """The tangents of ``outs`` given those of the seed nodes, each node's built once."""
    active = active_nodes(graph, [o.id for o in outs], set(seeds))
    order = 1 + max((graph.node(i)["order"] for i in active), default=0)
    tangent = dict(seeds)
    with graph.stamped("grad", order):
        for i in active:
            node = graph.node(i)
            if i in seeds or not node["args"]:
                continue
            ts = [tangent.get(a) for a in node["args"]]
            if all(t is None for t in ts):
                continue
            # (A scan's tangent is a pair: the tangent scan and which of its parts holds the
            # tangent of each of the scan's parts; its projections' rules read it.)
            try:
                tangent[i] = _rule(graph, i, node, ts)
            except SymgradError as err:
                # The graph's limits (max_nodes, max_elements) keep their class, as in build_grad.
                kind = type(err) if type(err) in (GraphError, ShapeError) else GradError
                raise kind(f"jvp: {node['op']} (node {i}): {err}") from err
        return [tangent[o.id] if o.id in tangent else zeros(graph, o.shape) for o in outs]


def _rule(graph: Graph, i: int, node: dict, ts: list) -> Expr:
    opdef = OPS[node["op"]]
    out = Expr(graph, i)
    args = [Expr(graph, a) for a in node["args"]]
    attrs = dict(node["attrs"])
    if opdef.jvp is not None:
        return opdef.jvp(ts, out, *args, **attrs)
    if opdef.elementwise:
        return _diagonal(opdef, out, args, attrs, ts)
    if opdef.expand is not None:
        expanded = opdef.expand(*args, **attrs)
        seeds = {a.id: t for a, t in zip(args, ts) if t is not None}
        return forward(graph, [expanded], seeds)[0]
    raise GradError(f"op {node['op']!r} has no forward-mode rule")


def _diagonal(opdef, out: Expr, args: list[Expr], attrs: dict, ts: list) -> Expr:
    """An elementwise op's JVP: its VJP rules, linear in the cotangent, applied to the tangents
    (the Jacobian of an elementwise op is diagonal, so it is its own transpose)."""
    total = None
    for rule, t in zip(opdef.vjp, ts):
        if rule is None or t is None:
            continue  # no derivative (a comparison, where's condition) or no tangent
        part = rule(t, out, *args, **attrs)
        if part.shape != out.shape:
            part = out.graph.apply("broadcast_to", part, shape=out.shape)
        total = part if total is None else total + part
    return total if total is not None else zeros(out.graph, out.shape)


def _tangent(graph: Graph, t, shape: tuple[int, ...], what: str) -> Expr:
    if isinstance(t, Expr):
        if t.graph is not graph:
            raise GradError(f"jvp: {what} belongs to another graph than the outputs")
    else:
        try:
            t = graph.const(t)
        except SymgradError as err:
            raise GradError(f"jvp: {what} must be an Expr or a number (or array): {err}") from None
    if t.shape != shape:
        raise GradError(f"jvp: {what} has shape {t.shape}, but its wrt has shape {shape}")
    return t


def _graph_of(outs: list) -> Graph:
    for k, o in enumerate(outs):
        if not isinstance(o, Expr):
            raise GradError(f"jvp: outputs[{k}] must be an Expr, got {type(o).__name__}")
    graph = outs[0].graph
    if any(o.graph is not graph for o in outs):
        raise GradError("jvp: the outputs belong to different graphs")
    return graph


def _as_list(v, what: str) -> list:
    if isinstance(v, (list, tuple)):
        return list(v)
    raise GradError(f"jvp: {what} must be a list, got {type(v).__name__}")
