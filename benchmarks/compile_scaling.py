"""Compile time against graph size (issue 12 item 4): doubling series, one stage at a time.

    python -m benchmarks.compile_scaling                 # both series (a few minutes)
    python -m benchmarks.compile_scaling --quick         # the two smallest sizes of each
    python -m benchmarks.compile_scaling --out benchmarks/RESULTS_compile_scaling.md

Two families, each at doubling sizes:
  (1) a straight-line scalar function of many arguments, value and gradient with respect to
      every argument: y_k = tanh(y_{k-1} * w_k + x_k), f = sum_k sin(y_k) * x_k, built with
      the Python API; sized by the nodes of the optimized value + gradient (~12k to ~100k);
  (2) an unrolled recurrence: ADBench's LSTM cell (2 layers, width 14) written step by step
      with no scan, its objective's gradient with respect to the weights, at 16 to 256 steps.
Each row: the nodes of the optimized value + gradient, the time of building the function,
``sg.build_grad``, ``sg.optimize``, ``sg.compile`` of the optimized outputs with the object
cache off (cold: lowering, planning, LLVM), and with a warm cache (the same compile again after
one that filled a fresh cache folder); ``x`` is the ratio to the row above (a doubling). Each
time is the best of ``--repeats`` runs, every run in this process on fresh graphs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import symgrad as sg
from benchmarks.common import report

STRAIGHT_NODES = (12_500, 25_000, 50_000, 100_000)
NODES_PER_TERM = 17  # of the optimized value + gradient, per term of the straight line
LSTM_STEPS = (16, 32, 64, 128, 256)
LAYERS, WIDTH = 2, 14


def straight_line(terms: int):
    """The straight-line function of ``terms`` terms, and its arguments."""
    g = sg.Graph()
    y, total = g.input("y0"), None
    for k in range(terms):
        w, x = g.input(f"w{k}"), g.input(f"x{k}")
        y = sg.tanh(y * w + x)
        term = sg.sin(y) * x
        total = term if total is None else total + term
    return total, list(g.inputs.values())


def _cell(weight, bias, h, c, x):
    b = WIDTH
    forget = sg.sigmoid(x * weight[0:b] + bias[0:b])
    ingate = sg.sigmoid(h * weight[b : 2 * b] + bias[b : 2 * b])
    outgate = sg.sigmoid(x * weight[2 * b : 3 * b] + bias[2 * b : 3 * b])
    change = sg.tanh(h * weight[3 * b :] + bias[3 * b :])
    c = c * forget + ingate * change
    return outgate * sg.tanh(c), c


def unrolled_lstm(steps: int):
    """ADBench's LSTM objective over ``steps`` steps, unrolled, and its weights."""
    g = sg.Graph()
    w, w2 = g.input("main", (2 * LAYERS, 4 * WIDTH)), g.input("extra", (3, WIDTH))
    state, seq = g.input("state", (2 * LAYERS, WIDTH)), g.input("seq", (steps + 1, WIDTH))
    hs, total = [state[k] for k in range(2 * LAYERS)], None
    for t in range(steps):
        x = seq[t] * w2[0]
        for k in range(LAYERS):
            hs[2 * k], hs[2 * k + 1] = _cell(w[2 * k], w[2 * k + 1], hs[2 * k], hs[2 * k + 1], x)
            x = hs[2 * k]
        y = x * w2[1] + w2[2]
        term = sg.sum(seq[t + 1] * (y - sg.logsumexp(y)))
        total = term if total is None else total + term
    return total, [w, w2]


def _compile(outputs, cache_dir: str) -> float:
    os.environ["SYMGRAD_CACHE_DIR"] = cache_dir
    start = time.perf_counter()
    sg.compile(outputs, optimize=False)
    return time.perf_counter() - start


def measure(build, size) -> dict:
    """One run at ``size``: the stages' seconds and the optimized size."""
    start = time.perf_counter()
    f, wrt = build(size)
    built = time.perf_counter()
    grads = sg.build_grad(f, wrt)
    graded = time.perf_counter()
    scalar = not any(e.shape for e in wrt)  # a gradient vector, or one array per weight
    outputs = sg.optimize([f, grads] if scalar else [f, *grads])
    optimized = time.perf_counter()
    cold = _compile(outputs, "off")
    with tempfile.TemporaryDirectory() as folder:
        _compile(outputs, os.path.join(folder, "cache"))  # fills the cache
        warm = _compile(outputs, os.path.join(folder, "cache"))
    return {
        "nodes": outputs[0].graph.nx.number_of_nodes(),
        "build": built - start,
        "build_grad": graded - built,
        "optimize": optimized - graded,
        "cold": cold,
        "warm": warm,
    }


STAGES = ("build", "build_grad", "optimize", "cold", "warm")


def series(title: str, unit: str, build, sizes, repeats: int) -> list[str]:
    lines = [f"## {title}", "",
             f"| {unit} | nodes | " + " | ".join(f"{s} s | x" for s in STAGES)
             + " | grad + opt + cold s |",
             "|---|---|" + "---|---|" * len(STAGES) + "---|"]  # fmt: skip
    previous = None
    for size in sizes:
        runs = [measure(build, size) for _ in range(repeats)]
        row = {key: min(run[key] for run in runs) for key in STAGES}
        row["nodes"] = runs[0]["nodes"]
        cells = [str(size), f"{row['nodes']:,}"]
        for key in STAGES:
            ratio = f"{row[key] / previous[key]:.2f}" if previous and previous[key] else ""
            cells += [f"{row[key]:.3f}", ratio]
        cells.append(f"{row['build_grad'] + row['optimize'] + row['cold']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
        previous = row
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two smallest sizes of each")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size (the best counts)")
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    terms = [max(1, n // NODES_PER_TERM) for n in STRAIGHT_NODES]
    steps = list(LSTM_STEPS)
    if args.quick:
        terms, steps = terms[:2], steps[:2]
    lines = ["# Compile time against graph size", "",
             f"symgrad {sg.__version__ if hasattr(sg, '__version__') else ''}, "
             f"{os.cpu_count()} cores; best of {args.repeats} run(s) per size.", ""]  # fmt: skip
    lines += series("Straight-line scalar function, value + gradient", "terms",
                    straight_line, terms, args.repeats) + [""]  # fmt: skip
    lines += series("Unrolled LSTM (2 layers, width 14), value + gradient", "steps",
                    unrolled_lstm, steps, args.repeats)  # fmt: skip
    report(lines, args.out)


if __name__ == "__main__":
    main()
