"""Stage 4b: LLVM IR text -> native code, with an on-disk cache of object code.

One host target machine per process (host CPU name and features). A module is verified, run
through the new pass manager (O2 with LLVM's vectorizers off, since ``lower.py`` emits vector code
itself; O1 for graphs beyond ``BIG_GRAPH`` nodes, so big graphs compile in about a second),
emitted as an object file and loaded into an MCJIT engine that the ``NativeKernels`` object owns
(an engine that is collected leaves dangling function pointers: llvmlite issue #232).

Every external symbol the module calls is looked up before anything runs: an unresolved symbol
would crash the process at the call. The object code is cached on disk keyed by a hash of the IR
text (itself a function of the graph), the llvmlite and LLVM versions, the CPU and its features
and the options; ``SYMGRAD_CACHE_DIR`` moves the cache, ``SYMGRAD_CACHE_DIR=off`` disables it. A
corrupt or truncated entry fails its checksum and is rebuilt; a cache that cannot be written only
loses caching.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from symgrad.errors import LoweringError
from symgrad.interp import Program
from symgrad.llvm.lower import WIDTH, lower

BIG_GRAPH = 3000  # nodes; above it, a cheaper pass pipeline
THREAD_MIN_POINTS = 1 << 15  # below this many points per thread, threads cost more than they save
MAGIC = b"SYMGRAD-OBJ-1\n"
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


def _new_target_machine(cpu: str, features: str):
    # Code generation at level 0 (fast instruction selection and register allocation): measured
    # on the benchmark suite, it cut codegen from ~30 to ~8 ms at the same ns per point, since
    # the IR passes (speed level 2) have already done the optimizing that matters here.
    return (
        _llvm()
        .Target.from_default_triple()
        .create_target_machine(cpu=cpu, features=features, opt=0, codemodel="jitdefault", jit=True)
    )


@cache
def symbol_available(name: str) -> bool:
    """Does this process resolve the C symbol ``name`` (libm, libmvec)?"""
    return bool(_llvm().address_of_symbol(name))


def vector_ok(name: str) -> bool:
    """May the kernel call the 4-lane libmvec function ``name``? Needs AVX2 and the symbol."""
    _, _, features = _target()
    return "+avx2" in features and symbol_available(name)


def cache_dir() -> Path | None:
    setting = os.environ.get("SYMGRAD_CACHE_DIR")
    if setting is not None:
        return None if setting.strip().lower() in ("off", "0", "none", "") else Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symgrad"


def _cache_key(ir: str, options: str) -> str:
    import llvmlite

    _, cpu, features = _target()
    h = hashlib.sha256()
    for part in (llvmlite.__version__, str(_llvm().llvm_version_info), cpu, features, options, ir):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _cache_read(key: str) -> bytes | None:
    folder = cache_dir()
    if folder is None:
        return None
    try:
        blob = (folder / f"{key}.o").read_bytes()
    except OSError:
        return None
    head = len(MAGIC) + 32
    if len(blob) < head or not blob.startswith(MAGIC):
        return None
    digest, payload = blob[len(MAGIC) : head], blob[head:]
    return payload if hashlib.sha256(payload).digest() == digest else None


def _cache_write(key: str, payload: bytes) -> None:
    folder = cache_dir()
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            os.replace(tmp, folder / f"{key}.o")
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # read-only or full: we only lose caching


def _optimized_module(ir: str, speed: int):
    llvm = _llvm()
    tm, _, _ = _target()
    try:
        module = llvm.parse_assembly(ir)
        module.verify()
    except RuntimeError as err:
        raise LoweringError(f"generated IR does not verify: {err}") from None
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    if speed:
        pto = llvm.create_pipeline_tuning_options(speed_level=speed)
        pto.loop_vectorization = False  # lower.py wrote the vector code already
        pto.slp_vectorization = False
        builder = llvm.create_pass_builder(tm, pto)
        builder.getModulePassManager().run(module, builder)
    return module


def _check_symbols(ir: str) -> None:
    for name in sorted(set(re.findall(r"^declare [^@]*@([\w.]+)\(", ir, re.M))):
        if not name.startswith("llvm.") and not symbol_available(name):
            raise LoweringError(f"this process does not provide the C function {name!r}")


class NativeKernels:
    """The two compiled kernels of one function, and the engine that keeps them alive."""

    def __init__(self, program: Program, inputs: tuple[str, ...], threads: int | None = None,
                 opt: int | None = None):  # fmt: skip
        self.n_in, self.n_out = len(inputs), len(program.outputs)
        self.threads = threads or os.cpu_count() or 1
        self.speed = opt if opt is not None else (2 if len(program.steps) <= BIG_GRAPH else 1)
        self.llvm_ir = lower(program, inputs, vector_ok)
        _check_symbols(self.llvm_ir)
        self.cache_hit = False
        self._engine = self._load(self._object_code())
        self._bind_functions()

    def _object_code(self) -> bytes:
        key = _cache_key(self.llvm_ir, f"speed={self.speed}")
        payload = _cache_read(key)
        if payload is not None:
            self.cache_hit = True
            return payload
        tm, _, _ = _target()
        with _lock:  # LLVM's pass and codegen state is not to be shared between threads
            payload = tm.emit_object(_optimized_module(self.llvm_ir, self.speed))
        _cache_write(key, payload)
        return payload

    def _load(self, payload: bytes):
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

    def _bind_functions(self) -> None:
        point = self._engine.get_function_address("sg_point")
        batch = self._engine.get_function_address("sg_batch")
        if not point or not batch:
            raise LoweringError("compiled module lacks its kernels")
        vp = ctypes.c_void_p
        self.point = ctypes.CFUNCTYPE(None, vp, vp)(point)
        self.batch = ctypes.CFUNCTYPE(None, vp, vp, vp, ctypes.c_int64)(batch)
        self._buffers = threading.local()  # per thread: calls from many threads never share

    @property
    def asm(self) -> str:
        """Host assembly of both kernels."""
        tm, _, _ = _target()
        with _lock:
            return tm.emit_assembly(_optimized_module(self.llvm_ir, self.speed))

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
        keep, ins, strides = [], np.empty(self.n_in, np.uint64), np.empty(self.n_in, np.int64)
        for k, a in enumerate(arrays):
            if a.size == 1:  # loop-invariant: four copies feed the 4-lane load
                a = np.full(WIDTH, float(a.reshape(-1)[0]))
                strides[k] = 0
            else:
                strides[k] = 1
            keep.append(a)
            ins[k] = a.ctypes.data
        out_ptrs = np.array([o.ctypes.data for o in outs], np.uint64)
        chunks = self._chunks(n)
        if len(chunks) == 1:
            self.batch(ins.ctypes.data, strides.ctypes.data, out_ptrs.ctypes.data, n)
            return
        jobs = [self._chunk_args(ins, strides, out_ptrs, lo, hi) for lo, hi in chunks]
        list(_pool().map(lambda args: self.batch(*args[:4]), jobs))
        del keep, jobs

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


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="symgrad")
