"""Pass: constant folding and IEEE-honest algebraic identities.

A rule applies only where it gives the same float64 result for every input, nan, inf and -0.0
included — so ``x*1 -> x`` and ``x**0 -> 1`` (pow(nan, 0) is 1), never ``x*0 -> 0`` or
``x-x -> 0`` (both wrong for inf and nan). One deliberate exception, as customary: ``x+0 -> x``
differs only in the sign of a zero result (-0.0 + 0 is +0.0).

The *stability rewrites* (symgrad/stable.py, shared with build_grad) are the other exception,
and on purpose: they replace a formula that loses accuracy or overflows by the function that
computes the same mathematical value well (``log(1 + x) -> log1p(x)``, ...). Their derivatives
are the stable ones too (softplus' = sigmoid, logsumexp' = exp(x - logsumexp(x)), log1p' =
1/(1+x)).

Rules are named ``local_<pattern>`` functions, tried in the order of ``RULES``; each returns a
replacement ``Expr`` or None. Invariant of ``fold``: same values; no node unreachable.
"""

from __future__ import annotations

import numpy as np

from symgrad.graph import Expr, Graph, reachable
from symgrad.ops import OPS
from symgrad.optimize.prune import prune, rebuild
from symgrad.outputs import flatten_outputs
from symgrad.stable import RULES as STABLE_RULES
from symgrad.stable import is_const as _const

MAX_FOLDED_SIZE = 4096  # a constant tensor op folds only if its result is at most this big


def local_constant(g, op, args, attrs):
    # Case for f(c1, c2) -> c: every operand constant, computed once with numpy (fold() has
    # silenced numpy's floating-point warnings for the whole pass).
    for a in args:
        if a.op != "const":
            return None
    if OPS[op].multiple:
        return None  # a tuple (a scan of constants) is no constant: its projections fold nothing
    value = np.asarray(OPS[op].numpy(*(np.asarray(a.value) for a in args), **attrs), np.float64)
    if value.size > MAX_FOLDED_SIZE or value.size > max(np.size(a.value) for a in args):
        # A big constant array would bloat the module more than the op costs; and an op that
        # only spreads its constant (broadcast_to(1/n) of a mean's gradient) is free as it is.
        return None
    return g.const(float(value) if value.ndim == 0 else value)


def local_mul_one(g, op, args, attrs):
    # Case for x*1 -> x and x*-1 -> -x (commutative: the constant may be either operand).
    if op != "mul":
        return None
    for a, b in (args, args[::-1]):
        if _const(b, 1.0):
            return a
        if _const(b, -1.0):
            return g.apply("neg", a)
    return None


def local_div_one(g, op, args, attrs):
    # Case for x/1 -> x and x/-1 -> -x.
    if op == "div" and _const(args[1], 1.0):
        return args[0]
    if op == "div" and _const(args[1], -1.0):
        return g.apply("neg", args[0])
    return None


def local_add_zero(g, op, args, attrs):
    # Case for x+0 -> x, 0+x -> x, x-0 -> x (x - (+0) is exact, -0.0 - 0.0 = -0.0).
    if op == "add":
        for a, b in (args, args[::-1]):
            if _const(b) and b.value == 0.0:
                return a
    if op == "sub" and _const(args[1]) and args[1].value == 0.0 and not np.signbit(args[1].value):
        return args[0]
    return None


def local_neg_neg(g, op, args, attrs):
    # Case for --x -> x.
    if op == "neg" and args[0].op == "neg":
        return args[0].args[0]
    return None


def local_neg_take(g, op, args, attrs):
    # Case for -take(x, i) -> take(-x, i) where x is no bigger than the take: the negation runs
    # over fewer elements, and the take can write its output in place (the tangent of c -
    # x[idx] is one). A nan read by an invalid index loses only its sign bit.
    if op != "neg" or args[0].op != "take":
        return None
    x, idx = args[0].args
    if x.size > args[0].size:
        return None
    return g.apply("take", g.apply("neg", x), idx, axis=args[0].graph.attr(args[0].id, "axis"))


def local_add_neg(g, op, args, attrs):
    # Case for x + -y -> x - y and x - -y -> x + y (exact: negation only flips a sign bit).
    if op == "add":
        a, b = args
        if b.op == "neg":
            return g.apply("sub", a, b.args[0])
        if a.op == "neg":
            return g.apply("sub", b, a.args[0])
    if op == "sub" and args[1].op == "neg":
        return g.apply("add", args[0], args[1].args[0])
    return None


def local_mul_neg_neg(g, op, args, attrs):
    # Case for (-x)*(-y) -> x*y and (-x)/(-y) -> x/y.
    if op in ("mul", "div") and args[0].op == "neg" and args[1].op == "neg":
        return g.apply(op, args[0].args[0], args[1].args[0])
    return None


def local_exact_form(g, op, args, attrs):
    # x**1 -> x, x**0 -> 1 (pow(nan, 0) = 1 too), x**2 -> x*x, x**-1 -> 1/x: the op's exact
    # forms for a constant last operand, stated once in the registry (OpDef.exact).
    exact = OPS[op].exact
    if not exact or not _const(args[-1]) or args[-1].value not in exact:
        return None
    return exact[args[-1].value](args[0], g.const, g.apply)


def local_where_same(g, op, args, attrs):
    # Case for where(c, a, a) -> a, and where(const, a, b) -> the chosen branch.
    if op != "where":
        return None
    c, a, b = args
    if a.id == b.id:
        return a
    if _const(c):
        return a if c.value != 0.0 else b
    return None


def local_strict_self(g, op, args, attrs):
    # Case for x < x -> 0 and x > x -> 0: false for every x, nan included.
    if op in ("lt", "gt") and args[0].id == args[1].id:
        return g.const(0.0)
    return None


# The rules, in the order they are tried, by the op they look at; constants fold first for all.
RULES = {
    "mul": (local_mul_one, local_mul_neg_neg),
    "div": (local_div_one, local_mul_neg_neg),
    "add": (local_add_zero, local_add_neg),
    "sub": (local_add_zero, local_add_neg, *STABLE_RULES["sub"]),
    "log": STABLE_RULES["log"],
    "neg": (local_neg_neg, local_neg_take),
    "pow": (local_exact_form,),
    "where": (local_where_same,),
    "lt": (local_strict_self,),
    "gt": (local_strict_self,),
}


MAX_DEPTH = 8  # the cap on rewrites of rewrites; the rules above chain at most three deep


class _Folding:
    """The new graph as the rules see it: ``apply`` folds a replacement before building it.

    So every node of the result has had every rule tried on its final operands, and one pass of
    ``fold`` is a fixed point: running it again changes nothing.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.depth = 0

    def const(self, value: float) -> Expr:
        return self.graph.const(value)

    def apply(self, op: str, *args: Expr, **attrs) -> Expr:
        if attrs:  # canonical attributes, as the rules see them
            built = self.graph.apply(op, *args, **attrs)
            found = self.rewrite(op, args, dict(self.graph.node(built.id)["attrs"]))
            return found if found is not None else built
        found = self.rewrite(op, args, {})
        return found if found is not None else self.graph.apply(op, *args)

    def rewrite(self, op: str, args: tuple[Expr, ...], attrs: dict) -> Expr | None:
        if self.depth >= MAX_DEPTH:
            return None
        self.depth += 1
        try:
            shape = None
            for rule in (local_constant, *RULES.get(op, ())):
                found = rule(self, op, args, attrs)
                if found is None:
                    continue
                if shape is None:
                    shape = OPS[op].infer_shape(tuple(a.shape for a in args), attrs)
                # x*1 -> x is only the same value if broadcasting did not make x bigger.
                if found.shape == shape:
                    return found
            return None
        finally:
            self.depth -= 1


def fold(outputs):
    """Outputs with constants folded and exact identities applied, in a fresh graph."""
    with np.errstate(all="ignore"):
        folded = rebuild(outputs, lambda new: _Folding(new).rewrite)
    # Copies made before a rule dropped them (the 1 of x*1, the branch a constant where did
    # not take, the operands of a folded constant) are unreachable: prune them, when there are any.
    flat, _ = flatten_outputs(folded)
    graph = flat[0].graph
    if len(reachable(graph, [e.id for e in flat])) < len(graph):
        return prune(folded)
    return folded
