"""How many threads the BLAS may use while a compiled tensor function runs.

Both backends multiply matrices with the OpenBLAS that numpy's wheel ships: the numpy backend
through ``np.matmul``, the LLVM backend by calling its ``dgemm``. OpenBLAS starts as many
threads as the machine has cores; on small and medium products waking them costs more than
they save. Measured on the 2-core development machine (numpy's matmul, an (n, d) @ (d, K d)
product as in a Gaussian mixture, busy machine): n=1,000, d=10, K=25 took 0.20 ms on one thread
and 8.0 ms on two; n=10,000, d=10, K=25 3.1 vs 4.7 ms; n=10,000, d=64, K=5 11.2 vs 9.8 ms;
200 x 200 0.37 vs 0.25 ms (the issue measured a GMM at 1.76 vs 31.9 ms). So a compiled tensor
function runs its BLAS on ``DEFAULT_THREADS`` = 1 thread unless ``sg.compile(...,
blas_threads=n)`` says otherwise (``None``: leave the BLAS as it is).

The count is set for the duration of a call of a function that holds an op marked
``OpDef.blas`` (matmul; in a loop body too: a call without one pays nothing) and restored after
it, once for all threads that are inside calls at the same time (the first one in sets it, the
last one out restores it), so a call never leaves the process's BLAS changed. The setter is
found with ctypes in numpy's own OpenBLAS (``scipy_openblas_set_num_threads64_``); without it
(another BLAS) nothing is set.
"""

from __future__ import annotations

import ctypes
import threading
from functools import cache
from pathlib import Path

import numpy as np

from symgrad.errors import ArgumentError

DEFAULT_THREADS = 1
_SETTERS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


@cache
def controls():
    """``(get, set)`` of the number of threads of numpy's OpenBLAS, or None if not found."""
    root = Path(np.__file__).resolve().parent
    for path in sorted(root.parent.glob("numpy.libs/libscipy_openblas*.so*")) + sorted(
        root.parent.glob("scipy_openblas64/lib/libscipy_openblas*.so*")
    ):
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for get_name, set_name in _SETTERS:
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, put = getattr(lib, get_name), getattr(lib, set_name)
                get.restype, get.argtypes = ctypes.c_int, []
                put.restype, put.argtypes = None, [ctypes.c_int]
                return get, put
    return None


class _Held:
    """The count as it was before the first caller in, restored by the last one out."""

    lock = threading.Lock()
    depth = 0
    saved: int | None = None  # None: nothing to restore (it already was the count asked for)


class Threads:
    """``with Threads(n):`` runs the body with the BLAS on ``n`` threads (None: as it is),
    then restores it. Made once per compiled function and entered at each call of it: a plain
    class, not a generator context manager (~5 us per call, on the per-call path)."""

    def __init__(self, n: int | None):
        self.controls = controls() if n is not None else None
        self.n = n

    def __enter__(self):
        if self.controls is None:
            return
        get, put = self.controls
        with _Held.lock:
            if _Held.depth == 0:
                before = get()
                _Held.saved = before if before != self.n else None
                if _Held.saved is not None:
                    put(self.n)
            _Held.depth += 1

    def __exit__(self, *exc):
        if self.controls is None:
            return
        with _Held.lock:
            _Held.depth -= 1
            if _Held.depth == 0 and _Held.saved is not None:
                self.controls[1](_Held.saved)


def checked(value) -> int | None:
    """The ``blas_threads`` option: None or an int >= 1 (an ArgumentError else)."""
    if value is not None and (type(value) is not int or value < 1):
        raise ArgumentError(f"compile: blas_threads must be None or an int >= 1, got {value!r}")
    return value
