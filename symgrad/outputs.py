"""Outputs as users write them, and as the pipeline handles them.

A user hands ``compile``, ``optimize`` and the passes an ``Expr``, a list of Exprs or a list of
lists (a matrix such as a Hessian). ``flatten_outputs`` turns that into one flat list of Exprs and
a *layout* (per item: ``()``, ``(n,)`` or ``(n, m)``); ``restructure`` and ``unflatten`` go back.
Core level: passes and the compile face both use it, so it imports nothing above the graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from symgrad.errors import GraphError
from symgrad.graph import Expr, Graph, checked_expr


def flatten_outputs(outputs) -> tuple[list[Expr], list[tuple[int, ...]]]:
    """Flat list of output Exprs and, per item of ``outputs``, its shape (), (n,) or (n, m)."""
    if isinstance(outputs, Expr) or not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    flat: list[Expr] = []
    layout: list[tuple[int, ...]] = []
    for k, item in enumerate(outputs):
        if isinstance(item, Expr):
            flat.append(item)
            layout.append(())
        elif isinstance(item, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in item):
            rows = [list(r) for r in item]
            width = len(rows[0]) if rows else 0
            if any(len(r) != width for r in rows):
                raise GraphError(f"outputs[{k}]: rows of a matrix output differ in length")
            flat.extend(_check_exprs(sum(rows, []), f"outputs[{k}]"))
            layout.append((len(rows), width))
        elif isinstance(item, (list, tuple)):
            flat.extend(_check_exprs(list(item), f"outputs[{k}]"))
            layout.append((len(item),))
        else:
            raise GraphError(f"outputs[{k}] is a {type(item).__name__}, not an Expr or a list")
    if flat and any(e.graph is not flat[0].graph for e in flat):
        raise GraphError("outputs belong to different graphs")
    if not flat:
        raise GraphError("no outputs to compile")
    return flat, layout


def _check_exprs(items: list, where: str) -> list[Expr]:
    for j, e in enumerate(items):
        if not isinstance(e, Expr):
            raise GraphError(f"{where}[{j}] is a {type(e).__name__}, not an Expr")
    return items


def restructure(outputs, new: Graph, mapped: Callable[[int], int] | dict[int, int]):
    """``outputs`` (Expr, list or list of lists) with each Expr replaced by ``Expr(new,
    mapped[id])``: the same structure over a rebuilt graph."""
    if isinstance(outputs, Expr):
        return Expr(new, mapped[outputs.id])
    return [restructure(item, new, mapped) for item in outputs]


def unflatten(graph: Graph, ids: list, layout: list) -> list:
    """The nested outputs (Expr, list, list of lists) that flatten to ``ids`` with ``layout``;
    a GraphError for ids or a layout that do not fit (they may come from a pickle)."""
    if not isinstance(ids, list) or not isinstance(layout, list):
        raise GraphError("outputs and layout must be lists")
    items, k = [], 0
    for shape in layout:
        if not isinstance(shape, tuple) or len(shape) > 2:
            raise GraphError(f"layout item {shape!r} is not (), (n,) or (n, m)")
        if any(type(n) is not int or n < 0 for n in shape):
            raise GraphError(f"layout item {shape!r} is not (), (n,) or (n, m)")
        size = math.prod(shape)
        exprs = [checked_expr(graph, i) for i in ids[k : k + size]]
        if len(exprs) != size:
            raise GraphError(f"{len(ids)} output ids are too few for layout {layout!r}")
        k += size
        if len(shape) == 2:
            width = shape[1]
            items.append([exprs[r * width : (r + 1) * width] for r in range(shape[0])])
        else:
            items.append(list(exprs) if shape else exprs[0])
    if k != len(ids):
        raise GraphError(f"{len(ids)} output ids are too many for layout {layout!r}")
    return items


def item_shapes(flat: list[Expr], layout) -> list[tuple[int, ...]]:
    """The node shape shared by the Exprs of each output item (a list stacks equal shapes)."""
    shapes, k = [], 0
    for item, layout_shape in enumerate(layout):
        n = int(np.prod(layout_shape)) if layout_shape else 1
        found = {e.shape for e in flat[k : k + n]}
        if len(found) > 1:
            raise GraphError(
                f"outputs[{item}]: a list output stacks Exprs of one shape, got {sorted(found)}"
            )
        shapes.append(found.pop())
        k += n
    return shapes


def item_rows(shapes) -> list[tuple[int, int, tuple[int, ...], tuple[int, ...]]]:
    """For items of ``shapes`` laid one after another as rows of a batch's (elements, n) array:
    each item's rows (lo, hi), its shape, and the axis order that moves the batch axis from last
    in memory to first in the result (``rows[lo:hi].reshape(shape + (n,)).transpose(order)``)."""
    rows, lo = [], 0
    for shape in shapes:
        shape = tuple(shape)
        hi = lo + math.prod(shape)
        rows.append((lo, hi, shape, (len(shape), *range(len(shape)))))
        lo = hi
    return rows
