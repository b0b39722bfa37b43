"""Threads: one compiled function called from 8 threads at once, and 8 threads compiling at once.

Calls share nothing mutable (per-thread point buffers and tensor scratch, fresh outputs), so 8
threads started together get exactly the serial results: the point fast path, the general point
path, batches split over the thread pool, and tensor kernels. Compiling from 8 threads at once,
different graphs, identical graphs and one shared graph, with and without the object cache,
gives the code a serial compile gives. Two races found here stay fixed: ``paused_gc`` could
leave the garbage collector off for good, and a forked child inherited a thread pool with no
threads, so its first threaded batch waited forever.
"""

from __future__ import annotations

import gc
import multiprocessing
import sys
import threading

import numpy as np
import pytest

import symgrad as sg
from symgrad.graph import paused_gc
from symgrad.llvm.kernels import THREAD_MIN_POINTS
from tests.toolbox import same

THREADS = 8
# ~15 libm calls per point: dear enough that batches are split over the thread pool.
HEAVY = "sin(x)*exp(y) + cos(x*y) + log(1 + x*x)*tanh(y) + sqrt(1 + y*y)*atan(x) + {k}*x"


def heavy(k: int = 1, **options):
    f = sg.parse(HEAVY.format(k=k))
    wrt = [f.graph.inputs["x"], f.graph.inputs["y"]]
    return sg.compile([f, sg.build_grad(f, wrt)], **options)


def tensor_step(graph: sg.Graph | None = None, k: int = 1):
    g = graph or sg.Graph()
    w, x = g.input("W", (6, 5)), g.input("x", (5, 40))
    y = sg.softmax(sg.tanh(w @ x) * float(k), axis=0)  # scratch-held stages between loops
    loss = (y * y).sum()
    return [loss, *sg.build_grad(loss, [w, x])]


def tensor_values(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((6, 5)), rng.standard_normal((5, 40))


def together(work, n: int = THREADS) -> list:
    """``work(k)`` for k < n, in n threads released at once; their results, or their error."""
    start = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(k: int) -> None:
        start.wait()
        try:
            results[k] = work(k)
        except BaseException as err:  # noqa: BLE001 (handed to the test)
            errors.append(err)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


@pytest.fixture
def fast_switching():
    """Switch threads every microsecond, so the interleavings a race needs actually happen."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(saved)


# --- one function, 8 threads calling -----------------------------------------------------------


def test_point_fast_path_from_8_threads(fast_switching):
    fn = heavy()
    rng = np.random.default_rng(0)
    points = [[tuple(map(float, p)) for p in rng.uniform(-2, 2, (500, 2))] for _ in range(THREADS)]
    serial = [[fn(x, y) for x, y in chunk] for chunk in points]
    threaded = together(lambda k: [fn(x, y) for x, y in points[k]])
    assert all(same(a, b) for s, t in zip(serial, threaded) for a, b in zip(s, t))


def test_point_general_path_from_8_threads(fast_switching):
    # Keywords skip the fast entry: run_point and its per-thread input and output buffers.
    fn = heavy()
    rng = np.random.default_rng(1)
    points = [rng.uniform(-2, 2, (300, 2)) for _ in range(THREADS)]
    serial = [[fn(x=x, y=y) for x, y in chunk] for chunk in points]
    threaded = together(lambda k: [fn(x=x, y=y) for x, y in points[k]])
    assert all(same(a, b) for s, t in zip(serial, threaded) for a, b in zip(s, t))


def test_batches_split_over_the_pool_from_8_threads():
    fn = heavy(threads=4)
    n = 4 * THREAD_MIN_POINTS + 3  # four chunks and a padded tail
    rng = np.random.default_rng(2)
    args = [(rng.uniform(-2, 2, n), rng.uniform(-2, 2, n)) for _ in range(THREADS)]
    assert len(fn._native._chunks(n - n % 4)) == 4
    serial = [fn(*a) for a in args]
    threaded = together(lambda k: fn(*args[k]))
    assert all(same(s, t) for s, t in zip(serial, threaded))


def test_tensor_function_from_8_threads(fast_switching):
    fn = sg.compile(tensor_step())
    args = [tensor_values(seed) for seed in range(THREADS)]
    serial = [fn(*a) for a in args]
    threaded = together(lambda k: [fn(*args[k]) for _ in range(20)])
    assert all(same(s, t) for s, runs in zip(serial, threaded) for t in runs)


# --- 8 threads compiling -----------------------------------------------------------------------


@pytest.fixture(params=["cache", "no cache"])
def cache_setting(request, tmp_path, monkeypatch):
    if request.param == "cache":
        monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path / "cache"))
    else:
        monkeypatch.setenv("SYMGRAD_CACHE_DIR", "off")
    return request.param


def test_compiling_different_graphs_from_8_threads(cache_setting):
    x, y = np.linspace(-2, 2, 1_001), np.linspace(3, -1, 1_001)
    compiled = together(lambda k: heavy(k + 1))
    for k, fn in enumerate(compiled):
        serial = heavy(k + 1)
        assert fn.llvm_ir == serial.llvm_ir
        assert same(fn(x, y), serial(x, y))
        assert same(fn(0.25, -0.5), serial(0.25, -0.5))
    interpreted = sg.compile(sg.parse(HEAVY.format(k=3)), backend="numpy")(x, y)[0]
    np.testing.assert_allclose(compiled[2](x, y)[0], interpreted, rtol=1e-13, atol=1e-13)


def test_compiling_identical_graphs_from_8_threads(cache_setting):
    x, y = np.linspace(-2, 2, 1_001), np.linspace(3, -1, 1_001)
    reference = heavy(5)
    compiled = together(lambda k: heavy(5))
    assert all(fn.llvm_ir == reference.llvm_ir for fn in compiled)
    assert all(same(fn(x, y), reference(x, y)) for fn in compiled)
    if cache_setting == "cache":  # a second wave finds the entries the first one wrote
        assert all(fn._native.cache_hit for fn in together(lambda k: heavy(5)))


def test_compiling_one_shared_graph_from_8_threads(cache_setting):
    f = sg.parse(HEAVY.format(k=7))
    wrt = [f.graph.inputs["x"], f.graph.inputs["y"]]
    outputs = [f, sg.build_grad(f, wrt)]
    nodes = len(f.graph)
    compiled = together(lambda k: sg.compile(outputs, threads=1 + k % 2))
    assert len(f.graph) == nodes  # compiling reads the graph, never adds to it
    reference = sg.compile(outputs)
    x, y = np.linspace(-2, 2, 257), np.linspace(3, -1, 257)
    assert all(same(fn(x, y), reference(x, y)) for fn in compiled)


def test_compiling_tensor_graphs_from_8_threads(cache_setting):
    shared = sg.Graph()
    shared_outputs = tensor_step(shared, k=3)

    def work(k: int):
        # Even threads: a graph of their own (half of them alike); odd: one graph for all.
        outputs = tensor_step(k=k % 4) if k % 2 == 0 else shared_outputs
        return sg.compile(outputs)

    compiled = together(work)
    args = tensor_values(9)
    for k, fn in enumerate(compiled):
        reference = sg.compile(tensor_step(k=k % 4) if k % 2 == 0 else shared_outputs)
        assert same(fn(*args), reference(*args))
    assert gc.isenabled()


# --- the two races -----------------------------------------------------------------------------


def test_paused_gc_from_many_threads_leaves_the_collector_on(fast_switching):
    def pause_often(_):
        for _ in range(3_000):
            with paused_gc():
                pass

    assert gc.isenabled()
    for _ in range(5):
        together(pause_often)
        assert gc.isenabled()


def test_paused_gc_keeps_a_disabled_collector_off():
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_forked_child_runs_threaded_batches():
    fn = heavy(threads=2)
    n = 4 * THREAD_MIN_POINTS
    x, y = np.linspace(-2, 2, n), np.linspace(3, -1, n)
    expected = fn(x, y)  # the parent's pool now has threads, which a forked child lacks
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(fn, (x, y)).get(timeout=120)
    assert same(got, expected)
