"""The SciPy bridge: fun/jac/hess/hessp over one flat vector, as scipy.optimize.minimize takes them.

Checked against SciPy's own Rosenbrock (value, gradient, Hessian, Hessian-vector product), in 2
scalar variables and as one vector input of 100; minimizers converge to the minimum (all ones)
with fewer function evaluations than with finite-difference gradients.
"""

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess, rosen_hess_prod

import symgrad as sg
from symgrad.errors import ArgumentError, GradError

BACKENDS = ["llvm", "numpy"]


def rosen2(backend):
    f = sg.parse("(1 - a)**2 + 100*(b - a**2)**2")
    return sg.scipy_objective(f, [f.graph.inputs["a"], f.graph.inputs["b"]], backend=backend)


def rosen_n(n, backend):
    g = sg.Graph()
    x = g.input("x", shape=(n,))
    f = sg.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)
    return sg.scipy_objective(f, [x], backend=backend)


def start(n):
    x0 = np.full(n, -1.0)
    x0[::2] = 1.2
    return x0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [2, 7, 100])
def test_matches_scipy_rosenbrock(backend, n):
    obj = rosen2(backend) if n == 2 else rosen_n(n, backend)
    rng = np.random.default_rng(n)
    for x in [start(n), rng.uniform(-2, 2, n), np.ones(n)]:
        p = rng.standard_normal(n)
        np.testing.assert_allclose(obj.fun(x), rosen(x), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(obj.jac(x), rosen_der(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(obj.hess(x), rosen_hess(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(obj.hessp(x, p), rosen_hess_prod(x, p), rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("method", ["trust-ncg", "Newton-CG", "trust-krylov"])
@pytest.mark.parametrize("n", [2, 100])
def test_hessp_methods_converge(method, n):
    obj = rosen2("llvm") if n == 2 else rosen_n(n, "llvm")
    res = minimize(obj.fun, start(n), jac=obj.jac, hessp=obj.hessp, method=method,
                   options={"maxiter": 5000})  # fmt: skip
    assert res.success, res.message
    # Stopping tolerances are the methods' own: SciPy's analytic Rosenbrock derivatives stop
    # as far from the minimum (Newton-CG at 100 variables: f ~ 1e-5..1e-3, trust-krylov at 2:
    # 5e-5 from it), so the check is the minimum's neighbourhood, and the evaluation count.
    # Where Newton-CG stops also moves with 1-ulp differences of the Hessian product: at 100
    # variables one machine's run ended at f = 9.5e-4, 0.053 from the minimum in one coordinate.
    reference = minimize(rosen, start(n), jac=rosen_der, hessp=rosen_hess_prod, method=method,
                         options={"maxiter": 5000})  # fmt: skip
    assert res.fun < 1e-2
    np.testing.assert_allclose(res.x, np.ones(n), atol=0.1)
    assert res.nfev <= 1.2 * reference.nfev + 5


@pytest.mark.parametrize("n", [2, 100])
def test_exact_derivatives_need_fewer_evaluations(n):
    obj = rosen2("llvm") if n == 2 else rosen_n(n, "llvm")
    exact = minimize(obj.fun, start(n), jac=obj.jac, hess=obj.hess, method="trust-exact")
    assert exact.success
    np.testing.assert_allclose(exact.x, np.ones(n), atol=1e-6)
    # The same minimizer family with a finite-difference gradient.
    fd = minimize(rosen, start(n), method="L-BFGS-B", options={"maxfun": 100_000})
    assert exact.nfev < fd.nfev
    assert np.abs(exact.x - 1).max() <= np.abs(fd.x - 1).max()


def test_value_and_gradient_come_from_one_call():
    obj = rosen2("llvm")
    calls = []
    inner = obj._value_grad
    obj._value_grad = lambda *a: calls.append(a) or inner(*a)
    x = np.array([0.3, -0.2])
    obj.fun(x)
    obj.jac(x)
    obj.fun(x.copy())
    assert len(calls) == 1
    obj.jac(x + 1)
    assert len(calls) == 2


def test_fixed_values_and_split_flatten():
    g = sg.Graph()
    w, b = g.input("w", shape=(3,)), g.input("b")
    X, y = g.input("X", shape=(5, 3)), g.input("y", shape=(5,))
    loss = sg.mse(X @ w + b, y)
    rng = np.random.default_rng(0)
    data = {"X": rng.standard_normal((5, 3)), "y": rng.standard_normal(5)}
    obj = sg.scipy_objective(loss, [w, b], values=data)
    res = minimize(obj.fun, np.zeros(4), jac=obj.jac, hess=obj.hess, method="trust-exact")
    A = np.hstack([data["X"], np.ones((5, 1))])
    expected = np.linalg.lstsq(A, data["y"], rcond=None)[0]
    np.testing.assert_allclose(res.x, expected, atol=1e-7)
    w_value, b_value = obj.split(res.x)
    assert w_value.shape == (3,) and isinstance(b_value, float)
    np.testing.assert_array_equal(obj.flatten({"w": w_value, "b": b_value}), res.x)


def test_bad_arguments():
    f = sg.parse("a * x")
    a = f.graph.inputs["a"]
    before = len(f.graph)
    with pytest.raises(ArgumentError, match="no value for input x"):
        sg.scipy_objective(f, [a])
    with pytest.raises(ArgumentError, match="which f does not use"):
        sg.scipy_objective(f, [a], values={"x": 1.0, "z": 2.0})
    with pytest.raises(GradError, match="scalar Expr"):
        sg.scipy_objective(2.0, [a])
    with pytest.raises(GradError, match=r"wrt\[0\] must be an input"):
        sg.scipy_objective(f, [a * 2])
    obj = sg.scipy_objective(f, [a], values={"x": 3.0})
    with pytest.raises(ArgumentError, match=r"x must have shape \(1,\)"):
        obj.fun([1.0, 2.0])
    assert obj.fun([2.0]) == 6.0
    assert len(f.graph) > before  # the successful call added its derivative nodes


def _state(g):
    return len(g), list(g.inputs), sorted(g.nx.edges)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, ArgumentError, "no value for input x"),
        ({"values": {"x": 1.0}, "backend": "gpu"}, ArgumentError, "backend must be one of"),
        ({"values": {"x": 1.0, "z": 2.0}}, ArgumentError, r"values for \['z'\]"),
        ({"values": {"x": "a"}}, ArgumentError, r"values\['x'\] must be real numbers"),
        ({"values": [1.0]}, ArgumentError, "values must be a dict"),
    ],
)
def test_a_failed_construction_leaves_the_graph_as_it_was(kwargs, error, match):
    f = sg.parse("a**2 * x")
    a = f.graph.inputs["a"]
    before = _state(f.graph)
    with pytest.raises(error, match=match):
        sg.scipy_objective(f, [a], **kwargs)
    assert _state(f.graph) == before  # no derivative node and no direction input v_a left


@pytest.mark.parametrize(
    "bad, match",
    [
        ("a", r"x must be real numbers, got str"),
        ([1j, 0.0], "x must be real numbers.*complex128"),
        ([[1.0, 2.0]], r"x must have shape \(2,\): one real number per parameter, got shape"),
        ([1.0, 2.0, 3.0], r"x must have shape \(2,\)"),
        ([[1.0], []], "x must be real numbers"),
        (None, "x must be real numbers"),
        ({"a": 1.0}, "x must be real numbers"),
    ],
)
def test_a_bad_x_is_an_argument_error_naming_x(bad, match):
    obj = rosen2("numpy")
    for call in (obj.fun, obj.jac, obj.hess, obj.split, lambda x: obj.hessp(x, [1.0, 0.0])):
        with pytest.raises(ArgumentError, match=match):
            call(bad)
    with pytest.raises(ArgumentError, match=match.replace("x must", "p must")):
        obj.hessp([1.0, 1.0], bad)


def test_non_finite_and_integer_x_are_numbers():
    obj = rosen2("numpy")
    assert np.isnan(obj.fun([np.nan, 1.0]))
    assert obj.fun([np.inf, 0.0]) == np.inf
    assert obj.fun([1, 1]) == 0.0 and obj.fun(np.array([1, 1], dtype=np.int32)) == 0.0


def test_flatten_checks_its_parts():
    g = sg.Graph()
    w, b = g.input("w", shape=(3,)), g.input("b")
    obj = sg.scipy_objective(sg.sum(w * w) + b * b, [w, b], backend="numpy")
    np.testing.assert_array_equal(obj.flatten({"w": [1, 2, 3], "b": 4}), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ArgumentError, match=r"keys \['w', 'b'\], got \['w'\]"):
        obj.flatten({"w": [1, 2, 3]})
    with pytest.raises(ArgumentError, match=r"parts\[0\] \(w\) has 2 values, not 3"):
        obj.flatten([[1, 2], 4])
    with pytest.raises(ArgumentError, match="a list of 2 values"):
        obj.flatten([1.0])
    with pytest.raises(ArgumentError, match=r"parts\[1\] must be real numbers"):
        obj.flatten([[1, 2, 3], "b"])


def test_wrt_is_a_non_empty_list_of_distinct_inputs():
    f = sg.parse("a * b")
    a = f.graph.inputs["a"]
    for wrt, match in (([a, a], r"wrt\[1\] repeats wrt\[0\] \(a\)"), ([], "non-empty"),
                       (None, "non-empty list")):  # fmt: skip
        with pytest.raises(GradError, match=match):
            sg.scipy_objective(f, wrt, values={"b": 1.0})


# --- sparse Hessians for trust-constr, sparse Jacobians for least_squares (issue 13) ----------


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_hess_is_scipys_rosenbrock_hessian(backend):
    n = 30
    obj = rosen_n(n, backend)
    x = np.random.default_rng(0).uniform(-1.5, 1.5, n)
    h = obj.sparse_hess(x)
    assert h.nnz == 3 * n - 2 and obj.hess_sparsity.nnz == 3 * n - 2
    np.testing.assert_allclose(h.toarray(), rosen_hess(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(obj.hess_sparsity.toarray(), rosen_hess(x) != 0)


def test_trust_constr_with_the_sparse_hessian_converges():
    n = 50
    obj = rosen_n(n, "llvm")
    result = minimize(obj.fun, np.full(n, -0.5), jac=obj.jac, hess=obj.sparse_hess,
                      method="trust-constr", options={"gtol": 1e-10, "maxiter": 3000})  # fmt: skip
    np.testing.assert_allclose(result.x, np.ones(n), atol=1e-7)


def _heat(n):
    g = sg.Graph()
    u, s = g.input("u", shape=(n,)), g.input("s", shape=(n - 2,))
    interior = u[1:-1] - 0.1 * (u[2:] - 2.0 * u[1:-1] + u[:-2]) - sg.exp(-u[1:-1]) * s
    return [interior, sg.stack([u[0] - 1.0, u[-1]])], u


@pytest.mark.parametrize("backend", BACKENDS)
def test_least_squares_with_the_sparse_jacobian(backend):
    from scipy.optimize import least_squares

    n = 40
    ys, u = _heat(n)
    source = np.linspace(0.0, 1.0, n - 2)
    r = sg.scipy_residuals(ys, [u], values={"s": source}, backend=backend)
    assert r.jac_sparsity.shape == (n, n) and r.jac_sparsity.nnz == 3 * (n - 2) + 2
    x = np.linspace(1.0, 0.0, n)
    # The Jacobian against central differences of fun.
    fd = np.stack([(r.fun(x + 1e-6 * e) - r.fun(x - 1e-6 * e)) / 2e-6 for e in np.eye(n)], 1)
    np.testing.assert_allclose(r.jac(x).toarray(), fd, rtol=1e-6, atol=1e-8)
    solved = least_squares(r.fun, np.zeros(n), jac=r.jac, xtol=1e-14, ftol=1e-14, gtol=1e-14)
    assert np.abs(r.fun(solved.x)).max() < 1e-10
    assert solved.x[0] == pytest.approx(1.0) and abs(solved.x[-1]) < 1e-10


def test_scipy_residuals_checks_its_arguments():
    ys, u = _heat(6)
    with pytest.raises(ArgumentError, match="no value for input s"):
        sg.scipy_residuals(ys, [u])
    with pytest.raises(GradError, match=r"scipy_residuals: wrt\[0\] must be an input"):
        sg.scipy_residuals(ys, [ys[0]], values={"s": np.zeros(4)})
    r = sg.scipy_residuals(ys, [u], values={"s": np.zeros(4)}, backend="numpy")
    with pytest.raises(ArgumentError, match=r"x must have shape \(6,\)"):
        r.fun(np.zeros(5))
