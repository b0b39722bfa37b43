"""``CompiledFunction``: the call contract of a compiled graph, whatever backend runs it.

It owns argument checking (keywords or positionals, names checked, values converted to float64
arrays that must broadcast together, each bad value named and described), the size limit (a
batch's outputs within ``graph.max_elements``, checked from shapes before anything is
allocated), the output layout (an ``Expr`` gives an array of the batch shape, a list of n gives
batch + (n,), a list of lists batch + (n, m)) and the backend's executor: ``"numpy"`` runs the
reference interpreter, ``"llvm"`` native code. Nothing here imports llvmlite at module level, so
the numpy backend never pays for it.
"""

from __future__ import annotations

import itertools
import math
import numbers
import uuid
from operator import itemgetter

import numpy as np

from symgrad.errors import ArgumentError, GraphError, SizeError
from symgrad.graph import Expr, Graph, checked_expr
from symgrad.interp import Program
from symgrad.ops import OPS

BACKENDS = ("llvm", "numpy")
PICKLE_FORMAT = 1  # version of the state a pickled CompiledFunction carries
_MISSING = object()  # an argument not given (None is a value, and a wrong one)
# Graph.max_elements' default, for a graph that has no such attribute (pickled by an older
# symgrad): 2**28 float64 is 2 GiB per array.
DEFAULT_MAX_ELEMENTS = 2**28
F64 = np.dtype(np.float64)  # numpy's own instance: an identity test is the cheapest check


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


class CompiledFunction:
    """A callable over the graph's inputs returning a tuple of float64 arrays.

    ``fn.inputs`` lists the argument names in order; call with positionals, keywords or both.
    """

    def __init__(self, outputs, inputs=None, backend: str = "llvm", **options):
        if backend not in BACKENDS:
            raise ArgumentError(f"backend must be one of {BACKENDS}, got {backend!r}")
        flat, self.layout = flatten_outputs(outputs)
        self.graph = flat[0].graph
        self.backend = backend
        self.options = options
        self.program = Program.of(self.graph, [e.id for e in flat])
        self.inputs = _argument_names(self.graph, self.program.inputs, inputs)
        self._slots = {name: k for k, name in enumerate(self.inputs)}
        self._native = None
        self._arity = len(self.inputs)
        self._pick = self._fast = None
        self._per_point = sum(math.prod(shape) for shape in self.layout)  # outputs of one point
        nodes = self.graph.nx._node
        # A graph with any non-scalar node runs in tensor mode: inputs take exactly their
        # declared shapes (no batch broadcasting), outputs have their nodes' shapes.
        # So does a scalar graph holding a tensor op (sum of a scalar): only the loop writer
        # lowers those.
        self.tensor = any(
            nodes[i]["shape"] or not OPS[op].elementwise for i, op, *_ in self.program.steps
        )
        if self.tensor:
            self._item_shapes = _item_shapes(flat, self.layout)
            # Per output item: its layout, node shape and number of Exprs (precomputed: a call
            # of a small tensor function is dominated by such bookkeeping).
            self._blocks = [
                (layout, shape, int(np.prod(layout)) if layout else 1)
                for layout, shape in zip(self.layout, self._item_shapes)
            ]
            self._shapes = [self.graph.inputs[n].shape for n in self.inputs]
            _check_tensor_outputs(self._blocks, max_elements(self.graph))
            if backend == "llvm":
                self._compile_tensor(flat, options)
        elif backend == "llvm":
            self._compile_native([e.id for e in flat], options)

    def _compile_tensor(self, flat: list[Expr], options: dict) -> None:
        from symgrad.llvm.jit import TensorKernel

        self._native = TensorKernel(flat, self.inputs, **_check_options(options))

    def _compile_native(self, ids: list[int], options: dict) -> None:
        from symgrad.llvm.jit import NativeKernels

        # The kernel computes each distinct non-constant output once; constants and repeats
        # (a Hessian's zeros and its symmetric half) are filled in here, not stored per point.
        self._outs = _OutputPlan(self.graph, ids)
        kernel_program = Program.of(self.graph, self._outs.kernel_ids)
        self._native = NativeKernels(kernel_program, self.inputs, **_check_options(options))
        self._pick = _point_picker(self.layout)
        self._n_kernel_out = len(self._outs.kernel_ids)
        self._fast = self._native.fast.call if self._native.fast is not None else None

    def __repr__(self) -> str:
        return f"<CompiledFunction {self.backend}: ({', '.join(self.inputs)}) -> {self.layout}>"

    @property
    def llvm_ir(self) -> str:
        """The LLVM module text (llvm backend only)."""
        if self._native is None:
            raise ArgumentError("llvm_ir: this function was compiled with backend='numpy'")
        return self._native.llvm_ir

    @property
    def asm(self) -> str:
        """Host assembly of the kernels (llvm backend only)."""
        if self._native is None:
            raise ArgumentError("asm: this function was compiled with backend='numpy'")
        return self._native.asm

    def __call__(self, /, *args, **kwargs):
        if self._fast is not None and not kwargs:
            # Fast path, one point of Python floats: sg_fast checks the arguments' types and
            # writes the outputs into a fresh array, or hands back something else if it can't.
            out = np.empty(self._n_kernel_out)
            if self._fast(out, *args) is out:
                return self._pick(self._outs.expand(out))
        return self._call(args, kwargs)

    def map_blocks(self, /, *args, **kwargs) -> tuple:
        """This function over Dask arrays, block by block: a tuple of Dask arrays laid out as a
        call's result (an ``Expr`` gives the batch shape, a list of n batch + (n,), a list of
        lists batch + (n, m)).

        Arguments bind as in a call (positionals, keywords); each is a Dask array, a numpy array
        or a number, and they broadcast together (Dask aligns the chunks). Nothing is computed
        until the results are; each block then runs this function wherever Dask's scheduler puts
        it: a thread, or a worker process. The function is one node of the task graph that the
        blocks depend on, so it reaches each worker once, by pickle, not once per block.
        Scalar graphs only: a tensor function takes whole arrays of its declared shapes. Dask is
        optional (``pip install 'symgrad[dask]'``); without it this raises ArgumentError.

        >>> import dask.array as da, numpy as np, symgrad as sg
        >>> g = sg.Graph(); x = g.input("x")
        >>> fn = sg.compile([x * x, [x + 1, x - 1]], backend="numpy")
        >>> square, pair = fn.map_blocks(da.arange(6.0, chunks=3))
        >>> square.compute(), pair.shape
        (array([ 0.,  1.,  4.,  9., 16., 25.]), (6, 2))
        """
        dask, da = _dask()
        if self.tensor:
            raise ArgumentError("map_blocks: a tensor function takes whole arrays; call it instead")
        if not self.inputs:
            raise ArgumentError("map_blocks: this function has no inputs to map over")
        values = self._bind(args, kwargs)
        arrays = [_as_block_source(da, v, name) for v, name in zip(values, self.inputs)]
        _check_broadcast(arrays, self.inputs, max_elements(self.graph))
        signature, sizes = _gufunc_signature(len(self.inputs), self.layout)
        single = len(self.layout) == 1
        out = da.apply_gufunc(
            _run_block,
            signature,
            *arrays,
            output_dtypes=[np.float64] * len(self.layout),
            output_sizes=sizes,
            vectorize=False,
            allow_rechunk=True,  # inputs have no core axes: this only lets Dask align chunks
            fn=dask.delayed(self, pure=True),
            single=single,
        )
        return (out,) if single else tuple(out)

    def __dask_tokenize__(self):
        # Dask keys the function's node of a task graph by this token: one per CompiledFunction,
        # cheap (Dask's default would pickle the whole graph to hash it).
        return ("symgrad.CompiledFunction", self.__dict__.setdefault("_token", uuid.uuid4().hex))

    def __getstate__(self) -> dict:
        """What a pickle carries: the graph (as data: ``Graph.__getstate__``), the output ids and
        layout, the argument names, the backend and the options; never an engine, a ctypes
        object or machine code.

        Unpickling compiles through the normal path, so the receiving process loads the object
        code from its own cache or compiles it for its own CPU; a structurally wrong state is a
        SymgradError. Pickle itself is unsafe by nature (a crafted pickle can run code before
        symgrad sees it): unpickle only data you trust.
        """
        return {
            "format": PICKLE_FORMAT,
            "graph": self.graph,
            "outputs": list(self.program.outputs),
            "layout": list(self.layout),
            "inputs": list(self.inputs),
            "backend": self.backend,
            "options": dict(self.options),
        }

    def __setstate__(self, state) -> None:
        """Compile what ``__getstate__`` described, as ``sg.compile`` would."""
        outputs, inputs, backend, options = _unpickled_call(state)
        self.__init__(outputs, inputs=inputs, backend=backend, **options)

    def _call(self, args: tuple, kwargs: dict) -> tuple:
        values = self._bind(args, kwargs)
        if self.tensor:
            return self._call_tensor(values)
        limit = max_elements(self.graph)
        arrays, batch = _broadcast(values, self.inputs, limit, self._per_point)
        blocks, flat = self._allocate(batch)
        if self._native is None:
            for view, value in zip(flat, self.program.run(dict(zip(self.inputs, arrays)))):
                view[...] = value
        elif not batch:
            values = self._outs.expand(self._native.run_point([float(a) for a in arrays]))
            for view, value in zip(flat, values):
                view[...] = value
        else:
            n = math.prod(batch)
            full = [a if a.size == 1 else _contiguous(a, batch) for a in arrays]
            self._native.run_batch(full, n, [flat[k] for k in self._outs.first])
            self._outs.fill(flat)
        return tuple(self._finish(block, shape) for block, shape in zip(blocks, self.layout))

    def _call_tensor(self, values: list) -> tuple:
        arrays = [
            _as_tensor(v, name, shape) for v, name, shape in zip(values, self.inputs, self._shapes)
        ]
        blocks, flat = [], []
        for layout, shape, count in self._blocks:
            block = np.empty(layout + shape, np.float64)
            blocks.append(block)
            if not layout:  # an Expr item: the block is the output itself
                flat.append(block)
            else:
                rows = block.reshape((count,) + shape)
                flat.extend(rows[j, ...] for j in range(count))
        if self._native is None:
            for view, value in zip(flat, self.program.run(dict(zip(self.inputs, arrays)))):
                view[...] = value
        else:
            self._native.run(arrays, flat)
        return tuple(blocks)

    def _allocate(self, batch: tuple[int, ...]):
        """One block per output item, laid out item-major so each output is contiguous."""
        blocks, flat = [], []
        for shape in self.layout:
            block = np.empty(shape + batch, np.float64)
            blocks.append(block)
            rows = block.reshape((int(np.prod(shape)),) + batch)  # not -1: batch may be empty
            flat.extend(rows[j, ...] for j in range(len(rows)))  # views, 0-d ones included
        return blocks, flat

    @staticmethod
    def _finish(block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        # Item axes first in memory, last in the result: batch + (n,) or batch + (n, m).
        k = len(shape)
        return np.moveaxis(block, range(k), range(-k, 0)) if k and block.ndim > k else block

    def _bind(self, args: tuple, kwargs: dict) -> list:
        if len(args) > len(self.inputs):
            raise ArgumentError(
                f"takes {len(self.inputs)} arguments ({', '.join(self.inputs)}), got {len(args)}"
            )
        values = list(args) + [_MISSING] * (len(self.inputs) - len(args))
        for name, v in kwargs.items():
            slot = self._slots.get(name)
            if slot is None:
                raise ArgumentError(
                    f"unknown argument {name!r}; arguments are: {', '.join(self.inputs)}"
                )
            if slot < len(args):
                raise ArgumentError(f"argument {name!r} given both by position and by name")
            values[slot] = v
        missing = [n for n, v in zip(self.inputs, values) if v is _MISSING]
        if missing:
            raise ArgumentError(f"missing argument {', '.join(map(repr, missing))}")
        return values


def _unpickled_call(state) -> tuple[list, list, str, dict]:
    """The compile call a pickled CompiledFunction describes: outputs, inputs, backend, options.

    Checks the structure only (types, ids within the graph, the layout's sizes); the compile
    call checks the rest as it would for any caller.
    """
    try:
        if not isinstance(state, dict) or state.get("format") != PICKLE_FORMAT:
            raise GraphError(f"not a compiled function's state of format {PICKLE_FORMAT}")
        graph, inputs, options = state["graph"], state["inputs"], state["options"]
        if not isinstance(graph, Graph):
            raise GraphError(f"its graph is a {type(graph).__name__}, not a Graph")
        if not isinstance(inputs, list) or not all(isinstance(n, str) for n in inputs):
            raise GraphError("inputs must be a list of names")
        if not isinstance(options, dict) or not set(options) <= {"threads", "opt"}:
            raise GraphError("options must be a dict of 'threads' and 'opt'")
        outputs = _outputs_of(graph, state["outputs"], state["layout"])
        return outputs, inputs, state["backend"], options
    except GraphError as err:
        raise GraphError(f"cannot unpickle a CompiledFunction: {err}") from None
    except (TypeError, ValueError, KeyError, IndexError) as err:
        raise GraphError(
            f"cannot unpickle a CompiledFunction: malformed state ({type(err).__name__}: {err})"
        ) from None


def _outputs_of(graph: Graph, ids: list, layout: list) -> list:
    """The nested outputs (Expr, list, list of lists) that flatten to ``ids`` with ``layout``."""
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
        return _as_array(v, name)
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
        raise _broadcast_error(shapes, names, limit) from None


def _gufunc_signature(n_in: int, layout) -> tuple[str, dict[str, int]]:
    """The generalized-ufunc signature of a call: scalar inputs, each output item's own axes
    last, e.g. ``(),()->(),(o1_0)`` and their sizes ``{"o1_0": 2}``."""
    outs, sizes = [], {}
    for k, shape in enumerate(layout):
        dims = [f"o{k}_{j}" for j in range(len(shape))]
        sizes.update(zip(dims, shape))
        outs.append(f"({','.join(dims)})")
    return ",".join(["()"] * n_in) + "->" + ",".join(outs), sizes


def _run_block(*blocks, fn: CompiledFunction, single: bool):
    """One Dask block: the call's tuple (or its only item, as apply_gufunc wants it then)."""
    out = fn(*blocks)
    return out[0] if single else out


def _check_options(options: dict) -> dict:
    """The llvm backend's options, checked: ``threads`` (None or >= 1), ``opt`` (0 or 1)."""
    unknown = sorted(set(options) - {"threads", "opt"})
    if unknown:
        raise ArgumentError(f"compile: unknown option {unknown[0]!r} (options: threads, opt)")
    threads, opt = options.get("threads"), options.get("opt", 1)
    if threads is not None and (type(threads) is not int or threads < 1):
        raise ArgumentError(f"compile: threads must be None or an int >= 1, got {threads!r}")
    if opt not in (0, 1) or type(opt) is not int:
        raise ArgumentError(f"compile: opt must be 0 (no IR passes) or 1, got {opt!r}")
    return {"threads": threads, "opt": opt}


class _OutputPlan:
    """Which flat outputs the kernel computes, and how the others follow from them."""

    def __init__(self, graph, ids: list[int]):
        self.kernel_ids: list[int] = []
        self.first: list[int] = []  # flat position of each kernel output
        slot_of: dict[int, int] = {}
        self.copies: list[tuple[int, int]] = []  # (flat position, kernel slot)
        self.consts: list[tuple[int, float]] = []  # (flat position, value)
        for pos, i in enumerate(ids):
            node = graph.node(i)
            if node["op"] == "const":
                self.consts.append((pos, dict(node["attrs"])["value"]))
            elif i in slot_of:
                self.copies.append((pos, slot_of[i]))
            else:
                slot_of[i] = len(self.kernel_ids)
                self.kernel_ids.append(i)
                self.first.append(pos)
        self.trivial = not self.copies and not self.consts
        # For one point: flat outputs = take(kernel outputs + constants, index).
        self.index = np.empty(len(ids), np.intp)
        self.index[self.first] = range(len(self.first))
        for pos, slot in self.copies:
            self.index[pos] = slot
        for j, (pos, _) in enumerate(self.consts):
            self.index[pos] = len(self.first) + j
        self.const_values = np.array([v for _, v in self.consts], np.float64)

    def expand(self, kernel_out: np.ndarray) -> np.ndarray:
        if self.trivial:
            return kernel_out
        return np.concatenate((kernel_out, self.const_values))[self.index]

    def fill(self, flat: list[np.ndarray]) -> None:
        """Complete a batch: repeats copied from their first place, constants broadcast."""
        for pos, slot in self.copies:
            flat[pos][...] = flat[self.first[slot]]
        for pos, value in self.consts:
            flat[pos].fill(value)


def _point_picker(layout):
    """The function that cuts one point's flat outputs into the result tuple.

    Each item is a view of the fresh flat array: ``out[k, ...]`` (0-d), ``out[a:b]`` or that
    reshaped to a matrix; without matrices an ``itemgetter`` makes them all in one C call.
    """
    index, k = [], 0
    for shape in layout:
        size = int(np.prod(shape)) if shape else 1
        index.append((k, Ellipsis) if not shape else slice(k, k + size))
        k += size
    if any(len(shape) > 1 for shape in layout):
        cuts = [(ix, shape if len(shape) > 1 else None) for ix, shape in zip(index, layout)]
        return lambda out: tuple(out[ix] if s is None else out[ix].reshape(s) for ix, s in cuts)
    if len(index) == 1:
        only = index[0]
        return lambda out: (out[only],)
    return itemgetter(*index)


def _argument_names(graph, reachable: tuple[str, ...], inputs) -> tuple[str, ...]:
    if inputs is None:
        return reachable
    if isinstance(inputs, (str, Expr)) or not isinstance(inputs, (list, tuple)):
        raise ArgumentError("inputs must be a list of input Exprs or names")
    names = []
    for k, item in enumerate(inputs):
        if isinstance(item, Expr) and item.graph is graph and item.op == "input":
            names.append(item.name)
        elif isinstance(item, str) and item in graph.inputs:
            names.append(item)
        else:
            raise ArgumentError(f"inputs[{k}] = {item!r} is not an input of this graph")
    if len(set(names)) != len(names):
        raise ArgumentError("inputs lists a name twice")
    absent = [n for n in reachable if n not in names]
    if absent:
        raise ArgumentError(f"inputs misses {', '.join(map(repr, absent))}, which outputs use")
    return tuple(names)


def max_elements(graph: Graph) -> int:
    """The graph's limit on the elements of a call's batch and outputs (``Graph.max_elements``;
    read at each call, so raising it takes effect without compiling again)."""
    return getattr(graph, "max_elements", DEFAULT_MAX_ELEMENTS)


def _check_tensor_outputs(blocks: list, limit: int) -> None:
    """A tensor function's outputs have fixed shapes: refuse too many elements at compile."""
    size = sum(count * math.prod(shape) for _, shape, count in blocks)
    if size > limit:
        raise SizeError(
            f"compile: the outputs have {_count(size)} elements in all, more than "
            f"max_elements={limit}; compile fewer outputs at once, or raise the limit "
            "(sg.Graph(max_elements=...), or graph.max_elements = ...)"
        )


def _broadcast(values: list, names: tuple[str, ...], limit: int, per_point: int):
    """The arguments as float64 arrays and their broadcast batch shape.

    The batch is sized from the shapes alone, before anything is converted or allocated: a call
    whose outputs (batch elements x ``per_point``) exceed ``limit`` is a SizeError.
    """
    arrays = [_as_real(v, name) for v, name in zip(values, names)]
    try:
        batch = np.broadcast_shapes(*(a.shape for a in arrays)) if arrays else ()
    except ValueError:
        raise _broadcast_error([a.shape for a in arrays], names, limit, per_point) from None
    n = math.prod(batch)
    if n * per_point > limit:
        raise _size_error([a.shape for a in arrays], names, tuple(batch), per_point, limit)
    if n == 0:  # an argument may still be larger than the empty batch: (0, 1) and (1, 2**40)
        _check_argument_sizes(arrays, names, limit)
    return [a if a.dtype is F64 else a.astype(F64) for a in arrays], tuple(batch)


def _broadcast_error(
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


def _item_shapes(flat: list[Expr], layout) -> list[tuple[int, ...]]:
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


def _as_tensor(v, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """An input of a tensor function: exactly its declared shape, real numbers as float64."""
    if (
        type(v) is np.ndarray
        and v.dtype == np.float64
        and v.shape == shape
        and v.flags.c_contiguous
    ):
        return v  # the common case, checked in a few attribute reads
    arr = _as_array(v, name)
    if arr.shape != shape:
        raise ArgumentError(f"argument {name!r}: expected shape {shape}, got {arr.shape}")
    # (np.ascontiguousarray would make a 0-d array 1-d.)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _contiguous(a: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """``a`` as n contiguous doubles over the batch (a copy only if it is broadcast)."""
    if a.shape == batch and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(np.broadcast_to(a, batch))


def _as_array(v, name: str) -> np.ndarray:
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


def compile(outputs, inputs=None, backend: str = "llvm", **options) -> CompiledFunction:
    """Compile ``outputs`` (an Expr, a list, or a list of lists of Exprs) into a callable.

    ``inputs`` (input Exprs or names) fixes the argument order; by default the arguments are the
    inputs the outputs reach, in creation order (``fn.inputs``). ``backend="llvm"`` compiles
    native code; ``"numpy"`` runs the reference interpreter. Options of the llvm backend:
    ``threads`` (None: chosen by batch size and work per point; or an int >= 1) and ``opt``
    (1: LLVM's passes; 0: none, for debugging). The call returns one float64 array per item of
    ``outputs``: an Expr gives the batch shape, a list of n batch + (n,), a list of lists
    batch + (n, m); tensor graphs give their nodes' shapes. A call whose batch elements times
    outputs per point exceed ``graph.max_elements`` is a SizeError (an ArgumentError), raised
    before anything is allocated; raise the limit on the graph, at any time.

    >>> import symgrad as sg
    >>> g = sg.Graph(); x = g.input("x")
    >>> sg.compile([x * x, [x + 1, x - 1]], backend="numpy")(3.0)
    (array(9.), array([4., 2.]))
    """
    return CompiledFunction(outputs, inputs=inputs, backend=backend, **options)
