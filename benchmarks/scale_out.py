"""Rosenbrock's value and gradient over 10 million points on a local Dask cluster of two worker
processes, against the in-process call on the same arrays (docs/scale-out.md quotes its figures).

    python -m benchmarks.scale_out [--points 10000000] [--chunk 1000000]

Inputs are made and kept on the workers; the compiled function is mapped over them twice (the
first run's workers import llvmlite and load it; the second maps a pickled copy, a new function
to Dask), the results gathered to the client, and checked equal to the in-process call before
anything is printed. Seconds are wall-clock, one run each: a 2-core machine shared with others
varies by 2x from run to run, so quote ranges.
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np

import symgrad as sg


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--points", type=int, default=10_000_000)
    cli.add_argument("--chunk", type=int, default=1_000_000)
    opts = cli.parse_args()

    import dask
    import dask.array as da
    from dask import distributed

    f = sg.parse("(1 - a)**2 + 100*(b - a**2)**2")
    fn = sg.compile([f, sg.build_grad(f, [f.graph.inputs["a"], f.graph.inputs["b"]])])
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    seconds = {}
    try:
        with distributed.Client(cluster) as client:
            rng = da.random.default_rng(0)
            x = rng.uniform(-2.0, 2.0, opts.points, chunks=opts.chunk)
            y = rng.uniform(-1.0, 3.0, opts.points, chunks=opts.chunk)
            x, y = client.persist([x, y])
            distributed.wait([x, y])
            for run, mapped in (("first", fn), ("second", pickle.loads(pickle.dumps(fn)))):
                start = time.perf_counter()
                lazy = client.persist(list(mapped.map_blocks(x, y)))
                distributed.wait(lazy)
                seconds[f"on the workers ({run})"] = time.perf_counter() - start
            results, seconds["gather to the client"] = timed(client.gather, client.compute(lazy))
            x, y = dask.compute(x, y)
    finally:
        cluster.close()
    for run in ("first", "second"):  # the first call also faults in its fresh output pages
        local, seconds[f"in-process call ({run})"] = timed(fn, x, y)
    assert all(np.array_equal(a, b) for a, b in zip(results, local)), "results differ"
    print(f"{opts.points:,} points, chunks of {opts.chunk:,}, 2 worker processes:")
    for what, s in seconds.items():
        print(f"  {what}: {s:.3f} s")


if __name__ == "__main__":
    main()
