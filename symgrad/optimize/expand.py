"""Pass: expansion, the lowering-prep pass. Composite ops become the primitive ops they stand for.

An op with an ``expand`` field in the registry (``conv2d``, the pools, ``softmax``, ``mean``, ...)
is replaced by what that field builds from primitive ops, so a backend's loop writer sees only
ops it lowers directly. Like every pass it is a pure function ``outputs -> outputs`` over a fresh
graph. Invariant: same values; every remaining op has no expansion of its own.
"""

from __future__ import annotations

from symgrad.ops import OPS
from symgrad.optimize.prune import rebuild


def _expansion_rule(new):
    del new  # expansions build their nodes in the graph of the operands they are given

    def rule(op, args, attrs):
        expansion = OPS[op].expand
        return expansion(*args, **attrs) if expansion is not None else None

    return rule


def expand(outputs):
    """``outputs`` rebuilt with every op that has an expansion replaced by it (same values)."""
    return rebuild(outputs, _expansion_rule)
