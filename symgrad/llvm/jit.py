"""Stage 4b: LLVM IR text -> native code, with an on-disk cache of object code.

One host target machine per process (host CPU name and features). A module is parsed in a
context of its own, verified, run through a short list of passes (``PASSES``: ``lower.py`` emits
vector code itself, so LLVM's vectorizers and most of its pipeline have nothing left to do),
emitted as an object file and loaded into an MCJIT engine that the ``NativeKernels`` object owns
(an engine that is collected leaves dangling function pointers: llvmlite issue #232).

Every external symbol the module calls is looked up before anything runs: an unresolved symbol
would crash the process at the call. The object code is cached on disk (``cache.py``: where,
whom it trusts, eviction) keyed by ``key.py``'s hash of the program, the host and the software,
computed before anything is lowered (so a hit costs no lowering, planning or LLVM), or by a hash
of the IR text with the same facts when the program holds a value the key cannot spell.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import sys
import threading
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from symgrad.errors import LoweringError
from symgrad.llvm import cache as object_cache

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


# Tensor modules of more IR lines than this are generated at level 0. Level 2's code generation
# costs ~7x level 0's per line (an unrolled 32-step LSTM's value + gradient, 54k lines: 1.75 s
# vs 0.25 s) and pays off in long loops over big arrays; a module this big is a long unrolled
# program of small loops, where it did not (that LSTM: 101.7 vs 101.9 us per call, the same
# results bit for bit).
LEVEL2_MAX_LINES = 20_000


def loop_target_for(ir: str):
    """The target machine for a tensor module: level 2, or level 0 when the module is big."""
    return _loop_target() if ir.count("\n") <= LEVEL2_MAX_LINES else _target()[0]


# Straight-line modules of more IR lines than this skip the IR passes. Their code is one value
# per node already (CSE, folding and dead nodes were the graph passes' work), and instcombine
# cost ~0.9 s of a 100k-node value + gradient; measured at 25k nodes with and without: the
# same results bit for bit, 106 vs 103 ms per batch of 1,024 points.
STRAIGHT_PASSES_MAX_LINES = 100_000


def straight_opt(ir: str, opt: int) -> int:
    """The IR-pass setting for a straight-line module: ``opt``, or 0 when the module is big."""
    return opt if ir.count("\n") <= STRAIGHT_PASSES_MAX_LINES else 0


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


def _declared(ir: str) -> set[str]:
    """The functions ``ir`` declares. str.find between declarations: a multiline regex over a
    100k-node module's 20 MB took 0.3 s."""
    names, at = set(), -1
    text = "\n" + ir
    while (at := text.find("\ndeclare ", at + 1)) >= 0:
        end = text.find("\n", at + 1)
        line = text[at + 1 : end if end >= 0 else len(text)]
        if found := re.match(r"declare [^@]*@([\w.]+)\(", line):
            names.add(found[1])
    return names


def _check_symbols(ir: str) -> None:
    for name in sorted(_declared(ir)):
        if not name.startswith("llvm.") and not symbol_available(name):
            raise LoweringError(f"this process does not provide the C function {name!r}")


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


def _object_code(
    key: str | None, make_ir, opt: int, tm=None, codegen: str = ""
) -> tuple[bool, bytes]:
    """Object code from the cache under ``key`` (``key.program_key``, known before any
    lowering), or compiled from the module text ``make_ir()`` by ``tm`` (the target machine of
    straight-line kernels by default; a function of the IR text chooses one) and cached.
    ``make_ir`` is called on a miss only: a hit never lowers or plans. Without a key (a program
    the key cannot spell) the entry is keyed by a hash of the IR text."""
    if key is not None:
        payload = object_cache.load(key)
        if payload is not None:
            return True, payload
    ir = make_ir()
    if key is None:
        key = _cache_key(ir, f"opt={opt}{codegen}")
        payload = object_cache.load(key)
        if payload is not None:
            return True, payload
    if tm is None:
        tm, opt = _target()[0], straight_opt(ir, opt)
    elif callable(tm):
        tm = tm(ir)
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
