"""Batched calls of tensor functions: a function of small tensors called over a leading axis.

A compiled tensor function takes each argument in exactly its declared shape. Called with an
extra leading axis of n on some arguments (the others as declared, shared by every point), it
runs n points at once, as ``jax.vmap`` would, and returns each output with that axis in front.

How: the first such call builds the function's *element graph* (``optimize.scalarize``: every
element of every argument a scalar input, every node its elements) and compiles it as a scalar
batch function with ``gather=True``, so its batch kernel runs 4 points to a vector on threads and
reads each element's column in place, at whatever stride the argument has: an (n, 11) array is
not copied. Unbatched arguments are loop-invariant scalars. The element function is built once
per compiled function (under a lock) and reused.
"""

from __future__ import annotations

import threading

import numpy as np

from symgrad.arguments import as_array, as_tensor
from symgrad.errors import ArgumentError
from symgrad.optimize.scalarize import input_name, scalarize
from symgrad.outputs import item_rows


def batch_size(values: list, names: tuple[str, ...], shapes: list[tuple[int, ...]]) -> int | None:
    """n if some argument is an array of shape (n,) + its declared shape (the others exactly
    theirs), None if none is; an ArgumentError naming the arguments if their leading axes
    differ. Other shapes are left to the exact check of an unbatched call."""
    sizes = {}
    for v, name, shape in zip(values, names, shapes):
        # Only numpy arrays carry a batch (a list is read as its declared shape, or refused).
        if type(v) is np.ndarray and v.ndim == len(shape) + 1 and v.shape[1:] == shape:
            sizes[name] = v.shape[0]
    if not sizes:
        return None
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name}: {n}" for name, n in sizes.items())
        raise ArgumentError(f"batched call: the leading axes of the arguments differ ({listed})")
    return next(iter(sizes.values()))


class BatchedCall:
    """The element function of one compiled tensor function, built on first use."""

    def __init__(self, flat: list, inputs: tuple[str, ...], shapes, build):
        # build(outputs, names, gather) -> a compiled function (compile.py passes it: this
        # module sits beside compile, not above it).
        self._flat, self._inputs, self._shapes, self._build_function = flat, inputs, shapes, build
        self._lock = threading.Lock()
        self._function = None

    def function(self):
        with self._lock:
            if self._function is None:
                self._function = self._build()
            return self._function

    def _build(self):
        elements = scalarize(self._flat, self._inputs)
        names = tuple(
            input_name(k, e)
            for k, shape in enumerate(self._shapes)
            for e in range(int(np.prod(shape)))
        )
        # One list output of every element: the call's result is one (n, elements) array, each
        # flat output a slice of it (no per-output bookkeeping in a call).
        everything = [e for items in elements for e in items]
        fn = self._build_function([everything], names)
        self._bounds = item_rows(e.shape for e in self._flat)
        self._picks = [  # per argument: (its batched index tuples, its shared ones)
            ([(slice(None), *idx) for idx in np.ndindex(*shape)],
             [(*idx, ...) for idx in np.ndindex(*shape)])
            for shape in self._shapes
        ]  # fmt: skip
        return fn

    def __call__(self, values: list, n: int) -> list[np.ndarray]:
        """Each flat output over the n points, of shape (n,) + its node's shape."""
        fn = self.function()
        # One C call on the arguments as given (sg_vmap_fast); else their element columns.
        rows = fn.vmap_rows(values, n)
        if rows is None:
            rows = self._by_columns(fn, values, n)
        return [
            rows[lo:hi].reshape((*shape, n)).transpose(perm) for lo, hi, shape, perm in self._bounds
        ]

    def _by_columns(self, fn, values: list, n: int) -> np.ndarray:
        """The outputs as (outputs, n) from each element's column: strided views of a batched
        argument, 0-d views of a shared one (converted to float64 first where they are not)."""
        columns = []
        for v, name, shape, (batched, shared) in zip(values, self._inputs, self._shapes,
                                                    self._picks):  # fmt: skip
            a = as_array(v, name)
            if a.shape == (n, *shape):
                columns += [a[t] for t in batched]
            else:  # shared by every point: exactly its declared shape (else the usual error)
                a = as_tensor(a, name, shape)
                columns += [a[t] for t in shared]
        results = fn._batch_fast(columns, n) if fn._fast_batch is not None else None
        (rows,) = results if results is not None else fn(*columns)
        return rows.T
