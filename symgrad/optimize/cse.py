"""Pass: common-subexpression elimination by value numbering.

Hash-consing already makes an identical ``(op, args, attrs)`` a single node at construction. Other
passes break that: once folding maps two different operands to one node, two nodes that used to
differ become identical. Re-creating every node in a fresh graph in id order re-keys it on its
*mapped* operands, so such nodes merge. Invariant: same values; no two nodes with one key.
"""

from __future__ import annotations

from symgrad.optimize.prune import rebuild


def cse(outputs):
    """Merge nodes that compute the same op on the same operands (same values)."""
    return rebuild(outputs)
