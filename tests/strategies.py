"""Hypothesis strategies shared by the tests: random expressions over the op registry.

An expression is drawn as a straight-line program: each step applies an op to operands drawn from
the values built so far, so expressions are DAGs with shared subexpressions, as real ones are.
Ops with a restricted domain get guarded operands (log(1 + u*u), a / (1 + b*b)) so most points are
finite; tests still skip the points where the oracle is not finite.
"""

from __future__ import annotations

from hypothesis import strategies as st

import symgrad as sg

SMOOTH_UNARY = ("sin", "cos", "tanh", "atan", "sigmoid", "softplus", "asinh", "erf", "neg")
GUARDED_UNARY = ("log", "sqrt", "exp", "log1p", "expm1", "acosh", "atanh", "asin", "acos", "tan")
BINARY = ("add", "sub", "mul", "div", "pow", "atan2", "max", "min")


def _guarded_unary(op: str, u):
    one_plus_sq = 1 + u * u
    guards = {
        "log": lambda: sg.log(one_plus_sq),
        "sqrt": lambda: sg.sqrt(one_plus_sq),
        "exp": lambda: sg.exp(sg.tanh(u)),
        "log1p": lambda: sg.log1p(u * u),
        "expm1": lambda: sg.expm1(sg.sin(u)),
        "acosh": lambda: sg.acosh(one_plus_sq),
        "atanh": lambda: sg.atanh(0.5 * sg.tanh(u)),
        "asin": lambda: sg.asin(0.5 * sg.sin(u)),
        "acos": lambda: sg.acos(0.5 * sg.cos(u)),
        "tan": lambda: sg.tan(0.5 * sg.atan(u)),
    }
    return guards[op]()


def _binary(op: str, a, b):
    if op == "div":
        return a / (1 + b * b)
    if op == "pow":
        return (1 + a * a) ** sg.sin(b)
    if op == "atan2":
        return sg.atan2(a, 1 + b * b)
    return a.graph.apply(op, a, b)


@st.composite
def expressions(draw, names=("x", "y"), max_steps=8, smooth=False):
    """A random scalar Expr over inputs ``names`` (``smooth``: no max/min kinks)."""
    g = sg.Graph()
    pool = [g.input(n) for n in names]
    binary = [b for b in BINARY if not (smooth and b in ("max", "min"))]
    for _ in range(draw(st.integers(1, max_steps))):
        kind = draw(st.sampled_from(("unary", "guarded", "binary", "binary", "const")))
        a = draw(st.sampled_from(pool))
        if kind == "unary":
            pool.append(g.apply(draw(st.sampled_from(SMOOTH_UNARY)), a))
        elif kind == "guarded":
            pool.append(_guarded_unary(draw(st.sampled_from(GUARDED_UNARY)), a))
        elif kind == "binary":
            pool.append(_binary(draw(st.sampled_from(binary)), a, draw(st.sampled_from(pool))))
        else:
            c = draw(st.sampled_from((0.5, 2.0, -1.5, 3.0)))
            pool.append(a * c if draw(st.booleans()) else a + c)
    # Tie the last value to every input so each has a path to the output.
    out = pool[-1]
    for x in pool[: len(names)]:
        out = out + 0.25 * sg.sin(x)
    return out
