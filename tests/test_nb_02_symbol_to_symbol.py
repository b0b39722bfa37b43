"""notebooks/02_symbol_to_symbol.ipynb: its RESULTS against SymPy (tree sizes by
``preorder_traversal`` and ``count_ops``, derivatives by ``sympy.diff``), and its graph sizes
rebuilt here with symgrad."""

import math

import mpmath
import numpy as np
import pytest
import sympy

import symgrad as sg

NAME = "02_symbol_to_symbol.ipynb"
x = sympy.Symbol("x")


def sympy_nest(k: int, family: str):
    f = x
    for _ in range(k):
        f = sympy.sin(f) if family == "sin" else f * sympy.sin(f)
    return f


def tree_nodes(expr) -> int:
    return sum(1 for _ in sympy.preorder_traversal(expr))


def symgrad_nest(k: int, family: str):
    g = sg.Graph()
    X = g.input("x")
    f = X
    for _ in range(k):
        f = sg.sin(f) if family == "sin" else f * sg.sin(f)
    return f, X


def symgrad_sizes(k: int, family: str) -> tuple[int, int, int]:
    """(nodes of f, of f + gradient as built, of f + gradient optimized)"""
    f, X = symgrad_nest(k, family)
    [df] = sg.build_grad(f, [X])
    return len(sg.optimize([f])[0].graph), len(f.graph), len(sg.optimize([f, df])[0].graph)


def test_seed_example(results):
    w = sympy.Symbol("w")
    z = sympy.sin(sympy.sin(sympy.sin(w)))
    assert results["seed_example_tree_nodes_dz_dw"] == tree_nodes(sympy.diff(z, w))
    # grad_table[z], [y], [x], [w] with y = sin(sin(w)), x = sin(w), at w = 1.5
    xv, yv = sympy.sin(w), sympy.sin(sympy.sin(w))
    expected = [1, sympy.cos(yv), sympy.cos(yv) * sympy.cos(xv), sympy.diff(z, w)]
    at = {w: sympy.Rational(3, 2)}
    table = [float(sympy.sympify(e).evalf(30, subs=at)) for e in expected]
    np.testing.assert_allclose(results["seed_example_grad_table_at_1.5"], table, rtol=1e-14)
    g = sg.Graph()
    W = g.input("w")
    X = sg.sin(W)
    Y = sg.sin(X)
    Z = sg.sin(Y)
    ids = [e.id for e in sg.build_grad(Z, [Z, Y, X, W])]
    assert results["seed_example_grad_table_ids"] == ids


def test_sin_nest_sympy_sizes(results):
    diffs = [sympy.diff(sympy_nest(k, "sin"), x) for k in (5, 10, 20)]
    assert results["sin_k_5_10_20_sympy_tree_df"] == [tree_nodes(d) for d in diffs]
    assert results["sin_k_5_10_20_sympy_count_ops_df"] == [sympy.count_ops(d) for d in diffs]


def test_usin_nest_sympy_sizes(results):
    # The tree of f doubles per level: 5*2**(k-1) - 1 nodes, checked by walking it for k <= 12.
    for k in range(1, 13):
        assert tree_nodes(sympy_nest(k, "usin")) == 5 * 2 ** (k - 1) - 1
    assert results["usin_k_5_10_20_sympy_tree_f"] == [5 * 2 ** (k - 1) - 1 for k in (5, 10, 20)]
    diffs = {k: sympy.diff(sympy_nest(k, "usin"), x) for k in (5, 10, 12)}
    assert results["usin_k_5_10_12_sympy_tree_df"] == [tree_nodes(d) for d in diffs.values()]
    ops = [sympy.count_ops(diffs[k]) for k in (5, 10)]
    assert results["usin_k_5_10_sympy_count_ops_df"] == ops
    assert results["from_sympy_nodes_usin_k12"] == len(sg.from_sympy(diffs[12]).graph)


@pytest.mark.parametrize("family", ["sin", "usin"])
def test_symgrad_sizes_and_the_cheap_gradient_bound(results, family):
    sizes = {k: symgrad_sizes(k, family) for k in range(1, 21)}
    assert results[f"{family}_k_5_10_20_symgrad_f"] == [sizes[k][0] for k in (5, 10, 20)]
    assert results[f"{family}_k_5_10_20_symgrad_f_grad"] == [sizes[k][2] for k in (5, 10, 20)]
    if family == "usin":
        built = [sizes[k][1] for k in (5, 10, 20)]
        assert results["usin_k_5_10_20_symgrad_f_grad_as_built"] == built
    ratio = max(opt / f for f, _, opt in sizes.values())
    assert results[f"max_ratio_{family}"] == pytest.approx(ratio, rel=1e-12)
    assert ratio <= 4  # DESIGN §4: nodes(f + gradient) <= 4 x nodes(f) after optimize


def test_gradients_equal_sympys(results):
    at = sympy.Rational(3, 2)
    sin20 = sympy.diff(sympy_nest(20, "sin"), x).evalf(30, subs={x: at})
    assert results["grad_sin_k20_at_1.5"] == pytest.approx(float(sin20), rel=1e-13)
    usin10 = sympy.lambdify(x, sympy.diff(sympy_nest(10, "usin"), x), "mpmath", cse=True)
    with mpmath.workdps(40):
        expected = float(usin10(mpmath.mpf(at.p) / at.q))
    assert results["grad_usin_k10_at_1.5"] == pytest.approx(expected, rel=1e-13)
    # k = 20 is out of reach for sympy.diff of the whole nest: SymPy differentiates one level,
    # and the chain rule multiplies the levels' derivatives in 40-digit arithmetic.
    u = sympy.Symbol("u")
    local = sympy.lambdify(u, sympy.diff(u * sympy.sin(u), u), "mpmath")
    with mpmath.workdps(40):
        uu, dd = mpmath.mpf(3) / 2, mpmath.mpf(1)
        for _ in range(20):
            uu, dd = uu * mpmath.sin(uu), dd * local(uu)
        expected = float(dd)
    assert math.isclose(results["grad_usin_k20_at_1.5"], expected, rel_tol=1e-12)
