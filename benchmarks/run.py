"""symgrad vs SymPy, JAX, SymEngine and CasADi on the suite of ANCHORS.md; prints markdown.

    python -m benchmarks.run                  # the full run (about 12 minutes on 2 cores)
    python -m benchmarks.run --quick          # a smoke run: fewer points, repeats, no cold builds
    python -m benchmarks.run --only F2 --only F5 --tools symgrad,jax --out results.md

Measures (issue 3, item 6):
  (a) formula -> callable returning value and gradient, first call included, each in a fresh
      subprocess (``benchmarks/worker.py``): "cold" = first formula of the process, "warm" = after
      an unrelated formula; symgrad with SYMGRAD_CACHE_DIR=off, and again with a warm disk cache;
  (b) ns per point for value + gradient over 1,000,000 points (F5: 100,000), wall clock;
  (c) (b) divided by the value alone;
  (d) µs per single-point call of value + gradient, Python floats in;
  (e) graph sizes of value + gradient (and value alone), each tool in its own unit;
  F5 also gradient, Hessian and Hessian-vector product at one point: build ms and µs per call.
Timings are medians of repeats taken round-robin over the tools (so a noisy spell hits all tools
alike), with ``time.perf_counter``; every tool gets the same numbers, prepared in its own layout
before the clock starts. Tools that are not installed are reported as "not installed".
Progress goes to stderr, the report to stdout (and to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks import tools
from benchmarks.suite import CASES, F5_KINDS, SCALAR, SUITE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = ("symgrad", "symgrad-1t", "symgrad-numpy", "sympy", "jax", "symengine", "casadi")
CACHED = "symgrad-cached"  # symgrad in a fresh process with a warm disk cache (a pseudo-tool)
KIND_LABEL = {"vg": "value + gradient", "hess": "Hessian", "hvp": "Hessian·v"}
CHECK_TOL = 1e-8  # max |a - b| / (1 + |b|) against symgrad's numpy interpreter


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# settings


class Settings:
    def __init__(self, args):
        quick = args.quick
        self.quick = quick
        self.points = args.points or (20_000 if quick else 1_000_000)
        self.points_f5 = max(self.points // 10, 1000)
        self.batch_repeats = args.repeats or (3 if quick else 9)
        self.point_samples = 3 if quick else 9
        self.point_sample_s = 0.01 if quick else 0.05
        self.build_repeats = 1 if quick else 3
        self.build_modes = ("warm",) if quick else ("cold", "warm")
        self.timeout = args.timeout or (10.0 if quick else 120.0)
        self.entry_budget_s = 3.0 if quick else 25.0  # per tool and measure, beyond 3 repeats
        self.cases = _cases(args.only)
        self.tools = _tools(args.tools)
        self.builds = not args.no_build
        self.out = args.out
        self.started = _dt.datetime.now().astimezone()
        self.load_start = os.getloadavg()
        self.commit = symgrad_commit()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("OPENBLAS_", "OMP_", "XLA_", "SYMGRAD_", "JAX_"))
        }


def _cases(only) -> list[str]:
    if not only:
        return list(SUITE)
    names = [n.strip().upper() for item in only for n in item.split(",") if n.strip()]
    bad = [n for n in names if n not in SUITE]
    if bad:
        raise SystemExit(f"--only: unknown {', '.join(bad)}; the suite is {', '.join(SUITE)}")
    return [n for n in SUITE if n in names]


def _tools(spec) -> list[str]:
    if not spec:
        return list(ORDER)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in ORDER]
    if bad:
        raise SystemExit(f"--tools: unknown {', '.join(bad)}; tools are {', '.join(ORDER)}")
    return [n for n in ORDER if n in names or n == "symgrad-numpy"]  # the reference always runs


# ------------------------------------------------------------------------------------------
# formatting


def fnum(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if x >= 100:
        s = f"{x:,.0f}"
    elif x >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.2f}"
    return s + unit


def fms(x) -> str:
    if isinstance(x, str):
        return x
    if x is None:
        return "—"
    return fnum(x / 1e3, " s") if x >= 10_000 else fnum(x)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def label(key: str) -> str:
    return CACHED_LABEL if key == CACHED else tools.TOOLS[key].label


CACHED_LABEL = "symgrad, warm disk cache"


# ------------------------------------------------------------------------------------------
# in-process deadlines (SymPy's diff of F4 does not finish)


class Deadline(BaseException):  # BaseException: library code catching Exception must not eat it
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    def on_alarm(signum, frame):
        raise Deadline

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------
# (a) formula -> callable, in fresh subprocesses


def run_worker(key: str, case: str, kind: str, mode: str, cache: str, timeout: float):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=cache, PYTHONWARNINGS="ignore")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    cmd = [sys.executable, "-m", "benchmarks.worker", key, case, kind, mode]
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"timeout": timeout}
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:200]}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": "no result"}


class Builds:
    """Results of (a): ``get(tool, case, kind, mode)`` -> list of worker results."""

    def __init__(self):
        self.runs = defaultdict(list)

    def add(self, key, case, kind, mode, res):
        self.runs[(key, case, kind, mode)].append(res)

    def results(self, key, case, kind, mode):
        return self.runs.get((key, case, kind, mode), [])

    def median(self, key, case, kind, mode, field="ms"):
        vals = [r[field] for r in self.results(key, case, kind, mode) if field in r]
        return statistics.median(vals) if vals else None

    def failure(self, key, case, kind, mode=None):
        modes = [mode] if mode else ("cold", "warm")
        for m in modes:
            for r in self.results(key, case, kind, m):
                if "timeout" in r:
                    return f"> {r['timeout']:.0f} s"
                if "error" in r:
                    return "error"
        return None

    def cell(self, key, case, kind, mode) -> str:
        ms = self.median(key, case, kind, mode)
        if ms is not None:
            return fms(ms)
        fail = self.failure(key, case, kind, mode)
        return fail or "—"


def measure_builds(st: Settings, available: list[str]) -> Builds:
    builds = Builds()
    jobs = []  # (key, case, kind)
    for case in st.cases:
        kinds = F5_KINDS if case == "F5" else ("vg",)
        for kind in kinds:
            for key in available:
                if tools.TOOLS[key].batch_only:
                    continue
                jobs.append((key, case, kind))
                if key == "symgrad":
                    jobs.append((CACHED, case, kind))
    cache_dir = tempfile.mkdtemp(prefix="symgrad-bench-cache-")
    try:
        if any(k == CACHED for k, _, _ in jobs):
            log("(a) filling a disk cache for the warm-cache runs")
            for key, case, kind in jobs:
                if key == CACHED:
                    run_worker("symgrad", case, kind, "warm", cache_dir, st.timeout)
        slow = set()
        for rep in range(st.build_repeats):
            for key, case, kind in jobs:
                for mode in st.build_modes:
                    if (key, case, kind, mode) in slow:
                        continue
                    if builds.failure(key, case, kind):  # timed out or failed: do not retry
                        continue
                    tool_key = "symgrad" if key == CACHED else key
                    cache = cache_dir if key == CACHED else "off"
                    res = run_worker(tool_key, case, kind, mode, cache, st.timeout)
                    builds.add(key, case, kind, mode, res)
                    shown = fms(res.get("ms")) + " ms" if "ms" in res else json.dumps(res)
                    log(f"(a) rep {rep + 1} {label(key)} {case} {kind} {mode}: {shown}")
                    if res.get("ms", 0) > 5000:
                        slow.add((key, case, kind, mode))  # one run of a slow build is enough
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return builds


# ------------------------------------------------------------------------------------------
# in-process measures


class Bench:
    def __init__(self, st: Settings, available: list[str], builds: Builds):
        self.st = st
        self.tools = {k: tools.get(k) for k in available}
        for t in self.tools.values():
            t.setup()
        self.builds = builds
        self.built = {}
        self.failed = {}  # (tool, case, kind) -> reason
        self.batch = {}  # (case, tool, kind) -> (median ns, min ns)
        self.point = {}  # (case, tool, kind) -> µs per call
        self.sizes = {}  # (case, tool) -> (vg, v)
        self.errors = {}  # (case, tool, what) -> max deviation from the reference

    # -- building with a deadline, skipping what (a) saw fail --------------------------------
    def make(self, key, case, kind, where="batch"):
        tool_where = where if key == "jax" else "batch"
        k = (key, case, kind, tool_where)
        if k in self.built:
            return self.built[k]
        if (key, case, kind) in self.failed:
            return None
        fail = self.builds.failure(key, case, kind) if self.builds else None
        if fail:
            self.failed[(key, case, kind)] = fail
            return None
        try:
            with deadline(self.st.timeout):
                fn = self.tools[key].make(CASES[case], kind, where=tool_where)
        except Deadline:
            self.failed[(key, case, kind)] = f"> {self.st.timeout:.0f} s"
            log(f"{label(key)} {case} {kind}: build exceeded {self.st.timeout:.0f} s")
            return None
        except Exception as err:  # a tool that cannot build this function
            self.failed[(key, case, kind)] = "error"
            log(f"{label(key)} {case} {kind}: {type(err).__name__}: {err}")
            return None
        self.built[k] = fn
        return fn

    def check(self, case, key, what, got, ref):
        if got is None or ref is None:
            return
        err = np.inf
        if got.shape == ref.shape:
            err = float(np.max(np.abs(got - ref) / (1 + np.abs(ref))))
        self.errors[(case, key, what)] = err
        if not err <= CHECK_TOL:
            log(f"WARNING {label(key)} {case} {what}: deviates from symgrad numpy by {err:.3g}")

    # -- (b), (c) ------------------------------------------------------------------------
    def run_batch(self, case_name: str):
        case = CASES[case_name]
        n = self.st.points_f5 if case_name == "F5" else self.st.points
        data = case.data(n)
        entries = []
        ref = {}
        for key in self.tools:
            for kind in ("vg", "v"):
                if kind == "v" and (key, case_name, "vg") in self.failed:
                    continue  # not needed for (c)
                fn = self.make(key, case_name, kind)
                if fn is None:
                    continue
                tool = self.tools[key]
                args = tool.batch_args(case, data)
                res = tool.call_batch(fn, args)  # warm-up (JAX compiles for this shape here)
                flat = tool.flatten(res, case, kind, batch=True)
                del res
                if key == "symgrad-numpy":
                    ref[kind] = flat
                entries.append((key, kind, fn, args, flat))
        for key, kind, _, _, flat in entries:
            if key != "symgrad-numpy":
                self.check(case_name, key, f"batch {kind}", flat, ref.get(kind))
        entries = [e[:4] for e in entries]
        times = defaultdict(list)
        spent = defaultdict(float)
        for rep in range(self.st.batch_repeats):
            for key, kind, fn, args in entries:
                if len(times[(key, kind)]) >= 3 and spent[(key, kind)] > self.st.entry_budget_s:
                    continue
                tool = self.tools[key]
                t0 = time.perf_counter()
                res = tool.call_batch(fn, args)
                dt = time.perf_counter() - t0
                del res
                times[(key, kind)].append(dt)
                spent[(key, kind)] += dt
            log(f"(b) {case_name} round {rep + 1}/{self.st.batch_repeats}")
        for (key, kind), ts in times.items():
            self.batch[(case_name, key, kind)] = (
                statistics.median(ts) / n * 1e9,
                min(ts) / n * 1e9,
            )

    # -- (d) and F5 at one point ---------------------------------------------------------
    def run_point(self, case_name: str, kinds=("vg",)):
        case = CASES[case_name]
        entries = []
        for kind in kinds:
            ref = None
            got = {}
            for key in self.tools:
                if self.tools[key].batch_only:
                    continue
                fn = self.make(key, case_name, kind, where="point")
                if fn is None:
                    continue
                tool = self.tools[key]
                args = tool.point_args(case, kind)
                call = tool.point_caller(fn)
                res = call(*args)
                got[key] = tool.flatten(res, case, kind, batch=False)
                if key == "symgrad-numpy":
                    ref = got[key]
                entries.append((key, kind, call, args))
            for key, flat in got.items():
                if key != "symgrad-numpy":
                    self.check(case_name, key, f"point {kind}", flat, ref)
        # calibrate: calls per sample so one sample takes about point_sample_s
        counts = {}
        for key, kind, call, args in entries:
            number = 1
            while True:
                t0 = time.perf_counter()
                for _ in range(number):
                    call(*args)
                dt = time.perf_counter() - t0
                if dt >= self.st.point_sample_s / 4 or number >= 1 << 20:
                    break
                number *= 4
            counts[(key, kind)] = max(1, int(number * self.st.point_sample_s / max(dt, 1e-9)))
        samples = defaultdict(list)
        for _ in range(self.st.point_samples):
            for key, kind, call, args in entries:
                number = counts[(key, kind)]
                t0 = time.perf_counter()
                for _ in range(number):
                    call(*args)
                samples[(key, kind)].append((time.perf_counter() - t0) / number)
        for (key, kind), ts in samples.items():
            self.point[(case_name, key, kind)] = statistics.median(ts) * 1e6
        log(f"(d) {case_name} {', '.join(kinds)} done")

    # -- (e) -----------------------------------------------------------------------------
    def run_sizes(self, case_name: str):
        case = CASES[case_name]
        for key, tool in self.tools.items():
            if key == "symgrad-numpy" or tool.batch_only or (key, case_name, "vg") in self.failed:
                continue
            try:
                with deadline(self.st.timeout):
                    self.sizes[(case_name, key)] = (tool.size(case, "vg"), tool.size(case, "v"))
            except Deadline:
                self.failed[(key, case_name, "size")] = f"> {self.st.timeout:.0f} s"
            except Exception as err:
                log(f"size {label(key)} {case_name}: {type(err).__name__}: {err}")


# ------------------------------------------------------------------------------------------
# report


def symgrad_commit() -> str:
    """The repository's commit, and whether symgrad/ differs from it."""
    commit = "?"
    with contextlib.suppress(Exception):
        git = ["git", "-C", ROOT]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "symgrad"], capture_output=True, text=True
        ).stdout.strip()
        if dirty:
            commit += " (symgrad/ has uncommitted changes)"
    return commit


def environment(st: Settings, statuses: dict[str, str]) -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    host = "?"
    with contextlib.suppress(Exception):
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        host = llvm.get_host_cpu_name()
    commit = st.commit
    end = symgrad_commit()
    if end != commit:
        commit = f"{commit} at the start, {end} at the end (symgrad changed during the run)"
    load = " / ".join(f"{x:.2f}" for x in st.load_start)
    env = ", ".join(f"{k}={v}" for k, v in sorted(st.env.items()))
    lines = [
        f"- date: {st.started.strftime('%Y-%m-%d %H:%M %Z')} (start), run took "
        f"{(_dt.datetime.now().astimezone() - st.started).total_seconds() / 60:.0f} min",
        f"- machine: {cpu} (LLVM host CPU `{host}`), {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}; load average at start {load}",
        f"- Python {platform.python_version()}, numpy {np.__version__}; symgrad at commit {commit}",
        "- tools: "
        + "; ".join(
            f"{tools.TOOLS[k].label}: {statuses[k]}" for k in ORDER if not tools.TOOLS[k].batch_only
        ),
        f"- settings: {st.points:,} points (F5: {st.points_f5:,}); batch timings median of "
        f"{st.batch_repeats}, single-point median of {st.point_samples} samples of "
        f"~{st.point_sample_s * 1e3:.0f} ms; builds median of {st.build_repeats} fresh "
        f"processes per mode; timeout {st.timeout:.0f} s" + ("; --quick" if st.quick else ""),
    ]
    if env:
        lines.append(f"- environment: {env}")
    return "\n".join(lines)


def with_cached(keys: list[str]) -> list[str]:
    """The tools' columns with "symgrad, warm disk cache" right after symgrad."""
    out = []
    for k in keys:
        out += [k, CACHED] if k == "symgrad" else [k]
    return out


def report(st: Settings, statuses, builds: Builds | None, bench: Bench, load_end) -> str:
    keys = [k for k in ORDER if k in bench.tools]
    pkeys = [k for k in keys if not tools.TOOLS[k].batch_only]  # all measures, not only (b), (c)
    out = ["# symgrad benchmarks", "", environment(st, statuses), ""]
    missing = [tools.TOOLS[k].label for k in ORDER if k in st.tools and k not in bench.tools]
    if missing:
        out += [f"Not installed (skipped): {', '.join(missing)}.", ""]
    out.append(f"Load average at the end: {' / '.join(f'{x:.2f}' for x in load_end)}.")
    out.append("")
    scalar = [c for c in st.cases if c in SCALAR]

    def fail_cell(key, case, kind="vg"):
        return bench.failed.get((key, case, kind), "—")

    # (a)
    if builds is not None and scalar:
        cols = with_cached(pkeys)
        out += [
            "## (a) Formula → callable returning value and gradient, ms",
            "",
            "In a fresh process per measurement, the tool already imported; the first call (on "
            "1,000 points) is included. Each cell: **cold / warm** — *cold*: the first formula "
            "the process builds (lazy one-time set-up such as loading llvmlite or starting XLA is "
            "included); *warm*: after the process built an unrelated formula. symgrad runs with "
            "`SYMGRAD_CACHE_DIR=off`, except the *warm disk cache* column (a fresh process "
            "whose cache already holds the kernel). Its cold − warm difference is mostly "
            "symgrad's one-time set-up: importing llvmlite and creating the target machine.",
            "",
        ]
        rows = []
        for case in scalar:
            row = [case]
            for k in cols:
                row.append(" / ".join(builds.cell(k, case, "vg", m) for m in ("cold", "warm")))
            rows.append(row)
        out += [table(["fn"] + [label(k) for k in cols], rows), ""]

    # (b), (c)
    batch_cases = [c for c in st.cases if any(k[0] == c for k in bench.batch)]
    if batch_cases:
        out += [
            f"## (b) Value + gradient over {st.points:,} points, ns per point",
            "",
            "Wall clock, median. F1: batch over (w1, b1, w2) with x = 1, label = 500 fixed; "
            "F2–F4: over (x, y); all uniform in [-2, 2) (F5: 100 variables in [-1.5, 1.5), "
            f"{st.points_f5:,} points). symgrad (its default) and JAX use both cores, the others "
            "one; *symgrad, 1 thread* is `sg.compile(..., threads=1)`. Last columns: how many "
            "times faster symgrad (default) is.",
            "",
        ]
        rows = []
        for case in batch_cases:
            name = f"F5 ({st.points_f5:,} pts)" if case == "F5" else case
            row = [name]
            for k in keys:
                v = bench.batch.get((case, k, "vg"))
                row.append(fnum(v[0]) if v else fail_cell(k, case))
            sg_ns = (bench.batch.get((case, "symgrad", "vg")) or (None,))[0]
            for other in ("sympy", "jax"):
                o = bench.batch.get((case, other, "vg"))
                row.append(f"{o[0] / sg_ns:.1f}×" if (o and sg_ns) else "—")
            rows.append(row)
        hdr = ["fn"] + [label(k) for k in keys] + ["SymPy ÷ symgrad", "JAX ÷ symgrad"]
        out += [table(hdr, rows), ""]

        out += [
            "## (c) Value + gradient ÷ value alone",
            "",
            "Ratio of (b) to the same tool's value-only function; in parentheses the value "
            "alone in ns per point.",
            "",
        ]
        rows = []
        for case in batch_cases:
            row = [case]
            for k in keys:
                vg, v = bench.batch.get((case, k, "vg")), bench.batch.get((case, k, "v"))
                row.append(f"{vg[0] / v[0]:.1f} ({fnum(v[0])})" if vg and v else fail_cell(k, case))
            rows.append(row)
        out += [table(["fn"] + [label(k) for k in keys], rows), ""]

    # (d)
    point_cases = [c for c in scalar if any(k[0] == c for k in bench.point)]
    if point_cases:
        out += [
            "## (d) One point, value + gradient, µs per call",
            "",
            "Python floats in (JAX: `jax.jit(jax.value_and_grad(f, argnums))`, result waited "
            "for); median.",
            "",
        ]
        rows = []
        for case in point_cases:
            row = [case]
            for k in pkeys:
                v = bench.point.get((case, k, "vg"))
                row.append(fnum(v) if v is not None else fail_cell(k, case))
            rows.append(row)
        out += [table(["fn"] + [label(k) for k in pkeys], rows), ""]

    # (e)
    size_cases = [c for c in st.cases if any(k[0] == c for k in bench.sizes)]
    if size_cases:
        skeys = [k for k in pkeys if k != "symgrad-numpy"]
        out += [
            "## (e) Size of value + gradient (value alone)",
            "",
            "Each tool in its own unit: "
            + "; ".join(f"{tools.TOOLS[k].label}: {tools.TOOLS[k].size_unit}" for k in skeys)
            + " (JAX's F5 is written with arrays, so its count is not per scalar). "
            "symgrad numpy runs the same graph as symgrad.",
            "",
        ]
        rows = []
        for case in size_cases:
            row = [case]
            for k in skeys:
                s = bench.sizes.get((case, k))
                if s and s[0] is not None:
                    row.append(f"{s[0]:,} ({s[1]:,})" if s[1] is not None else f"{s[0]:,}")
                else:
                    row.append(bench.failed.get((k, case, "size")) or fail_cell(k, case))
            rows.append(row)
        out += [table(["fn"] + [tools.TOOLS[k].label for k in skeys], rows), ""]

    # F5
    if "F5" in st.cases:
        out += [
            "## F5: Rosenbrock in 100 variables at one point",
            "",
            "Build: formula → callable with its first call, ms, fresh process, cold / warm "
            "as in (a). Call: µs per call at one point (symgrad and SymPy take 100 (H·v: 200) "
            "Python floats, the others one or two numpy arrays).",
            "",
        ]
        cols = []
        for kind in F5_KINDS:
            cols += [f"{KIND_LABEL[kind]}: build", "call"]
        rows = []
        rkeys = with_cached(pkeys)
        for k in rkeys:
            row = [label(k)]
            for kind in F5_KINDS:
                if builds is not None:
                    row.append(" / ".join(builds.cell(k, "F5", kind, m) for m in ("cold", "warm")))
                else:
                    row.append("—")
                v = bench.point.get(("F5", k, kind)) if k != CACHED else None
                row.append(
                    fnum(v) if v is not None else ("" if k == CACHED else fail_cell(k, "F5", kind))
                )
            rows.append(row)
        out += [table(["tool"] + cols, rows), ""]

    out += targets(st, builds, bench)

    # details
    out += ["## Details", ""]
    if builds is not None:
        rows = []
        for key in ("symgrad", CACHED):
            for case in st.cases:
                for kind in F5_KINDS if case == "F5" else ("vg",):
                    for mode in ("cold", "warm"):
                        res = builds.results(key, case, kind, mode)
                        if not res or "ms" not in res[0]:
                            continue
                        meds = [
                            fnum(builds.median(key, case, kind, mode, field))
                            for field in ("graph_ms", "compile_ms", "first_call_ms", "ms")
                        ]
                        done = [r for r in res if "ms" in r]
                        hits = sum(bool(r.get("cache_hit")) for r in done)
                        row = [label(key), f"{case} {kind}", mode, *meds]
                        rows.append(row + [f"{hits}/{len(done)}"])
        if rows:
            out += [
                "symgrad's build, split (ms, medians): graph = parse or Python API + "
                "build_grad/hessian/hvp; compile = `sg.compile` (lowering, LLVM, loading); "
                "first call; cache hit: in how many of the runs.",
                "",
                table(
                    ["", "fn", "process", "graph", "compile", "first call", "total", "cache hit"],
                    rows,
                ),
                "",
            ]
    if bench.batch:
        rows = []
        for case in batch_cases:
            row = [case]
            for k in keys:
                v = bench.batch.get((case, k, "vg"))
                row.append(fnum(v[1]) if v else "—")
            rows.append(row)
        out += [
            "Fastest of the repeats of (b), ns per point (how noisy the machine was):",
            "",
            table(["fn"] + [label(k) for k in keys], rows),
            "",
        ]
    if bench.errors:
        whats = sorted({(case, what) for case, _, what in bench.errors})
        ekeys = [k for k in keys if k != "symgrad-numpy"]
        rows = []
        for case, what in whats:
            row = [f"{case} {what}"]
            for k in ekeys:
                err = bench.errors.get((case, k, what))
                row.append(
                    "—" if err is None else f"{err:.0e}" + ("" if err <= CHECK_TOL else " ✗")
                )
            rows.append(row)
        bad = sum(1 for err in bench.errors.values() if not err <= CHECK_TOL)
        out += [
            "Agreement with symgrad's numpy interpreter, max |a − b| / (1 + |b|) over all "
            f"outputs and points: {'all' if not bad else f'{bad} results NOT'} within "
            f"{CHECK_TOL:g}.",
            "",
            table([""] + [label(k) for k in ekeys], rows),
            "",
        ]
    return "\n".join(out)


def targets(st: Settings, builds: Builds | None, bench: Bench) -> list[str]:
    rows = []

    def verdict(ok):
        return "—" if ok is None else ("met" if ok else "**missed**")

    def all_of(items):
        items = [x for x in items if x is not None]
        return None if not items else all(items)

    # speed vs SymPy
    details, oks = [], []
    for case in [c for c in st.cases]:
        sg_ = bench.batch.get((case, "symgrad", "vg"))
        sp = bench.batch.get((case, "sympy", "vg"))
        need = 5 if CASES[case].transcendental else 2
        if sg_ and sp:
            ratio = sp[0] / sg_[0]
            oks.append(ratio >= need)
            details.append(f"{case} {ratio:.1f}× (need {need}×)")
        elif sg_ and ("sympy", case, "vg") in bench.failed:
            details.append(f"{case}: SymPy {bench.failed[('sympy', case, 'vg')]}")
    rows.append(
        [
            "value + gradient over 1e6 points ≥ 2× faster than SymPy lambdify (≥ 5× with "
            "transcendental functions)",
            "; ".join(details) or "—",
            verdict(all_of(oks)),
        ]
    )
    details, oks = [], []
    for case in st.cases:
        sg_ = bench.batch.get((case, "symgrad", "vg"))
        jx = bench.batch.get((case, "jax", "vg"))
        if sg_ and jx:
            oks.append(sg_[0] < jx[0])
            details.append(f"{case} {jx[0] / sg_[0]:.1f}×")
    rows.append(
        [
            "faster than JAX jit(vmap(value_and_grad)) on every suite function",
            "; ".join(details) or "—",
            verdict(all_of(oks)),
        ]
    )
    if builds is not None:
        items = [(c, "vg") for c in st.cases if c != "F5"]
        if "F5" in st.cases:
            items += [("F5", "vg"), ("F5", "hvp")]
        for mode in st.build_modes:
            details, oks, rel_d, rel_ok = [], [], [], []
            for case, kind in items:
                ms = builds.median("symgrad", case, kind, mode)
                if ms is None:
                    continue
                oks.append(ms < 50)
                details.append(f"{case}{'' if kind == 'vg' else ' ' + kind} {fnum(ms)}")
                se = builds.median("symengine", case, kind, mode)
                if se:
                    rel_ok.append(ms <= 3 * se)
                    rel_d.append(f"{case}{'' if kind == 'vg' else ' ' + kind} {ms / se:.1f}×")
            rows.append(
                [
                    f"formula → callable < 50 ms (all but the 100-variable Hessian), "
                    f"{mode} process",
                    "; ".join(d + " ms" for d in details) or "—",
                    verdict(all_of(oks)),
                ]
            )
            rows.append(
                [
                    f"… and within 3× of SymEngine Lambdify(backend='llvm'), {mode} process",
                    "; ".join(rel_d) or "—",
                    verdict(all_of(rel_ok)),
                ]
            )
    pt = bench.point.get(("F2", "symgrad", "vg"))
    rows.append(
        [
            "single-point Rosenbrock (F2) value + gradient < 1.5 µs",
            fnum(pt, " µs") if pt is not None else "—",
            verdict(None if pt is None else pt < 1.5),
        ]
    )
    if builds is not None:
        for mode in st.build_modes:
            vals = []
            for case in st.cases:
                for kind in F5_KINDS if case == "F5" else ("vg",):
                    ms = builds.median(CACHED, case, kind, mode)
                    if ms is not None:
                        vals.append((f"{case}{'' if kind == 'vg' else ' ' + kind}", ms))
            worst = [v for _, v in vals]
            rows.append(
                [
                    f"warm-cache compile in a fresh process < 15 ms ({mode} process)",
                    "; ".join(f"{n} {fnum(v)}" for n, v in vals) + (" ms" if vals else "—"),
                    verdict(None if not worst else max(worst) < 15),
                ]
            )
    return ["## Targets (issue 3)", "", table(["target", "measured", "verdict"], rows), ""]


# ------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few points and repeats")
    p.add_argument(
        "--only",
        action="append",
        metavar="F2",
        help="run only these suite functions (repeat or comma-separate)",
    )
    p.add_argument("--tools", metavar="LIST", help=f"comma-separated subset of {','.join(ORDER)}")
    p.add_argument("--points", type=int, help="batch size for (b), (c)")
    p.add_argument("--repeats", type=int, help="repeats of each batch timing")
    p.add_argument("--timeout", type=float, help="seconds allowed to build one function")
    p.add_argument("--no-build", action="store_true", help="skip (a), the fresh-process builds")
    p.add_argument("--out", metavar="FILE", help="also write the report to FILE")
    st = Settings(p.parse_args(argv))

    os.environ.setdefault("SYMGRAD_CACHE_DIR", "off")  # this process: no kernels in the cache
    statuses = {}
    available = []
    for key in ORDER:
        tool = tools.TOOLS[key]()
        if not tool.available():
            statuses[key] = "not installed"
            continue
        statuses[key] = tool.version()
        if key in st.tools:
            available.append(key)
    log("tools:", ", ".join(available))

    builds = measure_builds(st, available) if st.builds else None
    bench = Bench(st, available, builds)
    for case in st.cases:
        if case in SCALAR:
            bench.run_batch(case)
            bench.run_point(case)
        else:
            bench.run_point(case, F5_KINDS)
            bench.run_batch(case)
        bench.run_sizes(case)
    text = report(st, statuses, builds, bench, os.getloadavg())
    print(text)
    if st.out:
        with open(st.out, "w") as fh:
            fh.write(text + "\n")
        log(f"written to {st.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
