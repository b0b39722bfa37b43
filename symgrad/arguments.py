"""Arguments of a call: values checked and converted, batch shapes and the size limit.

Every value a user passes to a compiled function comes through here: it must be a real number or
an array of them that numpy holds in at most 64 bits (each bad value named and described), the
arguments must broadcast together, and a call whose batch times outputs per point exceeds
``graph.max_elements`` is a SizeError, refused from the shapes alone before anything is
allocated. Backend-neutral: the compile face uses it, whatever backend runs the call.
"""

from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

from symgrad.errors import ArgumentError, SizeError
from symgrad.graph import Graph

# Graph.max_elements' default, for a graph that has no such attribute (pickled by an older
# symgrad): 2**28 float64 is 2 GiB per array.
DEFAULT_MAX_ELEMENTS = 2**28

F64 = np.dtype(np.float64)  # numpy's own instance: an identity test is the cheapest check


def max_elements(graph: Graph) -> int:
    """The graph's limit on the elements of a call's batch and outputs (``Graph.max_elements``;
    read at each call, so raising it takes effect without compiling again)."""
    return getattr(graph, "max_elements", DEFAULT_MAX_ELEMENTS)


def check_tensor_outputs(blocks: list, limit: int) -> None:
    """A tensor function's outputs have fixed shapes: refuse too many elements at compile."""
    size = sum(count * math.prod(shape) for _, shape, count in blocks)
    if size > limit:
        raise SizeError(
            f"compile: the outputs have {_count(size)} elements in all, more than "
            f"max_elements={limit}; compile fewer outputs at once, or raise the limit "
            "(sg.Graph(max_elements=...), or graph.max_elements = ...)"
        )


def broadcast(values: list, names: tuple[str, ...], limit: int, per_point: int):
    """The arguments as float64 arrays and their broadcast batch shape.

    The batch is sized from the shapes alone, before anything is converted or allocated: a call
    whose outputs (batch elements x ``per_point``) exceed ``limit`` is a SizeError.
    """
    arrays = [_as_real(v, name) for v, name in zip(values, names)]
    try:
        batch = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
    except ValueError:
        raise broadcast_error([a.shape for a in arrays], names, limit, per_point) from None
    n = math.prod(batch)
    if n * per_point > limit:
        raise _size_error([a.shape for a in arrays], names, tuple(batch), per_point, limit)
    if n == 0:  # an argument may still be larger than the empty batch: (0, 1) and (1, 2**40)
        _check_argument_sizes(arrays, names, limit)
    return [a if a.dtype is F64 else a.astype(F64) for a in arrays], tuple(batch)


def broadcast_error(
    shapes: list, names: tuple[str, ...], limit: int, per_point: int = 1
) -> ArgumentError:
    """Why numpy refused to broadcast ``shapes``: a mismatch, or a batch too large to count."""
    batch = []
    for dims in itertools.zip_longest(*(s[::-1] for s in shapes), fillvalue=1):
        sizes = {n for n in dims if n != 1}
        if len(sizes) > 1:
            listed = ", ".join(f"{n}: {s}" for n, s in zip(names, shapes))
            return ArgumentError(f"argument shapes do not broadcast together ({listed})")
        batch.append(sizes.pop() if sizes else 1)
    return _size_error(shapes, names, tuple(batch[::-1]), per_point, limit)


def _check_argument_sizes(arrays: list, names: tuple[str, ...], limit: int) -> None:
    # The interpreter computes what depends on one argument at that argument's shape.
    for a, name in zip(arrays, names):
        if a.size > limit:
            raise SizeError(
                f"argument {name!r}: shape {a.shape} has {_count(a.size)} elements, more than "
                f"max_elements={limit}; pass a smaller array, or raise the limit "
                "(fn.graph.max_elements = ...)"
            )


def _size_error(shapes: list, names, batch: tuple, per_point: int, limit: int) -> SizeError:
    listed = ", ".join(f"{n}: {s}" for n, s in zip(names, shapes))
    per = f" x {per_point} outputs per point" if per_point != 1 else ""
    return SizeError(
        f"arguments ({listed}) broadcast to a batch of shape {batch}{per}: "
        f"{_count(math.prod(batch) * per_point)} elements, more than max_elements={limit}; "
        "pass smaller batches, or raise the limit (fn.graph.max_elements = ...)"
    )


def _count(n: int) -> str:
    # 400 exactly, 4.6e+18 rather than 19 digits, about 2**2000 when a float would overflow.
    if n < 10**6:
        return str(n)
    return f"{float(n):.2g}" if n.bit_length() < 1000 else f"about 2**{n.bit_length() - 1}"


def as_tensor(v, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """An input of a tensor function: exactly its declared shape, real numbers as float64."""
    if (
        type(v) is np.ndarray
        and v.dtype == np.float64
        and v.shape == shape
        and v.flags.c_contiguous
    ):
        return v  # the common case, checked in a few attribute reads
    arr = as_array(v, name)
    if arr.shape != shape:
        raise ArgumentError(f"argument {name!r}: expected shape {shape}, got {arr.shape}")
    # (np.ascontiguousarray would make a 0-d array 1-d.)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def contiguous(a: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """``a`` as n contiguous doubles over the batch (a copy only if it is broadcast)."""
    if a.shape == batch and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(np.broadcast_to(a, batch))


def as_array(v, name: str) -> np.ndarray:
    """An argument as a float64 array (a view when it is one already)."""
    return _as_real(v, name).astype(np.float64, copy=False)


def _as_real(v, name: str) -> np.ndarray:
    """An argument as an array of ints or floats numpy holds in at most 64 bits, not converted
    yet; an ArgumentError saying what ``v`` is and what to do otherwise.

    Taken: floats, ints in int64/uint64, numpy reals, and (nested) lists, tuples and arrays of
    them; not bools, which are answers, not coordinates (pass float(x) for 0.0 or 1.0).
    """
    if isinstance(v, float):
        return np.asarray(v)
    if isinstance(v, (np.ndarray, list, tuple)) or (
        isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
    ):
        try:
            arr = np.asarray(v)
        except ValueError as err:
            raise ArgumentError(f"argument {name!r}: {_not_an_array(err)}") from None
        if arr.dtype.kind in "fiu" and arr.dtype.itemsize <= 8 and not _masked(v):
            return arr
        raise ArgumentError(f"argument {name!r}: {_bad_array(v, arr)}")
    raise ArgumentError(f"argument {name!r}: {_bad_value(v)}")


def _masked(v) -> bool:
    return type(v) is not np.ndarray and isinstance(v, np.ma.MaskedArray)


def _not_an_array(err: ValueError) -> str:
    if "inhomogeneous" in str(err):
        return "a ragged nested list (its rows differ in length) is not an array"
    return f"not an array of numbers ({err})"


def _bad_array(v, arr: np.ndarray) -> str:
    """What is wrong with an array (or the scalar or list it came from) of the wrong dtype."""
    if _masked(v):
        return "a masked array: its mask would be ignored; pass x.filled(np.nan)"
    if arr.ndim == 0 and arr.dtype == object:
        return _bad_value(arr.item())
    if arr.dtype == object:
        return _bad_object_array(arr)
    kind = arr.dtype.kind
    if kind == "f":
        convert = "x.astype(np.float64)" if arr.ndim else "np.float64(x)"
        return f"dtype {arr.dtype} would be rounded to float64: pass {convert}"
    if kind == "b":
        return f"bools (dtype {arr.dtype}) are not numbers here: pass x.astype(float)"
    return f"expected real numbers, got dtype {arr.dtype}"


# Scanned for a bad item of an object array, at most: the message is worth that much, not more.
SCAN_ITEMS = 10_000


def _bad_object_array(arr: np.ndarray) -> str:
    """The first item of an object array (often a list numpy could not type) that is not a
    number symgrad takes, described; or how to convert an array of good ones."""
    for k, (index, item) in enumerate(np.ndenumerate(arr)):
        if k == SCAN_ITEMS:
            break
        if not _good_item(item):
            where = ", ".join(map(str, index))
            if isinstance(item, numbers.Number):  # a bool, a huge int, a Fraction: say which
                return f"its item [{where}]: {_bad_value(item)}"
            return f"its item [{where}] is {_short(item)}, not a number"
    return "an array of dtype object: pass np.asarray(x, dtype=np.float64) if it holds numbers"


def _good_item(item) -> bool:
    """An item of an object array that numpy would convert like a number in an array."""
    if isinstance(item, (float, np.floating, np.integer)):
        return np.asarray(item).dtype.itemsize <= 8
    return isinstance(item, int) and not isinstance(item, bool) and -(2**63) <= item < 2**64


def _bad_value(v) -> str:
    """Why a single value that is not an array is not a real number symgrad takes."""
    if isinstance(v, (bool, np.bool_)):
        return f"{v!r} is a bool, not a number here: pass float(x) for 0.0 or 1.0"
    if isinstance(v, int):
        return _bad_int(v)
    if isinstance(v, (complex, np.complexfloating)):
        return f"{v!r} is complex: symgrad computes over real numbers (float64)"
    if isinstance(v, numbers.Number):
        return f"{_short(v)} is a {type(v).__name__}, not a float: pass float(x) to round it"
    if isinstance(v, (str, bytes)):
        return f"expected a real number or array, got the {type(v).__name__} {_short(v)}"
    if v is None:
        return "expected a real number or array, got None"
    return f"expected a real number or array, got a value of type {type(v).__name__}: {_short(v)}"


def _bad_int(v: int) -> str:
    try:
        float(v)
    except OverflowError:
        return f"the int {_short(v)} does not fit a float64 (its magnitude exceeds 1.8e308)"
    return f"the int {_short(v)} is outside int64 and uint64: pass float(x) to round it"


def _short(v) -> str:
    """``repr(v)``, or its first 40 characters and its length if longer."""
    text = repr(v) if not isinstance(v, int) else str(v)
    if len(text) <= 60:
        return text
    what = "digits" if isinstance(v, int) else "characters"
    return f"{text[:40]}... ({len(text)} {what})"
