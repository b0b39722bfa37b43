"""to_sympy / from_sympy: every op survives graph -> SymPy -> graph with its values, SymPy's
n-ary and piecewise forms read back exactly, unsupported functions change nothing, and deep
expressions convert without recursion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

from symgrad.errors import GraphError, SymgradError
from symgrad.graph import Expr, Graph
from symgrad.ops import OPS
from symgrad.sympy_bridge import from_sympy, to_sympy
from tests.toolbox import ELEMENTWISE_OPS, domain_sample

N = 64


def _eval(exprs: list[Expr], values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A test-local oracle: every node of the graph in id order, with each OpDef.numpy."""
    g = exprs[0].graph
    out: dict[int, np.ndarray] = {}
    for i in sorted(g.nx.nodes):
        node = g.node(i)
        if node["op"] == "input":
            out[i] = values.get(g.attr(i, "name"), np.nan)
        elif node["op"] == "const":
            out[i] = np.float64(g.attr(i, "value"))
        else:
            out[i] = OPS[node["op"]].numpy(*(out[a] for a in node["args"]))
    return [np.broadcast_to(out[e.id], np.shape(next(iter(values.values())))) for e in exprs]


def _eval1(e: Expr, **values) -> np.ndarray:
    return _eval([e], {k: np.asarray(v, dtype=float) for k, v in values.items()})[0]


def _samples(name: str) -> dict[str, np.ndarray]:
    """N points in the op's domain, with its edge cases: ties of two operands, zeros."""
    domain = OPS[name].domain
    cols = domain_sample(name, N, sum(map(ord, name)))
    for k, (lo, hi) in enumerate(domain):
        if lo < 0 < hi:
            cols[k][k] = 0.0  # sign(0), abs(0), where's condition 0, ...
    if len(domain) == 2 and domain[0] == domain[1]:
        cols[1][4:8] = cols[0][4:8]  # ties: eq, max, a - a
    return {f"x{k}": c for k, c in enumerate(cols)}


def _sympy_value(expr, values: dict[str, float]) -> float:
    subs = {sp.Symbol(n, real=True): sp.Float(v) for n, v in values.items()}
    return float(expr.xreplace(subs).evalf())


@pytest.mark.parametrize("evaluate", [True, False])
@pytest.mark.parametrize("name", ELEMENTWISE_OPS)
def test_every_op_round_trips_through_sympy(name, evaluate):
    g = Graph()
    xs = [g.input(f"x{k}") for k in range(OPS[name].arity)]
    e = g.apply(name, *xs)
    s = to_sympy(e, evaluate=evaluate)
    back = from_sympy(s)
    assert back.graph is not g
    assert set(back.graph.inputs) <= {f"x{k}" for k in range(len(xs))}
    values = _samples(name)
    want = _eval1(e, **values)
    assert np.all(np.isfinite(want)), name
    np.testing.assert_allclose(_eval1(back, **values), want, rtol=1e-12, atol=1e-14)
    for p in range(8):  # and SymPy's own value of the form
        point = {k: float(v[p]) for k, v in values.items()}
        assert math.isclose(_sympy_value(s, point), float(want[p]), rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("name", ["sin", "atan2", "abs", "max", "pow", "div", "sub", "neg"])
def test_simple_ops_come_back_as_the_same_single_op(name):
    g = Graph()
    e = g.apply(name, *(g.input(f"x{k}") for k in range(OPS[name].arity)))
    back = from_sympy(to_sympy(e))
    assert back.op == name
    assert [a.name for a in back.args] == [a.name for a in e.args]


@pytest.mark.parametrize("name", ["lt", "le", "gt", "ge", "eq", "ne"])
def test_comparisons_come_back_as_the_comparison(name):
    g = Graph()
    e = g.apply(name, g.input("a"), g.input("b"))
    s = to_sympy(e)
    assert isinstance(s, sp.Piecewise)
    back = from_sympy(s)
    assert back.op == name and sorted(a.name for a in back.args) == ["a", "b"]


def test_where_of_a_comparison_uses_the_relational_itself():
    g = Graph()
    x, y = g.input("x"), g.input("y")
    X, Y = sp.symbols("x y", real=True)
    s = to_sympy(g.apply("where", x < y, x, y))
    assert s == sp.Piecewise((X, X < Y), (Y, True))
    back = from_sympy(s)
    assert back.op == "where" and back.args[0].op == "lt"


def test_where_of_a_plain_value_round_trips_to_where_of_it():
    g = Graph()
    c, a, b = g.input("c"), g.input("a"), g.input("b")
    back = from_sympy(to_sympy(g.apply("where", c, a, b)))
    assert back.op == "where" and [v.name for v in back.args] == ["c", "a", "b"]


def test_the_seed_matches_sympify_of_its_text():
    text = "(2*w2*(w1*x + b1) - label)**2"
    g = Graph()
    x, label, w1, b1, w2 = (g.input(n) for n in ("x", "label", "w1", "b1", "w2"))
    f = (2.0 * w2 * (w1 * x + b1) - label) ** 2.0
    names = {n: sp.Symbol(n, real=True) for n in g.inputs}
    want = sp.sympify(text, locals=names)
    assert sp.simplify(to_sympy(f) - want) == 0
    assert to_sympy(f) == want  # integral constants are Integers: the very same expression


def test_constants_become_sympy_numbers():
    g = Graph()
    x = g.input("x")
    got = to_sympy([g.const(v) for v in (2.0, 0.5, -3.0, math.nan, math.inf, -math.inf)])
    assert got == [sp.Integer(2), sp.Float(0.5), sp.Integer(-3), sp.nan, sp.oo, -sp.oo]
    assert to_sympy(x**2.0) == sp.Symbol("x", real=True) ** 2


def test_to_sympy_keeps_list_nesting():
    g = Graph()
    x, y = g.input("x"), g.input("y")
    X, Y = sp.symbols("x y", real=True)
    assert to_sympy([x, [y, [x * y]], []]) == [X, [Y, [X * Y]], []]
    assert to_sympy(x) == X


def test_to_sympy_rejects_what_is_not_an_expr():
    with pytest.raises(SymgradError):
        to_sympy([Graph().input("x"), 3.0])
    with pytest.raises(SymgradError, match="different graphs"):
        to_sympy([Graph().input("x"), Graph().input("x")])


def test_nary_add_and_mul_fold_into_binary_ops():
    x, y, z, w = sp.symbols("x y z w", real=True)
    e = from_sympy(x + y + z + w + 1)
    ops = [e.graph.node(i)["op"] for i in e.graph.nx.nodes]
    assert ops.count("add") == 4 and len(e.graph) == 9
    assert _eval1(e, x=1.0, y=2.0, z=3.0, w=4.0) == 11.0
    m = from_sympy(x * y * z * w * 3)
    assert _eval1(m, x=1.0, y=2.0, z=3.0, w=4.0) == 72.0


def test_differences_and_quotients_become_sub_and_div():
    x, y = sp.symbols("x y")
    e = from_sympy(x - 2 * y / 3)
    assert e.op == "sub" and e.args[1].op == "div"
    assert _eval1(e, x=1.0, y=3.0) == 1.0 - 2.0 * 3.0 / 3.0
    assert from_sympy(1 / x).op == "div"
    assert from_sympy(x / y**2).args[1].op == "pow"
    assert from_sympy(sp.sqrt(x)).op == "sqrt"
    inv_sqrt = from_sympy(1 / sp.sqrt(x))
    assert inv_sqrt.op == "div" and inv_sqrt.args[1].op == "sqrt"
    assert from_sympy(-x).op == "neg"
    assert from_sympy(-x - y).op == "neg"
    assert _eval1(from_sympy(-x - y), x=1.0, y=2.0) == -3.0


def test_rational_pi_and_e_are_constants():
    x = sp.Symbol("x")
    e = from_sympy(sp.Rational(1, 3) * x + sp.pi + sp.E)
    assert _eval1(e, x=3.0) == pytest.approx(1.0 + math.pi + math.e, rel=1e-15)
    assert from_sympy(sp.pi).value == math.pi
    assert from_sympy(sp.E).value == math.e
    assert from_sympy(sp.Rational(1, 3)).value == 1 / 3


@pytest.mark.parametrize(
    "number, value",
    [
        (sp.Integer(7), 7.0),
        (sp.Float(0.1), 0.1),
        (sp.nan, math.nan),
        (sp.oo, math.inf),
        (-sp.oo, -math.inf),
        (sp.zoo, math.nan),
        (sp.Rational(1, 10**400), 0.0),  # rounds to 0, as float(Fraction(1, 10**400)) does
        (sp.Float("1e-400"), 0.0),
        (sp.true, 1.0),
        (2.5, 2.5),
    ],
)
def test_numbers(number, value):
    got = from_sympy(number)
    assert got.op == "const"
    assert got.value == value or (math.isnan(value) and math.isnan(got.value))


@pytest.mark.parametrize(
    "number, shown",
    [
        (sp.Integer(10) ** 400, r"100000000000\.\.\.00000000 \(401 digits\)"),
        (-(sp.Integer(10) ** 400), r"-100000000000\.\.\.00000000 \(401 digits\)"),
        (sp.Rational(10**400, 3), r"\(401 digits\)/3"),
        (sp.Float("1e500"), r"1\.00000E\+500"),
        (sp.Float("-2.5e400"), r"-2\.50000E\+400"),
    ],
)
def test_a_finite_number_beyond_float64_is_refused_as_graph_const_refuses_it(number, shown):
    g = Graph()
    x = g.input("x")
    with pytest.raises(GraphError, match="too large for a float64"):
        g.const(10**400)
    for expr in (number, sp.Symbol("x") + number, sp.Max(sp.Symbol("x"), number)):
        with pytest.raises(GraphError, match=shown):
            from_sympy(expr, g)
        assert len(g) == 1 and g.inputs == {"x": x}
    with pytest.raises(GraphError, match=shown):
        from_sympy(sp.Symbol("x") ** number, g)  # an exponent too
    assert len(g) == 1


def test_a_rational_with_a_huge_denominator_is_its_value():
    x = sp.Symbol("x")
    e = from_sympy(sp.Mul(x, sp.Rational(3, 10**400), evaluate=False))
    assert _eval1(e, x=2.0) == 0.0  # 6e-400 rounds to 0
    e = from_sympy(sp.Mul(x, sp.Rational(10**400 + 1, 10**399), evaluate=False))
    assert _eval1(e, x=2.0) == pytest.approx(20.0, rel=1e-15)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sp.Dummy("x") + sp.Symbol("x"), "Dummy symbol 'x'"),
        (lambda: sp.Dummy("x"), "Dummy symbol 'x'"),
        (lambda: sp.Wild("x") * 2, "Wild symbol 'x'"),
        (lambda: sp.Symbol("x") + sp.Symbol("x", real=True), "two different SymPy symbols .*'x'"),
        (lambda: [sp.Symbol("y"), sp.Symbol("y", positive=True)], "named 'y'.*positive"),
    ],
)
def test_different_sympy_symbols_of_one_name_are_refused(make, match):
    g = Graph()
    g.input("x") + 1.0
    before = (len(g), list(g.nx.nodes(data=True)), list(g.inputs))
    with pytest.raises(GraphError, match=match):
        from_sympy(make(), g)
    assert (len(g), list(g.nx.nodes(data=True)), list(g.inputs)) == before


def test_one_symbol_used_twice_and_a_graph_input_of_its_name_are_one_input():
    x = sp.Symbol("x", real=True)
    g = Graph()
    gx = g.input("x")
    e = from_sympy([x * x, sp.sin(x)], g)
    assert e[0].args[0] == gx and e[1].args == (gx,)  # x*x is x**2 in SymPy
    assert from_sympy(to_sympy(e[0]) + x, g).op == "add"  # to_sympy's real Symbols round-trip


@pytest.mark.parametrize(
    "expr, match",
    [
        (sp.I, "ImaginaryUnit"),
        (sp.Symbol("x") ** sp.I, "ImaginaryUnit"),
        (1 + 2j, "ImaginaryUnit"),
        (sp.Derivative(sp.Function("f")(sp.Symbol("x")), sp.Symbol("x")), "Derivative"),
        (sp.Integral(sp.Symbol("x"), sp.Symbol("x")), "Integral"),
        (sp.Matrix([1, 2]), "Matrix"),
        (sp.MatrixSymbol("A", 2, 2), "MatrixSymbol"),
        (sp.besselj(0, sp.Symbol("x")), "besselj"),
        (sp.floor(sp.Symbol("x")), "floor"),
        (sp.Sum(sp.Symbol("k"), (sp.Symbol("k"), 1, 3)), "Sum"),
        (sp.Lambda(sp.Symbol("x"), 1), "Lambda"),
        (sp.Interval(0, 1), "Interval"),
        (sp.ITE(sp.Symbol("x") > 0, sp.Symbol("x") > 1, sp.Symbol("x") < 2), "ITE"),
        ("x + 1", "not a SymPy expression"),
        (None, "not a SymPy expression"),
        (np.array([1.0, 2.0]), "not a SymPy expression"),
        (sp.Symbol("1x"), "'1x' is not a name"),
        (sp.Symbol("__x"), "'__x' is not a name"),
    ],
)
def test_what_symgrad_has_no_op_for_is_a_graph_error_naming_it(expr, match):
    g = Graph()
    g.apply("sin", g.input("a"))
    before = (len(g), list(g.nx.nodes(data=True)), list(g.inputs))
    with pytest.raises(GraphError, match=match):
        from_sympy(expr, g)
    assert (len(g), list(g.nx.nodes(data=True)), list(g.inputs)) == before


@pytest.mark.parametrize(
    "expr, x, value",
    [
        (sp.zoo, 0.0, math.nan),  # complex infinity has no real value
        (sp.Piecewise((sp.Symbol("x"), sp.Symbol("x") > 0)), -1.0, math.nan),
        (sp.Piecewise((sp.Symbol("x"), sp.Symbol("x") > 0)), 2.0, 2.0),
        (sp.true, 0.0, 1.0),
        (sp.Symbol("x") < 1, 0.5, 1.0),  # a relational outside where is its 0/1 value
        (sp.Eq(sp.Symbol("x"), 1), 0.5, 0.0),
        (sp.oo * sp.Symbol("x"), 2.0, math.inf),
        (sp.Pow(sp.Symbol("x"), sp.nan, evaluate=False), 2.0, math.nan),
    ],
)
def test_edge_inputs_that_have_a_real_value_convert(expr, x, value):
    e = from_sympy(expr)
    got = e.value if e.op == "const" else float(_eval1(e, x=x))
    assert got == value or (math.isnan(value) and math.isnan(got))


def test_max_and_min_of_three_fold():
    x, y, z = sp.symbols("x y z")
    e = from_sympy(sp.Max(x, y, z))
    assert [e.graph.node(i)["op"] for i in e.graph.nx.nodes].count("max") == 2
    vals = {"x": [1.0, 5.0, 0.0], "y": [2.0, 0.0, 0.0], "z": [0.0, 1.0, 9.0]}
    np.testing.assert_array_equal(_eval1(e, **vals), [2.0, 5.0, 9.0])
    np.testing.assert_array_equal(_eval1(from_sympy(sp.Min(x, y, z)), **vals), [0.0, 0.0, 0.0])


def test_piecewise_becomes_nested_where():
    x = sp.Symbol("x", real=True)
    e = from_sympy(sp.Piecewise((x, x < 0), (x**2, x < 1), (7, True)))
    assert e.op == "where" and e.args[2].op == "where"
    np.testing.assert_array_equal(_eval1(e, x=[-2.0, 0.5, 3.0]), [-2.0, 0.25, 7.0])


def test_piecewise_without_a_true_branch_is_nan_elsewhere():
    x = sp.Symbol("x", real=True)
    e = from_sympy(sp.Piecewise((x, x > 0)))
    got = _eval1(e, x=[2.0, -1.0])
    assert got[0] == 2.0 and math.isnan(got[1])


def test_piecewise_with_and_or_not_conditions():
    x, y = sp.symbols("x y", real=True)
    cases = [
        (sp.And(x > 0, y > 0), lambda a, b: (a > 0) & (b > 0)),
        (sp.Or(x > 0, y > 0), lambda a, b: (a > 0) | (b > 0)),
        (sp.Not(sp.Eq(x, y)), lambda a, b: a != b),
        (sp.And(x > 0, sp.Or(y < 0, sp.Ne(x, 1))), lambda a, b: (a > 0) & ((b < 0) | (a != 1))),
    ]
    a = np.array([1.0, -1.0, 1.0, -1.0, 2.0, 1.0])
    b = np.array([1.0, 1.0, -1.0, -1.0, 2.0, 5.0])
    for cond, truth in cases:
        e = from_sympy(sp.Piecewise((x + 10, cond), (y - 10, True)))
        np.testing.assert_array_equal(_eval1(e, x=a, y=b), np.where(truth(a, b), a + 10, b - 10))


def test_relationals_become_comparisons():
    x, y = sp.symbols("x y", real=True)
    for rel, op in ((x < y, "lt"), (x <= y, "le"), (x > y, "gt"), (x >= y, "ge")):
        e = from_sympy(rel)
        assert e.op == op and [v.name for v in e.args] == ["x", "y"]
    assert from_sympy(sp.Eq(x, y)).op == "eq" and from_sympy(sp.Ne(x, y)).op == "ne"


def test_logs_expm1_log1p_heaviside():
    from sympy.codegen.cfunctions import expm1, log1p

    x = sp.Symbol("x", real=True)
    e = from_sympy(sp.log(x, 2, evaluate=False))
    assert e.op == "div" and _eval1(e, x=8.0) == pytest.approx(3.0)
    assert from_sympy(sp.log(x, 2)).op == "div"
    assert from_sympy(expm1(x)).op == "expm1" and from_sympy(log1p(x)).op == "log1p"
    h = from_sympy(sp.Heaviside(x))
    np.testing.assert_array_equal(_eval1(h, x=[-1.0, 0.0, 2.0]), [0.0, 0.5, 1.0])


def test_shared_subexpressions_share_a_node():
    x = sp.Symbol("x")
    e = from_sympy(sp.sin(x**3) + sp.cos(x**3))
    assert [e.graph.node(i)["op"] for i in e.graph.nx.nodes].count("pow") == 1


def test_from_sympy_adds_to_a_given_graph_and_reuses_its_inputs():
    g = Graph()
    x = g.input("x")
    e = from_sympy(sp.Symbol("x") + 1, g)
    assert e.graph is g and x in e.args


def test_from_sympy_of_a_list_gives_a_list():
    x, y = sp.symbols("x y")
    got = from_sympy([x, [y, x * y]])
    assert got[0].name == "x" and got[1][0].name == "y" and got[1][1].op == "mul"
    assert got[1][1].graph is got[0].graph


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda x, y: sp.sin(x) + sp.gamma(y), "gamma"),
        (lambda x, y: sp.Function("f")(x) * y, "f"),
        (lambda x, y: x + sp.I * y, "ImaginaryUnit"),
        (lambda x, y: sp.Xor(x > 0, y > 0), "Xor"),
        (lambda x, y: sp.Integral(x, y), "Integral"),
    ],
)
def test_unsupported_sympy_raises_and_leaves_the_graph_unchanged(make, name):
    g = Graph()
    a = g.input("a")
    g.apply("sin", a) * 2.0
    before = (sorted(g.nx.nodes(data=True), key=lambda t: t[0]), sorted(g.nx.edges), list(g.inputs))
    x, y = sp.symbols("x y", real=True)
    with pytest.raises(SymgradError, match=name):
        from_sympy(make(x, y), g)
    after = (sorted(g.nx.nodes(data=True), key=lambda t: t[0]), sorted(g.nx.edges), list(g.inputs))
    assert after == before
    assert g.apply("sin", g.input("x")).id == len(before[0]) + 1  # ids carry on as before


def test_bad_arguments_raise():
    with pytest.raises(SymgradError):
        from_sympy("x + 1")  # text is not read here: sg.parse reads text
    with pytest.raises(SymgradError):
        from_sympy(sp.Symbol("x"), graph="not a graph")
    with pytest.raises(SymgradError):
        from_sympy(sp.Symbol("1bad"))  # not an input name


def test_a_deep_sympy_expression_converts_without_recursion():
    x = sp.Symbol("x", real=True)
    s = x
    for _ in range(2000):
        s = sp.sin(s, evaluate=False)
    e = from_sympy(s)
    assert len(e.graph) == 2001
    np.testing.assert_allclose(_eval1(e, x=0.7), _nested_sin(0.7, 2000))


def test_a_deep_graph_goes_to_sympy_and_back():
    g = Graph()
    e = g.input("x")
    for k in range(3000):
        e = g.apply("sin" if k % 2 else "cos", e) - 1.0
    back = from_sympy(to_sympy(e, evaluate=False))
    assert len(back.graph) == len(g)
    np.testing.assert_allclose(_eval1(back, x=0.3), _eval1(e, x=0.3), rtol=1e-15)


def test_a_deep_graph_evaluated_by_sympy_works_or_says_to_pass_evaluate_false():
    g = Graph()
    e = g.input("x")
    for _ in range(3000):
        e = g.apply("sin", e) - 1.0
    try:
        to_sympy(e)
    except SymgradError as err:
        assert "evaluate=False" in str(err)


@pytest.mark.parametrize("name", ["lt", "max", "relu"])
def test_what_sympy_cannot_represent_raises(name):
    g = Graph()
    nan = g.const(math.nan)
    e = g.apply(name, nan, g.input("x")) if OPS[name].arity == 2 else g.apply(name, nan)
    with pytest.raises(SymgradError, match=name):
        to_sympy(e)


def _nested_sin(v: float, depth: int) -> float:
    for _ in range(depth):
        v = math.sin(v)
    return v
