"""The stability rewrites, in one place: a formula that loses accuracy or overflows, replaced by
the function that computes the same mathematical value well.

``log(1 + x) -> log1p(x)``, ``log(1 - x) -> log1p(-x)``, ``exp(x) - 1 -> expm1(x)``,
``log(sum(exp(x))) -> logsumexp(x)``, ``log(sigmoid(x)) -> -softplus(-x)``,
``log(1 - sigmoid(x)) -> -softplus(x)``, ``log(softmax(x)) -> x - logsumexp(x)``. Their results
differ from the naive formula's only where the naive one is inaccurate (tiny x) or broken (inf,
nan at large |x|); tests/test_stable.py checks each against a 50-digit reference.

Two stages use them, so the stable forms come out whatever the order of calls:

- ``build_grad`` first calls ``stabilize`` on ``y`` (in ``y``'s own graph), so the derivative it
  builds is the stable form's — a gradient built from ``log(sigmoid(z))`` is ``sigmoid(-z)``-like,
  never ``(1/sigmoid(z)) * ...``, which is nan where sigmoid underflows;
- ``optimize`` (and so ``compile``, which optimizes by default) tries ``RULES`` beside its other
  folding rules, so the value is the stable form's too.

A rule is ``rule(g, op, args, attrs) -> Expr | None`` with ``g`` anything that has ``apply`` and
``const`` (a Graph, or the folding pass's view of its new graph), as in optimize/fold.py.
"""

from __future__ import annotations

import numpy as np

from symgrad.graph import Expr, Graph, paused_gc, reachable

# The rules look at most this many operand levels below the node they rewrite (log(1 -
# sigmoid(x)): the sub and the sigmoid), and their replacements are at most two levels deeper
# (-softplus(-x)).
RULE_DEPTH = 2


def is_const(e: Expr, value: float | None = None) -> bool:
    """Is ``e`` a scalar constant (equal to ``value``, bit-for-bit on the sign of zero)?"""
    if e.op != "const" or e.shape:
        return False
    if value is None:
        return True
    v = e.value
    return v == value and np.signbit(v) == np.signbit(value)


def _attrs(e: Expr) -> dict:
    return dict(e.graph.node(e.id)["attrs"])


def local_log1p(g, op, args, attrs):
    # Case for log(1 + x) -> log1p(x), log(1 - x) -> log1p(-x), log(1 - sigmoid(x)) -> -softplus(x).
    (a,) = args
    if a.op == "add":
        for one, x in (a.args, a.args[::-1]):
            if is_const(one, 1.0) and x.shape == a.shape:
                return g.apply("log1p", x)
    if a.op == "sub" and is_const(a.args[0], 1.0) and a.args[1].shape == a.shape:
        x = a.args[1]
        if x.op == "sigmoid":
            return g.apply("neg", g.apply("softplus", x.args[0]))
        return g.apply("log1p", g.apply("neg", x))
    return None


def local_expm1(g, op, args, attrs):
    # Case for exp(x) - 1 -> expm1(x).
    e, one = args
    if e.op == "exp" and is_const(one, 1.0) and e.shape == e.args[0].shape:
        return g.apply("expm1", e.args[0])
    return None


def local_logsumexp(g, op, args, attrs):
    # Case for log(sum(exp(x), axis)) -> logsumexp(x, axis): no overflow at large x.
    (s,) = args
    if s.op == "sum" and s.args[0].op == "exp":
        return g.apply("logsumexp", s.args[0].args[0], **_attrs(s))
    return None


def local_log_sigmoid(g, op, args, attrs):
    # Case for log(sigmoid(x)) -> -softplus(-x): finite where sigmoid underflows to 0.
    (s,) = args
    if s.op == "sigmoid":
        return g.apply("neg", g.apply("softplus", g.apply("neg", s.args[0])))
    return None


def local_log_softmax(g, op, args, attrs):
    # Case for log(softmax(x, axis)) -> x - logsumexp(x, axis, keepdims=True).
    (s,) = args
    if s.op == "softmax":
        x = s.args[0]
        lse = g.apply("logsumexp", x, axis=_attrs(s)["axis"], keepdims=True)
        return g.apply("sub", x, lse)
    return None


# The rules, in the order they are tried, by the op they look at.
RULES = {
    "sub": (local_expm1,),
    "log": (local_log1p, local_logsumexp, local_log_sigmoid, local_log_softmax),
}


def stabilize(y: Expr, keep=()) -> Expr:
    """``y`` with every stability rewrite applied, built in ``y``'s own graph (nodes that do
    not change are reused, so a graph without naive forms gets nothing new). No rewrite drops a
    node of ``keep`` from the path (the ``wrt`` of a gradient must stay on it).

    >>> g = Graph(); x = g.input("x")
    >>> stabilize(g.apply("log", 1.0 + x)).op
    'log1p'
    """
    graph = y.graph
    nodes = graph.nx._node
    todo = reachable(graph, [y.id])
    if not any(nodes[i]["op"] in RULES for i in todo):
        return y
    keep = {e.id for e in keep}
    mapped: dict[int, int] = {}
    saved = graph._stamp
    try:
        with paused_gc():
            for i in todo:
                mapped[i] = _stable_node(graph, i, mapped, keep)
    finally:
        graph._stamp = saved
    return Expr(graph, mapped[y.id])


def _stable_node(graph: Graph, i: int, mapped: dict[int, int], keep: set[int]) -> int:
    node = graph.node(i)
    op, args = node["op"], node["args"]
    if not args:
        return i
    new_args = tuple(mapped[a] for a in args)
    graph._stamp = (node["role"], node["order"])  # a rewritten node keeps its primal/grad role
    attrs = dict(node["attrs"])
    for rule in RULES.get(op, ()):
        found = rule(graph, op, tuple(Expr(graph, a) for a in new_args), attrs)
        ok = found is not None and found.shape == node["shape"]
        if ok and (not keep or _keeps(graph, new_args, found.id, keep)):
            return found.id
    if new_args == args:
        return i
    return graph.node_id(op, new_args, node["attrs"])


def _keeps(graph: Graph, args: tuple[int, ...], found: int, keep: set[int]) -> bool:
    """Does the rewrite ``found`` still reach every node of ``keep`` that the operands reached
    within the levels a rule looks through? (A rule reuses the leaves of its pattern and drops
    the nodes between: a ``wrt`` among those would fall off the path.)"""
    before = _near(graph, args, RULE_DEPTH) & keep
    return not before or before <= _near(graph, (found,), RULE_DEPTH + 2)


def _near(graph: Graph, ids: tuple[int, ...], depth: int) -> set[int]:
    """The nodes within ``depth`` operand levels of ``ids`` (``ids`` included)."""
    seen, level = set(ids), set(ids)
    for _ in range(depth):
        level = {a for i in level for a in graph.node(i)["args"]} - seen
        seen |= level
    return seen
