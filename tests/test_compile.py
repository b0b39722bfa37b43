"""Tests of the call contract of ``sg.compile`` (DESIGN.md §1) and of ``sg.evaluate``.

Only ``backend="numpy"`` is exercised here: the contract (argument binding, broadcasting, output
layout, errors) lives in ``CompiledFunction`` whatever backend runs the graph.
"""

import math
import warnings

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import ArgumentError, SymgradError


def compile_np(outputs, inputs=None):
    return sg.compile(outputs, inputs=inputs, backend="numpy")


@pytest.fixture
def fxy(g):
    """f(x, y) = x - 2*y: operand order matters, so a swapped binding shows."""
    x, y = g.input("x"), g.input("y")
    return compile_np(x - 2 * y)


# --- binding arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((5.0, 1.0), {}),
        ((), {"x": 5.0, "y": 1.0}),
        ((), {"y": 1.0, "x": 5.0}),
        ((5.0,), {"y": 1.0}),
    ],
)
def test_keywords_positionals_mixed(fxy, args, kwargs):
    (out,) = fxy(*args, **kwargs)
    assert out.shape == () and out.dtype == np.float64
    assert float(out) == 3.0


def test_result_is_a_tuple_per_output(g):
    x = g.input("x")
    out = compile_np([x + 1, x * 2])(3.0)
    assert isinstance(out, tuple) and len(out) == 2
    assert [float(v) for v in out] == [4.0, 6.0]


def test_default_inputs_are_reachable_in_creation_order(g):
    b, unused, a = g.input("b"), g.input("unused"), g.input("a")
    sg.sin(unused)
    fn = compile_np(a - b)
    assert fn.inputs == ("b", "a")
    assert float(fn(1.0, 10.0)[0]) == 9.0
    assert compile_np([a, [b * a]]).inputs == ("b", "a")
    assert compile_np(a * 2).inputs == ("a",)
    assert compile_np(g.const(3.0)).inputs == ()
    assert float(compile_np(g.const(3.0))()[0]) == 3.0


@pytest.mark.parametrize("as_name", [False, True])
def test_inputs_given_as_exprs_or_names(g, as_name):
    x, y, z = g.input("x"), g.input("y"), g.input("z")
    order = [z, y, x]
    fn = compile_np(x - y, inputs=[e.name for e in order] if as_name else order)
    assert fn.inputs == ("z", "y", "x")
    assert float(fn(100.0, 1.0, 5.0)[0]) == 4.0  # the unused z is an argument all the same
    assert float(fn(x=5.0, y=1.0, z=0.0)[0]) == 4.0
    with pytest.raises(ArgumentError, match="missing argument 'z'"):
        fn(x=5.0, y=1.0)


def test_inputs_mixed_exprs_and_names(g):
    x, y = g.input("x"), g.input("y")
    fn = compile_np(x / y, inputs=["y", x])
    assert fn.inputs == ("y", "x") and float(fn(4.0, 2.0)[0]) == 0.5


@pytest.mark.parametrize(
    "inputs, match",
    [
        (["x"], "misses 'y'"),
        ([], "misses 'x', 'y'"),
        (["x", "y", "q"], r"inputs\[2\] = 'q' is not an input"),
        (["x", "y", "x"], "twice"),
        ("xy", "list"),
        (lambda g: [g.input("x"), g.input("x") * 2], r"inputs\[1\]"),
        (lambda g: [g.input("x"), sg.Graph().input("y")], r"inputs\[1\]"),
        (lambda g: [g.input("x"), 3], r"inputs\[1\] = 3"),
    ],
)
def test_bad_inputs(g, inputs, match):
    x, y = g.input("x"), g.input("y")
    if callable(inputs):
        inputs = inputs(g)
    with pytest.raises(ArgumentError, match=match):
        compile_np(x * y, inputs=inputs)


# --- output layout ------------------------------------------------------------------------------


def test_layout_at_a_point(g):
    x, y = g.input("x"), g.input("y")
    fn = compile_np([x * y, [x, y, x + y], [[x, y], [2 * x, 3 * y], [x - y, y - x]]])
    v, vec, mat = fn(x=2.0, y=5.0)
    assert (v.shape, vec.shape, mat.shape) == ((), (3,), (3, 2))
    assert all(a.dtype == np.float64 for a in (v, vec, mat))
    assert float(v) == 10.0
    assert vec.tolist() == [2.0, 5.0, 7.0]
    assert mat.tolist() == [[2.0, 5.0], [4.0, 15.0], [-3.0, 3.0]]


def test_layout_over_a_batch(g):
    x, y = g.input("x"), g.input("y")
    fn = compile_np([x * y, [x, y, x + y], [[x, y], [2 * x, 3 * y], [x - y, y - x]]])
    xs, ys = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 30.0, 40.0])
    v, vec, mat = fn(xs, ys)
    assert (v.shape, vec.shape, mat.shape) == ((4,), (4, 3), (4, 3, 2))
    np.testing.assert_array_equal(v, xs * ys)
    np.testing.assert_array_equal(vec, np.stack([xs, ys, xs + ys], axis=-1))
    expected = np.stack([xs, ys, 2 * xs, 3 * ys, xs - ys, ys - xs], axis=-1).reshape(4, 3, 2)
    np.testing.assert_array_equal(mat, expected)


def test_gradient_and_hessian_layout(g):
    x, y = g.input("x"), g.input("y")
    f = x * x * y + y**3
    grads = sg.build_grad(f, [x, y])
    hess = sg.hessian(f, [x, y])
    v, gr, h = compile_np([f, grads, hess])(np.array([1.0, 2.0]), 3.0)
    assert (v.shape, gr.shape, h.shape) == ((2,), (2, 2), (2, 2, 2))
    np.testing.assert_array_equal(v, [30.0, 39.0])
    np.testing.assert_array_equal(gr, [[6.0, 28.0], [12.0, 31.0]])
    np.testing.assert_array_equal(h, [[[6.0, 2.0], [2.0, 18.0]], [[6.0, 4.0], [4.0, 18.0]]])


def test_outputs_that_ignore_some_inputs_take_the_batch_shape(g):
    x, y = g.input("x"), g.input("y")
    c = g.const(2.5)
    v, vec = compile_np([x, [c, y, x * y]])(np.arange(3.0), 2.0)
    assert v.shape == (3,) and vec.shape == (3, 3)
    np.testing.assert_array_equal(vec, [[2.5, 2.0, 0.0], [2.5, 2.0, 2.0], [2.5, 2.0, 4.0]])


def test_results_do_not_alias_arguments(g):
    x = g.input("x")
    arr = np.array([1.0, 2.0])
    v, vec = compile_np([x, [x]])(arr)
    v[0] = 99.0
    vec[1, 0] = 99.0
    np.testing.assert_array_equal(arr, [1.0, 2.0])
    assert v.flags.writeable and vec.flags.writeable


# --- argument values ----------------------------------------------------------------------------


def test_broadcasting(g):
    x, y = g.input("x"), g.input("y")
    xs = np.array([[1.0], [2.0], [3.0]])
    ys = np.array([10.0, 20.0, 30.0, 40.0])
    v, vec = compile_np([x * 100 + y, [x, y]])(xs, ys)
    assert v.shape == (3, 4) and vec.shape == (3, 4, 2)
    np.testing.assert_array_equal(v, xs * 100 + ys)
    np.testing.assert_array_equal(vec[..., 0], np.broadcast_to(xs, (3, 4)))
    np.testing.assert_array_equal(vec[..., 1], np.broadcast_to(ys, (3, 4)))


@pytest.mark.parametrize(
    "xv, yv, expected",
    [
        (2, 3, 8.0),
        (np.int64(2), np.int32(3), 8.0),
        ([1, 2], 2, [1.0, 4.0]),
        ((1, 2), [2.0, 3.0], [1.0, 8.0]),
        (np.arange(3), 2, [0.0, 1.0, 4.0]),
        (np.array([2.0], np.float32), np.uint8(2), [4.0]),
        ([[2]], np.array(2.0), [[4.0]]),
    ],
)
def test_ints_lists_and_numpy_values(g, xv, yv, expected):
    x, y = g.input("x"), g.input("y")
    (out,) = compile_np(x**y)(xv, yv)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)


def test_values_are_computed_in_float64(g):
    x = g.input("x")
    (out,) = compile_np(x + 1e-12)(np.array([1.0], np.float32))
    assert out[0] == 1.0 + 1e-12 != 1.0


# --- errors -------------------------------------------------------------------------------------


def check_argument_error(call, *fragments):
    with pytest.raises(ArgumentError) as info:
        call()
    err = info.value
    assert isinstance(err, SymgradError) and isinstance(err, TypeError)
    assert isinstance(err, ValueError)
    for fragment in fragments:
        assert fragment in str(err), (fragment, str(err))
    return err


def test_missing_argument(fxy):
    check_argument_error(lambda: fxy(5.0), "missing", "'y'")
    check_argument_error(lambda: fxy(y=5.0), "missing", "'x'")
    check_argument_error(lambda: fxy(), "'x'", "'y'")


def test_unknown_keyword(fxy):
    check_argument_error(lambda: fxy(x=1.0, y=2.0, z=3.0), "unknown", "'z'", "x, y")
    check_argument_error(lambda: fxy(1.0, 2.0, X=3.0), "'X'", "x, y")


def test_too_many_positionals(fxy):
    check_argument_error(lambda: fxy(1.0, 2.0, 3.0), "takes 2", "got 3", "x, y")


def test_positional_and_keyword(fxy):
    check_argument_error(lambda: fxy(1.0, 2.0, x=3.0), "'x'", "both")
    check_argument_error(lambda: fxy(1.0, x=3.0, y=2.0), "'x'", "both")


def test_shapes_that_do_not_broadcast(fxy):
    check_argument_error(lambda: fxy(np.zeros(3), np.zeros(4)), "broadcast", "x: (3,)", "y: (4,)")
    check_argument_error(lambda: fxy(np.zeros((2, 3)), [1.0, 2.0]), "x: (2, 3)", "y: (2,)")


@pytest.mark.parametrize(
    "value",
    ["1.0", b"1", 1j, np.complex128(1), np.array([1j]), None, True, np.bool_(True),
     np.array([True]), ["a", "b"], [[1.0], [1.0, 2.0]], {"x": 1}, object(),
     np.array([1.0], dtype=object)],
    ids=repr,
)  # fmt: skip
def test_bad_value_names_the_argument(fxy, value):
    check_argument_error(lambda: fxy(1.0, value), "'y'")
    check_argument_error(lambda: fxy(x=value, y=1.0), "'x'")


def test_failed_call_leaves_the_function_working(fxy):
    with pytest.raises(ArgumentError):
        fxy(1.0, "two")
    assert float(fxy(1.0, 2.0)[0]) == -3.0


def test_bogus_backend(g):
    x = g.input("x")
    err = check_argument_error(lambda: sg.compile(x, backend="bogus"), "'bogus'")
    assert "numpy" in str(err) and "llvm" in str(err)


def test_llvm_ir_needs_the_llvm_backend(g):
    fn = compile_np(g.input("x") * 2)
    check_argument_error(lambda: fn.llvm_ir, "numpy")


@pytest.mark.parametrize(
    "outputs, match",
    [
        (lambda x: [], "no outputs"),
        (lambda x: [x, 3.0], r"outputs\[1\] is a float"),
        (lambda x: [[[x], [x, x]]], r"outputs\[0\]: rows .* differ"),
        (lambda x: "x", "str"),
        (lambda x: [x, [x, None]], r"outputs\[1\]\[1\] is a NoneType"),
        (lambda x: [x, sg.Graph().input("x")], "different graphs"),
    ],
)
def test_bad_outputs(g, outputs, match):
    with pytest.raises(SymgradError, match=match):
        compile_np(outputs(g.input("x")))


# --- evaluate -----------------------------------------------------------------------------------


def test_evaluate_expr_gives_one_array(g):
    x, y = g.input("x"), g.input("y")
    out = sg.evaluate(x * y, x=3.0, y=4.0)
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float64
    assert float(out) == 12.0
    batch = sg.evaluate(x * y, x=np.arange(3.0), y=2.0)
    np.testing.assert_array_equal(batch, [0.0, 2.0, 4.0])


def test_evaluate_list_gives_the_compile_tuple(g):
    x, y = g.input("x"), g.input("y")
    outputs = [x * y, [x, y], [[x, y], [y, x]]]
    got = sg.evaluate(outputs, x=np.array([1.0, 2.0]), y=3.0)
    want = compile_np(outputs)(np.array([1.0, 2.0]), 3.0)
    assert isinstance(got, tuple) and len(got) == 3
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    (single,) = sg.evaluate([x * y], x=2.0, y=3.0)
    assert float(single) == 6.0


def test_evaluate_accepts_unused_graph_inputs(g):
    x = g.input("x")
    g.input("y"), g.input("z")
    assert float(sg.evaluate(x * 2, x=3.0, y=9.0, z=1.0)) == 6.0
    vec = sg.evaluate([x * 2, [x]], x=3.0, y=np.ones(2))
    assert vec[0].shape == (2,)  # the unused argument still takes part in broadcasting


def test_evaluate_rejects_names_not_in_the_graph(g):
    x = g.input("x")
    g.input("y")
    check_argument_error(lambda: sg.evaluate(x * 2, x=3.0, w=1.0), "'w'")
    check_argument_error(lambda: sg.evaluate(x * 2, y=1.0), "missing", "'x'")


# --- IEEE values, silently ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, at, expected",
    [
        ("log(x)", -1.0, math.nan),
        ("1/x", 0.0, math.inf),
        ("1/x", -0.0, -math.inf),
        ("x/x", 0.0, math.nan),
        ("sqrt(x)", -1.0, math.nan),
        ("exp(x)", 1000.0, math.inf),
        ("x*0", math.inf, math.nan),
        ("x - x", math.inf, math.nan),
        ("log(x)", 0.0, -math.inf),
        ("acosh(x)", 0.5, math.nan),
        ("atanh(x)", 1.0, math.inf),
        ("x**0.5", -4.0, math.nan),
        ("sin(x)", math.inf, math.nan),
        ("x + 1", math.nan, math.nan),
        ("max(x, 1)", math.nan, math.nan),
        ("where(x, 1, 2)", math.nan, 1.0),
        ("sigmoid(x)", -1000.0, 0.0),
        ("softplus(x)", 1000.0, 1000.0),
    ],
)
def test_nan_and_inf_follow_numpy_without_warnings(text, at, expected):
    f = sg.parse(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (scalar,) = compile_np(f)(at)
        batch = sg.evaluate(f, x=np.array([at, 2.0]))
    np.testing.assert_array_equal(scalar, expected)
    np.testing.assert_array_equal(batch[0], expected)
    if expected == 0.0 or math.isinf(expected):
        assert np.signbit(scalar) == np.signbit(expected)
