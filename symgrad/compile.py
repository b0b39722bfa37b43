"""Stage 4's backend-neutral face: ``compile`` and the call contract of ``CompiledFunction``.

A compiled function owns argument binding (keywords or positionals, names checked), the checks
and conversions of ``arguments.py`` (each bad value named; the size limit, from shapes, before
anything is allocated), the output layout (an ``Expr`` gives an array of the batch shape, a list
of n gives batch + (n,), a list of lists batch + (n, m); tensor graphs give their nodes' shapes),
pickling (as data: the graph and the call, compiled again on arrival) and Dask blocks.

What runs the call is a backend's *executor*, found by name in ``BACKENDS`` and imported on first
use: the backends sit below this module in the pipeline and import it, never the reverse (the
numpy backend never pays for llvmlite). An executor has ``run_points(arrays, batch, flat)`` for
scalar graphs over a broadcast batch and ``run_tensor(arrays, flat)`` for tensor graphs, both
filling the flat output arrays; an llvm executor also offers ``fast`` (a one-point entry taking
Python floats), ``expand``, ``llvm_ir`` and ``asm``.
"""

from __future__ import annotations

import importlib
import math
import uuid
from operator import itemgetter

import numpy as np

from symgrad import blas
from symgrad.arguments import (
    as_tensor,
    broadcast,
    check_tensor_outputs,
    max_elements,
)
from symgrad.batched import BatchedCall, batch_size
from symgrad.blocks import map_blocks
from symgrad.errors import ArgumentError, GraphError
from symgrad.graph import Expr, Graph, paused_gc, reachable
from symgrad.ops import OPS
from symgrad.optimize import optimize as run_optimize
from symgrad.outputs import flatten_outputs, item_rows, item_shapes, unflatten
from symgrad.program import Program

# Backend name -> the module implementing it: ``check_options(options) -> options`` and
# ``executor(program, flat, inputs, tensor, options)``.
BACKENDS = {"llvm": "symgrad.llvm.kernels", "numpy": "symgrad.interp"}
PICKLE_FORMAT = 1  # version of the state a pickled CompiledFunction carries
_MISSING = object()  # an argument not given (None is a value, and a wrong one)


class CompiledFunction:
    """A callable over the graph's inputs returning a tuple of float64 arrays.

    ``fn.inputs`` lists the argument names in order; call with positionals, keywords or both.
    """

    def __init__(
        self, outputs, inputs=None, backend: str = "llvm", optimize: bool = True, **options
    ):
        if backend not in BACKENDS:
            raise ArgumentError(f"backend must be one of {tuple(BACKENDS)}, got {backend!r}")
        if type(optimize) is not bool:
            raise ArgumentError(f"optimize must be True or False, got {optimize!r}")
        flat, self.layout = flatten_outputs(outputs)
        source = flat[0].graph
        # The arguments are those of the graph as written, whatever optimizing drops.
        self.inputs = _argument_names(source, _reachable_inputs(source, flat), inputs)
        if optimize:
            flat = _optimized(flat, self.inputs)
        self.graph = flat[0].graph
        self.backend = backend
        self.options = options
        # Backend-neutral: how many threads the BLAS of matmul may use during a call (blas.py).
        self._blas_threads = blas.checked(options.get("blas_threads", blas.DEFAULT_THREADS))
        options = {k: v for k, v in options.items() if k != "blas_threads"}
        self.optimized = optimize
        self.program = Program.of(self.graph, [e.id for e in flat])
        # Entered at each call of a tensor function that multiplies matrices (a few us: only then).
        self._blas = blas.Threads(self._blas_threads if _calls_blas(self.program) else None)
        self._slots = {name: k for k, name in enumerate(self.inputs)}
        self._arity = len(self.inputs)
        self._per_point = sum(math.prod(shape) for shape in self.layout)  # outputs of one point
        self.tensor = self._is_tensor()
        if self.tensor:
            self._plan_tensor_outputs(flat)
        self._attach_executor(flat, options)

    def _is_tensor(self) -> bool:
        # A graph with any non-scalar node runs in tensor mode: inputs take exactly their
        # declared shapes (no batch broadcasting), outputs have their nodes' shapes.
        # So does a scalar graph holding a tensor op (sum of a scalar): only the loop writer
        # lowers those.
        nodes = self.graph.nx._node
        if self.program.parts and self._scalar_call():
            return False  # loops over scalars: a batch of points, each with its own loop
        return any(
            nodes[i]["shape"] or not OPS[op].elementwise for i, op, *_ in self.program.steps
        ) or any(e.shape for e in self._input_exprs())

    def _scalar_call(self) -> bool:
        """Every argument and output a scalar (then a call may take a batch of points)."""
        nodes = self.graph.nx._node
        return not any(e.shape for e in self._input_exprs()) and not any(
            nodes[o]["shape"] for o in self.program.outputs
        )

    def _input_exprs(self) -> list[Expr]:
        # ``graph.inputs`` builds a fresh dict at each use: read it once, not once per argument
        # (that was quadratic: 5.9 s of compiling a function of 8,000 arguments).
        known = self.graph.inputs
        return [known[name] for name in self.inputs]

    def _plan_tensor_outputs(self, flat: list[Expr]) -> None:
        self._item_shapes = item_shapes(flat, self.layout)
        # Per output item: its layout, node shape and number of Exprs (precomputed: a call of a
        # small tensor function is dominated by such bookkeeping).
        self._blocks = [
            (layout, shape, int(np.prod(layout)) if layout else 1)
            for layout, shape in zip(self.layout, self._item_shapes)
        ]
        self._shapes = [e.shape for e in self._input_exprs()]
        check_tensor_outputs(self._blocks, max_elements(self.graph))
        # Called with a leading batch axis: the element function, built on first such call.
        self._batched = BatchedCall(flat, self.inputs, self._shapes, self._element_function)

    def _attach_executor(self, flat: list[Expr], options: dict) -> None:
        """The backend's executor, and its one-point fast path where it has one (a C entry
        taking Python floats)."""
        module = importlib.import_module(BACKENDS[self.backend])
        checked = module.check_options(options)
        self._executor = module.executor(self.program, flat, self.inputs, self.tensor, checked)
        self._fast = None if self.tensor else getattr(self._executor, "fast", None)
        if self._fast is not None:
            self._fast, self._expand = self._fast.call, self._executor.expand
            self._n_fast_out = self._executor.n_fast_out
            self._pick = _point_picker(self.layout)
        batch = None if self.tensor else getattr(self._executor, "fast_batch", None)
        self._fast_batch = None if batch is None else batch.call
        vmap = None if self.tensor else getattr(self._executor, "fast_vmap", None)
        self._fast_vmap = None if vmap is None else vmap.call
        if self._fast_batch is not None:
            self._fast_batch_max = self._executor.fast_batch_max
            self._expand_rows = self._executor.outs.expand_rows
            self._item_rows = item_rows(self.layout)

    def __repr__(self) -> str:
        return f"<CompiledFunction {self.backend}: ({', '.join(self.inputs)}) -> {self.layout}>"

    @property
    def _native(self):
        """The llvm backend's kernels (None for the numpy backend)."""
        return self._executor if self.backend == "llvm" else None

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
            out = np.empty(self._n_fast_out)
            if self._fast(out, *args) is out:
                return self._pick(self._expand(out))
            if args and type(args[0]) is np.ndarray and args[0].ndim == 1:
                # A batch of 1-d float64 arrays: sg_batch_fast checks each, or hands back.
                done = self._batch_fast(args)
                if done is not None:
                    return done
        return self._call(args, kwargs)

    def _kernel_rows(self, entry, args, n: int) -> np.ndarray | None:
        """The kernel's outputs over n points, one row each, from one C call of ``entry``
        (sg_batch_fast or sg_vmap_fast); None where there is no such entry, the batch is one
        for threads or too big (the general path raises the SizeError), or the entry hands the
        arguments back."""
        if entry is None or not 0 < n <= self._fast_batch_max:
            return None
        if n * self._per_point > max_elements(self.graph):
            return None
        out = np.empty((self._n_fast_out, n))
        return out if entry(out, *args) is out else None

    def vmap_rows(self, values: list, n: int) -> np.ndarray | None:
        """(An element function's) flat outputs over n points as one (outputs, n) array, from
        the batched call's own arguments in one C call (sg_vmap_fast), or None."""
        return self._kernel_rows(self._fast_vmap, values, n)

    def _batch_fast(self, args, n: int | None = None):
        """The outputs over a batch of n points through sg_batch_fast, or None where it hands
        the arguments back (the caller then takes the general path)."""
        n = args[0].shape[0] if n is None else n
        out = self._kernel_rows(self._fast_batch, args, n)
        if out is None:
            return None
        rows = self._expand_rows(out)
        # Item axes first in memory, last in the result (as _finish, without its checks).
        return tuple(
            rows[lo:hi].reshape(shape + (n,)).transpose(perm)
            for lo, hi, shape, perm in self._item_rows
        )

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
        return map_blocks(self, args, kwargs)

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
        # The graph a pickle carries is the one that was compiled: optimized already, or not
        # to be.
        self.__init__(outputs, inputs=inputs, backend=backend, optimize=False, **options)

    def _call(self, args: tuple, kwargs: dict) -> tuple:
        values = self._bind(args, kwargs)
        if self.tensor:
            return self._call_tensor(values)
        limit = max_elements(self.graph)
        arrays, batch = broadcast(values, self.inputs, limit, self._per_point)
        blocks, flat = self._allocate(batch)
        self._executor.run_points(arrays, batch, flat)
        return tuple(self._finish(block, shape) for block, shape in zip(blocks, self.layout))

    def _call_tensor(self, values: list) -> tuple:
        n = batch_size(values, self.inputs, self._shapes)
        if n is not None:
            return self._call_batched(values, n)
        arrays = [
            as_tensor(v, name, shape) for v, name, shape in zip(values, self.inputs, self._shapes)
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
        with self._blas:
            self._executor.run_tensor(arrays, flat)
        return tuple(blocks)

    def _element_function(self, outputs, names: tuple[str, ...]) -> CompiledFunction:
        """The element function of batched calls: same backend and options, and on the llvm
        backend a gather kernel (any input stride) with the arguments' entry."""
        options = dict(self.options)
        if self.backend == "llvm":
            options["gather"] = tuple(tuple(s) for s in self._shapes)
        return CompiledFunction(outputs, inputs=names, backend=self.backend, **options)

    def _call_batched(self, values: list, n: int) -> tuple:
        """Every output with the leading axis of n points in front (batched.py)."""
        flat, blocks, k = self._batched(values, n), [], 0
        for layout, shape, count in self._blocks:
            items, k = flat[k : k + count], k + count
            if not layout:
                blocks.append(items[0])
            else:
                blocks.append(np.stack(items, axis=1).reshape((n, *layout, *shape)))
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
        if not isinstance(options, dict) or not set(options) <= {"threads", "opt", "blas_threads"}:
            raise GraphError("options must be a dict of 'threads', 'opt' and 'blas_threads'")
        outputs = unflatten(graph, state["outputs"], state["layout"])
        return outputs, inputs, state["backend"], options
    except GraphError as err:
        raise GraphError(f"cannot unpickle a CompiledFunction: {err}") from None
    except (TypeError, ValueError, KeyError, IndexError) as err:
        raise GraphError(
            f"cannot unpickle a CompiledFunction: malformed state ({type(err).__name__}: {err})"
        ) from None


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


def _calls_blas(program: Program) -> bool:
    """Does a step of ``program``, or a node of a loop body in it, call the BLAS (OpDef.blas)?
    Bodies nest: a worklist, not recursion."""
    ops = [(op, attrs) for _, op, _, attrs in program.steps]
    while ops:
        op, attrs = ops.pop()
        if OPS[op].blas:
            return True
        for value in attrs.values():
            if getattr(type(value), "is_scan_body", False):
                nodes = value.graph.nx._node.values()
                ops.extend((n["op"], dict(n["attrs"])) for n in nodes)
    return False


def _reachable_inputs(graph: Graph, flat: list[Expr]) -> tuple[str, ...]:
    """Names of the inputs ``flat`` depends on, in creation order."""
    nodes = graph.nx._node
    return tuple(
        dict(nodes[i]["attrs"])["name"]
        for i in reachable(graph, [e.id for e in flat])
        if nodes[i]["op"] == "input"
    )


def _optimized(flat: list[Expr], names: tuple[str, ...]) -> list[Expr]:
    """``flat`` optimized (``sg.optimize``: stable forms, folding, CSE, pruning) into a fresh
    graph that still has every argument ``names`` (optimizing may drop one: ``x**0`` is 1), so
    the compiled function takes the arguments of the graph as written."""
    source = flat[0].graph
    flat = run_optimize(list(flat))
    graph = flat[0].graph
    present, written = graph.inputs, source.inputs  # each a fresh dict: read once
    for name in names:
        if name not in present:
            graph.input(name, shape=written[name].shape)
    return flat


def _argument_names(graph, reachable: tuple[str, ...], inputs) -> tuple[str, ...]:
    if inputs is None:
        return reachable
    if isinstance(inputs, (str, Expr)) or not isinstance(inputs, (list, tuple)):
        raise ArgumentError("inputs must be a list of input Exprs or names")
    names, known = [], graph.inputs  # a fresh dict at each use of graph.inputs: read once
    for k, item in enumerate(inputs):
        if isinstance(item, Expr) and item.graph is graph and item.op == "input":
            names.append(item.name)
        elif isinstance(item, str) and item in known:
            names.append(item)
        else:
            raise ArgumentError(f"inputs[{k}] = {item!r} is not an input of this graph")
    if len(set(names)) != len(names):
        raise ArgumentError("inputs lists a name twice")
    absent = [n for n in reachable if n not in names]
    if absent:
        raise ArgumentError(f"inputs misses {', '.join(map(repr, absent))}, which outputs use")
    return tuple(names)


def compile(
    outputs, inputs=None, backend: str = "llvm", optimize: bool = True, **options
) -> CompiledFunction:
    """Compile ``outputs`` (an Expr, a list, or a list of lists of Exprs) into a callable.

    ``inputs`` (input Exprs or names) fixes the argument order; by default the arguments are the
    inputs the outputs reach, in creation order (``fn.inputs``). ``backend="llvm"`` compiles
    native code; ``"numpy"`` runs the reference interpreter. ``optimize`` (True by default)
    compiles what ``sg.optimize`` makes of the outputs: the stable forms of formulas that would
    overflow or lose accuracy (``log(1 + exp(z))`` is ``softplus(z)``), constants folded, shared
    subexpressions merged, the rest pruned; ``fn.graph`` is that graph, and ``fn.inputs`` stays the
    inputs of the graph as written. ``optimize=False`` compiles the outputs exactly as written.
    ``blas_threads`` (both backends): how many threads the BLAS that matrix products call may
    use during a call of a tensor function (1 by default, measured in ``symgrad/blas.py``;
    None leaves the BLAS as it is); the count is restored after the call. Options of the llvm
    backend:
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
    # The collector paused: its scans over a big graph's node dicts were 2.7 s of a 7.2 s compile
    # of a 100k-node value + gradient (Program.of, the key, lowering).
    with paused_gc():
        return CompiledFunction(
            outputs, inputs=inputs, backend=backend, optimize=optimize, **options
        )
