"""``fn.map_blocks``: a compiled scalar function over Dask arrays, block by block.

Results are laid out as a call's (an Expr gives the batch shape, a list of n batch + (n,), a
list of lists batch + (n, m)) and equal the in-process call exactly: the blocks run the same
code. Checked with the synchronous and threaded schedulers on small arrays, and on a local
cluster of two worker processes over 10 million points, where the function reaches the workers
by pickle (benchmarks/scale_out.py times that run).
"""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import ArgumentError
from tests.toolbox import rosenbrock, same

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_map_blocks_equals_the_call(scheduler, backend):
    fn = rosenbrock(backend=backend)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-2, 2, 10_003), rng.uniform(-1, 3, 10_003)
    lazy = fn.map_blocks(da.from_array(x, chunks=2_000), da.from_array(y, chunks=3_000))
    assert all(isinstance(item, da.Array) for item in lazy)
    assert [item.shape for item in lazy] == [(10_003,), (10_003, 2), (10_003, 2, 2)]
    with dask.config.set(scheduler=scheduler):
        got = dask.compute(*lazy)
    assert same(got, fn(x, y))


def test_map_blocks_binds_and_broadcasts_like_a_call():
    fn = rosenbrock()
    rng = np.random.default_rng(1)
    x = rng.uniform(-2, 2, (60, 7))
    lazy_x = da.from_array(x, chunks=(25, 4))
    with dask.config.set(scheduler="synchronous"):
        by_name = dask.compute(*fn.map_blocks(b=0.5, a=lazy_x))
        row = np.linspace(0, 1, 7)
        with_numpy = dask.compute(*fn.map_blocks(lazy_x, row))
        scalar_dask = dask.compute(*fn.map_blocks(lazy_x, da.from_array(np.array(2.0))))
    assert same(by_name, fn(b=0.5, a=x))
    assert by_name[2].shape == (60, 7, 2, 2)
    assert same(with_numpy, fn(x, row))
    assert same(scalar_dask, fn(x, 2.0))


def test_map_blocks_of_one_output_and_integer_arrays():
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    fn = sg.compile(sg.sin(x) * y)
    (lazy,) = fn.map_blocks(da.arange(100, chunks=30), 3)
    assert lazy.dtype == np.float64
    assert np.array_equal(lazy.compute(scheduler="synchronous"), fn(np.arange(100), 3)[0])


def test_map_blocks_errors_are_argument_errors():
    fn = rosenbrock()
    lazy = da.ones(10, chunks=5)
    with pytest.raises(ArgumentError, match="unknown argument 'c'"):
        fn.map_blocks(lazy, lazy, c=lazy)
    with pytest.raises(ArgumentError, match="missing argument 'b'"):
        fn.map_blocks(lazy)
    with pytest.raises(ArgumentError, match="dtype complex128"):
        fn.map_blocks(lazy, da.ones(10, chunks=5, dtype=complex))
    with pytest.raises(ArgumentError, match="'b': expected a real number"):
        fn.map_blocks(lazy, "2")
    with pytest.raises(ArgumentError, match="do not broadcast"):
        fn.map_blocks(lazy, da.ones(3, chunks=3))
    g = sg.Graph()
    w = g.input("w", (2, 2))
    with pytest.raises(ArgumentError, match="tensor function"):
        sg.compile(w.sum()).map_blocks(da.ones((2, 2)))


def test_without_dask_map_blocks_says_how_to_install_it(monkeypatch):
    fn = rosenbrock(backend="numpy")
    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ArgumentError, match=r"pip install 'symgrad\[dask\]'"):
        fn.map_blocks(np.ones(3), np.ones(3))


# --- a local cluster of two worker processes ---------------------------------------------------

POINTS = 10_000_000
CHUNK = 1_000_000


def test_local_cluster_of_two_processes_on_ten_million_points():
    distributed = pytest.importorskip("dask.distributed")
    f = sg.parse("(1 - a)**2 + 100*(b - a**2)**2")
    fn = sg.compile([f, sg.build_grad(f, [f.graph.inputs["a"], f.graph.inputs["b"]])])
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            inputs, results = run_on_cluster(fn, client, distributed)
    finally:
        cluster.close()
    local = fn(*inputs)
    for mapped in results:
        assert same(mapped, local)
    assert local[0].shape == (POINTS,) and local[1].shape == (POINTS, 2)


def run_on_cluster(fn, client, distributed):
    """Inputs made and kept on the workers; the function mapped over them there, then gathered:
    once as it is, once as a copy (a new function to Dask, so nothing is reused but the workers'
    warm processes). Returns the inputs and both gathered results. (benchmarks/scale_out.py
    times the same run.)"""
    rng = da.random.default_rng(0)
    x = rng.uniform(-2.0, 2.0, POINTS, chunks=CHUNK)
    y = rng.uniform(-1.0, 3.0, POINTS, chunks=CHUNK)
    x, y = client.persist([x, y])
    distributed.wait([x, y])
    results = [
        client.gather(client.compute(list(mapped.map_blocks(x, y))))
        for mapped in (fn, pickle.loads(pickle.dumps(fn)))
    ]
    return dask.compute(x, y), results
