"""Pass: scalarize. A graph of small tensors rewritten as a graph of scalars, element by element.

What batched calls of a tensor function stand on (``CompiledFunction`` called with an extra
leading axis): every element of every input becomes a scalar input of its own, every tensor node
the array of scalar nodes that compute its elements, so the scalar batch kernel runs the function
over many points at once, 4 points to a vector, and reads each element's column in place.

Each node's elements are a numpy array of ``Expr``s (dtype object) of the node's shape, made in
id order (no recursion) by its op's kind:

- elementwise ops: the op applied element by element, operands broadcast as numpy does;
- ops that only move elements (``OpDef.pattern`` MOVES; ``take`` by constant indices,
  ``concatenate``): the op's own numpy form applied to the arrays of elements;
- sums of products (``sum``, ``matmul``, ``einsum``, ``scatter_add`` by constant indices): the
  numpy form too, whose ``+`` and ``*`` on ``Expr``s build the nodes;
- ``amax``: a chain of ``max`` per output element.

Composite ops are expanded first (``expand``). What has no element-wise form (a take by indices
that are not constants, a scan, a pool's windows over a tensor that is too big) is refused with a
``LoweringError`` naming the op. The result is a fresh graph; the caller's is never touched.
"""

from __future__ import annotations

import math

import numpy as np

from symgrad.errors import LoweringError
from symgrad.graph import Expr, Graph, paused_gc, reachable
from symgrad.ops import MOVES, OPS, scatter_into
from symgrad.optimize.expand import expand

# Elements of all the nodes together: past this the element graph is too big to be worth it.
MAX_ELEMENTS = 1 << 20


def input_name(k: int, e: int) -> str:
    """The scalar input holding element ``e`` (flat, C order) of argument ``k``."""
    return f"x{k}_{e}"


def scalarize(flat: list[Expr], inputs: tuple[str, ...]) -> list[list[Expr]]:
    """Each output of ``flat`` as the list of its elements (C order), nodes of a fresh graph
    whose inputs are ``input_name(k, e)`` for element e of ``inputs[k]``."""
    flat = expand(flat)
    old = flat[0].graph
    new = Graph(max_nodes=old.max_nodes, max_elements=old.max_elements)
    slot = {name: k for k, name in enumerate(inputs)}
    nodes = old.nx._node
    order = reachable(old, [e.id for e in flat])
    total = sum(math.prod(nodes[i]["shape"]) for i in order)
    if total > MAX_ELEMENTS:
        raise LoweringError(
            f"batched call: the function's nodes hold {total:,} elements, more than the "
            f"{MAX_ELEMENTS:,} an element-by-element kernel is built for"
        )
    elements: dict[int, np.ndarray] = {}
    with paused_gc():
        for i in order:
            elements[i] = _elements(new, nodes[i], elements, slot)
    return [list(elements[e.id].ravel()) for e in flat]


def _elements(new: Graph, node: dict, elements: dict, slot: dict[str, int]) -> np.ndarray:
    op, shape = node["op"], node["shape"]
    attrs = dict(node["attrs"])
    if op == "input":
        k = slot[attrs["name"]]
        return _array([new.input(input_name(k, e)) for e in range(math.prod(shape))], shape)
    if op == "const":
        value = np.asarray(attrs["value"], np.float64)
        return _array([new.const(float(v)) for v in value.ravel()], shape)
    opdef = OPS[op]
    args = [elements[a] for a in node["args"]]
    if opdef.elementwise and not opdef.multiple:
        parts = np.broadcast_arrays(*args)
        out = [new.apply(op, *(p[idx] for p in parts)) for idx in np.ndindex(shape)]
        return _array(out, shape)
    if op in ("take", "scatter_add") and not _constant(args[1]):
        raise LoweringError(f"batched call: {op} by indices that are not constants")
    if opdef.pattern == MOVES or op in ("take", "concatenate"):
        return _moved(new, opdef, args, attrs, shape)
    if op in ("sum", "matmul", "einsum", "scatter_add"):
        return _summed(new, opdef, args, attrs, shape)
    if op == "amax":
        return _maxima(new, args[0], attrs)
    raise LoweringError(f"batched call: op {op!r} has no element-by-element form")


def _array(items: list, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)


def _constant(elements: np.ndarray) -> bool:
    return all(e.op == "const" for e in elements.ravel())


def _moved(new: Graph, opdef, args: list[np.ndarray], attrs: dict, shape) -> np.ndarray:
    """An op that moves elements, read off its numpy form applied to element numbers (as the
    sparsity walk reads it): each output element is an operand element, or a zero or nan the
    op wrote (embed's padding, a take's invalid index)."""
    sources = np.concatenate([a.ravel() for a in args[:1]] if opdef.name == "take" else
                             [a.ravel() for a in args])  # fmt: skip
    numbers, start = [], 1
    for a in args[:1] if opdef.name == "take" else args:
        numbers.append(np.arange(start, start + a.size, dtype=np.float64).reshape(a.shape))
        start += a.size
    if opdef.name == "take":
        numbers.append(np.array([e.value for e in args[1].ravel()]).reshape(args[1].shape))
    picked = np.asarray(opdef.numpy(*numbers, **attrs), np.float64).ravel()
    out = []
    for number in picked:
        if number >= 1:
            out.append(sources[int(number) - 1])
        else:  # 0 (a zero written) or nan (an invalid index read)
            out.append(new.const(0.0 if number == 0 else float("nan")))
    return _array(out, shape)


def _summed(new: Graph, opdef, args: list[np.ndarray], attrs: dict, shape) -> np.ndarray:
    """A sum of products by its numpy form over arrays of Exprs (their + and * build nodes);
    scatter_add by numpy's add.at into zeros."""
    if opdef.name == "scatter_add":
        idx = np.array([e.value for e in args[1].ravel()]).reshape(args[1].shape)
        return scatter_into(args[0], idx, attrs["axis"], attrs["size"], new.const(0.0))
    out = opdef.numpy(*args, **attrs)
    return _array([out], ()) if isinstance(out, Expr) else np.asarray(out, dtype=object)


def _maxima(new: Graph, x: np.ndarray, attrs: dict) -> np.ndarray:
    axes, keep = attrs["axis"], attrs["keepdims"]
    moved = np.moveaxis(x, axes, range(-len(axes), 0)) if axes else x
    rows = moved.reshape(moved.shape[: moved.ndim - len(axes)] + (-1,))
    out = np.empty(rows.shape[:-1], dtype=object)
    for idx in np.ndindex(out.shape):
        best = rows[idx][0]
        for e in rows[idx][1:]:
            best = new.apply("max", best, e)
        out[idx] = best
    if keep:
        out = out.reshape(tuple(1 if d in axes else n for d, n in enumerate(x.shape)))
    return out
