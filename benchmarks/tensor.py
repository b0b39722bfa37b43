"""symgrad's compiled tensor gradients against hand-written numpy, JAX and PyTorch (issue 4).

    python -m benchmarks.tensor                                   # the full run (under 1 minute)
    python -m benchmarks.tensor --quick                           # a smoke run: few repeats
    python -m benchmarks.tensor --out benchmarks/RESULTS_tensor.md

Measures, all in one process on the same float64 data:
  (1) one SGD step of an MLP 64 -> 256 -> 256 -> 10 (ReLU hidden layers), softmax cross-entropy
      averaged over a batch of 128, learning rate 0.01: forward, loss, gradient and update,
      returning the loss and the 6 updated parameters; µs per step. symgrad's compile time of
      that step, split into graph build, build_grad and sg.compile: cold (the first compile of
      a fresh process, object cache off; median over fresh processes), warm (again in this
      process, cache still off) and with a hit in the disk cache; JAX's first call of its jitted
      step for comparison.
  (2) value and gradient with respect to the kernel and the input of
      mse(max_pool2d(conv2d(x, w, padding=1), 2), target), x 32x3x32x32, w 8x3x3x3; µs per call
      and ns per input element (time / x.size).
Every implementation's results are checked against the hand-written numpy ones before anything
is timed. Timings are medians of repeats taken round-robin over the implementations (so a noisy
spell hits all alike), each repeat a block of calls lasting about ``block_s``, warm-up calls
excluded; each is taken twice, with glibc's malloc thresholds pinned to a steady and to a fresh
process's state (see ``MALLOC``: in a fresh process numpy's step costs twice as much).
The report (markdown) goes to stdout and to ``--out``; progress goes to stderr.
"""

from __future__ import annotations

import os

# Before symgrad is imported: every build measured must really compile, not load cached object
# code (compile_times turns a cache on for its one measure of a cache hit).
os.environ["SYMGRAD_CACHE_DIR"] = "off"

import argparse
import contextlib
import ctypes
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import symgrad as sg
from benchmarks.run import ROOT, fnum, log, symgrad_commit, table

SIZES = (64, 256, 256, 10)  # MLP layer widths
BATCH = 128
LR = 0.01
CONV_X = (32, 3, 32, 32)  # N x C x H x W
CONV_W = (8, 3, 3, 3)  # O x C x kH x kW
PAD, POOL = 1, 2
RTOL, ATOL = 1e-9, 1e-12  # agreement of every implementation with hand-written numpy
WARMUP = 3  # untimed calls before each timing (after the agreement check's first call)
TARGETS = {"numpy/symgrad": 1.5, "symgrad/jax": 1.5, "cold build s": 0.5}  # issue 4

Step = Callable[[], tuple]  # one timed call: returns its results as a flat tuple

# glibc's malloc serves a block above its mmap threshold (128 kB at the start, raised the first
# time such a block is freed) straight from mmap, and returns heap memory to the system above
# its trim threshold. In a fresh process numpy's 256 kB temporaries are then page-faulted anew
# on every MLP step (3.3 ms instead of 1.5 on one BLAS thread), until something frees a big
# block: whichever tool ran first (torch does) decided the state the others were timed in.
# Both thresholds are pinned instead, and every timing runs in both states: "steady" (what a
# process that has freed a big array lives in) and "fresh" (glibc's initial thresholds).
MALLOC = {"fresh": (128 << 10, 128 << 10), "steady": (16 << 20, 64 << 20)}  # mmap, trim
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from <malloc.h>


class Settings:
    def __init__(self, args):
        self.quick = args.quick
        self.repeats = args.repeats or (3 if args.quick else 21)
        self.block_s = 0.02 if args.quick else 0.15
        self.compile_repeats = 1 if args.quick else 5
        self.out = args.out
        self.started = _dt.datetime.now().astimezone()
        self.load_start = os.getloadavg()
        self.commit = symgrad_commit()


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------------------
# data


def mlp_data(rng: np.random.Generator) -> list[np.ndarray]:
    """[X, Y, W1, b1, W2, b2, W3, b3]: He-initialised weights, small nonzero biases (so their
    gradients are checked too), one-hot labels."""
    x = rng.standard_normal((BATCH, SIZES[0]))
    y = np.eye(SIZES[-1])[rng.integers(0, SIZES[-1], BATCH)]
    params = []
    for fan_in, fan_out in zip(SIZES, SIZES[1:]):
        params += [
            rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in),
            0.1 * rng.standard_normal(fan_out),
        ]
    return [x, y, *params]


def conv_data(rng: np.random.Generator) -> list[np.ndarray]:
    """[x, w, target]; the target has the pooled output's shape."""
    n, _, h, w = CONV_X
    target = rng.standard_normal((n, CONV_W[0], h // POOL, w // POOL))
    return [rng.standard_normal(CONV_X), 0.2 * rng.standard_normal(CONV_W), target]


def mlp_logits(x, params, relu):
    """The model, written once for every tool that has ``@``: affine layers, ReLU between."""
    h = x
    layers = len(params) // 2
    for k in range(layers):
        h = h @ params[2 * k] + params[2 * k + 1]
        if k < layers - 1:
            h = relu(h)
    return h


# ------------------------------------------------------------------------------------------
# symgrad


def symgrad_mlp() -> tuple[sg.CompiledFunction, dict[str, float]]:
    """The compiled training step and the seconds spent in each phase of building it."""
    t0 = time.perf_counter()
    g = sg.Graph()
    x, y = g.input("X", (BATCH, SIZES[0])), g.input("Y", (BATCH, SIZES[-1]))
    params = []
    for k, (fan_in, fan_out) in enumerate(zip(SIZES, SIZES[1:]), 1):
        params += [g.input(f"W{k}", (fan_in, fan_out)), g.input(f"b{k}", (fan_out,))]
    loss = sg.softmax_cross_entropy(mlp_logits(x, params, sg.relu), y)
    t1 = time.perf_counter()
    grads = sg.build_grad(loss, params)
    updated = [p - LR * d for p, d in zip(params, grads)]
    t2 = time.perf_counter()
    fn = sg.compile([loss, *updated], inputs=[x, y, *params])
    t3 = time.perf_counter()
    return fn, {"graph": t1 - t0, "build_grad": t2 - t1, "compile": t3 - t2, "total": t3 - t0}


def symgrad_conv() -> tuple[sg.CompiledFunction, dict[str, float]]:
    """Compiled (loss, d loss / d w, d loss / d x) of the conv + pool model, and its build time."""
    t0 = time.perf_counter()
    g = sg.Graph()
    x, w = g.input("x", CONV_X), g.input("w", CONV_W)
    n, _, h, wd = CONV_X
    target = g.input("target", (n, CONV_W[0], h // POOL, wd // POOL))
    pooled = sg.max_pool2d(sg.conv2d(x, w, stride=1, padding=PAD), POOL)
    loss = sg.mse(pooled, target)
    gw, gx = sg.build_grad(loss, [w, x])
    fn = sg.compile([loss, gw, gx], inputs=[x, w, target])
    return fn, {"total": time.perf_counter() - t0}


def compile_times(st: Settings) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Phase times of the MLP step's build: cold, warm, and with a disk-cache hit (medians),
    and the cold samples' totals.

    Cold is the first compile of a process, so each cold sample is a fresh process (one sample
    alone is too noisy to judge a target by: it once read 0.79 s where most read 0.1 s)."""
    cold = [cold_sample() for _ in range(st.compile_repeats)]
    symgrad_mlp()  # this process's own first compile: a warm-up, not a sample
    warm = [symgrad_mlp()[1] for _ in range(st.compile_repeats)]
    with tempfile.TemporaryDirectory() as folder:
        os.environ["SYMGRAD_CACHE_DIR"] = folder
        try:
            symgrad_mlp()  # fills the cache
            hit = [symgrad_mlp()[1] for _ in range(st.compile_repeats)]
        finally:
            os.environ["SYMGRAD_CACHE_DIR"] = "off"
    modes = {
        "cold": median_phases(cold),
        "warm": median_phases(warm),
        "cache hit": median_phases(hit),
    }
    return modes, [r["total"] for r in cold]


def cold_sample() -> dict[str, float]:
    """Phase times of the MLP build in a fresh process (``--cold-build``), cache off."""
    env = dict(os.environ, SYMGRAD_CACHE_DIR="off")
    cmd = [sys.executable, "-m", "benchmarks.tensor", "--cold-build"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def symgrad_step(fn: sg.CompiledFunction, data: list[np.ndarray]) -> Step:
    return lambda: fn(*data)


# ------------------------------------------------------------------------------------------
# numpy, written by hand as a user would


def numpy_mlp_step(x, y, w1, b1, w2, b2, w3, b3) -> tuple:
    z1 = x @ w1 + b1
    a1 = np.maximum(z1, 0.0)
    z2 = a1 @ w2 + b2
    a2 = np.maximum(z2, 0.0)
    z3 = a2 @ w3 + b3
    m = z3.max(axis=1, keepdims=True)  # stable softmax: shift by the row max
    e = np.exp(z3 - m)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) + m[:, 0] - (y * z3).sum(axis=1))
    d3 = (e / s - y) / x.shape[0]
    gw3, gb3 = a2.T @ d3, d3.sum(0)
    d2 = (d3 @ w3.T) * (z2 > 0)
    gw2, gb2 = a1.T @ d2, d2.sum(0)
    d1 = (d2 @ w2.T) * (z1 > 0)
    gw1, gb1 = x.T @ d1, d1.sum(0)
    grads = (gw1, gb1, gw2, gb2, gw3, gb3)
    return (loss, *(p - LR * d for p, d in zip((w1, b1, w2, b2, w3, b3), grads)))


def numpy_conv_grad(x, w, target) -> tuple:
    """(loss, d loss / d w, d loss / d x): im2col by a window view, einsum, and the backward
    pass written out (max-pool mask, kernel gradient by einsum, input gradient by col2im)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))  # n c h w kh kw, no copy
    y = np.einsum("nchwij,ocij->nohw", windows, w, optimize=True)
    blocks = y.reshape(n, o, h // POOL, POOL, wd // POOL, POOL)
    pooled = blocks.max(axis=(3, 5))
    diff = pooled - target
    loss = np.mean(diff * diff)
    dpooled = (2.0 / diff.size) * diff
    hit = blocks == pooled[:, :, :, None, :, None]  # random data: no ties
    dy = (hit * dpooled[:, :, :, None, :, None]).reshape(n, o, h, wd)
    gw = np.einsum("nohw,nchwij->ocij", dy, windows, optimize=True)
    cols = np.tensordot(dy, w, axes=((1,), (0,)))  # n h w c kh kw
    gxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            gxp[:, :, i : i + h, j : j + wd] += cols[..., i, j].transpose(0, 3, 1, 2)
    return loss, gw, gxp[:, :, PAD : PAD + h, PAD : PAD + wd]


# ------------------------------------------------------------------------------------------
# JAX and PyTorch, each the way its documentation suggests


def jax_module():
    import jax

    jax.config.update("jax_enable_x64", True)  # float64, as everyone else
    return jax


def jax_mlp_step(data: list[np.ndarray]) -> Step:
    jax = jax_module()
    import jax.numpy as jnp

    def loss(params, x, y):
        z = mlp_logits(x, params, jax.nn.relu)
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(z, axis=-1), axis=-1))

    @jax.jit
    def step(x, y, *params):
        value, grads = jax.value_and_grad(loss)(list(params), x, y)
        return (value, *(p - LR * d for p, d in zip(params, grads)))

    args = [jax.device_put(a) for a in data]
    return lambda: jax.block_until_ready(step(*args))


def jax_conv_grad(data: list[np.ndarray]) -> Step:
    jax = jax_module()
    import jax.numpy as jnp
    from jax import lax

    def loss(w, x, target):
        y = lax.conv_general_dilated(
            x, w, (1, 1), ((PAD, PAD), (PAD, PAD)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        window = (1, 1, POOL, POOL)
        pooled = lax.reduce_window(y, -jnp.inf, lax.max, window, window, "VALID")
        return jnp.mean((pooled - target) ** 2)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    x, w, target = (jax.device_put(a) for a in data)

    def call():
        value, (gw, gx) = jax.block_until_ready(grad(w, x, target))
        return value, gw, gx

    return call


def torch_mlp_step(data: list[np.ndarray]) -> Step:
    import torch

    x, y, *params = (torch.from_numpy(a) for a in data)  # float64, shares memory
    params = [p.clone().requires_grad_(True) for p in params]

    def step():
        z = mlp_logits(x, params, torch.relu)
        loss = -(y * torch.log_softmax(z, dim=-1)).sum(dim=-1).mean()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():  # manual SGD; out of place so every call starts from the same point
            return (loss.detach(), *(p - LR * d for p, d in zip(params, grads)))

    return step


# ------------------------------------------------------------------------------------------
# checking and timing


def check(name: str, got: tuple, ref: tuple) -> None:
    """Raise AssertionError unless ``got`` matches the numpy reference item by item."""
    assert len(got) == len(ref), f"{name}: {len(got)} results, numpy has {len(ref)}"
    for k, (a, b) in enumerate(zip(got, ref)):
        np.testing.assert_allclose(
            np.asarray(a), b, rtol=RTOL, atol=ATOL, err_msg=f"{name}, result {k}"
        )


def time_block(fn: Step, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def calls_per_block(fn: Step, block_s: float) -> int:
    """Warm up ``fn`` (WARMUP calls), then size a block of calls to last about ``block_s``."""
    time_block(fn, WARMUP)
    return max(1, round(block_s / time_block(fn, WARMUP)))


def interleaved(steps: dict[str, Step], st: Settings) -> dict[str, float]:
    """Median seconds per call of each step, blocks taken round-robin over the steps."""
    calls = {k: calls_per_block(fn, st.block_s) for k, fn in steps.items()}
    samples: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(st.repeats):
        # Each round starts one step later: no step always follows the same one (torch's and
        # JAX's worker threads spin for a while after a call, against whatever runs next).
        for k in names[r % len(names) :] + names[: r % len(names)]:
            samples[k].append(time_block(steps[k], calls[k]))
    return {k: statistics.median(v) for k, v in samples.items()}


def mallopt():
    """glibc's ``mallopt``, or None (another C library)."""
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None


def set_malloc(mode: str) -> bool:
    """Pin glibc's malloc thresholds to ``MALLOC[mode]``; False where there is no mallopt."""
    set_option = mallopt()
    if set_option is None:
        return False
    mmap, trim = MALLOC[mode]
    return set_option(M_MMAP_THRESHOLD, mmap) == 1 and set_option(M_TRIM_THRESHOLD, trim) == 1


def timed(steps: dict[str, Step], st: Settings) -> dict[str, dict[str, float]]:
    """``interleaved`` in each malloc state: {mode: {step: seconds}}; steady last, so the rest
    of the process runs in it. Without mallopt, one timing, filed as steady (unpinned)."""
    out = {}
    for mode in MALLOC:
        if not set_malloc(mode):
            return {"steady": interleaved(steps, st)}
        out[mode] = interleaved(steps, st)
    return out


def prepare(makers: dict[str, Callable[[], Step]], ref: tuple) -> tuple[dict, dict]:
    """Build each available step, time its first call (JAX compiles there), check its results.

    Returns (steps, first-call seconds); a tool that is not installed is left out."""
    steps, first = {}, {}
    for name, make in makers.items():
        if make is None:
            continue
        step = make()
        t = time.perf_counter()
        got = step()
        first[name] = time.perf_counter() - t
        check(name, got, ref)
        steps[name] = step
        log(f"  {name}: agrees with numpy (first call {first[name] * 1e3:.0f} ms)")
    return steps, first


# ------------------------------------------------------------------------------------------
# the two benchmarks


def run_mlp(st: Settings) -> dict:
    log("MLP step: compile times (cold first)")
    compiled, cold_totals = compile_times(st)
    data = mlp_data(np.random.default_rng(0))
    ref = numpy_mlp_step(*data)
    fn = symgrad_mlp()[0]
    makers = {
        "symgrad": lambda: symgrad_step(fn, data),
        "numpy": lambda: lambda: numpy_mlp_step(*data),
        "jax": (lambda: jax_mlp_step(data)) if installed("jax") else None,
        "torch": (lambda: torch_mlp_step(data)) if installed("torch") else None,
    }
    log("MLP step: checking agreement")
    steps, first = prepare(makers, ref)
    log("MLP step: timing")
    times = timed(steps, st)
    return {"times": times, "first": first, "compile": compiled, "cold_totals": cold_totals}


def run_conv(st: Settings) -> dict:
    log("conv + pool gradient: compiling")
    fn, built = symgrad_conv()
    data = conv_data(np.random.default_rng(1))
    ref = numpy_conv_grad(*data)
    makers = {
        "symgrad": lambda: symgrad_step(fn, data),
        "numpy": lambda: lambda: numpy_conv_grad(*data),
        "jax": (lambda: jax_conv_grad(data)) if installed("jax") else None,
    }
    log("conv + pool gradient: checking agreement")
    steps, first = prepare(makers, ref)
    log("conv + pool gradient: timing")
    return {"times": timed(steps, st), "first": first, "compile": built["total"]}


# ------------------------------------------------------------------------------------------
# report

LABELS = {
    "symgrad": "symgrad (sg.compile)",
    "numpy": "numpy, hand-written backprop",
    "jax": "JAX jit(value_and_grad)",
    "torch": "PyTorch CPU autograd",
}


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def environment(st: Settings) -> str:
    load = " / ".join(f"{x:.2f}" for x in st.load_start)
    end = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    minutes = (_dt.datetime.now().astimezone() - st.started).total_seconds() / 60
    tools = ", ".join(f"{d} {version(d)}" for d in ("llvmlite", "jax", "jaxlib", "torch"))
    threads = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS_", "OMP_", "XLA_"))}
    lines = [
        f"- date: {st.started.strftime('%Y-%m-%d %H:%M %Z')}, run took {minutes:.1f} min; "
        f"load average {load} at the start, {end} at the end",
        f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, {tools}; "
        f"symgrad at commit {st.commit}",
        f"- settings: medians of {st.repeats} interleaved repeats of ~{st.block_s * 1e3:.0f} ms "
        f"blocks after {WARMUP} warm-up calls; compile times median of {st.compile_repeats}"
        + ("; --quick" if st.quick else ""),
        "- malloc: "
        + ("thresholds pinned with mallopt, steady and fresh" if mallopt() else "not pinned"),
    ]
    if threads:
        lines.append("- environment: " + ", ".join(f"{k}={v}" for k, v in sorted(threads.items())))
    return "\n".join(lines)


def ratio(times: dict[str, float], a: str, b: str) -> float | None:
    return times[a] / times[b] if a in times and b in times else None


def speed_rows(timed: dict[str, dict[str, float]], cells, names=LABELS) -> list[list[str]]:
    """One row per implementation: ``cells(seconds)`` and the ratio to symgrad, per malloc
    state (steady first)."""
    rows = []
    for name in names:
        row = [LABELS[name]]
        for mode in ("steady", "fresh"):
            times = timed.get(mode, {})
            if name in times:
                row += [*cells(times[name]), fnum(ratio(times, name, "symgrad"))]
            else:
                row += ["not installed" if mode == "steady" else "—"] + ["—"] * len(cells(1.0))
        rows.append(row)
    return rows


MALLOC_NOTE = (
    "Steady: malloc's thresholds pinned where a process that has freed a big array has them; "
    "fresh: pinned at glibc's initial ones (temporaries over 128 kB mmapped and page-faulted "
    "on every call; see `MALLOC` in benchmarks/tensor.py)."
)


def mlp_section(mlp: dict) -> list[str]:
    layers = "→".join(map(str, SIZES))
    header = ["implementation", "µs per step", "time ÷ symgrad", "fresh malloc: µs", "÷ symgrad"]
    rows = speed_rows(mlp["times"], lambda s: [fnum(s * 1e6)])
    return [
        f"## 1. MLP training step ({layers}, ReLU, softmax cross-entropy, batch {BATCH}, "
        f"SGD lr {LR})",
        "",
        "Forward, loss, gradient and update; returns the loss and the 6 updated parameters. "
        + MALLOC_NOTE,
        "",
        table(header, rows),
        "",
    ]


def compile_section(mlp: dict, conv: dict) -> list[str]:
    header = ["symgrad build of the MLP step", "cold", "warm", "disk-cache hit"]
    phases = {
        "graph (forward + loss)": "graph",
        "build_grad (+ update nodes)": "build_grad",
        "sg.compile": "compile",
        "**total**": "total",
    }
    c = mlp["compile"]
    rows = [[label] + [fnum(c[m][k] * 1e3, " ms") for m in c] for label, k in phases.items()]
    first = mlp["first"].get("jax")
    return [
        "### Compile time",
        "",
        "Cold: the first symgrad compile of a fresh process, object cache off "
        "(SYMGRAD_CACHE_DIR=off before the import), median over fresh processes; warm: the same "
        "build again in one process, cache still off; disk-cache hit: object code loaded from a "
        "warm cache. Imports (symgrad, llvmlite) are not included in any.",
        "",
        table(header, rows),
        "",
        "Cold totals of the fresh processes: "
        + ", ".join(fnum(s * 1e3, " ms") for s in mlp["cold_totals"])
        + ".",
        "",
        f"JAX's first call of its jitted step (trace + XLA compile + run): "
        f"{fnum(first * 1e3, ' ms') if first else 'not installed'}. symgrad's build of the conv + "
        f"pool gradient of section 2 (warm): {fnum(conv['compile'] * 1e3, ' ms')}.",
        "",
    ]


def conv_section(conv: dict) -> list[str]:
    points = int(np.prod(CONV_X))
    header = ["implementation", "µs per call", "ns per input point", "time ÷ symgrad"]
    header += ["fresh malloc: ns per input point", "÷ symgrad"]
    cells = lambda s: [fnum(s * 1e6), fnum(s * 1e9 / points)]
    rows = speed_rows(conv["times"], cells, names=("symgrad", "numpy", "jax"))
    rows = [r[:4] + r[5:] for r in rows]  # fresh malloc: ns per point only
    x, w = "×".join(map(str, CONV_X)), "×".join(map(str, CONV_W))
    return [
        "## 2. Convolution + pooling gradient",
        "",
        f"`mse(max_pool2d(conv2d(x, w, stride=1, padding={PAD}), {POOL}), target)`, x {x}, "
        f"w {w}: the loss and its gradient with respect to w and x. ns per input point = "
        f"time / {points:,} (the elements of x). Malloc states as in section 1.",
        "",
        table(header, rows),
        "",
    ]


def verdict(value: float | None, at_least: float = -np.inf, at_most: float = np.inf) -> str:
    if value is None:
        return "—"
    return "met" if at_least <= value <= at_most else "missed"


def targets_section(mlp: dict) -> list[str]:
    t = mlp["times"]["steady"]
    fresh = mlp["times"].get("fresh", {})
    speedup = ratio(t, "numpy", "symgrad")
    vs_jax = ratio(t, "symgrad", "jax")
    cold = mlp["compile"]["cold"]["total"]
    also = f" ({fnum(ratio(fresh, 'numpy', 'symgrad'))} with fresh malloc)" if fresh else ""
    low, high, limit = TARGETS["numpy/symgrad"], TARGETS["symgrad/jax"], TARGETS["cold build s"]
    rows = [
        [
            f"MLP step: numpy ÷ symgrad ≥ {low}",
            fnum(speedup) + also,
            verdict(speedup, at_least=low),
        ],
        [f"MLP step: symgrad ÷ JAX ≤ {high}", fnum(vs_jax), verdict(vs_jax, at_most=high)],
        [f"MLP build, cold, < {limit} s", fnum(cold, " s"), verdict(cold, at_most=limit)],
    ]
    return [
        "## Targets (issue 4)",
        "",
        "Judged in the steady malloc state (section 1 says why there are two).",
        "",
        table(["target", "measured", "verdict"], rows),
        "",
    ]


def report(st: Settings, mlp: dict, conv: dict) -> str:
    out = ["# symgrad tensor benchmarks", "", environment(st), ""]
    out += targets_section(mlp) + mlp_section(mlp) + compile_section(mlp, conv)
    out += conv_section(conv)
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few, short repeats")
    p.add_argument("--repeats", type=int, help="interleaved repeats of each timing")
    p.add_argument("--out", metavar="FILE", help="also write the report to FILE")
    p.add_argument("--cold-build", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.cold_build:  # one cold sample for compile_times, in this fresh process
        print(json.dumps(symgrad_mlp()[1]))
        return 0
    st = Settings(args)
    mlp = run_mlp(st)
    conv = run_conv(st)
    text = report(st, mlp, conv)
    print(text)
    if st.out:
        with open(st.out, "w") as fh:
            fh.write(text + "\n")
        log(f"written to {st.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
