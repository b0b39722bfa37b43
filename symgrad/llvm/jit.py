"""Stage 4b: LLVM IR text -> native code, with an on-disk cache of object code.

One host target machine per process (host CPU name and features). A module is parsed in a
context of its own, verified, run through a short list of passes (``PASSES``: ``lower.py`` emits
vector code itself, so LLVM's vectorizers and most of its pipeline have nothing left to do),
emitted as an object file and loaded into an MCJIT engine that the ``NativeKernels`` object owns
(an engine that is collected leaves dangling function pointers: llvmlite issue #232).

Every external symbol the module calls is looked up before anything runs: an unresolved symbol
would crash the process at the call. The object code is cached on disk (``cache.py``: where,
whom it trusts, eviction) keyed by a hash of the IR text (itself a function of the graph), the
llvmlite and LLVM versions, the CPU and its features and the options.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from symgrad.errors import LoweringError
from symgrad.interp import Program
from symgrad.llvm import cache as object_cache
from symgrad.llvm.lower import EXACT_POWERS, WIDTH, lower
from symgrad.ops import OPS

THREAD_MIN_POINTS = 1 << 15  # below this many points per thread, threads cost more than they save
# Threads pay only for kernels with enough arithmetic per point. Measured on 2 cores (benchmarks/
# RESULTS.md): Rosenbrock's value + gradient, ~20 cheap ops per point and bound by memory, ran at
# 1.9 ns/point on one thread and 2.5 on two; the 20-fold nest (~300 ops, 60 libm calls) at 182
# vs 94. The cost counts an op 1 and a libm call LIBM_COST.
THREAD_MIN_COST = 64
LIBM_COST = 8
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _llvm():
    """llvmlite.binding, initialized once (importing it costs ~0.1-0.2 s: only on first use)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # Without libmvec every vector call falls back to scalar libm calls (see vector_ok).
    with contextlib.suppress(RuntimeError):
        llvm.load_library_permanently("libmvec.so.1")
    return llvm


@lru_cache(maxsize=1)
def _target():
    """The process's target machine for optimizing and emitting code, and the host CPU."""
    llvm = _llvm()
    cpu, features = llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()
    return _new_target_machine(cpu, features), cpu, features


def _new_target_machine(cpu: str, features: str, opt: int = 0):
    # Code generation at level 0 (fast instruction selection and register allocation): measured
    # on the benchmark suite, it cut codegen from ~30 to ~8 ms at the same ns per point, since
    # the IR passes have already done the optimizing that matters here.
    return (
        _llvm()
        .Target.from_default_triple()
        .create_target_machine(
            cpu=cpu, features=features, opt=opt, codemodel="jitdefault", jit=True
        )
    )


@lru_cache(maxsize=1)
def _loop_target():
    """The target machine for tensor kernels: code generation at level 2.

    Loop nests are another matter than straight-line kernels: at level 0 every loop-carried
    value went through the stack. Measured on 1000 x 1000 arrays, level 2 ran a row sum 7x and a
    column sum 2x faster, for ~10 ms more compile time on the MLP benchmark's step.
    """
    _, cpu, features = _target()
    return _new_target_machine(cpu, features, opt=2)


@cache
def symbol_available(name: str) -> bool:
    """Does this process resolve the C symbol ``name`` (libm, libmvec)?"""
    return bool(_llvm().address_of_symbol(name))


def vector_ok(name: str) -> bool:
    """May the kernel call the 4-lane libmvec function ``name``? Needs AVX2 and the symbol."""
    _, _, features = _target()
    return "+avx2" in features and symbol_available(name)


def _cache_key(ir: str, options: str) -> str:
    import llvmlite

    _, cpu, features = _target()
    h = hashlib.sha256()
    for part in (llvmlite.__version__, str(_llvm().llvm_version_info), cpu, features, options, ir):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# The IR passes, in order. lower.py already emits each node once, hoists what is loop-invariant
# and writes the vector code itself, so what is left is local simplification. Measured on the
# benchmark suite against LLVM's O2 pipeline (vectorizers off): instcombine alone compiled in
# 3.5 vs ~25 ms and ran as fast or faster (1.5 vs 1.8 ns/point on Rosenbrock, 12 vs 17-27 on the
# exp/cos/log/tanh/sqrt mix); and the default pipeline leaks ~110 kB per module in llvmlite 0.50,
# an explicit pass list ~5 kB.
PASSES = ("add_instruction_combine_pass", "add_aggressive_dce_pass")


def _optimized_module(ir: str, opt: int, context):
    llvm = _llvm()
    tm, _, _ = _target()
    try:
        module = llvm.parse_assembly(ir, context=context)
        module.verify()
    except RuntimeError as err:
        raise LoweringError(f"generated IR does not verify: {err}") from None
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    if opt:
        manager = llvm.create_new_module_pass_manager()
        for add_pass in PASSES:
            getattr(manager, add_pass)()
        manager.run(module, _pass_builder())
    return module


@lru_cache(maxsize=1)
def _pass_builder():
    tm, _, _ = _target()
    return _llvm().create_pass_builder(tm, _llvm().create_pipeline_tuning_options(speed_level=2))


def _cost_per_point(program: Program) -> int:
    """A rough count of the work per point: ops 1, libm calls (and their kin) LIBM_COST."""
    cost, consts = 0, {}
    for i, op, args, attrs in program.steps:
        if op == "const":
            consts[i] = attrs["value"]
        low = OPS[op].llvm
        cheap = op == "pow" and consts.get(args[1]) in EXACT_POWERS  # one fmul or fdiv
        cost += LIBM_COST if low and low.kind in ("libm", "custom") and not cheap else 1
    return cost


def _check_symbols(ir: str) -> None:
    for name in sorted(set(re.findall(r"^declare [^@]*@([\w.]+)\(", ir, re.M))):
        if not name.startswith("llvm.") and not symbol_available(name):
            raise LoweringError(f"this process does not provide the C function {name!r}")


class NativeKernels:
    """The two compiled kernels of one function, and the engine that keeps them alive."""

    def __init__(self, program: Program, inputs: tuple[str, ...], threads: int | None, opt: int):
        self.n_in, self.n_out = len(inputs), len(program.outputs)
        self.threads = threads or os.cpu_count() or 1
        if threads is None and _cost_per_point(program) < THREAD_MIN_COST:
            self.threads = 1
        self.opt = opt
        self.llvm_ir = lower(program, inputs, vector_ok)
        _check_symbols(self.llvm_ir)
        self.cache_hit = False
        self._engine = self._load(self._object_code())
        self._bind_functions()

    def _object_code(self) -> bytes:
        self.cache_hit, payload = _object_code(self.llvm_ir, self.opt)
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
        self.fast = _method(self._engine.get_function_address("sg_fast"))

    @property
    def asm(self) -> str:
        """Host assembly of both kernels."""
        tm, _, _ = _target()
        with _lock:
            context = _llvm().create_context()
            return tm.emit_assembly(_optimized_module(self.llvm_ir, self.opt, context))

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
        flat = [a.reshape(-1) for a in arrays]
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
                a, strides[k] = window(a), 1
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
        parts = min(self.threads, max(n // THREAD_MIN_POINTS, 1))
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


@cache
def _python_symbols() -> None:
    """Make the CPython functions ``sg_tensor_fast`` calls known to LLVM's symbol resolver.

    The interpreter's own symbols are not in the dynamic symbol table llvmlite searches; ctypes
    finds them. Without them (another Python) the fast entry is simply not linked and calls go
    through ctypes.
    """
    if sys.implementation.name != "cpython":
        return
    llvm = _llvm()
    for name in ("PyEval_SaveThread", "PyEval_RestoreThread"):
        with contextlib.suppress(AttributeError):
            llvm.add_symbol(
                name, ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
            )


@cache
def blas_dgemm() -> str | None:
    """The CBLAS dgemm with 64-bit integers that numpy's wheel ships (OpenBLAS), if found.

    Why this one: numpy already loads it for ``@``, it is tuned per CPU at run time, and its
    64-bit-integer ABI is fixed by its name, so no second BLAS is needed. ``SYMGRAD_BLAS=off``
    makes every product an inline loop.
    """
    if os.environ.get("SYMGRAD_BLAS", "").lower() == "off":
        return None
    llvm = _llvm()
    root = Path(np.__file__).resolve().parent
    for path in sorted(root.parent.glob("numpy.libs/libscipy_openblas64_*.so*")) + sorted(
        root.parent.glob("scipy_openblas64/lib/libscipy_openblas64_*.so*")
    ):
        with contextlib.suppress(RuntimeError):
            llvm.load_library_permanently(str(path))
    for name in ("scipy_cblas_dgemm64_", "cblas_dgemm64_"):
        if symbol_available(name):
            return name
    return None


def _expanded(flat: list) -> list:
    """The outputs rebuilt with every op that has an expansion (conv2d, pools, softmax, ...)
    replaced by it, so the loop writer sees primitive ops only."""
    from symgrad.optimize.prune import rebuild

    def make_rule(new):
        def rule(op, args, attrs):
            expand = OPS[op].expand
            return expand(*args, **attrs) if expand is not None else None

        return rule

    return rebuild(list(flat), make_rule)


class TensorKernel:
    """The compiled ``sg_tensor`` of a tensor graph, its plan and its engine."""

    def __init__(self, flat: list, inputs: tuple[str, ...], threads: int | None, opt: int):
        from symgrad.llvm.loops import lower_tensor

        del threads  # a tensor step runs on one thread; BLAS threads on its own
        expanded = _expanded(flat)
        graph = expanded[0].graph
        self.order = [e.id for e in expanded]
        self.distinct = list(dict.fromkeys(self.order))
        program = Program.of(graph, self.distinct)
        self.opt = opt
        self.llvm_ir, self.plan = lower_tensor(
            program, inputs, self.distinct, vector_ok, blas_dgemm()
        )
        _python_symbols()
        _check_symbols(self.llvm_ir)
        self.n_in = len(inputs)
        self.cache_hit, payload = _object_code(self.llvm_ir, opt, _loop_target(), "loops")
        self._engine = _load_engine(payload)
        address = self._engine.get_function_address("sg_tensor")
        if not address:
            raise LoweringError("compiled module lacks its kernel")
        self.kernel = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
        self.fast = _method(self._engine.get_function_address("sg_tensor_fast"))
        self._first = {i: k for k, i in reversed(list(enumerate(self.order)))}
        # Per call, only list lookups: where each kernel output goes, and which flat outputs
        # repeat an earlier one (copied after the kernel).
        self._out_pos = [self._first[i] for i in self.distinct]
        self._repeats = [(pos, self._first[i]) for pos, i in enumerate(self.order)
                         if self._first[i] != pos]  # fmt: skip
        self._scratch = threading.local()
        # The constant arrays the kernel reads through bufs (read-only, owned by the graph).
        self._constants = [graph.attr(i, "value") for i in self.plan.passed]

    @property
    def asm(self) -> str:
        with _lock:
            context = _llvm().create_context()
            module = _optimized_module(self.llvm_ir, self.opt, context)
            return _loop_target().emit_assembly(module)

    def run(self, arrays: list[np.ndarray], flat: list[np.ndarray]) -> None:
        """Inputs (contiguous, declared shapes) -> ``flat`` output arrays (contiguous)."""
        try:
            scratch = self._scratch.buffer
        except AttributeError:
            scratch = self._scratch.buffer = np.empty(max(self.plan.scratch, 1))
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


def _object_code(ir: str, opt: int, tm=None, codegen: str = "") -> tuple[bool, bytes]:
    """Object code for module text ``ir``: from the cache, or compiled by ``tm`` (the target
    machine of straight-line kernels by default) and cached."""
    key = _cache_key(ir, f"opt={opt}{codegen}")
    payload = object_cache.load(key)
    if payload is not None:
        return True, payload
    tm = tm or _target()[0]
    with _lock:  # LLVM's pass and codegen state is not to be shared between threads
        context = _llvm().create_context()
        payload = tm.emit_object(_optimized_module(ir, opt, context))
    object_cache.store(key, payload)
    return False, payload


def _load_engine(payload: bytes):
    llvm = _llvm()
    _, cpu, features = _target()
    with _lock:
        # The engine takes ownership of its target machine and frees it with itself: each
        # engine gets its own, never the shared one.
        engine = llvm.create_mcjit_compiler(
            llvm.parse_assembly(""), _new_target_machine(cpu, features)
        )
        engine.add_object_file(llvm.ObjectFileRef.from_data(payload))
        engine.finalize_object()
    return engine


class _MethodDef(ctypes.Structure):
    """CPython's PyMethodDef."""

    _fields_ = [
        ("ml_name", ctypes.c_char_p),
        ("ml_meth", ctypes.c_void_p),
        ("ml_flags", ctypes.c_int),
        ("ml_doc", ctypes.c_char_p),
    ]


METH_FASTCALL = 0x0080


def _method(address: int):
    """A builtin function object calling ``sg_fast`` at ``address``, or None if not possible.

    The function object keeps its method definition alive (attached as an attribute of a
    holder that the kernels object owns), and ``self`` is a float, whose type ``sg_fast``
    compares its arguments' types with.
    """
    if not address or sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None  # the object layouts sg_fast reads are those of a release CPython
    definition = _MethodDef(b"sg_fast", address, METH_FASTCALL, None)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]
    function = new(ctypes.addressof(definition), 0.5, None)
    return _FastCall(function, definition)


class _FastCall:
    """The builtin and the PyMethodDef it points into, kept alive together."""

    __slots__ = ("call", "definition")

    def __init__(self, call, definition):
        self.call, self.definition = call, definition


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="symgrad")


# A forked child has none of its parent's threads but would inherit the pool, whose idle count
# says its workers are waiting: its first threaded batch would queue work no thread serves, and
# wait forever (multiprocessing's fork context did). The child makes a pool of its own.
os.register_at_fork(after_in_child=_pool.cache_clear)
