"""BLAS threads during a compiled tensor call (symgrad/blas.py): set for the call, restored
after it, whatever the backend and however many threads call at once."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

import symgrad as sg
from symgrad import blas

pytestmark = pytest.mark.skipif(blas.controls() is None, reason="numpy's OpenBLAS not found")


def _product(**options):
    g = sg.Graph()
    a, b = g.input("A", shape=(40, 30)), g.input("B", shape=(30, 20))
    return sg.compile(sg.tanh(a @ b), **options)


def _seen(fn) -> list[int]:
    """The BLAS thread counts the executor runs under, recorded at each call."""
    get, _ = blas.controls()
    seen, run = [], fn._executor.run_tensor
    fn._executor.run_tensor = lambda arrays, flat: (seen.append(get()), run(arrays, flat))[1]
    return seen


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
@pytest.mark.parametrize("option", [{}, {"blas_threads": 2}, {"blas_threads": None}])
def test_a_call_runs_on_its_count_and_restores_the_blas(backend, option):
    get, put = blas.controls()
    before = get()
    put(3)
    try:
        fn = _product(backend=backend, **option)
        seen = _seen(fn)
        a, b = np.random.default_rng(0).normal(size=(40, 30)), np.ones((30, 20))
        np.testing.assert_allclose(fn(a, b)[0], np.tanh(a @ b), rtol=1e-12)
        want = option.get("blas_threads", blas.DEFAULT_THREADS)
        assert seen == [3 if want is None else want]
        assert get() == 3
    finally:
        put(before)


def test_calls_from_many_threads_leave_the_count_as_it_was():
    get, put = blas.controls()
    before = get()
    put(2)
    try:
        fn = _product()
        a, b = np.ones((40, 30)), np.ones((30, 20))
        workers = [threading.Thread(target=lambda: [fn(a, b) for _ in range(50)]) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert get() == 2
    finally:
        put(before)


def test_the_option_is_checked_and_pickled():
    with pytest.raises(sg.ArgumentError, match="blas_threads must be None or an int >= 1"):
        _product(blas_threads=0)
    fn = pickle.loads(pickle.dumps(_product(blas_threads=2)))
    assert _seen(fn) == [] and fn._blas_threads == 2


def test_only_functions_with_matrix_products_touch_the_blas():
    get, put = blas.controls()
    before = get()
    put(3)
    try:
        g = sg.Graph()
        x, a = g.input("x", shape=(3, 3)), g.input("A", shape=(3, 3))
        looped, _ = sg.scan(lambda c, _: (c @ a, None), x, length=2)  # a product in a body
        plain, product = sg.compile(sg.tanh(x) * a), sg.compile(looped)
        seen = [_seen(plain), _seen(product)]
        plain(np.ones((3, 3)), np.ones((3, 3)))
        product(np.eye(3), np.ones((3, 3)))
        assert seen == [[3], [blas.DEFAULT_THREADS]] and get() == 3
    finally:
        put(before)
