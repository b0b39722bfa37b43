"""Measure formula -> callable for one tool in a fresh process; prints one JSON line.

    python -m benchmarks.worker TOOL CASE KIND MODE

MODE ``cold``: the formula is the first thing the tool builds in this process (its import is
done before the clock starts; lazy one-time set-up such as loading llvmlite or starting XLA is
charged). MODE ``warm``: the tool first builds and calls an unrelated formula (``W`` of the
suite), then the clock measures the formula. The clock runs from the formula (text or Python
builder) to the first result of the callable: for F1-F4 a call on 1,000 points, for F5 a call at
one point. The run script calls this; SYMGRAD_CACHE_DIR comes from its environment.
"""

from __future__ import annotations

import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import tools
from benchmarks.suite import CASES, SCALAR

FIRST_CALL_POINTS = 1000


def first_call_args(tool: tools.Tool, case, kind: str):
    if case.name in SCALAR or case.name == "W":
        return "batch", tool.batch_args(case, case.data(FIRST_CALL_POINTS), device=False)
    return "point", tool.point_args(case, kind)


def build_and_call(tool: tools.Tool, case, kind: str, where: str, args):
    fn = tool.make(case, kind, where=where)
    return tool.call_batch(fn, args) if where == "batch" else tool.point_caller(fn)(*args)


def main(argv: list[str]) -> int:
    key, case_name, kind, mode = argv
    tool = tools.get(key)
    tool.setup()
    case = CASES[case_name]
    where, args = first_call_args(tool, case, kind)
    if mode == "warm":
        warm = CASES["W"]
        w_where, w_args = first_call_args(tool, warm, "vg")
        build_and_call(tool, warm, "vg", w_where, w_args)
    elif mode != "cold":
        raise SystemExit(f"unknown mode {mode!r}")
    t0 = time.perf_counter()
    t_built = None
    fn = tool.make(case, kind, where=where)
    t_built = time.perf_counter()
    result = tool.call_batch(fn, args) if where == "batch" else tool.point_caller(fn)(*args)
    t1 = time.perf_counter()
    del result
    out = {
        "ms": (t1 - t0) * 1e3,
        "build_ms": (t_built - t0) * 1e3,
        "first_call_ms": (t1 - t_built) * 1e3,
        **tool.last_phases,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
