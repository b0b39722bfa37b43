"""What the benchmark scripts share: timing by blocks of calls, the CPU's name, progress lines."""

from __future__ import annotations

import argparse
import contextlib
import os
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


def software(extra: str = "") -> str:
    """The first words of a report against JAX: symgrad's version and commit, JAX's, llvmlite's,
    numpy's (then ``extra``, such as ", scipy 1.17"), Python's, and the machine's cores."""
    import jax
    import jaxlib
    import llvmlite
    import numpy

    import symgrad
    from benchmarks.run import symgrad_commit

    return (
        f"symgrad {symgrad.__version__} (commit {symgrad_commit()}), JAX {jax.__version__} / "
        f"jaxlib {jaxlib.__version__} (CPU, float64), llvmlite {llvmlite.__version__}, numpy "
        f"{numpy.__version__}{extra}, Python {platform.python_version()}; {os.cpu_count()} "
        f"cores ({cpu_name()})"
    )


def arguments(doc: str, quick: str, argv=None) -> argparse.Namespace:
    """``--quick`` (``quick`` says what it runs) and ``--out``, for a script whose docstring is
    ``doc``; JAX set to float64 on the way, as every comparison here runs in float64."""
    import jax

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    return args


def settings(quick: bool, rounds: int) -> dict:
    """How calls are timed: ``repeats`` blocks of at least ``block_s`` each, ``rounds`` times."""
    return {
        "quick": quick,
        "repeats": 2 if quick else 3,
        "rounds": rounds,
        "block_s": 0.02 if quick else 0.1,
    }


def timing_words(settings: dict) -> str:
    """The report's sentence on how calls were timed and checked (``settings`` as above)."""
    return (
        f"Calls: the best of {settings['repeats']} blocks of calls of at least "
        f"{settings['block_s'] * 1e3:.0f} ms each, taken {settings['rounds']} times, the tools "
        "in turn (the best counts), after every output was checked against JAX's (max |a − b| "
        "/ max |b| ≤ 1e-8 per output)"
    )


def round_robin(tools: dict, settings: dict) -> None:
    """``best_of`` for each tool in turn, ``rounds`` times round-robin (a busy spell of the
    shared machine then hits every tool); the best round counts, with its cores (CPU time /
    wall time). A tool has ``call``, ``failed``, and gets ``time`` and ``cores``."""
    for _ in range(settings["rounds"]):
        for built in tools.values():
            if built.failed:
                continue
            cpu, start = time.process_time(), time.perf_counter()
            seconds = best_of(built.call, settings["repeats"], settings["block_s"])
            if built.time is None or seconds < built.time:
                built.time = seconds
                built.cores = (time.process_time() - cpu) / elapsed(start)


@contextlib.contextmanager
def timed_stages(module, stages: dict[str, str]):
    """Seconds per stage of a build: for the duration of the block, each function of ``module``
    named in ``stages`` (function name -> stage) is wrapped with a timer (and put back after).
    A call made inside another timed one counts for the outer one only; a name the module does
    not have is skipped. Yields the dict stage -> seconds."""
    spent = dict.fromkeys(stages.values(), 0.0)
    originals = {name: getattr(module, name) for name in stages if hasattr(module, name)}
    depth = [0]

    def timed(name, f):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[stages[name]] += elapsed(start)

        return wrapper

    for name, f in originals.items():
        setattr(module, name, timed(name, f))
    try:
        yield spent
    finally:
        for name, f in originals.items():
            setattr(module, name, f)
