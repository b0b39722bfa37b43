"""Batched calls of tensor functions (issue 14 item 2): a function of small tensors called with a
leading batch axis on some arguments runs every point, as a loop of single calls would."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import symgrad as sg
import symgrad.llvm.kernels as kernels
from symgrad.errors import ArgumentError, LoweringError

BACKENDS = ["llvm", "numpy"]


def _camera():
    """A bundle-adjustment-like residual and its Jacobian: a camera (11), a point (3), a weight,
    through most of the tensor vocabulary (stack, matmul, einsum, take, concatenate, cross,
    det, sum, max, getitem, and jacobian's placements)."""
    g = sg.Graph()
    cam, pt, w = g.input("cam", (11,)), g.input("pt", (3,)), g.input("w")
    c, s = sg.cos(cam[0]), sg.sin(cam[0])
    rot = sg.stack(
        [sg.stack([c, -s, cam[1]]), sg.stack([s, c, cam[2]]), sg.stack([cam[3], cam[4], c])]
    )
    p = rot @ pt + cam[5:8]
    proj = p[:2] / (p[2] + 3.0) * cam[8] * w
    extra = sg.einsum("ij,j->i", rot, sg.take(cam, [9, 10, 9])) + sg.cross(p, pt)
    joined = sg.concatenate([proj, extra])
    [[jac]] = sg.jacobian([joined], [cam], mode="forward")
    score = sg.sum(joined * joined) + sg.max(p) + sg.det(rot)
    return [joined, jac, [score, w * 2.0]]


def _points(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 11)) * 0.5, rng.normal(size=(n, 3)), rng.uniform(0.5, 1.5, n)


def _one_by_one(fn, cams, pts, ws) -> list[np.ndarray]:
    batched = [np.ndim(cams) == 2, np.ndim(pts) == 2, np.ndim(ws) == 1]
    n = next(len(a) for a, b in zip((cams, pts, ws), batched) if b)
    args = [
        (lambda k, a=a: a[k]) if b else (lambda k, a=a: a) for a, b in zip((cams, pts, ws), batched)
    ]
    rows = [fn(*(arg(k) for arg in args)) for k in range(n)]
    return [np.stack([r[j] for r in rows]) for j in range(len(rows[0]))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9, 64, 257])
def test_a_batched_call_is_a_loop_of_single_calls(backend, n):
    fn = sg.compile(_camera(), backend=backend)
    cams, pts, ws = _points(n, seed=n)
    got = fn(cams, pts, ws)
    want = _one_by_one(fn, cams, pts, ws)
    assert [a.shape for a in got] == [(n, 5), (n, 5, 11), (n, 2)]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_arguments_are_shared_by_every_point(backend):
    fn = sg.compile(_camera(), backend=backend)
    cams, pts, ws = _points(7)
    for args in [
        (cams, pts[0], ws[0]),
        (cams[0], pts, ws[0]),
        (cams[0], pts[0], ws),
        (cams, pts[0], ws),
    ]:
        got = fn(*args)
        want = _one_by_one(fn, *args)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_compiled_equals_interpreted_over_a_batch():
    cams, pts, ws = _points(333, seed=4)
    fast = sg.compile(_camera())(cams, pts, ws)
    slow = sg.compile(_camera(), backend="numpy")(cams, pts, ws)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_strided_arguments_are_read_in_place(monkeypatch):
    # An (n, 11) array's columns, a transposed (11, n) array's rows and a reversed view: the
    # element kernel reads them at their strides; making a contiguous copy is made to fail.
    fn = sg.compile(_camera())
    cams, pts, ws = _points(50, seed=2)
    want = fn(cams, pts, ws)
    flipped = np.ascontiguousarray(cams.T).T  # Fortran order: columns contiguous
    reversed_points = pts[::-1][::-1]
    monkeypatch.setattr(kernels, "contiguous", lambda a, batch: pytest.fail("copied"))
    for a, b in zip(fn(flipped, reversed_points, ws), want):
        np.testing.assert_array_equal(a, b)
    backwards = fn(cams[::-1], pts[::-1], ws[::-1])
    for a, b in zip(backwards, want):
        np.testing.assert_array_equal(a, b[::-1])


def test_threads_split_a_big_batch():
    fn = sg.compile(_camera(), threads=2)
    n = 2 * kernels.THREAD_MIN_POINTS + 3
    cams, pts, ws = _points(n, seed=9)
    got = fn(cams, pts, ws)
    single = sg.compile(_camera(), threads=1)(cams, pts, ws)
    for a, b in zip(got, single):
        np.testing.assert_array_equal(a, b)


def test_the_element_function_is_built_once():
    fn = sg.compile(_camera())
    cams, pts, ws = _points(6)
    fn(cams, pts, ws)
    first = fn._batched.function()
    fn(cams[:3], pts[:3], ws[:3])
    assert fn._batched.function() is first
    assert first._executor.gather


def test_a_pickled_function_takes_batches():
    fn = pickle.loads(pickle.dumps(sg.compile(_camera())))
    cams, pts, ws = _points(5)
    for a, b in zip(fn(cams, pts, ws), _one_by_one(fn, cams, pts, ws)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_leading_axes_that_differ_are_an_argument_error():
    fn = sg.compile(_camera())
    cams, pts, ws = _points(5)
    with pytest.raises(
        ArgumentError, match=r"leading axes of the arguments differ \(cam: 5, pt: 4"
    ):
        fn(cams, pts[:4], ws)
    with pytest.raises(ArgumentError, match="cam"):
        fn(cams[:, :10], pts, ws)  # not (n,) + (11,): the exact-shape check names it


def test_what_has_no_element_form_is_a_lowering_error():
    g = sg.Graph()
    x, i = g.input("x", (4,)), g.input("i", (2,))
    fn = sg.compile([sg.take(x, i) * 2.0])
    assert fn(np.arange(4.0), np.array([3.0, 0.0]))[0].tolist() == [6.0, 0.0]
    with pytest.raises(LoweringError, match="take by indices that are not constants"):
        fn(np.ones((3, 4)), np.array([3.0, 0.0]))


def test_a_batch_of_columns_is_one_c_call(monkeypatch):
    # Strided columns of (n, 11) arrays and 0-d arrays for the shared arguments go straight to
    # the element kernel's entry: the general path is made to fail.
    fn = sg.compile(_camera())
    cams, pts, ws = _points(10, seed=3)
    want = [fn(cams, pts, ws), fn(cams, pts[0], ws[0])]
    inner = fn._batched.function()
    monkeypatch.setattr(inner._executor, "run_points", lambda *a: pytest.fail("general path"))
    for got, args in zip(want, [(cams, pts, ws), (cams, pts[0], ws[0])]):
        for a, b in zip(fn(*args), got):
            np.testing.assert_array_equal(a, b)


def test_float64_arrays_take_the_arguments_entry(monkeypatch):
    # Batched and shared float64 arrays go to sg_vmap_fast as they are: the per-element column
    # path is made to fail. A list or an int array still works, through the columns.
    fn = sg.compile(_camera())
    cams, pts, ws = _points(9, seed=5)
    want = fn(cams, pts, ws)
    assert "define ptr @sg_vmap_fast" in fn._batched.function().llvm_ir
    with monkeypatch.context() as patch:
        patch.setattr(type(fn._batched), "_by_columns", lambda *a: pytest.fail("columns"))
        for a, b in zip(fn(cams, pts, ws), want):
            np.testing.assert_array_equal(a, b)
        fn(cams, pts[0], np.array(0.5))  # a shared 0-d array too
    got = fn(cams, pts.tolist(), ws)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_costly_points_split_over_threads_in_smaller_batches():
    # A share of a batch holds a fixed amount of work, not a fixed count of points: the camera
    # function's points are costly, so a few thousand of them already go to two threads (and
    # the one-thread C entry takes only batches that would not split).
    fn = sg.compile(_camera(), threads=2)
    cams, pts, ws = _points(8)
    fn(cams, pts, ws)
    inner = fn._batched.function()._executor
    assert kernels.THREAD_FLOOR_POINTS <= inner.min_points < kernels.THREAD_MIN_POINTS
    n = 2 * inner.min_points + 8
    assert len(inner._chunks(n)) == 2 and inner.fast_batch_max < n
    cams, pts, ws = _points(n, seed=8)
    for a, b in zip(fn(cams, pts, ws), sg.compile(_camera(), threads=1)(cams, pts, ws)):
        np.testing.assert_array_equal(a, b)


def test_gather_shapes_that_do_not_hold_the_arguments_are_refused():
    # The arguments' entry points the kernel at each element: shapes that disagree with the
    # argument count would send it past its arrays, so they are refused when compiling.
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    for bad in [((3,),), ((1,),), ((0,),), ((2,), "a"), "a", 1]:
        with pytest.raises(ArgumentError, match="gather"):
            sg.compile([x * y], gather=bad)
    assert sg.compile([x * y], gather=((2,),))(np.ones(3), np.full(3, 2.0))[0].tolist() == [2.0] * 3
