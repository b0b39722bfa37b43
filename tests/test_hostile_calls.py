"""Hostile and bad input (DESIGN.md §5), calls: a compiled function called with hostile arguments
gives an ArgumentError naming the argument, or IEEE results bit for bit as numpy's, and keeps
working. (The probe suite of the call side: tests/test_probe_calls.py.)
"""

from __future__ import annotations

import fractions
import math
from decimal import Decimal

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import ArgumentError
from symgrad.parse import parse

pytestmark = pytest.mark.usefixtures("no_cache")  # tests/conftest.py


class RaisingFloat:
    def __float__(self):
        raise RuntimeError("__float__ fails")


class RaisingFloatSubclass(float):
    def __float__(self):
        raise RuntimeError("__float__ fails")


class RaisingFloatInt(int):
    def __float__(self):
        raise RuntimeError("__float__ fails")


NOT_ARGUMENTS = {
    "huge int": 10**400,
    "int beyond uint64": 2**64,
    "int below int64": -(2**63) - 1,
    "object with a failing __float__": RaisingFloat(),
    "str": "1.0",
    "bytes": b"1",
    "None": None,
    "complex": 1j,
    "Fraction": fractions.Fraction(1, 3),
    "Decimal": Decimal("1.5"),
    "bool": True,
    "numpy bool": np.bool_(False),
    "long double": np.longdouble(1),
    "datetime": np.datetime64("2020-01-01"),
    "object array of numbers": np.array([1.0, 2.0], dtype=object),
    "object array with None": np.array([1.0, None], dtype=object),
    "complex array": np.ones(3, complex),
    "structured array": np.zeros(3, dtype=[("a", "f8")]),
    "ragged nested list": [[1.0, 2.0], [3.0]],
    "list of str": ["1", "2"],
    "list with a huge int": [10**400, 1],
    "dict": {"a": 1.0},
    "set": {1.0},
    "generator": (v for v in [1.0]),
    "range": range(3),
    "memoryview": memoryview(b"ab"),
}


def reference(x, y) -> tuple:
    """The values and gradient numpy computes for x*y + x/y, in float64."""
    f = parse("x*y + x/y")
    xs = list(f.graph.inputs.values())
    oracle = sg.compile([f, sg.build_grad(f, xs)], inputs=xs, backend="numpy")
    return oracle(np.asarray(x).astype(np.float64), np.asarray(y).astype(np.float64))


def assert_identical(got: tuple, want: tuple) -> None:
    """Equal item by item: the same shape, and each value equal with its sign, or both nan."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape, (a, b)
        same = (a == b) & (np.signbit(a) == np.signbit(b)) | (np.isnan(a) & np.isnan(b))
        assert same.all(), (a, b)


@pytest.mark.parametrize("value", list(NOT_ARGUMENTS.values()), ids=list(NOT_ARGUMENTS))
def test_arguments_that_are_not_real_numbers_are_argument_errors(fn, value):
    with pytest.raises(ArgumentError, match="argument 'x'"):
        fn(value, 2.0)
    with pytest.raises(ArgumentError, match="argument 'x'"):
        fn(y=np.ones(5), x=value)
    assert_identical(fn(0.5, 2.0), reference(0.5, 2.0))  # the function still works


IEEE_ARGUMENTS = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "-0.0": -0.0,
    "smallest subnormal": 5e-324,
    "largest double": 1.7976931348623157e308,
    "2**63 (uint64)": 2**63,
    "int64 extremes": np.array([2**63 - 1, -(2**63)]),
    "uint64 max": np.uint64(2**64 - 1),
    "float16 inf": np.float16("inf"),
    "float32 nan array": np.array([np.nan, 1.0, -0.0], np.float32),
    "deeply nested list": [[[[[1.5]]]]],
    "empty list": [],
    "int subclass with a failing __float__": RaisingFloatInt(3),
    "non-contiguous": np.arange(10.0)[::3],
    "0-d array": np.array(-2.5),
}  # fmt: skip
OTHERS = [0.0, -0.0, math.inf, math.nan, 1e-310, np.array([0.0, -1.0, math.inf, 2.0])]


@pytest.mark.parametrize("value", list(IEEE_ARGUMENTS.values()), ids=list(IEEE_ARGUMENTS))
def test_extreme_numbers_give_ieee_results(fn, value):
    for other in OTHERS:
        if np.ndim(value) and np.ndim(other) and np.shape(value) != np.shape(other):
            continue
        assert_identical(fn(value, other), reference(value, other))
        assert_identical(fn(other, value), reference(other, value))


def test_a_float_subclass_whose_float_raises_propagates_the_callers_own_error(fn):
    # numpy calls the override; the exception is the caller's own code failing, passed on
    # unchanged as math.sin(obj) or np.asarray(obj) would, never turned into a wrong value.
    with pytest.raises(RuntimeError, match="__float__ fails"):
        fn(RaisingFloatSubclass(1.5), 2.0)
    assert_identical(fn(1.5, 2.0), reference(1.5, 2.0))


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1.0, 2.0, 3.0), {}, "takes 2 arguments"),
        ((1.0,), {}, "missing argument 'y'"),
        ((), {}, "missing argument 'x', 'y'"),
        ((1.0,), {"x": 2.0}, "given both by position and by name"),
        ((1.0, 2.0), {"z": 1.0}, "unknown argument 'z'"),
        ((np.ones(3), np.ones(4)), {}, "do not broadcast"),
        ((np.ones((2, 3)), np.ones((3, 2))), {}, "do not broadcast"),
    ],
)
def test_bad_calls_are_argument_errors(fn, args, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        fn(*args, **kwargs)


def test_tensor_function_with_hostile_arguments():
    f = parse("sum(W @ v)", shapes={"W": (2, 3), "v": (3,)})
    W, v = f.graph.inputs.values()
    outputs = [f, sg.build_grad(f, [W])]
    fn, oracle = sg.compile(outputs), sg.compile(outputs, backend="numpy")
    v0 = np.arange(3.0)
    for bad in ([[1, 2, 3], [4, 5]], np.ones((3, 2)), np.ones(6), "abc", np.ones((2, 3), object)):
        with pytest.raises(ArgumentError, match="argument 'W'"):
            fn(bad, v0)
    for w in (np.full((2, 3), np.nan), np.full((2, 3), -np.inf), [[1, 2, 3], [4, 5, 2**63]]):
        assert_identical(fn(w, v0), oracle(np.asarray(w, np.float64), v0))
