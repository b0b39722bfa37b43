"""What the benchmark scripts share: timing by blocks of calls, the CPU's name, progress lines."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path


def elapsed(start: float) -> float:
    return time.perf_counter() - start


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.3g}"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def best_of(f, repeats: int, block_s: float) -> float:
    """Seconds per call: the best of ``repeats`` blocks of calls, each at least ``block_s``."""
    f()
    start = time.perf_counter()
    f()
    once = elapsed(start)
    number = max(1, int(block_s / max(once, 1e-9)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            f()
        best = min(best, elapsed(start) / number)
    return best


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def report(lines: list[str], out: str | None) -> None:
    """Print the report, and keep it in ``out`` (a ``benchmarks/RESULTS_*.md``) if given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
