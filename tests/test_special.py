"""lgamma, digamma and trigamma: values against SciPy and mpmath, derivatives of every order the
GMM's Wishart prior needs, compiled code against the interpreter, and the poles.

The registry-wide tests (test_llvm, test_grad, test_forward, ...) cover these ops over their
sampling domain like every other op; this file checks what is particular to them: accuracy over
wide ranges, the Taylor series of digamma at its zero, the reflection for x < 0, and that
lgamma's derivatives chain exactly (lgamma' is digamma, lgamma'' is trigamma).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.special as ss

import symgrad as sg
from symgrad import ops
from symgrad.ops import OPS
from tests.toolbox import central_difference

RNG = np.random.default_rng(20240614)
DOMAIN = RNG.uniform(0.5, 5.0, 2000)
WIDE = np.exp(RNG.uniform(math.log(1e-8), math.log(1e8), 2000))  # 1e-8 .. 1e8
NEGATIVE = RNG.uniform(-30.0, 0.0, 2000)
NEAR_ROOT = ops._PSI_ROOT + RNG.uniform(-0.3, 0.3, 1000)  # digamma's zero, both sides
NEAR_ONE_TWO = np.concatenate(
    [1 + RNG.uniform(-0.05, 0.05, 300), 2 + RNG.uniform(-0.05, 0.05, 300)]
)
POLES = np.array([0.0, -0.0, -1.0, -2.0, -700.0, -np.inf])
SPECIAL = np.array([0.0, -0.0, -1.0, -2.0, -0.5, -1.5, -700.5, np.inf, -np.inf, np.nan, 1e-310,
                    5e-324, -5e-324, 1e300, np.finfo(float).max, 1.0, 2.0])  # fmt: skip


def evaluate(name: str, x) -> np.ndarray:
    """The op through the interpreter."""
    g = sg.Graph()
    return np.asarray(sg.evaluate(g.apply(name, g.input("x")), x=x))


def relative(got, want) -> float:
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want) / np.abs(want)))


def mp_values(fn, xs) -> np.ndarray:
    with mpmath.workdps(40):
        return np.array([float(fn(mpmath.mpf(float(v)))) for v in xs])


# --- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("xs", [DOMAIN, WIDE], ids=["domain", "wide"])
def test_lgamma_matches_scipy(xs):
    far = xs[(np.abs(xs - 1) > 0.05) & (np.abs(xs - 2) > 0.05)]  # SciPy's own error grows there
    assert relative(evaluate("lgamma", far), ss.gammaln(far)) < 1e-13


def test_lgamma_keeps_its_accuracy_at_its_zeros_1_and_2():
    # C's lgamma, not CPython's Lanczos sum (1e-7 relative off at 1 + 1e-6): within an ulp or
    # two of mpmath where the value goes through 0.
    want = mp_values(mpmath.loggamma, NEAR_ONE_TWO)
    assert relative(evaluate("lgamma", NEAR_ONE_TWO), want) < 1e-15
    assert evaluate("lgamma", np.array([1.0, 2.0])).tolist() == [0.0, 0.0]


def test_lgamma_for_negative_x_is_log_abs_gamma():
    xs = NEGATIVE[np.floor(NEGATIVE) != NEGATIVE]
    want = mp_values(lambda v: mpmath.log(abs(mpmath.gamma(v))), xs)
    np.testing.assert_allclose(evaluate("lgamma", xs), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("xs", [DOMAIN, WIDE, NEAR_ROOT], ids=["domain", "wide", "near-root"])
def test_digamma_matches_scipy(xs):
    assert relative(evaluate("digamma", xs), ss.digamma(xs)) < 1e-13


@pytest.mark.parametrize("xs", [DOMAIN, WIDE, NEAR_ROOT], ids=["domain", "wide", "near-root"])
def test_digamma_is_accurate_to_1e_14_relative(xs):
    assert relative(evaluate("digamma", xs), mp_values(mpmath.digamma, xs)) < 1e-14


def test_digamma_keeps_relative_accuracy_through_its_zero():
    # The Taylor series at the zero: a point 1e-10 from it still has all its digits.
    xs = ops._PSI_ROOT + np.array([-1e-10, -1e-14, 0.0, 1e-14, 1e-10, 0.19, -0.19])
    assert relative(evaluate("digamma", xs), mp_values(mpmath.digamma, xs)) < 1e-14


def test_digamma_taylor_coefficients_are_the_polygammas_at_the_root():
    with mpmath.workdps(40):
        root = mpmath.findroot(mpmath.digamma, 1.46)
        assert float(root) == ops._PSI_ROOT
        for n, c in enumerate(ops._PSI_ROOT_TAYLOR):
            want = mpmath.polygamma(n, mpmath.mpf(ops._PSI_ROOT)) / mpmath.factorial(n)
            assert c == float(want), n


def test_asymptotic_series_coefficients_are_the_bernoulli_numbers():
    b = [mpmath.bernoulli(2 * k) for k in range(1, 10)]
    assert tuple(float(b[k - 1] / (2 * k)) for k in range(1, 9)) == ops._PSI_SERIES
    assert tuple(float(v) for v in b) == ops._PSI1_SERIES
    assert tuple(float((2 * k + 1) * b[k - 1]) for k in range(1, 10)) == ops._PSI2_SERIES


def test_digamma_for_negative_x_reflects():
    xs = NEGATIVE[np.floor(NEGATIVE) != NEGATIVE]
    got, want = evaluate("digamma", xs), ss.digamma(xs)
    # Near digamma's zeros on the negative axis the reflection cancels (SciPy's too): absolute.
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs", [DOMAIN, WIDE, NEGATIVE], ids=["domain", "wide", "negative"])
def test_trigamma_matches_scipy(xs):
    xs = xs[xs != np.floor(xs)]
    assert relative(evaluate("trigamma", xs), ss.polygamma(1, xs)) < 1e-13


# --- derivatives --------------------------------------------------------------------------------


def lgamma_derivatives(order: int):
    """[lgamma(x), lgamma'(x), ..., lgamma^(order)(x)], each build_grad of the one before."""
    g = sg.Graph()
    x = g.input("x")
    out = [sg.lgamma(x)]
    for _ in range(order):
        [d] = sg.build_grad(out[-1], [x])
        out.append(d)
    return out, x


def test_the_derivatives_of_lgamma_are_digamma_and_trigamma_themselves():
    (y, d1, d2), x = lgamma_derivatives(2)
    assert sg.evaluate(d1, x=DOMAIN).tobytes() == sg.evaluate(sg.digamma(x), x=DOMAIN).tobytes()
    assert sg.evaluate(d2, x=DOMAIN).tobytes() == sg.evaluate(sg.trigamma(x), x=DOMAIN).tobytes()


@pytest.mark.parametrize("xs", [DOMAIN, WIDE, NEGATIVE], ids=["domain", "wide", "negative"])
def test_derivatives_of_lgamma_to_fourth_order_match_scipy(xs):
    xs = xs[np.abs(xs - np.round(xs)) > 1e-3]  # away from the poles
    derivatives, _ = lgamma_derivatives(4)
    got = sg.evaluate(derivatives[1:], x=xs)
    for n, values in enumerate(got):
        want = ss.polygamma(n, xs)
        # For x < 0 the reflection cancels near the zeros (SciPy's digamma too), and for n >= 2
        # it takes sin(pi x) of the unreduced x (SciPy's polygamma is a Hurwitz zeta there).
        rtol = 1e-13 if xs.min() > 0 else 1e-12 if n < 2 else 1e-11
        np.testing.assert_allclose(values, want, rtol=rtol, err_msg=f"order {n + 1}")


@pytest.mark.parametrize("name", ["lgamma", "digamma", "trigamma"])
def test_first_and_second_derivatives_match_central_differences(name):
    g = sg.Graph()
    x = g.input("x")
    y = g.apply(name, x)
    [d1] = sg.build_grad(y, [x])
    [d2] = sg.build_grad(d1, [x])
    for p in (0.3, 0.9, 1.4616, 2.5, 7.0, 40.0, -0.5, -2.7):
        want1 = central_difference(lambda v: sg.evaluate(y, x=v), p, step=1e-6)
        want2 = central_difference(lambda v: sg.evaluate(d1, x=v), p, step=1e-6)
        got1, got2 = sg.evaluate([d1, d2], x=p)
        np.testing.assert_allclose(got1, want1, rtol=1e-7, atol=1e-8, err_msg=f"{name}' at {p}")
        np.testing.assert_allclose(got2, want2, rtol=1e-6, atol=1e-7, err_msg=f"{name}'' at {p}")


def test_forward_mode_second_derivative_is_trigamma():
    g = sg.Graph()
    x = g.input("x")
    [d1] = sg.jvp(sg.lgamma(x), [x], [1.0])
    [d2] = sg.jvp(d1, [x], [1.0])
    np.testing.assert_allclose(sg.evaluate(d2, x=DOMAIN), ss.polygamma(1, DOMAIN), rtol=1e-13)


@pytest.mark.parametrize("d", [1, 2, 3, 5, 10])
def test_multivariate_log_gamma_composition(d):
    # Against SciPy; its derivative is the sum of the digammas, compiled as interpreted.
    a = sg.Graph().input("a")
    f = sg.multigammaln(a, d)
    [df] = sg.build_grad(f, [a])
    points = (d - 1) / 2 + RNG.uniform(0.1, 20.0, 200)
    value, slope = sg.evaluate([f, df], a=points)
    np.testing.assert_allclose(value, [ss.multigammaln(p, d) for p in points], rtol=1e-13)
    want = sum(ss.digamma(points + (1 - j) / 2) for j in range(1, d + 1))
    np.testing.assert_allclose(slope, want, rtol=1e-13)
    compiled = sg.compile([f, df])(points)
    np.testing.assert_allclose(compiled[0], value, rtol=1e-15)
    np.testing.assert_allclose(compiled[1], slope, rtol=1e-13)


# --- compiled code ------------------------------------------------------------------------------


def ulps(got, want) -> np.ndarray:
    got, want = np.asarray(got), np.asarray(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(all="ignore"):
        distance = np.abs(got - want) / np.spacing(np.maximum(np.abs(got), np.abs(want)))
    return np.where(same, 0.0, distance)


@pytest.fixture(scope="module")
def compiled():
    derivatives, x = lgamma_derivatives(3)
    g = x.graph
    outputs = [*derivatives, g.apply("digamma", x), g.apply("trigamma", x)]
    return sg.compile(outputs, inputs=[x]), outputs


@pytest.mark.parametrize("xs", [DOMAIN, WIDE, NEGATIVE, NEAR_ROOT, SPECIAL],
                         ids=["domain", "wide", "negative", "near-root", "special"])  # fmt: skip
def test_compiled_batch_equals_the_interpreter(compiled, xs):
    fn, outputs = compiled
    got, want = fn(xs), sg.evaluate(outputs, x=xs)
    # lgamma: the same C function on both sides, to the bit. digamma, trigamma: the same IEEE
    # operations, but for libmvec's 4-lane log/tan/sin (within 4 ulp of libm's) in the loop.
    assert got[0].tobytes() == want[0].tobytes()
    for k in range(1, len(got)):
        # For x < 0 the reflection cancels near the zeros: 1e-12 of the value or of 1 there.
        with np.errstate(invalid="ignore"):
            scale = 1e-12 * np.maximum(np.abs(want[k]), 1.0)
            close = (ulps(got[k], want[k]) <= 64) | ((xs < 0) & (np.abs(got[k] - want[k]) < scale))
        assert np.all(close), (k, xs[~close][:5], got[k][~close][:5], want[k][~close][:5])


def test_compiled_single_points_equal_the_interpreter(compiled):
    fn, outputs = compiled
    for p in [*DOMAIN[:50], *SPECIAL, *NEAR_ROOT[:20], -0.5, -3.25]:
        got, want = fn(float(p)), sg.evaluate(outputs, x=float(p))
        for k, (a, b) in enumerate(zip(got, want)):
            assert ulps(a, b) <= 4, (p, k, a, b)


def test_lgamma_calls_scalar_libm_in_the_vector_loop(compiled):
    # libmvec has no lgamma: the 4-lane loop makes four scalar calls, as the registry says.
    fn, _ = compiled
    assert OPS["lgamma"].llvm.kind == "libm" and OPS["lgamma"].llvm.vector is None
    assert "call double @lgamma(" in fn.llvm_ir
    assert "gamma" not in "".join(line for line in fn.llvm_ir.splitlines() if "_ZGV" in line)


# --- poles and special values --------------------------------------------------------------------


def test_values_at_the_poles_and_infinities():
    x = sg.Graph().input("x")
    both = sg.compile([sg.lgamma(x), sg.digamma(x), sg.trigamma(x)])
    cases = [  # x, (lgamma, digamma, trigamma): a list, as 0.0 == -0.0
        (0.0, (math.inf, -math.inf, math.inf)),
        (-0.0, (math.inf, math.inf, math.inf)),
        (-1.0, (math.inf, math.nan, math.inf)),
        (-2.0, (math.inf, math.nan, math.inf)),
        (-700.0, (math.inf, math.nan, math.inf)),
        (-math.inf, (math.inf, math.nan, math.inf)),
        (math.inf, (math.inf, math.inf, 0.0)),
        (math.nan, (math.nan, math.nan, math.nan)),
        (1e-310, (-math.log(1e-310), -math.inf, math.inf)),
    ]
    for x, want in cases:
        interpreted = [float(evaluate(n, x)) for n in ("lgamma", "digamma", "trigamma")]
        for got in (interpreted, [float(v) for v in both(x)]):
            for name, a, b in zip(("lgamma", "digamma", "trigamma"), got, want):
                assert a == b or (math.isnan(a) and math.isnan(b)), (name, x, a, b)
                if b == 0.0:
                    assert math.copysign(1.0, a) == 1.0


def test_digamma_and_trigamma_at_the_poles_match_scipy():
    for name, ref in (("digamma", ss.digamma), ("trigamma", lambda v: ss.polygamma(1, v))):
        got, want = evaluate(name, POLES), ref(POLES)
        assert np.array_equal(got, want, equal_nan=True), (name, got, want)


def test_special_values_match_scipy():
    for name, ref in (("digamma", ss.digamma), ("trigamma", lambda v: ss.polygamma(1, v))):
        got, want = evaluate(name, SPECIAL), ref(SPECIAL)
        finite = np.isfinite(want) & np.isfinite(got)
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        assert np.array_equal(got[~finite & ~np.isnan(got)], want[~finite & ~np.isnan(want)])
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-14, err_msg=name)


def test_no_warnings_and_the_shape_of_the_input():
    with np.errstate(all="raise"):
        for name in ("lgamma", "digamma", "trigamma"):
            out = OPS[name].numpy(np.array([[0.0, -1.0], [np.nan, 2.5]]))
            assert out.shape == (2, 2) and out.dtype == np.float64
            assert OPS[name].numpy(np.float64(2.5)).shape == ()
            assert OPS[name].numpy(np.empty((0, 3))).shape == (0, 3)


# --- the language and SymPy -----------------------------------------------------------------------


def test_functions_of_the_language_and_of_sg():
    for name in ("lgamma", "digamma", "trigamma"):
        e = sg.parse(f"{name}(x + 1)")
        assert e.op == name and getattr(sg, name)(e).op == name
        assert float(sg.evaluate(e, x=1.5)) == float(evaluate(name, 2.5))


def test_sympy_forms_and_back():
    x = sg.Graph().input("x")
    forms = sg.to_sympy([sg.lgamma(x), sg.digamma(x), sg.trigamma(x)])
    assert [str(f) for f in forms] == ["loggamma(x)", "digamma(x)", "trigamma(x)"]
    back = [sg.from_sympy(f) for f in forms]
    assert [b.op for b in back] == ["lgamma", "digamma", "trigamma"]


def test_from_sympy_reads_polygamma_of_orders_zero_and_one():
    import sympy as sp

    x = sp.Symbol("x", real=True)
    second = sp.diff(sp.loggamma(x), x, 2)  # SymPy writes it polygamma(1, x)
    for expr, op, want in [
        (sp.polygamma(0, x), "digamma", ss.digamma(2.5)),
        (second, "trigamma", ss.polygamma(1, 2.5)),
    ]:
        f = sg.from_sympy(expr)
        assert f.op == op
        assert float(sg.evaluate(f, x=2.5)) == pytest.approx(want, rel=1e-14)
    with pytest.raises(sg.GraphError, match=r"polygamma\(2, \.\.\.\) has no symgrad op"):
        sg.from_sympy(sp.polygamma(2, x))
