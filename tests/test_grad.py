"""build_grad, jacobian, hessian, hvp: against central differences, the seeds and known values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import symgrad as sg
from symgrad.ops import OPS
from tests.strategies import expressions
from tests.toolbox import DIFF_OPS, FLAT_OPS, central_difference, domain_sample


def _op_graph(name: str):
    g = sg.Graph()
    xs = [g.input(f"x{k}") for k in range(OPS[name].arity)]
    return g, xs, g.apply(name, *xs)


def _points(name: str, n: int = 6, seed: int = 0) -> np.ndarray:
    return np.column_stack(domain_sample(name, n, seed))


def _call(fn, point):
    return fn(*[float(v) for v in point])


def test_registry_is_complete():
    for name, op in OPS.items():
        if op.multiple:  # a scan: one rule for the cotangents of all its parts
            assert op.vjp_parts is not None and op.part_shapes is not None, name
        elif op.arity and not op.elementwise:
            # Tensor ops: VJP rules, or an expansion in primitive ops that build_grad uses.
            assert (
                len(op.vjp) == op.arity
                or (not op.vjp and op.expand is not None)
                or (not op.vjp and op.vjp_at is not None)  # variadic: concatenate
            ), name
            assert op.numpy is not None and op.shape is not None, name
        elif op.arity:
            assert len(op.vjp) == op.arity, name
            assert len(op.domain) == op.arity, name
            assert op.numpy is not None and op.sympy is not None, name
            assert op.llvm is not None, name


@pytest.mark.parametrize("name", DIFF_OPS)
def test_first_derivative_matches_central_differences(name):
    g, xs, f = _op_graph(name)
    grad = sg.compile([sg.build_grad(f, xs)], inputs=xs, backend="numpy")
    value = sg.compile(f, backend="numpy")
    for p in _points(name):
        expected = central_difference(lambda q: float(_call(value, q)[0]), p)
        np.testing.assert_allclose(_call(grad, p)[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", DIFF_OPS)
def test_second_derivative_matches_central_differences(name):
    g, xs, f = _op_graph(name)
    hess = sg.compile([sg.hessian(f, xs)], inputs=xs, backend="numpy")
    grad = sg.compile([sg.build_grad(f, xs)], inputs=xs, backend="numpy")
    for p in _points(name, seed=1):
        expected = central_difference(lambda q: _call(grad, q)[0], p, step=1e-5)
        np.testing.assert_allclose(_call(hess, p)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FLAT_OPS)
def test_piecewise_constant_ops_have_zero_gradient(name):
    g, xs, f = _op_graph(name)
    grads = sg.build_grad(f, xs)
    assert all(d.op == "const" and d.value == 0.0 for d in grads)


def test_seed_000_oneflow_example():
    f = sg.parse("(2*w2*(w1*x + b1) - label)**2")
    params = [f.graph.inputs[n] for n in ("w1", "b1", "w2")]
    fn = sg.compile([f, *sg.build_grad(f, params)], backend="numpy")
    values = fn(x=1.0, label=500.0, w1=10.0, b1=1.0, w2=20.0)
    assert [float(v) for v in values] == [3600.0, -4800.0, -4800.0, -2640.0]


def test_seed_001_add_then_multiply():
    f = sg.parse("(a+b)*c")
    a, b, c = f.graph.inputs.values()
    value, grad = sg.compile([f, sg.build_grad(f, [a, b, c])], backend="numpy")(5.0, -6.0, 7.0)
    assert float(value) == -7.0
    assert grad.tolist() == [7.0, 7.0, -1.0]


def test_reused_nodes_sum_their_contributions():
    g = sg.Graph()
    a = g.input("a")
    b = a + a
    c = b + b
    [d] = sg.build_grad(c, [a])
    assert float(sg.evaluate(d, a=3.0)) == 4.0
    # One sum per node: b's two contributions and a's two are each added once.
    assert sum(1 for i in g.nx if g.node(i)["role"] == "grad") <= 4


def test_disconnected_wrt_gets_constant_zero():
    g = sg.Graph()
    x, z = g.input("x"), g.input("z")
    dx, dz = sg.build_grad(x * x, [x, z])
    assert dz.op == "const" and dz.value == 0.0
    assert float(sg.evaluate(dx, x=3.0)) == 6.0


def test_wrt_an_intermediate_node():
    g = sg.Graph()
    x = g.input("x")
    u = sg.sin(x)
    [du, dx] = sg.build_grad(u * u, [u, x])
    assert float(sg.evaluate(du, x=0.5)) == pytest.approx(2 * np.sin(0.5))
    assert float(sg.evaluate(dx, x=0.5)) == pytest.approx(2 * np.sin(0.5) * np.cos(0.5))


def test_only_nodes_on_a_path_are_differentiated():
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    f = sg.exp(x) * sg.log(y)
    before = len(g)
    [dx] = sg.build_grad(f, [x])
    added_ops = {g.node(i)["op"] for i in range(before, len(g))}
    assert "div" not in added_ops  # log's rule (g / y) was never applied: y is not on a path
    assert float(sg.evaluate(dx, x=0.0, y=np.e)) == pytest.approx(1.0)


def test_grad_nodes_carry_role_and_order():
    g = sg.Graph()
    x = g.input("x")
    f = sg.sin(x) * x
    [d1] = sg.build_grad(f, [x])
    [d2] = sg.build_grad(d1, [x])
    assert g.node(f.id)["role"] == "primal" and g.node(f.id)["order"] == 0
    assert g.node(d1.id)["role"] == "grad" and g.node(d1.id)["order"] == 1
    assert g.node(d2.id)["order"] == 2


def test_third_derivative_of_a_cubic():
    g = sg.Graph()
    x = g.input("x")
    d = x**3
    values = []
    for _ in range(3):
        [d] = sg.build_grad(d, [x])
        values.append(float(sg.evaluate(d, x=2.0)))
    assert values == [12.0, 12.0, 6.0]


def test_seed_gives_vector_jacobian_product():
    g = sg.Graph()
    x, s = g.input("x"), g.input("s")
    [d] = sg.build_grad(sg.sin(x), [x], seed=s)
    assert float(sg.evaluate(d, x=0.3, s=2.0)) == pytest.approx(2 * np.cos(0.3))


def test_kink_conventions():
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    cases = [(sg.abs(x), 0.0), (sg.relu(x), 0.0)]
    for f, expected in cases:
        [d] = sg.build_grad(f, [x])
        assert float(sg.evaluate(d, x=0.0)) == expected
    dx, dy = sg.build_grad(sg.max(x, y), [x, y])
    assert [float(v) for v in sg.evaluate([dx, dy], x=1.0, y=1.0)[:2]] == [0.5, 0.5]
    dx, dy = sg.build_grad(sg.min(x, y), [x, y])
    assert [float(v) for v in sg.evaluate([dx, dy], x=2.0, y=1.0)[:2]] == [0.0, 1.0]


def test_where_routes_the_adjoint_to_the_taken_branch():
    f = sg.parse("where(x > 0, x*x, 3*x)")
    [d] = sg.build_grad(f, [f.graph.inputs["x"]])
    assert float(sg.evaluate(d, x=2.0)) == 4.0
    assert float(sg.evaluate(d, x=-2.0)) == 3.0


def test_jacobian_and_hessian_shapes_and_values():
    f = sg.parse("x**2*y + sin(y)")
    x, y = f.graph.inputs.values()
    jac = sg.jacobian([f, x * y], [x, y])
    hess = sg.hessian(f, [x, y])
    J, Hm = sg.compile([jac, hess], backend="numpy")(x=1.5, y=0.5)
    np.testing.assert_allclose(J, [[2 * 1.5 * 0.5, 1.5**2 + np.cos(0.5)], [0.5, 1.5]])
    np.testing.assert_allclose(Hm, [[2 * 0.5, 2 * 1.5], [2 * 1.5, -np.sin(0.5)]])


def _rosenbrock(n: int):
    g = sg.Graph()
    xs = [g.input(f"x{i}") for i in range(n)]
    f = sum(((1 - xs[i]) ** 2 + 100 * (xs[i + 1] - xs[i] ** 2) ** 2 for i in range(n - 1)), 0.0)
    return f, xs


def test_hvp_equals_hessian_times_v():
    f, xs = _rosenbrock(6)
    rng = np.random.default_rng(3)
    point, v = rng.normal(size=6), rng.normal(size=6)
    Hm = sg.compile([sg.hessian(f, xs)], inputs=xs, backend="numpy")(*point)[0]
    vjp_nodes = sg.hvp(f, xs, [float(t) for t in v])
    hv = sg.compile([vjp_nodes], backend="numpy")(*point)[0]
    np.testing.assert_allclose(hv, Hm @ v, rtol=1e-12)


def test_hvp_costs_about_one_gradient():
    f, xs = _rosenbrock(100)
    n_f = len(sg.optimize(f).graph)
    hv = sg.hvp(f, xs, [1.0] * 100)
    n_hvp = len(sg.optimize([f, hv])[0].graph)
    n_hess = len(sg.optimize([f, sg.hessian(f, xs)])[0].graph)
    assert n_hvp <= 8 * n_f  # linear in f, like a gradient
    assert n_hvp < n_hess


def test_chain_of_100k_nodes():
    g = sg.Graph()
    x = g.input("x")
    e = x
    for _ in range(50_000):
        e = sg.sin(e) * 0.5 + x  # 3 nodes per link; the constant is shared
    assert len(g) > 100_000
    [d] = sg.build_grad(e, [x])
    opt = sg.optimize([e, d])
    value, deriv = sg.evaluate(opt, x=0.7)
    v, dv = 0.7, 1.0
    for _ in range(50_000):
        v, dv = np.sin(v) * 0.5 + 0.7, np.cos(v) * dv * 0.5 + 1.0
    assert float(value) == pytest.approx(v, rel=1e-12)
    assert float(deriv) == pytest.approx(dv, rel=1e-12)


SUITE = [
    "(2*w2*(w1*x + b1) - label)**2",
    "(1-x)**2 + 100*(y-x**2)**2",
    "exp(-x**2-y**2)*cos(3*x)*log(1+y**2) + tanh(x*y)/(1+x**2) + sqrt(1+x**2+y**2)",
    "where(x > 0, sqrt(x), 0) + max(x, y)*relu(y) + abs(x - y)",
    "sigmoid(x)*softplus(y) + erf(x*y) + atan2(y, 1 + x**2) + pow(x**2 + 1, y)",
]


def _size_ratio(f, wrt) -> float:
    n_f = len(sg.optimize(f).graph)
    n_fg = len(sg.optimize([f, sg.build_grad(f, wrt)])[0].graph)
    return n_fg / n_f


@pytest.mark.parametrize("text", SUITE)
def test_graph_size_bound_on_suite(text):
    f = sg.parse(text)
    assert _size_ratio(f, list(f.graph.inputs.values())) <= 4.0


def test_graph_size_bound_on_nest():
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    z = x * y
    for _ in range(20):
        z = sg.sin(z) * sg.cos(x + z) + y
    assert _size_ratio(z, [x, y]) <= 4.0


@given(expressions())
def test_graph_size_bound_on_random_expressions(f):
    assert _size_ratio(f, list(f.graph.inputs.values())) <= 4.0


@given(expressions(smooth=True))
def test_random_gradients_match_central_differences(f):
    wrt = list(f.graph.inputs.values())
    value = sg.compile(f, backend="numpy")
    grad = sg.compile([sg.build_grad(f, wrt)], backend="numpy")
    for p in np.random.default_rng(0).uniform(-1.5, 1.5, (3, len(wrt))):
        expected = central_difference(lambda q: float(_call(value, q)[0]), p)
        got = _call(grad, p)[0]
        if np.all(np.isfinite(expected)) and np.max(np.abs(expected)) < 1e6:
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_seed_of_y_shape_scales_the_gradient_and_any_other_shape_is_refused():
    from symgrad.errors import GradError
    from symgrad.interp import evaluate as ev

    g = sg.Graph()
    x = g.input("x")
    f = x * x * x
    [plain] = sg.build_grad(f, [x])
    for seed in (2.5, np.float64(2.5), np.array(2.5), g.const(2.5)):
        [d] = sg.build_grad(f, [x], seed=seed)
        assert float(ev(d, x=2.0)) == 2.5 * float(ev(plain, x=2.0)) == 30.0
    size = len(g)
    for seed in (np.ones(3), [1.0, 2.0], g.input("s", shape=(3,))):
        size = len(g)
        with pytest.raises(GradError, match=r"seed has shape \(\d,\) but y has shape \(\)"):
            sg.build_grad(f, [x], seed=seed)
        assert len(g) == size


def test_hvp_of_one_wrt_and_of_none():
    from symgrad.interp import evaluate as ev

    g = sg.Graph()
    x = g.input("x")
    f = x**3.0
    [hv] = sg.hvp(f, x, 2.0)  # sg.hvp(y, x, v) as sg.hvp(y, [x], [v])
    assert float(ev(hv, x=3.0)) == 36.0  # f'' = 6x = 18, times 2
    assert sg.hvp(f, [], []) == [] and sg.jacobian([], [x]) == []
