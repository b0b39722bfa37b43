"""Stage 3: ``optimize`` runs prune, CSE and constant folding to a fixed point, inside scan
bodies too.

Every pass is a pure function ``outputs -> outputs`` building a fresh graph, so the caller's graph
is never touched and passes compose in any order.
"""

from __future__ import annotations

from symgrad.graph import paused_gc
from symgrad.optimize.bodies import bodies
from symgrad.optimize.cse import cse
from symgrad.optimize.fold import fold
from symgrad.optimize.prune import prune


def optimize(outputs):
    """Equivalent ``outputs`` in a fresh, smaller graph: prune + CSE + fold to a fixed point.

    >>> import symgrad as sg
    >>> f = sg.parse("x * 1 + 0")
    >>> sg.optimize(f).op
    'input'
    """
    with paused_gc():  # a 100k-node value + gradient: 2.7 s with the collector, 1.6 s without
        # Each scan's body first (this same optimize, so nested bodies too), then the graph.
        outputs = bodies(outputs, optimize)
        # fold re-creates every reachable node through hash-consing, so it also merges (CSE),
        # and prunes what its rules dropped; since it folds each rewrite again as it builds it
        # (up to fold.MAX_DEPTH deep), one pass is already the fixed point: a second changes
        # nothing (tested).
        return fold(outputs)


__all__ = ["bodies", "cse", "fold", "optimize", "prune"]
