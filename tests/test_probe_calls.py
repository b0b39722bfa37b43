"""Probe suite for the call side of a compiled function (issue 10, items 4 and 5).

- every bad argument, on both backends and in both modes (scalar/batch and tensor), by position
  and by keyword: an ArgumentError naming the argument and saying what the value is, and the
  function still works after it;
- odd but good arguments (0-d, strided, negative strides, read-only, zero elements, numpy
  scalars, lists): the interpreter's results, bit for bit;
- the size limit (``Graph.max_elements``): a batch whose outputs would exceed it is a SizeError
  (an ArgumentError and a MemoryError) raised before anything is allocated, naming the sizes and
  how to raise the limit, and raising it takes effect at once;
- max/min (and relu, abs, sign, where) with signed zeros and NaN: compiled results have the
  interpreter's (numpy's) bit patterns in the point kernel, the 4-lane batch kernel, its
  remainder and the tensor loops.
"""

from __future__ import annotations

import fractions
import itertools
import math
from decimal import Decimal

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import ArgumentError, SizeError, SymgradError
from tests.toolbox import scalar_fn, tensor_fn

BACKENDS = ["llvm", "numpy"]


@pytest.fixture(autouse=True, scope="module")
def _no_cache():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYMGRAD_CACHE_DIR", "off")
        yield


@pytest.fixture(scope="module", params=BACKENDS)
def tfn(request):
    return tensor_fn(request.param)


def same_bits(got, want, nan_sign: bool = False) -> bool:
    """Equal shapes and values, zeros of equal signs, NaN where NaN; with ``nan_sign`` the NaNs'
    signs too (a NaN an operation creates has the CPU's sign, whose order of operations differs
    between backends; a NaN passed through, as max/min/abs/where do, keeps its sign)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False
    nan = np.isnan(got)
    sign = np.signbit(got) == np.signbit(want)
    return bool(
        (nan == np.isnan(want)).all()
        and (sign if nan_sign else sign | nan).all()
        and (got[~nan] == want[~nan]).all()
    )


def assert_same(got: tuple, want: tuple) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert same_bits(a, b), (a, b)


def oracle(compiled, *args):
    """The interpreter's results for the same outputs, the arguments converted to float64 by
    numpy first: what a call must give for arguments it accepts."""
    state = compiled.__getstate__()  # the outputs as data: graph, ids and layout
    state["backend"] = "numpy"
    ref = type(compiled).__new__(type(compiled))
    ref.__setstate__(state)
    return ref(*(np.asarray(a, np.float64) for a in args))


# --- bad values: (value, a fragment of the message) ---------------------------------------------


class NoFloat:
    def __repr__(self) -> str:
        return "NoFloat()"


def deep(levels: int) -> list:
    nested = [1.0]
    for _ in range(levels):
        nested = [nested]
    return nested


BAD_NUMBERS = {
    "Fraction": (fractions.Fraction(1, 3), "Fraction(1, 3) is a Fraction, not a float"),
    "Decimal": (Decimal("1.5"), "Decimal('1.5') is a Decimal, not a float"),
    "10**400": (10**400, "(401 digits) does not fit a float64"),
    "-10**400": (-(10**400), "(402 digits) does not fit a float64"),
    "2**64": (2**64, "the int 18446744073709551616 is outside int64 and uint64"),
    "-2**63-1": (-(2**63) - 1, "outside int64 and uint64: pass float(x)"),
    "complex": (1j, "1j is complex"),
    "numpy complex": (np.complex128(1), "is complex"),
    "bool": (True, "True is a bool"),
    "numpy bool": (np.bool_(False), "is a bool"),
    "long double": (np.longdouble(1), "dtype float128 would be rounded to float64"),
}
BAD_OBJECTS = {
    "str": ("1.0", "got the str '1.0'"),
    "bytes": (b"1", "got the bytes b'1'"),
    "None": (None, "got None"),
    "object": (NoFloat(), "of type NoFloat: NoFloat()"),
    "dict": ({"a": 1.0}, "of type dict"),
    "set": ({1.0}, "of type set"),
    "range": (range(3), "of type range"),
    "memoryview": (memoryview(b"ab"), "of type memoryview"),
    "generator": ((v for v in [1.0]), "of type generator"),
    "an Expr": (sg.Graph().input("x"), "of type Expr: <Expr 0: input x>"),
}
BAD_ARRAYS = {
    "object array": (np.array([1.0, 2.0], dtype=object), "an array of dtype object"),
    "object array with None": (np.array([1.0, None], dtype=object), "its item [1] is None, not"),
    "list with a huge int": ([1.0, 10**400], "its item [1]: the int 1000"),
    "list with a Fraction": ([[1.0, fractions.Fraction(1, 2)]], "its item [0, 1]: Fraction"),
    "list with a Decimal": ([Decimal(1)], "its item [0]: Decimal('1') is a Decimal"),
    "object array with a bool": (np.array([1.0, np.True_], object), "its item [1] is np.True_"),
    "list with None": ([1.0, None], "its item [1] is None, not a number"),
    "ragged list": ([[1.0, 2.0], [3.0]], "a ragged nested list"),
    "ragged tuple": (((1.0,), 2.0), "a ragged nested list"),
    "too deep list": (deep(70), "not an array of numbers"),
    "list of str": (["1", "2"], "got dtype <U1"),
    "str array": (np.array(["a"]), "got dtype <U1"),
    "bytes array": (np.array([b"a"]), "got dtype |S1"),
    "complex array": (np.ones(3, complex), "got dtype complex128"),
    "list of complex": ([1j, 1.0], "got dtype complex128"),
    "datetime array": (np.array(["2020-01-01"], "datetime64[D]"), "got dtype datetime64[D]"),
    "datetime scalar": (np.datetime64("2020-01-01"), "of type datetime64"),
    "timedelta array": (np.array([1], "timedelta64[s]"), "got dtype timedelta64[s]"),
    "structured array": (np.zeros(3, dtype=[("a", "f8")]), "got dtype [('a', '<f8')]"),
    "bool array": (np.array([True, False]), "bools (dtype bool) are not numbers here"),
    "list of bools": ([True, False], "bools (dtype bool)"),
    "long double array": (np.ones(2, np.longdouble), "pass x.astype(np.float64)"),
    "masked array": (np.ma.masked_array([1.0, 2.0], [0, 1]), "a masked array"),
}
BAD = {**BAD_NUMBERS, **BAD_OBJECTS, **BAD_ARRAYS}


def fresh(value):
    # A generator is consumed by a failed call: each call gets a new one.
    return (v for v in [1.0]) if type(value).__name__ == "generator" else value


@pytest.mark.parametrize(("value", "fragment"), list(BAD.values()), ids=list(BAD))
def test_a_bad_value_is_an_argument_error_naming_the_argument_and_the_value(fn, value, fragment):
    for call in (lambda: fn(fresh(value), 2.0), lambda: fn(y=np.ones(4), x=fresh(value))):
        with pytest.raises(ArgumentError) as info:
            call()
        assert type(info.value) is ArgumentError
        message = str(info.value)
        assert message.startswith("argument 'x': "), message
        assert fragment in message, message
    with pytest.raises(ArgumentError, match="argument 'y': "):
        fn(2.0, fresh(value))
    assert_same(fn(0.5, 2.0), oracle(fn, 0.5, 2.0))  # the function still works


@pytest.mark.parametrize(("value", "fragment"), list(BAD.values()), ids=list(BAD))
def test_a_bad_value_of_a_tensor_function_names_the_argument(tfn, value, fragment):
    with pytest.raises(ArgumentError) as info:
        tfn(fresh(value), np.ones(3))
    assert str(info.value).startswith("argument 'W': ") and fragment in str(info.value)
    with pytest.raises(ArgumentError, match="argument 'v': "):
        tfn(v=fresh(value), W=np.ones((2, 3)))
    W, v = np.arange(6.0).reshape(2, 3), np.ones(3)
    assert_same(tfn(W, v), oracle(tfn, W, v))


def test_bad_values_keep_their_classes():
    # The counts the report gives; a value moved between classes shows up here.
    assert (len(BAD_NUMBERS), len(BAD_OBJECTS), len(BAD_ARRAYS)) == (11, 10, 23)


def test_evaluate_reports_bad_values_as_the_call_does():
    f = sg.parse("x + 1")
    with pytest.raises(ArgumentError, match="argument 'x': the int .* does not fit a float64"):
        sg.evaluate(f, x=10**400)


# --- odd but good values: the interpreter's results --------------------------------------------


def read_only(a):
    a = np.array(a, np.float64)
    a.flags.writeable = False
    return a


GOOD = {
    "0-d array": np.array(-2.5),
    "0-d int array": np.array(3),
    "numpy float32": np.float32(1.5),
    "numpy int64": np.int64(-7),
    "numpy uint64 max": np.uint64(2**64 - 1),
    "int 2**63": 2**63,
    "int -2**63": -(2**63),
    "float subnormal": 5e-324,
    "negative stride": np.arange(4.0)[::-1],
    "every other": np.arange(8.0)[::2],
    "column of a matrix": np.arange(12.0).reshape(4, 3)[:, 1],
    "read-only": read_only([1.0, -0.0, np.inf, np.nan]),
    "float16": np.array([1.0, np.inf, -0.0, np.nan], np.float16),
    "int8": np.array([-128, 0, 1, 127], np.int8),
    "list of ints": [1, 2, 3, 4],
    "tuple": (1.0, 2.0, 3.0, 4.0),
    "nested list": [[0.5], [1.5], [2.5], [3.5]],
    "zero elements": np.zeros((0, 4)),
    "empty list": [],
}


@pytest.mark.parametrize("value", list(GOOD.values()), ids=list(GOOD))
def test_odd_but_good_values_give_the_interpreters_results(fn, value):
    for other in (2.0, -0.0, np.array([1.0, -1.0, 0.0, np.nan])):
        try:
            np.broadcast_shapes(np.shape(value), np.shape(other))
        except ValueError:
            continue
        assert_same(fn(value, other), oracle(fn, value, other))
        assert_same(fn(y=value, x=other), oracle(fn, other, value))


GOOD_TENSORS = {
    "transposed": np.arange(6.0).reshape(3, 2).T,
    "negative strides": np.arange(6.0).reshape(2, 3)[::-1, ::-1],
    "read-only": read_only(np.ones((2, 3))),
    "ints": np.arange(6).reshape(2, 3),
    "uint64 extremes": np.array([[0, 2**64 - 1, 1], [2, 3, 4]], np.uint64),
    "nested list": [[1, 2, 3], [4.5, 5, -0.0]],
    "float32 with nan": np.array([[np.nan, 1, 2], [3, -np.inf, 5]], np.float32),
}


@pytest.mark.parametrize("value", list(GOOD_TENSORS.values()), ids=list(GOOD_TENSORS))
def test_odd_but_good_tensor_arguments(tfn, value):
    v = np.array([1.0, -2.0, 0.5])
    assert_same(tfn(value, v), oracle(tfn, value, v))
    assert_same(tfn(v=v[::-1].copy()[::-1], W=value), oracle(tfn, value, v))


def test_a_scalar_input_of_a_tensor_function_takes_a_0d_array_or_a_number():
    g = sg.Graph()
    W, s = g.input("W", (2, 2)), g.input("s")
    outputs = [sg.sum(W) * s]
    fn, ref = sg.compile(outputs), sg.compile(outputs, backend="numpy")
    for s_value in (2.0, 2, np.array(2.0), np.float32(2.0), np.uint8(2)):
        assert_same(fn(np.ones((2, 2)), s_value), ref(np.ones((2, 2)), 2.0))
    for bad in (np.ones((1, 1)), [2.0], True):  # (np.ones(1) is a batch of one point)
        with pytest.raises(ArgumentError, match="argument 's'"):
            fn(np.ones((2, 2)), bad)


# --- the shape of a call ------------------------------------------------------------------------


CALLS = [
    ((1.0, 2.0, 3.0), {}, "takes 2 arguments (x, y), got 3"),
    ((1.0,), {}, "missing argument 'y'"),
    ((), {}, "missing argument 'x', 'y'"),
    ((1.0,), {"x": 2.0}, "argument 'x' given both by position and by name"),
    ((1.0, 2.0), {"z": 1.0}, "unknown argument 'z'; arguments are: x, y"),
    ((), {"x": 1.0, "y": 1.0, "X": 1.0}, "unknown argument 'X'"),
    ((np.ones(3), np.ones(4)), {}, "do not broadcast together (x: (3,), y: (4,))"),
    ((np.ones((2, 3)), np.ones((3, 2))), {}, "(x: (2, 3), y: (3, 2))"),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), CALLS)
def test_bad_calls_are_argument_errors(fn, args, kwargs, message):
    with pytest.raises(ArgumentError) as info:
        fn(*args, **kwargs)
    assert message in str(info.value)


TENSOR_CALLS = [
    ((np.ones((2, 3)), np.ones(3), 1.0), {}, "takes 2 arguments (W, v), got 3"),
    ((np.ones((2, 3)),), {}, "missing argument 'v'"),
    ((np.ones((2, 3)),), {"W": np.ones((2, 3))}, "'W' given both"),
    ((np.ones((2, 3)), np.ones(3)), {"w": 1.0}, "unknown argument 'w'"),
    ((np.ones((3, 2)), np.ones(3)), {}, "argument 'W': expected shape (2, 3), got (3, 2)"),
    # (A (1, 3) v is a batch of one point: tests/test_batched.py.)
    ((np.ones((2, 3)), np.ones((1, 4))), {}, "argument 'v': expected shape (3,), got (1, 4)"),
    ((np.ones((2, 3)), np.array(1.0)), {}, "argument 'v': expected shape (3,), got ()"),
    ((np.ones((0, 3)), np.ones(3)), {}, "argument 'W': expected shape (2, 3), got (0, 3)"),
    ((np.ones((2, 3)), np.zeros(0)), {}, "argument 'v': expected shape (3,), got (0,)"),
]


@pytest.mark.parametrize(("args", "kwargs", "message"), TENSOR_CALLS)
def test_bad_tensor_calls_are_argument_errors(tfn, args, kwargs, message):
    with pytest.raises(ArgumentError) as info:
        tfn(*args, **kwargs)
    assert message in str(info.value)


# --- the size limit -----------------------------------------------------------------------------


def limited(limit: int, backend: str):
    """f = x*y*z with its gradient (3) and Hessian (3x3): 13 outputs per point."""
    f = sg.parse("x*y*z")
    f.graph.max_elements = limit
    xs = list(f.graph.inputs.values())
    return sg.compile([f, sg.build_grad(f, xs), sg.hessian(f, xs)], backend=backend)


def check_size_error(call, *fragments) -> SizeError:
    with pytest.raises(SizeError) as info:
        call()
    err = info.value
    assert isinstance(err, ArgumentError) and isinstance(err, MemoryError)
    assert isinstance(err, SymgradError)
    for fragment in fragments:
        assert fragment in str(err), (fragment, str(err))
    return err


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_whose_outputs_exceed_the_limit_is_refused_before_allocating(backend):
    fn = limited(1300, backend)
    at_limit = np.arange(100.0)  # 100 points x 13 outputs = 1300: allowed
    value, grad, hess = fn(at_limit, 2.0, 3.0)
    assert value.shape == (100,) and grad.shape == (100, 3) and hess.shape == (100, 3, 3)
    check_size_error(
        lambda: fn(np.arange(101.0), 2.0, 3.0),
        "(x: (101,), y: (), z: ())",
        "batch of shape (101,) x 13 outputs per point: 1313 elements",
        "more than max_elements=1300",
        "fn.graph.max_elements = ...",
    )
    fn.graph.max_elements = 1313  # read at each call: no need to compile again
    assert fn(np.arange(101.0), 2.0, 3.0)[2].shape == (101, 3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_default_limit_refuses_a_huge_broadcast(backend):
    fn = scalar_fn(backend)
    limit = getattr(fn.graph, "max_elements", 2**28)
    check_size_error(
        lambda: fn(x=np.zeros((1, 2**20)), y=np.zeros((2**20, 1))),
        "batch of shape (1048576, 1048576) x 3 outputs per point: 3.3e+12 elements",
        f"more than max_elements={limit}",
    )
    # A broadcast view costs nothing; its batch does.
    check_size_error(lambda: fn(np.broadcast_to(0.0, (2**40,)), 1.0), "3.3e+12 elements")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_too_large_to_count_is_a_size_error_not_a_broadcast_error(backend):
    fn = scalar_fn(backend)
    x, y = np.broadcast_to(0.0, (2**40, 1)), np.broadcast_to(0.0, (1, 2**40))
    err = check_size_error(
        lambda: fn(x, y), "batch of shape (1099511627776, 1099511627776)", "3.6e+24 elements"
    )
    assert "broadcast together" not in str(err)
    # Shapes that do not broadcast are still that, whatever their size.
    with pytest.raises(ArgumentError, match="do not broadcast") as info:
        fn(np.broadcast_to(0.0, (2**40, 3)), np.broadcast_to(0.0, (1, 2**40)))
    assert not isinstance(info.value, SizeError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_batch_is_not_too_large_but_its_arguments_may_be(backend):
    fn = scalar_fn(backend)
    value, grad = fn(np.zeros((0, 1)), np.broadcast_to(0.0, (1, 2**20)))
    assert value.shape == (0, 2**20) and grad.shape == (0, 2**20, 2)
    # The interpreter would compute 1/y at y's own shape.
    check_size_error(
        lambda: fn(np.zeros((0, 1)), np.broadcast_to(0.0, (1, 2**40))),
        "argument 'y': shape (1, 1099511627776) has 1.1e+12 elements, more than max_elements=",
    )


def test_a_tensor_function_whose_outputs_exceed_the_limit_is_refused_at_compile():
    g = sg.Graph()
    x = g.input("x", (10,))
    g.max_elements = 40
    outputs = [[x * k for k in range(1, 5)], x + 1]  # 40 + 10 elements
    check_size_error(lambda: sg.compile(outputs), "compile: the outputs have 50 elements")
    check_size_error(lambda: sg.compile(outputs, backend="numpy"), "max_elements=40")
    g.max_elements = 50
    assert sg.compile(outputs, backend="numpy")(np.ones(10))[0].shape == (4, 10)


def test_a_size_error_leaves_the_function_working():
    fn = scalar_fn("llvm")
    with pytest.raises(SizeError):
        fn(np.broadcast_to(0.0, (2**40,)), 1.0)
    assert_same(fn(np.arange(5.0), 2.0), oracle(fn, np.arange(5.0), 2.0))


def test_map_blocks_bad_values_and_sizes():
    da = pytest.importorskip("dask.array")
    fn = scalar_fn("numpy")
    with pytest.raises(ArgumentError, match="argument 'x': Fraction"):
        fn.map_blocks(fractions.Fraction(1, 2), da.ones(4, chunks=2))
    with pytest.raises(ArgumentError, match="argument 'y': the int .* does not fit a float64"):
        fn.map_blocks(da.ones(4, chunks=2), 10**400)
    # The Dask arrays themselves may be larger than the limit (each block is one call)...
    huge = da.zeros((2**40, 1), chunks=(2**38, 1))
    fn.map_blocks(huge, da.zeros((1, 2), chunks=1))
    # ...but not larger than anything numpy can count.
    check_size_error(lambda: fn.map_blocks(huge, da.zeros((1, 2**40), chunks=2**38)), "1.2e+24")


# --- max/min, relu, abs, sign, where: signed zeros and NaN --------------------------------------

VALUES = [0.0, -0.0, math.nan, 1.0, -math.inf]
PAIRS = list(itertools.product(VALUES, VALUES))  # 25: a 4-lane batch of 24 and a remainder of 1
A = np.array([a for a, _ in PAIRS])
B = np.array([b for _, b in PAIRS])
FORMULAS = [
    "max(x, y)",
    "max(y, x)",
    "min(x, y)",
    "min(y, x)",
    "max(x, 0)",
    "min(0, y)",
    "max(-x, y) * 1",
    "relu(x)",
    "abs(x)",
    "sign(x)",
    "where(x, y, -x)",
    "where(x > y, x, y)",
    "-min(x, -y)",
]


def both(formula: str, shape=()):
    g = sg.Graph()
    x, y = g.input("x", shape), g.input("y", shape)
    f = sg.parse(formula, graph=g)
    return sg.compile(f, inputs=[x, y]), sg.compile(f, inputs=[x, y], backend="numpy")


@pytest.mark.parametrize("formula", FORMULAS)
def test_signed_zeros_and_nan_agree_in_the_point_kernel(formula):
    fn, ref = both(formula)
    for a, b in PAIRS:
        want = ref(a, b)[0]
        assert same_bits(fn(a, b)[0], want, True), (formula, a, b)  # the fast entry (Python floats)
        got = fn(np.float64(a), y=np.float64(b))[0]  # the general path's one-point kernel
        assert same_bits(got, want, True), (formula, a, b)


@pytest.mark.parametrize("formula", FORMULAS)
def test_signed_zeros_and_nan_agree_in_the_batch_kernel(formula):
    fn, ref = both(formula)
    assert same_bits(fn(A, B)[0], ref(A, B)[0], True)  # 24 points in 4 lanes, then a remainder of 1
    assert same_bits(fn(A[:, None], B)[0], ref(A[:, None], B)[0], True)  # every pair, both ways
    assert same_bits(fn(A, 0.0)[0], ref(A, 0.0)[0], True)  # a loop-invariant operand
    assert same_bits(fn(-0.0, B[::-1])[0], ref(-0.0, B[::-1])[0], True)


@pytest.mark.parametrize("formula", FORMULAS)
def test_signed_zeros_and_nan_agree_in_tensor_loops(formula):
    fn, ref = both(formula, (25,))
    assert same_bits(fn(A, B)[0], ref(A, B)[0], True)
    fn2, ref2 = both(formula, (5, 5))
    a, b = A.reshape(5, 5), B.reshape(5, 5).T  # a strided operand
    assert same_bits(fn2(a, b)[0], ref2(a, b)[0], True)


def test_max_and_min_are_numpys_in_the_graphs_operand_order():
    # x is created first, so max(x, y) keeps (x, y): its value is np.maximum(x, y) to the bit,
    # NaN payloads and signs included (a tie of zeros gives the second operand, as numpy does).
    values = VALUES + [-math.nan, 2.5]
    a, b = (np.array(v) for v in zip(*itertools.product(values, values)))
    for formula, numpy_op in (("max(x, y)", np.maximum), ("min(x, y)", np.minimum)):
        fn, _ = both(formula)
        want = numpy_op(a, b).view(np.uint64)
        assert (fn(a, b)[0].view(np.uint64) == want).all()
        points = [fn(float(p), float(q))[0] for p, q in zip(a, b)]
        assert (np.array(points).view(np.uint64) == want).all()


def test_relu_of_negative_zero_is_positive_zero_and_of_nan_is_its_nan():
    fn, _ = both("relu(x)")
    x = np.array([-0.0, 0.0, math.nan, -math.nan, -1.0])
    for out in (fn(x, 0.0)[0], np.array([fn(float(v), 0.0)[0] for v in x])):
        assert out.view(np.uint64).tolist() == np.maximum(x, 0.0).view(np.uint64).tolist()
        assert not np.signbit(out[[0, 1, 4]]).any() and np.signbit(out[3])
