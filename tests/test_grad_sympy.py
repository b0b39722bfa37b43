"""build_grad and hessian against SymPy's ``diff``, on random expressions and on every op.

SymPy is only the oracle: the expression goes to SymPy with ``to_sympy``, SymPy differentiates it,
``lambdify`` evaluates the result with numpy, and symgrad's derivative graph is evaluated with the
numpy interpreter (``sg.evaluate``) at the same points. build_grad itself never imports SymPy.

At a kink (abs, relu at 0; a tie of max/min) symgrad follows its documented conventions, which
SymPy does not share, so points are compared only away from kinks.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import sympy as sp
from hypothesis import given, settings

import symgrad as sg
from symgrad.graph import Expr, reachable
from symgrad.ops import OPS
from tests.strategies import expressions
from tests.toolbox import DIFF_OPS, domain_sample

NAMES = ("x", "y")
SYMBOLS = [sp.Symbol(n, real=True) for n in NAMES]
# Four fixed points for every random expression: deterministic, like the derandomized profile.
POINTS = np.random.default_rng(20240601).uniform(-2.0, 2.0, size=(4, len(NAMES)))
HUGE = 1e6  # SymPy values beyond this (near a pole) are not compared
RTOL, ATOL = 1e-7, 1e-9

# lambdify's numpy printer knows neither erf (that is SciPy's) nor DiracDelta, which is zero
# away from the kinks where we compare.
_erf = np.vectorize(math.erf, otypes=[np.float64])
# SymPy writes the derivatives of lgamma, digamma and trigamma as polygamma(n, x): SciPy's.
MODULES = [
    {"erf": _erf, "DiracDelta": lambda *args: 0.0, "polygamma": scipy.special.polygamma},
    "numpy",
]

# Where each op with a kink has it: a function of the operands that is zero there.
KINKS = {
    "abs": lambda a: a,
    "relu": lambda a: a,
    "max": lambda a, b: a - b,
    "min": lambda a, b: a - b,
    "where": lambda c, a, b: c,
}
KINK_GAP = 0.05  # per-op points stay at least this far from a kink


def _lambdify(expr):
    """A float function of (x, y) computing the SymPy expression with numpy."""
    fn = sp.lambdify(SYMBOLS, expr, modules=MODULES)

    def call(point) -> float:
        with np.errstate(all="ignore"):
            return float(fn(*point))

    return call


def _near_kink(f: Expr, values: dict[str, float]) -> bool:
    """Whether a max/min/abs/relu node of ``f`` sits at (or within rounding of) its kink."""
    g = f.graph
    gaps = []
    for i in reachable(g, [f.id]):
        node = g.node(i)
        if node["op"] in KINKS and node["op"] != "where":
            gaps.append(node["args"])
    if not gaps:
        return False
    operands = [[Expr(g, a) for a in args] for args in gaps]
    evaluated = sg.evaluate(operands, **values)
    for row in evaluated:
        row = [float(v) for v in np.atleast_1d(row)]
        gap = row[0] - row[1] if len(row) == 2 else row[0]
        if abs(gap) <= 1e-6 * (1.0 + sum(map(abs, row))):
            return True
    return False


def _check_random(f: Expr) -> int:
    """Compare gradient and Hessian with SymPy's at POINTS; the number of values compared."""
    g = f.graph
    wrt = [g.inputs[n] for n in NAMES]
    grads = sg.build_grad(f, wrt)
    hess = sg.hessian(f, wrt)
    s = sg.to_sympy(f)
    want_grad = [_lambdify(sp.diff(s, v)) for v in SYMBOLS]
    want_hess = [[_lambdify(e) for e in row] for row in sp.hessian(s, SYMBOLS).tolist()]
    compared = 0
    for point in POINTS:
        values = dict(zip(NAMES, map(float, point)))
        got_grad, got_hess = sg.evaluate([grads, hess], **values)
        pairs = [(got_grad[i], want_grad[i], f"d/d{NAMES[i]}") for i in range(len(NAMES))]
        pairs += [
            (got_hess[i][j], want_hess[i][j], f"d2/d{NAMES[i]}d{NAMES[j]}")
            for i in range(len(NAMES))
            for j in range(len(NAMES))
        ]
        for got, oracle, what in pairs:
            want = oracle(point)
            if not math.isfinite(want) or abs(want) > HUGE:
                continue
            if math.isclose(got, want, rel_tol=RTOL, abs_tol=ATOL) or _near_kink(f, values):
                continue
            pytest.fail(f"{what} of {s} at {values}: symgrad {got!r}, SymPy {want!r}")
        compared += len(pairs)
    return compared


@settings(max_examples=60)
@given(expressions(names=NAMES, smooth=True))
def test_random_smooth_expressions_match_sympy_to_second_order(f):
    _check_random(f)


@settings(max_examples=60)
@given(expressions(names=NAMES, smooth=False))
def test_random_expressions_with_max_min_match_sympy_away_from_kinks(f):
    _check_random(f)


def _op_points(name: str, n: int = 8) -> np.ndarray:
    """``n`` points of the op's domain, at least KINK_GAP from its kink (if it has one)."""
    candidates = np.column_stack(domain_sample(name, 4 * n, sum(map(ord, name))))
    kink = KINKS.get(name)
    points = [p for p in candidates if kink is None or abs(kink(*p)) >= KINK_GAP]
    assert len(points) >= n, name
    return np.array(points[:n])


@pytest.mark.parametrize("name", DIFF_OPS)
def test_every_op_first_and_second_derivatives_match_sympy(name):
    g = sg.Graph()
    xs = [g.input(f"x{k}") for k in range(OPS[name].arity)]
    syms = [sp.Symbol(f"x{k}", real=True) for k in range(len(xs))]
    f = g.apply(name, *xs)
    s = sg.to_sympy(f)
    first = [sp.diff(s, v) for v in syms]
    second = [[sp.diff(d, v) for v in syms] for d in first]
    want = sp.lambdify(syms, [first, second], modules=MODULES)
    grads, hess = sg.build_grad(f, xs), sg.hessian(f, xs)
    for p in _op_points(name):
        values = {f"x{k}": float(v) for k, v in enumerate(p)}
        got_grad, got_hess = sg.evaluate([grads, hess], **values)
        want_grad, want_hess = want(*p)
        want_grad = np.array(want_grad, dtype=np.float64)
        want_hess = np.array(want_hess, dtype=np.float64)
        assert np.all(np.isfinite(want_grad)) and np.all(np.isfinite(want_hess)), (name, p)
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(got_hess, want_hess, rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_oracle_sees_the_kink_it_is_told_to_avoid():
    # Guard for _near_kink: relu at 0 and a tie of max are kinks, a point away from them is not.
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    f = sg.relu(x) + sg.max(x, y)
    assert _near_kink(f, {"x": 0.0, "y": 1.0})
    assert _near_kink(f, {"x": 0.5, "y": 0.5})
    assert not _near_kink(f, {"x": 0.5, "y": 1.0})


def test_build_grad_never_imports_sympy():
    code = (
        "import sys, symgrad as sg\n"
        "f = sg.parse('sin(x)*exp(y) + erf(x) - log1p(y*y)')\n"
        "w = list(f.graph.inputs.values())\n"
        "sg.evaluate([sg.build_grad(f, w), sg.hessian(f, w)], x=0.5, y=1.5)\n"
        "assert 'sympy' not in sys.modules, 'sympy was imported'\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
