"""Dask blocks of a compiled function: ``CompiledFunction.map_blocks``.

A call over Dask arrays becomes one ``da.apply_gufunc`` whose function is the compiled function
itself, wrapped as one ``dask.delayed`` node: it reaches each worker once, by pickle (``compile.py``
pickles it as data), not once per block. Dask is optional (``pip install 'symgrad[dask]'``) and is
imported on first use only.
"""

from __future__ import annotations

import math

import numpy as np

from symgrad.arguments import as_array, broadcast_error, max_elements
from symgrad.errors import ArgumentError


def map_blocks(fn, args: tuple, kwargs: dict) -> tuple:
    """``fn.map_blocks(*args, **kwargs)`` for the CompiledFunction ``fn``: see its docstring."""
    dask, da = _dask()
    if fn.tensor:
        raise ArgumentError("map_blocks: a tensor function takes whole arrays; call it instead")
    if not fn.inputs:
        raise ArgumentError("map_blocks: this function has no inputs to map over")
    values = fn._bind(args, kwargs)
    arrays = [_as_block_source(da, v, name) for v, name in zip(values, fn.inputs)]
    _check_broadcast(arrays, fn.inputs, max_elements(fn.graph))
    signature, sizes = _gufunc_signature(len(fn.inputs), fn.layout)
    single = len(fn.layout) == 1
    out = da.apply_gufunc(
        _run_block,
        signature,
        *arrays,
        output_dtypes=[np.float64] * len(fn.layout),
        output_sizes=sizes,
        vectorize=False,
        allow_rechunk=True,  # inputs have no core axes: this only lets Dask align chunks
        fn=dask.delayed(fn, pure=True),
        single=single,
    )
    return (out,) if single else tuple(out)


def _dask():
    """``dask`` and ``dask.array``, imported on first use: Dask is an optional dependency."""
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ArgumentError(
            "map_blocks needs Dask, which is not installed: pip install 'symgrad[dask]'"
        ) from None
    return dask, da


def _as_block_source(da, v, name: str):
    """An argument of ``map_blocks``: a Dask array of real numbers, or what a call takes."""
    if not isinstance(v, da.Array):
        return as_array(v, name)
    if v.dtype.kind not in "fiu" or v.dtype.itemsize > 8:
        raise ArgumentError(f"argument {name!r}: expected real numbers, got dtype {v.dtype}")
    return v


def _check_broadcast(arrays: list, names: tuple[str, ...], limit: int) -> None:
    shapes = [a.shape for a in arrays]
    if any(math.isnan(n) for shape in shapes for n in shape):
        return  # unknown chunk sizes: Dask checks when it knows them
    try:
        np.broadcast_shapes(*shapes)
    except ValueError:
        raise broadcast_error(shapes, names, limit) from None


def _gufunc_signature(n_in: int, layout) -> tuple[str, dict[str, int]]:
    """The generalized-ufunc signature of a call: scalar inputs, each output item's own axes
    last, e.g. ``(),()->(),(o1_0)`` and their sizes ``{"o1_0": 2}``."""
    outs, sizes = [], {}
    for k, shape in enumerate(layout):
        dims = [f"o{k}_{j}" for j in range(len(shape))]
        sizes.update(zip(dims, shape))
        outs.append(f"({','.join(dims)})")
    return ",".join(["()"] * n_in) + "->" + ",".join(outs), sizes


def _run_block(*blocks, fn, single: bool):
    """One Dask block: the call's tuple (or its only item, as apply_gufunc wants it then)."""
    out = fn(*blocks)
    return out[0] if single else out
