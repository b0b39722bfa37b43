"""Loops (issue 12): ``sg.scan`` against ``jax.lax.scan``, in one process on the same data.

    python -m benchmarks.loops                               # the full run (about 2 minutes)
    python -m benchmarks.loops --quick                       # a smoke run: fewer steps, repeats
    python -m benchmarks.loops --out benchmarks/RESULTS_loops.md

Measures (float64 everywhere; every result checked against the other tool's before timing):
  (1) ADBench's LSTM of the shape of ``lstm_l2_c1024``: 2 layers, hidden and alphabet size 14,
      a sequence of 1,024 characters (1,023 steps), random data of those shapes. Build (graph,
      scan, build_grad) + compile time with the object cache off, and value + gradient time
      per call, against ``jax.jit(jax.value_and_grad(f))`` over ``lax.scan`` (its compile is
      ``.lower().compile()``).
  (2) An RK4 integration of Lotka-Volterra (2 states, 4 parameters, dt = 1e-3, 10,000 steps):
      value and gradient of a final-state loss with respect to the parameters and the initial
      state, against JAX and against central differences of symgrad's own value.
  (3) Peak memory (tracemalloc: the kernel's scratch and outputs, all numpy allocations) of
      one value + gradient call of (2) for checkpoint "store", "recompute" and k = 100.
Timings are medians of blocks of calls (each about ``block_s``) taken round-robin over the
tools, warm-up calls excluded. The report (markdown) goes to stdout and to ``--out``.
"""

from __future__ import annotations

import os

os.environ["SYMGRAD_CACHE_DIR"] = "off"  # every build measured really compiles

import argparse
import statistics
import sys
import time
import tracemalloc

import numpy as np

import symgrad as sg
from benchmarks.common import report

LAYERS, WIDTH, CHARS = 2, 14, 1024
RK4_STEPS, DT = 10_000, 1e-3


# --- (1) the LSTM -------------------------------------------------------------------------------


def lstm_data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "main": rng.normal(size=(2 * LAYERS, 4 * WIDTH)) * 0.5,
        "extra": rng.normal(size=(3, WIDTH)) * 0.5,
        "state": rng.normal(size=(2 * LAYERS, WIDTH)) * 0.5,
        "seq": rng.normal(size=(CHARS, WIDTH)),
    }


def _cell(weight, bias, h, c, x, tanh, sigmoid):
    # ADBench's lstm_model: the gates of (x, h, x, h) * weight + bias, block by block.
    b = WIDTH
    forget = sigmoid(x * weight[0:b] + bias[0:b])
    ingate = sigmoid(h * weight[b : 2 * b] + bias[b : 2 * b])
    outgate = sigmoid(x * weight[2 * b : 3 * b] + bias[2 * b : 3 * b])
    change = tanh(h * weight[3 * b :] + bias[3 * b :])
    c = c * forget + ingate * change
    return outgate * tanh(c), c


def symgrad_lstm(checkpoint="store"):
    """The LSTM objective and its gradient (main and extra parameters), compiled."""
    g = sg.Graph()
    w, w2 = g.input("main", (2 * LAYERS, 4 * WIDTH)), g.input("extra", (3, WIDTH))
    state, seq = g.input("state", (2 * LAYERS, WIDTH)), g.input("seq", (CHARS, WIDTH))

    def step(carry, pair):
        x, gold = pair
        hs, x2 = list(carry), x * w2[0]
        for k in range(LAYERS):
            hs[2 * k], hs[2 * k + 1] = _cell(w[2 * k], w[2 * k + 1], hs[2 * k], hs[2 * k + 1],
                                             x2, sg.tanh, sg.sigmoid)  # fmt: skip
            x2 = hs[2 * k]
        y = x2 * w2[1] + w2[2]
        return tuple(hs), sg.sum(gold * (y - sg.logsumexp(y)))

    init = tuple(state[k] for k in range(2 * LAYERS))
    pairs = (seq[0 : CHARS - 1], seq[1:CHARS])
    _, ys = sg.scan(step, init, xs=pairs, checkpoint=checkpoint)
    loss = -sg.sum(ys) / ((CHARS - 1) * WIDTH)
    return sg.compile([loss, *sg.build_grad(loss, [w, w2])])


def jax_lstm():
    import jax
    import jax.numpy as jnp

    def objective(w, w2, s, seq):
        def step(carry, pair):
            x, gold = pair
            hs, x2 = list(carry), x * w2[0]
            for k in range(LAYERS):
                h, c = hs[2 * k], hs[2 * k + 1]
                hs[2 * k], hs[2 * k + 1] = _cell(w[2 * k], w[2 * k + 1], h, c, x2, jnp.tanh,
                                                 jax.nn.sigmoid)  # fmt: skip
                x2 = hs[2 * k]
            y = x2 * w2[1] + w2[2]
            return tuple(hs), jnp.sum(gold * (y - jax.scipy.special.logsumexp(y)))

        _, ys = jax.lax.scan(step, tuple(s), (seq[:-1], seq[1:]))
        return -jnp.sum(ys) / ((CHARS - 1) * WIDTH)

    data = lstm_data()
    args = [data[k] for k in ("main", "extra", "state", "seq")]
    compiled = jax.jit(jax.value_and_grad(objective, argnums=(0, 1))).lower(*args).compile()
    return lambda: _block(compiled(*args))


# --- (2) RK4 over Lotka-Volterra ---------------------------------------------------------------


def _rhs(state, p):
    x, y = state
    alpha, beta, delta, gamma = p
    return alpha * x - beta * x * y, delta * x * y - gamma * y


def _rk4(state, p):
    def axpy(a, s, k):
        return tuple(si + a * ki for si, ki in zip(s, k))

    k1 = _rhs(state, p)
    k2 = _rhs(axpy(DT / 2, state, k1), p)
    k3 = _rhs(axpy(DT / 2, state, k2), p)
    k4 = _rhs(axpy(DT, state, k3), p)
    return tuple(
        s + DT / 6 * (a + 2 * b + 2 * c + d) for s, a, b, c, d in zip(state, k1, k2, k3, k4)
    )


RK4_POINT = {"alpha": 1.1, "beta": 0.4, "delta": 0.1, "gamma": 0.4, "x0": 10.0, "y0": 5.0}


def symgrad_rk4(steps=RK4_STEPS, checkpoint="store", backend="llvm"):
    g = sg.Graph()
    names = list(RK4_POINT)
    inputs = [g.input(n) for n in names]
    p, (x0, y0) = inputs[:4], inputs[4:]
    (x, y), _ = sg.scan(lambda s, _: (_rk4(s, p), None), (x0, y0), length=steps,
                        checkpoint=checkpoint)  # fmt: skip
    loss = (x - 1.0) ** 2 + (y - 1.0) ** 2
    return sg.compile([loss, *sg.build_grad(loss, inputs)], backend=backend)


def jax_rk4(steps=RK4_STEPS):
    import jax
    import jax.numpy as jnp

    def loss(v):
        p, s = (v[0], v[1], v[2], v[3]), (v[4], v[5])
        (x, y), _ = jax.lax.scan(lambda s, _: (_rk4(s, p), None), s, None, length=steps)
        return (x - 1.0) ** 2 + (y - 1.0) ** 2

    v = jnp.array(list(RK4_POINT.values()))
    compiled = jax.jit(jax.value_and_grad(loss)).lower(v).compile()
    return lambda: _block(compiled(v))


# --- timing --------------------------------------------------------------------------------------


def _block(out):
    import jax

    return jax.block_until_ready(out)


def timed(calls: dict, block_s: float, repeats: int) -> dict[str, float]:
    """Median seconds per call of each callable, blocks taken round-robin."""
    per = {}
    for name, f in calls.items():
        f()
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < block_s / 4:
            f()
            n += 1
        per[name] = max(1, int(n * 4))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, f in calls.items():
            start = time.perf_counter()
            for _ in range(per[name]):
                f()
            samples[name].append((time.perf_counter() - start) / per[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_bytes(f) -> int:
    tracemalloc.start()
    try:
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def lstm_section(block_s, repeats) -> list[str]:
    data = lstm_data()
    start = time.perf_counter()
    fn = symgrad_lstm()
    build = time.perf_counter() - start
    start = time.perf_counter()
    jx = jax_lstm()
    jax_build = time.perf_counter() - start
    ours, theirs = fn(**data), jx()
    for a, b in zip(ours, [theirs[0], *theirs[1]]):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
    t = timed({"symgrad": lambda: fn(**data), "jax": jx}, block_s, repeats)
    _progress(f"lstm: {t}")
    return [
        "## LSTM, ADBench lstm_l2_c1024 shape (2 layers, width 14, 1,023 steps)",
        "",
        "| | build + compile | value + gradient per call |",
        "|---|---:|---:|",
        f"| symgrad (scan, store) | {build:.2f} s | {t['symgrad'] * 1e3:.2f} ms |",
        f"| JAX (lax.scan, jit) | {jax_build:.2f} s | {t['jax'] * 1e3:.2f} ms |",
        f"| ratio JAX / symgrad | {jax_build / build:.1f}x | {t['jax'] / t['symgrad']:.1f}x |",
        "",
        f"Loss {float(ours[0]):.12f}; gradients equal JAX's to 1e-11 (relative).",
    ]


def rk4_section(steps, block_s, repeats) -> list[str]:
    start = time.perf_counter()
    fn = symgrad_rk4(steps)
    build = time.perf_counter() - start
    start = time.perf_counter()
    jx = jax_rk4(steps)
    jax_build = time.perf_counter() - start
    ours, theirs = fn(**RK4_POINT), jx()
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-11)
    np.testing.assert_allclose(ours[1:], theirs[1], rtol=1e-9)
    diffs = _central_differences(fn)
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours[1:], diffs))
    t = timed({"symgrad": lambda: fn(**RK4_POINT), "jax": jx}, block_s, repeats)
    _progress(f"rk4: {t}")
    return [
        f"## RK4, Lotka-Volterra, {steps:,} steps: value + gradient (6 inputs)",
        "",
        "| | build + compile | value + gradient per call |",
        "|---|---:|---:|",
        f"| symgrad (scan, store) | {build:.2f} s | {t['symgrad'] * 1e3:.3f} ms |",
        f"| JAX (lax.scan, jit) | {jax_build:.2f} s | {t['jax'] * 1e3:.3f} ms |",
        f"| ratio JAX / symgrad | {jax_build / build:.1f}x | {t['jax'] / t['symgrad']:.1f}x |",
        "",
        f"Gradient against central differences of symgrad's value: worst relative gap {worst:.1e}.",
    ]


def _central_differences(fn) -> list[float]:
    out = []
    for name, v in RK4_POINT.items():
        h = 1e-6 * max(1.0, abs(v))
        up = float(fn(**{**RK4_POINT, name: v + h})[0])
        down = float(fn(**{**RK4_POINT, name: v - h})[0])
        out.append((up - down) / (2 * h))
    return out


def memory_section(steps) -> list[str]:
    rows, peaks, times = [], {}, {}
    for checkpoint in ("store", "recompute", 100):
        fn = symgrad_rk4(steps, checkpoint)
        peaks[checkpoint] = peak_bytes(lambda fn=fn: fn(**RK4_POINT))
        times[checkpoint] = timed({"f": lambda fn=fn: fn(**RK4_POINT)}, 0.2, 3)["f"]
        rows.append(f"| {checkpoint} | {peaks[checkpoint] / 1024:,.0f} KiB | "
                    f"{times[checkpoint] * 1e3:.3f} ms |")  # fmt: skip
    _progress(f"memory: {peaks}")
    ratio = peaks["recompute"] / peaks["store"]
    return [
        f"## Peak memory of one value + gradient call, RK4 {steps:,} steps",
        "",
        "| checkpoint | peak (tracemalloc) | time per call |",
        "|---|---:|---:|",
        *rows,
        "",
        f"recompute / store: {ratio:.3f}; every 100th carry / store: "
        f"{peaks[100] / peaks['store']:.3f}.",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    block_s, repeats = (0.05, 3) if args.quick else (0.3, 7)
    steps = 1000 if args.quick else RK4_STEPS
    lines = ["# Loops: sg.scan against jax.lax.scan", "",
             f"jax {jax.__version__}, {os.cpu_count()} cores.", ""]  # fmt: skip
    lines += lstm_section(block_s, repeats) + [""]
    lines += rk4_section(steps, block_s, repeats) + [""]
    lines += memory_section(steps)
    report(lines, args.out)


if __name__ == "__main__":
    main()
