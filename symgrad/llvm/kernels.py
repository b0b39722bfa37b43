"""The llvm backend's executors: compiled kernels, run at one point, over a batch, or as tensors.

``executor`` is what ``sg.compile(..., backend="llvm")`` calls (``compile.py`` finds it by name).
A scalar graph gets ``NativeKernels``: ``sg_point`` for one point and ``sg_batch`` for n points
(``lower.py``), split over threads when the batch and the work per point repay them, with
``sg_fast`` as the one-C-call entry from Python (``entry.py``). A tensor graph gets a
``TensorKernel``: its composite ops expanded (``optimize/expand.py``), planned (``plan.py``) and
written as loops (``loops.py``). Both compile through ``jit.py``, which owns the engines' code and
the object cache. Each object owns its execution engine: an engine that is collected leaves
dangling function pointers (llvmlite issue #232).
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from symgrad.arguments import contiguous
from symgrad.errors import ArgumentError, LoweringError
from symgrad.graph import Expr
from symgrad.llvm.entry import method
from symgrad.llvm.jit import (
    _check_symbols,
    _llvm,
    _load_engine,
    _lock,
    _object_code,
    _optimized_module,
    _python_symbols,
    _target,
    blas_dgemm,
    loop_target_for,
    straight_opt,
    vector_ok,
)
from symgrad.llvm.key import program_key
from symgrad.llvm.loops import PLAN_FACTS, lower_tensor
from symgrad.llvm.lower import WIDTH, lower
from symgrad.llvm.plan import LoopBody
from symgrad.ops import OPS
from symgrad.optimize.expand import expand
from symgrad.program import Program

THREAD_MIN_POINTS = 1 << 15  # a thread's share of a batch: at most this many points are needed
# ... or fewer, for costly points: a share must hold about this much work (cost units, below),
# what 32,768 points of a kernel at the threading threshold (THREAD_MIN_COST) hold. Found by a
# benchmark (benchmarks/RESULTS_ba.md): a bundle-adjustment Jacobian, ~210 ns a point, ran
# 60,000 points on one thread (205 ns/point) and 65,536 on two (142).
THREAD_MIN_WORK = THREAD_MIN_POINTS * 64
THREAD_FLOOR_POINTS = 1024  # and never fewer points than this to a thread


# Threads pay only for kernels with enough arithmetic per point. Measured on 2 cores (benchmarks/
# RESULTS.md): Rosenbrock's value + gradient, ~20 cheap ops per point and bound by memory, ran at
# 1.9 ns/point on one thread and 2.5 on two; the 20-fold nest (~300 ops, 60 libm calls) at 182
# vs 94. The cost counts an op 1 and a libm call LIBM_COST.
THREAD_MIN_COST = 64


LIBM_COST = 8


def _cost_per_point(program: Program) -> int:
    """A rough count of the work per point: ops 1, libm calls (and their kin) LIBM_COST."""
    cost, consts = 0, {}
    for i, op, args, attrs in program.steps:
        if op == "const":
            consts[i] = attrs["value"]
        low = OPS[op].llvm
        exact = OPS[op].exact  # x**2 is one fmul, not a pow call
        cheap = bool(exact) and consts.get(args[-1]) in exact
        cost += LIBM_COST if low and low.kind in ("libm", "custom") and not cheap else 1
    return cost


class NativeKernels:
    """The two compiled kernels of one function, and the engine that keeps them alive."""

    def __init__(
        self,
        program: Program,
        inputs: tuple[str, ...],
        threads: int | None,
        opt: int,
        gather: bool = False,
    ):
        # The kernel computes each distinct non-constant output once; constants and repeats
        # (a Hessian's zeros and its symmetric half) are filled in here, not stored per point.
        # (A gather kernel, the element function of batched tensor calls, stores every output,
        # constants and repeats too: its call then hands the kernel's rows back as they are.)
        self.outs = OutputPlan(program.graph, list(program.outputs), keep_all=gather)
        self.n_fast_out = len(self.outs.kernel_ids)
        # The kernel's program: the same steps (a constant output left among them emits no
        # code), only the outputs it stores. Not a second walk of the graph: a warm cache hit
        # costs little more than the key.
        program = Program(program.graph, program.steps, program.inputs,
                          tuple(self.outs.kernel_ids), program.parts)  # fmt: skip
        self.n_in, self.n_out = len(inputs), len(program.outputs)
        self.threads = threads or os.cpu_count() or 1
        cost = _cost_per_point(program)
        if threads is None and cost < THREAD_MIN_COST:
            self.threads = 1
        share = THREAD_MIN_WORK // max(cost, 1)  # points a thread's share needs
        self.min_points = min(THREAD_MIN_POINTS, max(THREAD_FLOOR_POINTS, share))
        if isinstance(gather, tuple) and sum(math.prod(s) for s in gather) != len(inputs):
            raise ArgumentError(
                f"compile: gather's argument shapes hold {sum(math.prod(s) for s in gather)} "
                f"elements, but the function has {len(inputs)} arguments"
            )
        self.opt, self.gather = opt, gather
        self._program, self._names, self._ir = program, tuple(inputs), None
        # The key comes from the program, before lowering: a hit lowers nothing.
        kind = f"point gather {gather}" if gather else "point"
        self.cache_key = program_key(program, self._names, kind, f"opt={opt}")
        self._engine = self._load(self._object_code())
        self._bind_functions()

    @property
    def llvm_ir(self) -> str:
        """The module text (written on first use when the object code came from the cache)."""
        if self._ir is None:
            self._ir = lower(self._program, self._names, vector_ok, self.gather)
        return self._ir

    def _checked_ir(self) -> str:
        _check_symbols(self.llvm_ir)
        return self.llvm_ir

    def _object_code(self) -> bytes:
        self.cache_hit, payload = _object_code(self.cache_key, self._checked_ir, self.opt)
        return payload

    def _load(self, payload: bytes):
        return _load_engine(payload)

    def _bind_functions(self) -> None:
        point = self._engine.get_function_address("sg_point")
        batch = self._engine.get_function_address("sg_batch")
        if not point or not batch:
            raise LoweringError("compiled module lacks its kernels")
        vp = ctypes.c_void_p
        self.point = ctypes.CFUNCTYPE(None, vp, vp)(point)
        self.batch = ctypes.CFUNCTYPE(None, vp, vp, vp, ctypes.c_int64)(batch)
        self._buffers = threading.local()  # per thread: calls from many threads never share
        self.fast = method(self._engine.get_function_address("sg_fast"))
        # A batch of 1-d float64 arrays in one C call: single-threaded, so for batches the
        # threads would not split anyway (and never for a module from before this entry).
        address = self._engine.get_function_address("sg_batch_fast")
        self.fast_batch = method(address) if self.n_in and self.n_out else None
        vmap = isinstance(self.gather, tuple) and self.n_out
        self.fast_vmap = method(self._engine.get_function_address("sg_vmap_fast")) if vmap else None
        # (Only batches that stay on one thread: a bigger one is split over threads.)
        self.fast_batch_max = 2 * self.min_points - 1 if self.threads > 1 else 2**62

    @property
    def asm(self) -> str:
        """Host assembly of both kernels."""
        tm, _, _ = _target()
        with _lock:
            context = _llvm().create_context()
            opt = straight_opt(self.llvm_ir, self.opt)
            return tm.emit_assembly(_optimized_module(self.llvm_ir, opt, context))

    def expand(self, kernel_out: np.ndarray) -> np.ndarray:
        """All flat outputs of one point, from the kernel's (``sg_point``'s or ``sg_fast``'s)."""
        return self.outs.expand(kernel_out)

    def run_points(self, arrays: list[np.ndarray], batch: tuple[int, ...], flat: list) -> None:
        """Fill the flat output views from float64 arguments that broadcast to ``batch``."""
        if not batch:
            for view, value in zip(flat, self.expand(self.run_point([float(a) for a in arrays]))):
                view[...] = value
            return
        n = math.prod(batch)
        full = [a if a.size == 1 or self._in_place(a, n) else contiguous(a, batch) for a in arrays]
        self.run_batch(full, n, [flat[k] for k in self.outs.first])
        self.outs.fill(flat)

    def _in_place(self, a: np.ndarray, n: int) -> bool:
        # A gather kernel reads a 1-d column of any stride in doubles where it is (a column of
        # a batched tensor argument): no copy.
        return (
            self.gather
            and a.shape == (n,)
            and a.strides[0] % 8 == 0
            and a.flags.aligned
            and a.dtype.isnative
        )

    def run_point(self, values) -> np.ndarray:
        """Flat outputs at one point (a fresh array); ``values`` are the inputs, in order."""
        try:
            cin, out, out_ptr = self._buffers.point
        except AttributeError:
            cin, out, out_ptr = self._buffers.point = self._point_buffers()
        cin[:] = values
        self.point(cin, out_ptr)
        return out.copy()

    def _point_buffers(self):
        out = np.empty(self.n_out)
        return (ctypes.c_double * self.n_in)(), out, ctypes.c_void_p(out.ctypes.data)

    def run_batch(self, arrays: list[np.ndarray], n: int, outs: list[np.ndarray]) -> None:
        """Fill ``outs`` (contiguous, n doubles each) from inputs of size 1 or n, contiguous."""
        if n == 0:
            return
        flat = [a if a.ndim == 1 else a.reshape(-1) for a in arrays]
        main = n - n % WIDTH
        if main:
            ins, strides, keep = self._inputs(flat, lambda a: a)
            out_ptrs = np.array([o.ctypes.data for o in outs], np.uint64)
            self._run_main(ins, strides, out_ptrs, main)
            del keep
        if main < n:
            self._run_rest(flat, main, n, [o.reshape(-1) for o in outs])

    def _inputs(self, flat: list[np.ndarray], window):
        """Pointer and stride arrays for the kernel; ``keep`` holds every buffer pointed at."""
        ins, strides = np.empty(self.n_in, np.uint64), np.empty(self.n_in, np.int64)
        keep = []
        for k, a in enumerate(flat):
            if a.size == 1:  # loop-invariant: four copies feed the 4-lane load
                a, strides[k] = np.full(WIDTH, a[0]), 0
            else:
                a = window(a)
                strides[k] = a.strides[0] // 8  # 1, or a column's stride (a gather kernel)
            keep.append(a)
            ins[k] = a.ctypes.data
        return ins, strides, keep

    def _run_main(self, ins, strides, out_ptrs, n: int) -> None:
        chunks = self._chunks(n)
        if len(chunks) == 1:
            self.batch(ins.ctypes.data, strides.ctypes.data, out_ptrs.ctypes.data, n)
            return
        jobs = [self._chunk_args(ins, strides, out_ptrs, lo, hi) for lo, hi in chunks]
        list(_pool().map(lambda args: self.batch(*args[:4]), jobs))

    def _run_rest(self, flat, lo: int, n: int, outs) -> None:
        # The last n % 4 points go through the same 4-lane code on a padded copy, so their
        # results are those they would have anywhere else in a batch.
        def window(a):
            pad = np.empty(WIDTH)
            pad[: n - lo] = a[lo:n]
            pad[n - lo :] = a[n - 1]  # a real value in the unused lanes: no nan or denormal work
            return pad

        ins, strides, keep = self._inputs(flat, window)
        scratch = np.empty((max(self.n_out, 1), WIDTH))
        out_ptrs = np.array([row.ctypes.data for row in scratch[: self.n_out]], np.uint64)
        self.batch(ins.ctypes.data, strides.ctypes.data, out_ptrs.ctypes.data, WIDTH)
        for k, o in enumerate(outs):
            o[lo:n] = scratch[k, : n - lo]
        del keep

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        parts = min(self.threads, max(n // self.min_points, 1))
        step = -(-n // parts)
        step += -step % WIDTH  # chunks start on a multiple of the vector width
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    @staticmethod
    def _chunk_args(ins, strides, out_ptrs, lo: int, hi: int):
        shifted_in = (ins + (strides.astype(np.uint64) * np.uint64(8 * lo))).astype(np.uint64)
        shifted_out = out_ptrs + np.uint64(8 * lo)
        # The arrays must outlive the call: the tuple keeps them referenced.
        return (shifted_in.ctypes.data, strides.ctypes.data, shifted_out.ctypes.data, hi - lo,
                shifted_in, shifted_out)  # fmt: skip


class TensorKernel:
    """The compiled ``sg_tensor`` of a tensor graph, its plan and its engine."""

    def __init__(
        self, flat: list, inputs: tuple[str, ...], threads: int | None, opt: int, points=False
    ):
        del threads  # a tensor step runs on one thread; BLAS threads on its own
        expanded = expand(list(flat))
        graph = expanded[0].graph
        self.order = [e.id for e in expanded]
        self.distinct = list(dict.fromkeys(self.order))
        program = Program.of(graph, self.distinct)
        self.opt = opt
        # Each scan's body is a kernel of its own, called by the scan's loop through a pointer.
        self._bodies = {i: _body_kernel(graph, i, parts, opt) for i, parts in program.parts.items()}
        loop_bodies = {i: k.as_loop_body() for i, k in self._bodies.items()}
        self._lowering = (program, tuple(inputs), self.distinct, loop_bodies, points)
        self._ir, self._plan = None, None
        kind = "tensor-points" if points else "tensor"
        self.cache_key = program_key(program, tuple(inputs), kind, f"opt={opt}loops")
        _python_symbols()
        self.n_in = len(inputs)
        self.cache_hit, payload = _object_code(
            self.cache_key, self._checked_ir, opt, loop_target_for, "loops"
        )
        self._engine = _load_engine(payload)
        # What the caller passes and reserves, read from the object code itself (written there
        # from the plan), so a cache hit needs no plan.
        self.scratch, self.passed = read_plan_facts(self._engine, program)
        address = self._engine.get_function_address("sg_tensor")
        if not address:
            raise LoweringError("compiled module lacks its kernel")
        self.kernel = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
        self.box = np.array([address], np.uint64)  # how a scan's loop finds this kernel
        self.inputs = tuple(inputs)
        self.fast = method(self._engine.get_function_address("sg_tensor_fast"))
        if points:
            at = self._engine.get_function_address("sg_points")
            self.points = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
                at
            )
        self._first = {i: k for k, i in reversed(list(enumerate(self.order)))}
        # Per call, only list lookups: where each kernel output goes, and which flat outputs
        # repeat an earlier one (copied after the kernel).
        self._out_pos = [self._first[i] for i in self.distinct]
        self._repeats = [(pos, self._first[i]) for pos, i in enumerate(self.order)
                         if self._first[i] != pos]  # fmt: skip
        self._scratch = threading.local()
        # The constant arrays the kernel reads through bufs (read-only, owned by the graph),
        # then for each scan the box of its body kernel's address and that kernel's own.
        self._constants = [graph.attr(i, "value") for i in self.passed]
        for i in sorted(self._bodies):
            self._constants += [self._bodies[i].box, *self._bodies[i]._constants]

    def as_loop_body(self):
        """What a scan's loop needs to call this kernel (compiled from a body's outputs)."""
        if self._repeats:
            raise LoweringError("a scan body whose outputs merged when expanded")
        return LoopBody(self.inputs, tuple(self.body_ids), max(self.scratch, 1),
                        len(self._constants))  # fmt: skip

    @property
    def llvm_ir(self) -> str:
        """The module text (written on first use when the object code came from the cache)."""
        if self._ir is None:
            program, inputs, distinct, loop_bodies, points = self._lowering
            self._ir, self._plan = lower_tensor(
                program, inputs, distinct, vector_ok, blas_dgemm(), loop_bodies, points
            )
        return self._ir

    @property
    def plan(self):
        """The plan the kernel was written from (made on first use after a cache hit)."""
        if self._plan is None:
            self.llvm_ir  # noqa: B018 (writing the module makes the plan)
        return self._plan

    def _checked_ir(self) -> str:
        _check_symbols(self.llvm_ir)
        return self.llvm_ir

    @property
    def asm(self) -> str:
        with _lock:
            context = _llvm().create_context()
            module = _optimized_module(self.llvm_ir, self.opt, context)
            return loop_target_for(self.llvm_ir).emit_assembly(module)

    def run_tensor(self, arrays: list[np.ndarray], flat: list[np.ndarray]) -> None:
        """Inputs (contiguous, declared shapes) -> ``flat`` output arrays (contiguous)."""
        try:
            scratch = self._scratch.buffer
        except AttributeError:
            scratch = self._scratch.buffer = np.empty(max(self.scratch, 1))
        if self.fast is not None:
            self.fast.call(*arrays, *[flat[k] for k in self._out_pos], scratch, *self._constants)
        else:
            self._run_ctypes(arrays, flat, scratch)
        for pos, first in self._repeats:
            flat[pos][...] = flat[first]

    def _run_ctypes(self, arrays, flat, scratch) -> None:
        n_out = len(self.distinct)
        ptrs = np.empty(self.n_in + n_out + 1 + len(self._constants), np.uint64)
        for k, a in enumerate(arrays):
            ptrs[k] = a.ctypes.data
        for k, pos in enumerate(self._out_pos):
            ptrs[self.n_in + k] = flat[pos].ctypes.data
        ptrs[self.n_in + n_out] = scratch.ctypes.data
        for k, c in enumerate(self._constants):
            ptrs[self.n_in + n_out + 1 + k] = c.ctypes.data
        self.kernel(ptrs.ctypes.data)


class PointKernel:
    """A graph of scalar arguments and outputs holding a scan: a batch of points, each point
    the tensor kernel's whole work (its own loop), run by ``sg_points`` over chunks of points,
    one chunk per thread when the batch is big enough."""

    def __init__(self, flat: list, inputs: tuple[str, ...], threads: int | None, opt: int):
        self.tensor = TensorKernel(flat, inputs, None, opt, points=True)
        self.threads = threads if threads is not None else (os.cpu_count() or 1)
        self.llvm_ir = self.tensor.llvm_ir

    @property
    def asm(self) -> str:
        return self.tensor.asm

    def run_points(self, arrays: list[np.ndarray], batch: tuple[int, ...], flat: list) -> None:
        """Fill the flat output views (contiguous, the batch's size) from arguments that
        broadcast to ``batch``."""
        n = math.prod(batch)
        if n == 0:
            return
        k = self.tensor
        full = [a if a.size == 1 else contiguous(a, batch) for a in arrays]
        steps = np.array([0 if a.size == 1 else 1 for a in full], np.int64)
        outs = [flat[pos] for pos in k._out_pos]
        chunks = min(self.threads, max(1, n // 256))
        bounds = [n * c // chunks for c in range(chunks + 1)]
        jobs = [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
        if len(jobs) == 1:
            self._run(full, steps, outs, *jobs[0])
        else:
            list(_pool().map(lambda job: self._run(full, steps, outs, *job), jobs))
        for pos, first in k._repeats:
            flat[pos][...] = flat[first]

    def _run(self, full, steps, outs, lo: int, hi: int) -> None:
        k = self.tensor
        try:
            scratch = k._scratch.buffer
        except AttributeError:
            scratch = k._scratch.buffer = np.empty(max(k.scratch, 1))
        ptrs = np.empty(len(full) + len(outs) + 1 + len(k._constants), np.uint64)
        for j, (a, step) in enumerate(zip(full, steps)):
            ptrs[j] = a.ctypes.data + 8 * lo * int(step)
        for j, out in enumerate(outs):
            ptrs[len(full) + j] = out.ctypes.data + 8 * lo
        ptrs[len(full) + len(outs)] = scratch.ctypes.data
        for j, c in enumerate(k._constants):
            ptrs[len(full) + len(outs) + 1 + j] = c.ctypes.data
        k.points(ptrs.ctypes.data, steps.ctypes.data, hi - lo)


def read_plan_facts(engine, program: Program) -> tuple[int, list[int]]:
    """The scratch size and the passed constants' node ids, from ``sg_plan_facts`` in the
    loaded object code (``loops._plan_facts``)."""
    at = engine.get_global_value_address(PLAN_FACTS)
    if not at:
        raise LoweringError("compiled module lacks its plan facts")
    scratch, n = (ctypes.c_int64 * 2).from_address(at)
    places = list((ctypes.c_int64 * (2 + n)).from_address(at))[2:]
    if not all(0 <= k < len(program.steps) for k in places):
        raise LoweringError("compiled module's plan facts do not fit its program")
    return scratch, [program.steps[k][0] for k in places]


def _body_kernel(graph, i: int, parts: tuple, opt: int) -> TensorKernel:
    """The kernel of scan ``i``'s body computing its carries out and the stacks ``parts`` read."""
    body = graph.attr(i, "body")
    stacked = [j for kind, j in parts if kind == "stack"]
    ids = list(dict.fromkeys([*body.carry_out, *stacked]))
    names = tuple(body.graph.attr(h, "name") for h in (*body.carry, *body.xs, *body.captures))
    kernel = TensorKernel([Expr(body.graph, j) for j in ids], names, None, opt)
    kernel.body_ids = ids  # the body's node ids, in the kernel's output order
    return kernel


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="symgrad")


# A forked child has none of its parent's threads but would inherit the pool, whose idle count
# says its workers are waiting: its first threaded batch would queue work no thread serves, and
# wait forever (multiprocessing's fork context did). The child makes a pool of its own.
os.register_at_fork(after_in_child=_pool.cache_clear)


def check_options(options: dict) -> dict:
    """The llvm backend's options, checked: ``threads`` (None or >= 1), ``opt`` (0 or 1), and
    ``gather`` (True or False: the batch kernel reads inputs of any stride in place; what the
    batched calls of a tensor function compile their element kernel with)."""
    unknown = sorted(set(options) - {"threads", "opt", "gather"})
    if unknown:
        raise ArgumentError(f"compile: unknown option {unknown[0]!r} (options: threads, opt)")
    threads, opt = options.get("threads"), options.get("opt", 1)
    gather = _gather_option(options.get("gather", False))
    if threads is not None and (type(threads) is not int or threads < 1):
        raise ArgumentError(f"compile: threads must be None or an int >= 1, got {threads!r}")
    if opt not in (0, 1) or type(opt) is not int:
        raise ArgumentError(f"compile: opt must be 0 (no IR passes) or 1, got {opt!r}")
    return {"threads": threads, "opt": opt, "gather": gather}


def _gather_option(gather):
    """``gather``: True or False, or the shapes of the arguments whose elements the inputs are
    (a tuple of tuples of ints: the kernel then has the ``sg_vmap_fast`` entry too)."""
    if type(gather) is bool:
        return gather
    ok = type(gather) is tuple and all(
        type(s) is tuple and all(type(n) is int and 0 < n <= 2**40 for n in s) for s in gather
    )
    if not ok:
        raise ArgumentError(
            f"compile: gather must be True, False or argument shapes, got {gather!r}"
        )
    return gather


class OutputPlan:
    """Which flat outputs the kernel computes, and how the others follow from them."""

    def __init__(self, graph, ids: list[int], keep_all: bool = False):
        self.kernel_ids: list[int] = []
        self.first: list[int] = []  # flat position of each kernel output
        slot_of: dict[int, int] = {}
        self.copies: list[tuple[int, int]] = []  # (flat position, kernel slot)
        self.consts: list[tuple[int, float]] = []  # (flat position, value)
        for pos, i in enumerate(ids):
            node = graph.node(i)
            if keep_all:
                self.kernel_ids.append(i)
                self.first.append(pos)
            elif node["op"] == "const":
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

    def expand_rows(self, kernel_out: np.ndarray) -> np.ndarray:
        """All flat outputs of a batch, one row each, from the kernel's rows."""
        if self.trivial:
            return kernel_out
        consts = np.broadcast_to(
            self.const_values[:, None], (len(self.consts), kernel_out.shape[1])
        )
        return np.concatenate((kernel_out, consts))[self.index]

    def fill(self, flat: list[np.ndarray]) -> None:
        """Complete a batch: repeats copied from their first place, constants broadcast."""
        for pos, slot in self.copies:
            flat[pos][...] = flat[self.first[slot]]
        for pos, value in self.consts:
            flat[pos].fill(value)


def executor(program: Program, flat: list, inputs: tuple[str, ...], tensor: bool, options: dict):
    """The kernels that run ``program`` (whose outputs are ``flat``) with arguments ``inputs``."""
    if tensor or program.parts:  # (a scan in a scalar graph: points of tensor kernels)
        plain = {k: v for k, v in options.items() if k != "gather"}
        kernel = TensorKernel if tensor else PointKernel
        return kernel(flat, inputs, **plain)
    return NativeKernels(program, inputs, **options)
