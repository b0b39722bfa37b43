"""Tests of the tensor part of symgrad/parse.py: ``shapes=``, ``@``, indexing, ``.T`` and the
tensor functions with their constant attributes (DESIGN.md §2, §5).

Values are checked against numpy on random arrays (``sg.evaluate`` is the numpy interpreter),
structure through hash-consing (parsed text returns the very node the Python API builds), and
gradients of parsed formulas against central finite differences.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import symgrad as sg
from symgrad.errors import ArgumentError, GraphError, ParseError, ShapeError, SymgradError
from symgrad.graph import Graph
from symgrad.ops import FUNCTIONS
from symgrad.parse import _SPECS, parse
from symgrad.tensor import TENSOR_FUNCTIONS
from tests.toolbox import central_difference

SHAPES = {
    "A": (2, 3, 4),
    "B": (2, 3, 4),
    "W": (3, 4),
    "M": (3, 3),
    "N": (3, 3),
    "P": (3, 3),
    "x": (4,),
    "u": (3,),
    "b": (3,),
    "y": (3,),
    "L": (5, 3),
    "Y": (5, 3),
    "im": (1, 2, 5, 5),
    "k": (3, 2, 2, 2),
}


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """A random array of the declared shape for every name of SHAPES, plus scalars s and t."""
    rng = np.random.default_rng(seed)
    out = {name: rng.normal(size=shape) for name, shape in SHAPES.items()}
    out.update(s=rng.normal(), t=rng.normal())
    return out


def run(text: str, seed: int = 0):
    """``text`` parsed with SHAPES and evaluated at ``arrays(seed)``: (value, the arrays)."""
    e = parse(text, shapes=SHAPES)
    values = arrays(seed)
    return sg.evaluate(e, **{n: values[n] for n in e.graph.inputs}), values


def inputs(g):
    """The inputs of SHAPES created in ``g`` through the API, by name."""
    return {name: g.input(name, shape=shape) for name, shape in SHAPES.items()}


# --- numpy references, written independently of ops.py -------------------------------------


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logsumexp(z, axis=None, keepdims=False):
    m = z.max(axis=axis, keepdims=True)
    out = np.log(np.exp(z - m).sum(axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def conv2d(x, w, stride=1, padding=0):
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[2:]
    ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("ncpq,ocpq->no", patch, w)
    return out


def pool(x, reduce, kernel, stride=None):
    stride = stride or kernel
    ho, wo = (x.shape[-2] - kernel) // stride + 1, (x.shape[-1] - kernel) // stride + 1
    out = np.zeros((*x.shape[:-2], ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = x[..., i * stride : i * stride + kernel, j * stride : j * stride + kernel]
            out[..., i, j] = reduce(window, axis=(-2, -1))
    return out


# --- shapes= ---------------------------------------------------------------------------------


def test_names_in_shapes_are_tensors_and_the_others_scalars():
    e = parse("W @ x + s", shapes={"W": (3, 4), "x": (4,), "unused": (7,)})
    assert e.shape == (3,)
    assert {n: v.shape for n, v in e.graph.inputs.items()} == {"W": (3, 4), "x": (4,), "s": ()}


def test_shapes_accepts_an_int_for_a_vector_as_graph_input_does():
    assert parse("x", shapes={"x": 5}).shape == (5,)


def test_parse_builds_the_node_of_the_api(g):
    v = inputs(g)
    e = parse("W @ x + b", graph=g, shapes=SHAPES)
    assert e.id == (v["W"] @ v["x"] + v["b"]).id
    assert e.shape == (3,)


def test_existing_tensor_inputs_need_no_shapes_entry(g):
    w = g.input("W", shape=(3, 4))
    assert parse("W", g).id == w.id
    assert parse("W", g, shapes={"W": (3, 4)}).id == w.id  # the same shape again: fine


def test_a_shape_that_conflicts_with_an_existing_input_is_graph_inputs_shape_error(g):
    g.input("W", shape=(3, 4))
    before = len(g)
    with pytest.raises(ShapeError) as info:
        parse("new + W", g, shapes={"W": (4, 3)})
    with pytest.raises(ShapeError) as api:
        g.input("W", shape=(4, 3))
    assert str(info.value) == str(api.value)
    assert len(g) == before
    assert list(g.inputs) == ["W"]


def test_a_scalar_input_cannot_become_a_tensor(g):
    g.input("s")
    with pytest.raises(ShapeError, match="input 's' has shape"):
        parse("s * 2", g, shapes={"s": (2,)})
    assert len(g) == 1


@pytest.mark.parametrize("shapes", [[("x", (2,))], "x", 3, (("x", 2),)])
def test_shapes_must_be_a_dict(g, shapes):
    with pytest.raises(ArgumentError, match="shapes: expected a dict"):
        parse("x", g, shapes=shapes)
    assert len(g) == 0


@pytest.mark.parametrize("shape", [(0,), (-1, 2), (2.5,), ("2",), None, (True,), "ab", 1.5])
def test_a_bad_shape_is_a_shape_error(g, shape):
    with pytest.raises(ShapeError, match="input 'x': shape must be a tuple"):
        parse("x + y", g, shapes={"x": shape})
    assert len(g) == 0


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (1, "is not an input name"),
        ("2x", "is not an input name"),
        ("__x", "is not an input name"),
        ("a b", "is not an input name"),
        ("pi", "'pi' is a constant"),
        ("sin", "'sin' is a function"),
    ],
)
def test_a_bad_name_in_shapes_is_a_graph_error(g, name, message):
    with pytest.raises(GraphError, match=message):
        parse("x", g, shapes={name: (2,)})
    assert len(g) == 0


# --- @ ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reference"),
    [
        ("M @ N", lambda v: v["M"] @ v["N"]),
        ("W @ x", lambda v: v["W"] @ v["x"]),
        ("u @ W", lambda v: v["u"] @ v["W"]),
        ("u @ b", lambda v: v["u"] @ v["b"]),
        ("W.T @ u", lambda v: v["W"].T @ v["u"]),
        ("M @ N @ P", lambda v: v["M"] @ v["N"] @ v["P"]),
        ("(M + N) @ (P - M) / 2", lambda v: (v["M"] + v["N"]) @ (v["P"] - v["M"]) / 2),
    ],
)
def test_matmul_values_match_numpy(text, reference):
    value, v = run(text)
    np.testing.assert_allclose(value, reference(v), rtol=1e-12)


# (text, the same formula through the Python API): Python's precedence, '@' ranking with '*'.
MATMUL_PRECEDENCE = [
    ("M @ N * P", lambda M, N, P, s: (M @ N) * P),
    ("M * N @ P", lambda M, N, P, s: (M * N) @ P),
    ("M @ N / P", lambda M, N, P, s: (M @ N) / P),
    ("M / N @ P", lambda M, N, P, s: (M / N) @ P),
    ("M @ N @ P", lambda M, N, P, s: (M @ N) @ P),
    ("M + N @ P", lambda M, N, P, s: M + (N @ P)),
    ("M @ N - P", lambda M, N, P, s: (M @ N) - P),
    ("-M @ N", lambda M, N, P, s: (-M) @ N),
    ("M @ -N", lambda M, N, P, s: M @ (-N)),
    ("M @ N ** 2", lambda M, N, P, s: M @ (N**2)),
    ("M ** s @ N", lambda M, N, P, s: (M**s) @ N),
    ("M @ (N + P)", lambda M, N, P, s: M @ (N + P)),
    ("M @ N < P", lambda M, N, P, s: (M @ N) < P),
]


@pytest.mark.parametrize(
    ("text", "build"), MATMUL_PRECEDENCE, ids=[t for t, _ in MATMUL_PRECEDENCE]
)
def test_matmul_precedence_and_associativity_match_python(g, text, build):
    v = inputs(g)
    assert parse(text, g).id == build(v["M"], v["N"], v["P"], g.input("s")).id


# --- indexing and .T ---------------------------------------------------------------------------

INDEXING = [
    ("A[0]", lambda v: v["A"][0]),
    ("A[-1]", lambda v: v["A"][-1]),
    ("A[:, 1:3]", lambda v: v["A"][:, 1:3]),
    ("A[::2]", lambda v: v["A"][::2]),
    ("A[1:]", lambda v: v["A"][1:]),
    ("A[..., 0]", lambda v: v["A"][..., 0]),
    ("A[0, ..., -2]", lambda v: v["A"][0, ..., -2]),
    ("A[...]", lambda v: v["A"][...]),
    ("A[0][1]", lambda v: v["A"][0][1]),
    ("A[0][1][2]", lambda v: v["A"][0][1][2]),
    ("A[1, 2, 3]", lambda v: v["A"][1, 2, 3]),
    ("A[:, ::-1, -3:-1]", lambda v: v["A"][:, ::-1, -3:-1]),
    ("A[:, :, ::]", lambda v: v["A"][:, :, ::]),
    ("A[-1:-3:-1, +1]", lambda v: v["A"][-1:-3:-1, 1]),
    ("A [ 0 ] [ 1 : ]", lambda v: v["A"][0][1:]),
    ("(A + B)[0]", lambda v: (v["A"] + v["B"])[0]),
    ("sin(A)[1, 2]", lambda v: np.sin(v["A"])[1, 2]),
    ("sum(A, axis=0)[2]", lambda v: v["A"].sum(axis=0)[2]),
    ("-A[0]**2", lambda v: -(v["A"][0] ** 2)),
    ("2**A[0, 0]", lambda v: 2 ** v["A"][0, 0]),
    ("W.T", lambda v: v["W"].T),
    ("A.T", lambda v: v["A"].T),
    ("x.T[0]", lambda v: v["x"].T[0]),
    ("W.T[1:3]", lambda v: v["W"].T[1:3]),
    ("W[1:3].T", lambda v: v["W"][1:3].T),
    ("(W @ x).T", lambda v: (v["W"] @ v["x"]).T),
    ("W . T", lambda v: v["W"].T),
    ("W.T.T", lambda v: v["W"]),
    ("W.T*.5 + 1.5", lambda v: v["W"].T * 0.5 + 1.5),
]


@pytest.mark.parametrize(("text", "reference"), INDEXING, ids=[t for t, _ in INDEXING])
def test_indexing_and_transpose_values_match_numpy(text, reference):
    value, v = run(text, seed=1)
    want = reference(v)
    assert value.shape == np.shape(want)
    np.testing.assert_allclose(value, want, rtol=1e-12)


def test_indexing_builds_the_node_of_the_api(g):
    v = inputs(g)
    a = v["A"]
    assert parse("A[0, 1:3]", g).id == a[0, 1:3].id
    assert parse("A[..., -1]", g).id == a[..., -1].id
    assert parse("A[0][1]", g).id == a[0][1].id
    assert parse("W.T @ u", g).id == (v["W"].T @ v["u"]).id


def test_postfix_binds_tighter_than_power_and_unary_minus(g):
    a = inputs(g)["A"]
    e = parse("-A[0]**2", g)
    assert e.id == (-(a[0] ** 2)).id
    assert [e.op, e.args[0].op, e.args[0].args[0].op] == ["neg", "pow", "getitem"]
    assert parse("-A.T", g).id == (-a.T).id
    assert parse("A**A.T.T", g).id == (a ** (a.T.T)).id


def test_numbers_still_tokenize_as_numbers_next_to_attributes(g):
    w = inputs(g)["W"]
    e = parse("1.5 * W.T + .5", g)
    assert e.id == (1.5 * w.T + 0.5).id


@st.composite
def index_entries(draw):
    """A random index of a (4, 5, 6) array: entries of ints, slices and at most one '...'."""
    dims = (4, 5, 6)
    count = draw(st.integers(1, 3))
    entries = []
    for n in dims[:count]:
        if draw(st.booleans()):
            entries.append(draw(st.integers(-n, n - 1)))
        else:
            bound = st.none() | st.integers(-n - 2, n + 2)
            step = st.none() | st.integers(-3, 3).filter(bool)
            entries.append(slice(draw(bound), draw(bound), draw(step)))
    if draw(st.booleans()):
        entries.insert(draw(st.integers(0, len(entries))), Ellipsis)
    return tuple(entries)


def index_text(entries) -> str:
    def one(item):
        if item is Ellipsis:
            return "..."
        if isinstance(item, int):
            return str(item)
        parts = ["" if p is None else str(p) for p in (item.start, item.stop, item.step)]
        return ":".join(parts if item.step is not None else parts[:2])

    return ", ".join(one(item) for item in entries)


@given(index_entries())
def test_random_constant_indices_match_numpy(entries):
    x = np.arange(120.0).reshape(4, 5, 6)
    text = f"X[{index_text(entries)}]"
    want = x[entries]
    if want.size == 0:  # symgrad has no empty arrays: an empty slice is a ShapeError
        with pytest.raises(ShapeError, match="is empty"):
            parse(text, shapes={"X": x.shape})
        return
    e = parse(text, shapes={"X": x.shape})
    assert e.shape == want.shape
    np.testing.assert_array_equal(sg.evaluate(e, X=x), want)


# --- tensor functions ----------------------------------------------------------------------------

FUNCTION_VALUES = [
    ("sum(A)", lambda v: v["A"].sum()),
    ("sum(A, axis=1)", lambda v: v["A"].sum(axis=1)),
    ("sum(A, 1)", lambda v: v["A"].sum(axis=1)),
    ("sum(A, axis=(0, 1), keepdims=True)", lambda v: v["A"].sum(axis=(0, 1), keepdims=True)),
    ("sum(A, (0, 2), True)", lambda v: v["A"].sum(axis=(0, 2), keepdims=True)),
    ("sum(A, axis=(-1,))", lambda v: v["A"].sum(axis=-1)),
    ("sum(A, axis=None)", lambda v: v["A"].sum()),
    ("mean(A, axis=-1)", lambda v: v["A"].mean(axis=-1)),
    ("max(A)", lambda v: v["A"].max()),
    ("max(A, axis=0)", lambda v: v["A"].max(axis=0)),
    ("max(A, axis=2, keepdims=True)", lambda v: v["A"].max(axis=2, keepdims=True)),
    ("min(A, axis=1)", lambda v: v["A"].min(axis=1)),
    ("min(A)", lambda v: v["A"].min()),
    ("max(A, B)", lambda v: np.maximum(v["A"], v["B"])),
    ("min(A, 0)", lambda v: np.minimum(v["A"], 0.0)),
    ("transpose(A, axes=(1, 0, 2))", lambda v: v["A"].transpose(1, 0, 2)),
    ("transpose(A, (2, 0, 1))", lambda v: v["A"].transpose(2, 0, 1)),
    ("transpose(W)", lambda v: v["W"].T),
    ("reshape(A, shape=(6, 4))", lambda v: v["A"].reshape(6, 4)),
    ("reshape(A, (4, -1))", lambda v: v["A"].reshape(4, -1)),
    ("reshape(A, 24)", lambda v: v["A"].reshape(24)),
    ("broadcast_to(u, (2, 3))", lambda v: np.broadcast_to(v["u"], (2, 3))),
    ("logsumexp(L, axis=1)", lambda v: logsumexp(v["L"], axis=1)),
    ("logsumexp(L)", lambda v: logsumexp(v["L"])),
    ("softmax(L, axis=-1)", lambda v: softmax(v["L"], axis=-1)),
    ("softmax(L, 0)", lambda v: softmax(v["L"], axis=0)),
    ("log_softmax(L)", lambda v: np.log(softmax(v["L"]))),
    ("conv2d(im, k)", lambda v: conv2d(v["im"], v["k"])),
    ("conv2d(im, k, stride=1, padding=1)", lambda v: conv2d(v["im"], v["k"], 1, 1)),
    ("conv2d(im, k, 2, 1)", lambda v: conv2d(v["im"], v["k"], 2, 1)),
    ("avg_pool2d(im, kernel_size=2)", lambda v: pool(v["im"], np.mean, 2)),
    ("avg_pool2d(im)", lambda v: pool(v["im"], np.mean, 2)),
    ("max_pool2d(im, 2, stride=1)", lambda v: pool(v["im"], np.max, 2, 1)),
    ("max_pool2d(im, 3)", lambda v: pool(v["im"], np.max, 3)),
    ("mse(u, b)", lambda v: np.mean((v["u"] - v["b"]) ** 2)),
    (
        "mse(sigmoid(W @ x + b), y)",
        lambda v: np.mean((sig(v["W"] @ v["x"] + v["b"]) - v["y"]) ** 2),
    ),
    (
        "binary_cross_entropy(sigmoid(u), sigmoid(b))",
        lambda v: np.mean(
            -(sig(v["b"]) * np.log(sig(v["u"])) + sig(-v["b"]) * np.log(sig(-v["u"])))
        ),
    ),
    (
        "binary_cross_entropy_with_logits(u, sigmoid(b))",
        lambda v: np.mean(np.log1p(np.exp(v["u"])) - sig(v["b"]) * v["u"]),
    ),
    (
        "softmax_cross_entropy(L, softmax(Y))",
        lambda v: np.mean(-(softmax(v["Y"]) * np.log(softmax(v["L"]))).sum(axis=-1)),
    ),
    ("matmul(W, x)", lambda v: v["W"] @ v["x"]),
    ("sum(softmax(W @ x, axis=0) * y)", lambda v: (softmax(v["W"] @ v["x"], 0) * v["y"]).sum()),
    ("sum(max_pool2d(conv2d(im, k), 2))", lambda v: pool(conv2d(v["im"], v["k"]), np.max, 2).sum()),
    ("sum (A , axis = 1 )", lambda v: v["A"].sum(axis=1)),
]


def sig(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize(
    ("text", "reference"), FUNCTION_VALUES, ids=[t for t, _ in FUNCTION_VALUES]
)
def test_tensor_function_values_match_numpy(text, reference):
    value, v = run(text, seed=2)
    want = reference(v)
    assert value.shape == np.shape(want)
    np.testing.assert_allclose(value, want, rtol=1e-10, atol=1e-12)


# Every tensor function called from text, and the same call through the Python API.
API_CALLS = {
    "matmul": ("matmul(W, x)", lambda v, f: f(v["W"], v["x"])),
    "sum": ("sum(A, 1, True)", lambda v, f: f(v["A"], axis=1, keepdims=True)),
    "mean": ("mean(A, axis=(0, 2))", lambda v, f: f(v["A"], axis=(0, 2))),
    "max": ("max(A, axis=-1)", lambda v, f: f(v["A"], axis=-1)),
    "min": ("min(A, keepdims=True)", lambda v, f: f(v["A"], keepdims=True)),
    "transpose": ("transpose(A, (2, 1, 0))", lambda v, f: f(v["A"], axes=(2, 1, 0))),
    "reshape": ("reshape(A, (3, 8))", lambda v, f: f(v["A"], (3, 8))),
    "broadcast_to": ("broadcast_to(b, shape=(4, 3))", lambda v, f: f(v["b"], (4, 3))),
    "logsumexp": ("logsumexp(L, 0, False)", lambda v, f: f(v["L"], axis=0)),
    "softmax": ("softmax(L, axis=0)", lambda v, f: f(v["L"], axis=0)),
    "log_softmax": ("log_softmax(L, 1)", lambda v, f: f(v["L"], axis=1)),
    "conv2d": ("conv2d(im, k, (1, 2), (0, 1))", lambda v, f: f(v["im"], v["k"], (1, 2), (0, 1))),
    "avg_pool2d": ("avg_pool2d(im, (2, 3), 1)", lambda v, f: f(v["im"], (2, 3), 1)),
    "max_pool2d": (
        "max_pool2d(im, kernel_size=2, stride=(1, 2))",
        lambda v, f: f(v["im"], 2, (1, 2)),
    ),
    "mse": ("mse(A, B)", lambda v, f: f(v["A"], v["B"])),
    "binary_cross_entropy": ("binary_cross_entropy(A, B)", lambda v, f: f(v["A"], v["B"])),
    "binary_cross_entropy_with_logits": (
        "binary_cross_entropy_with_logits(A, B)",
        lambda v, f: f(v["A"], v["B"]),
    ),
    "softmax_cross_entropy": (
        "softmax_cross_entropy(L, Y, axis=0)",
        lambda v, f: f(v["L"], v["Y"], 0),
    ),
    "take": ("take(A, u, 2)", lambda v, f: f(v["A"], v["u"], axis=2)),
    "cross": ("cross(u, b)", lambda v, f: f(v["u"], v["b"])),
    "norm": ("norm(A, axis=(0, 2), keepdims=True)", lambda v, f: f(v["A"], (0, 2), True)),
    "det": ("det(M)", lambda v, f: f(v["M"])),
    "inv": ("inv(M + N)", lambda v, f: f(v["M"] + v["N"])),
    "solve": ("solve(M, u)", lambda v, f: f(v["M"], v["u"])),
    "scatter_add": ("scatter_add(L, y, 1, size=4)", lambda v, f: f(v["L"], v["y"], 1, 4)),
}


def test_every_tensor_function_has_a_text_test():
    assert set(API_CALLS) == set(TENSOR_FUNCTIONS)


@pytest.mark.parametrize("name", sorted(API_CALLS))
def test_every_tensor_function_builds_the_node_of_the_api(g, name):
    text, call = API_CALLS[name]
    expected = call(inputs(g), TENSOR_FUNCTIONS[name])
    assert parse(text, g).id == expected.id


@pytest.mark.parametrize(
    ("positional", "keywords"),
    [
        ("sum(A, 1)", "sum(A, axis=1)"),
        ("sum(A, (0, 1), True)", "sum(A, keepdims=True, axis=(0, 1))"),
        ("sum(A, (1))", "sum(A, axis=1)"),
        ("sum(A, (1,))", "sum(A, axis=1)"),
        ("reshape(A, (2, 12))", "reshape(A, shape=(2, 12))"),
        ("reshape(A, (24,))", "reshape(A, shape=24)"),
        ("max_pool2d(im, 2, stride=1)", "max_pool2d(im, kernel_size=2, stride=1)"),
        ("conv2d(im, k, 1, 1)", "conv2d(im, k, stride=1, padding=1)"),
        ("conv2d(im, k, 1, padding=(1, 1))", "conv2d(im, k, padding=1, stride=1)"),
        ("transpose(A, (2, 0, 1))", "transpose(A, axes=(-1, 0, 1))"),
        ("softmax(L, -1)", "softmax(L)"),
        ("softmax_cross_entropy(L, Y, -1)", "softmax_cross_entropy(L, Y)"),
        ("sum(A, axis=+1)", "sum(A, axis=1)"),
    ],
)
def test_positional_and_keyword_attributes_build_the_same_node(g, positional, keywords):
    inputs(g)
    assert parse(positional, g).id == parse(keywords, g).id


def test_max_and_min_keep_their_elementwise_form(g):
    v = inputs(g)
    s, t = g.input("s"), g.input("t")
    assert parse("max(s, t)", g).id == g.apply("max", s, t).id
    assert parse("max(s, 2)", g).id == g.apply("max", s, 2.0).id  # 2 is an operand, not axis
    assert parse("min(A, B)", g).id == g.apply("min", v["A"], v["B"]).id
    assert parse("max(A)", g).op == "amax"
    assert parse("max(s, axis=None)", g).op == "amax"  # an explicit reduction, even of a scalar


def test_the_operand_of_a_tensor_function_is_any_expression(g):
    v = inputs(g)
    e = parse("sum(A * 2 + sin(B), axis=(0, 1))[1]", g)
    assert e.id == sg.sum(v["A"] * 2 + sg.sin(v["B"]), axis=(0, 1))[1].id


def test_tensor_function_names_are_still_input_names_when_not_called():
    e = parse("sum + mean * 2")
    assert list(e.graph.inputs) == ["sum", "mean"]


def test_the_derived_call_specs_match_the_python_signatures():
    # operands (least, most), positional attributes: what the module docstring promises.
    expected = {
        "matmul": (2, 2, ()),
        "sum": (1, 1, ("axis", "keepdims")),
        "mean": (1, 1, ("axis", "keepdims")),
        "max": (1, 2, ()),
        "min": (1, 2, ()),
        "transpose": (1, 1, ("axes",)),
        "reshape": (1, 1, ("shape",)),
        "broadcast_to": (1, 1, ("shape",)),
        "logsumexp": (1, 1, ("axis", "keepdims")),
        "softmax": (1, 1, ("axis",)),
        "log_softmax": (1, 1, ("axis",)),
        "conv2d": (2, 2, ("stride", "padding")),
        "avg_pool2d": (1, 1, ("kernel_size", "stride")),
        "max_pool2d": (1, 1, ("kernel_size", "stride")),
        "mse": (2, 2, ()),
        "binary_cross_entropy": (2, 2, ()),
        "binary_cross_entropy_with_logits": (2, 2, ()),
        "softmax_cross_entropy": (2, 2, ("axis",)),
        "take": (2, 2, ("axis",)),
        "cross": (2, 2, ()),
        "norm": (1, 1, ("axis", "keepdims")),
        "det": (1, 1, ()),
        "inv": (1, 1, ()),
        "solve": (2, 2, ()),
        "scatter_add": (2, 2, ("axis", "size")),
    }
    got = {name: (s.need, s.most, s.positional) for name, s in _SPECS.items()}
    assert got == expected
    assert _SPECS["max"].keywords == ("axis", "keepdims")


def test_unknown_function_message_lists_the_tensor_functions_too():
    with pytest.raises(ParseError) as info:
        parse("foo(x)")
    message = info.value.message
    assert ", ".join(sorted(FUNCTIONS)) in message
    assert "tensor functions: " + ", ".join(sorted(TENSOR_FUNCTIONS)) in message


# --- depth: no recursion --------------------------------------------------------------------------


def test_deep_parentheses_around_an_index():
    depth = 100_000
    e = parse("(" * depth + "A[0, 1:]" + ")" * depth + "[0]", shapes=SHAPES)
    assert e.shape == (4,)
    assert len(e.graph) == 3  # A, A[0, 1:], and its [0]


def test_deeply_nested_tensor_calls():
    depth = 100_000
    e = parse("sum(" * depth + "x" + ", axis=None)" * depth, shapes={"x": (3,)})
    assert e.shape == ()
    n, ops = e, 0
    while n.op == "sum":
        n, ops = n.args[0], ops + 1
    assert (ops, n.name) == (depth, "x")


def test_nested_calls_mixing_operands_and_attributes():
    depth = 2_000
    text = "softmax(mean(" * depth + "A" + ", None, keepdims=True), axis=0)" * depth
    e = parse(text, shapes=SHAPES)
    assert e.shape == (1, 1, 1)
    assert len(e.graph) == 2 * depth + 1


def test_long_transpose_chain():
    n = 20_000
    e = parse("W" + ".T" * n, shapes=SHAPES)
    assert e.shape == (3, 4)
    assert len(e.graph) == n + 1


# --- bad input ------------------------------------------------------------------------------------

ERRORS = [
    # indices
    ("A[y]", 3, "index must be an integer constant, got 'y'"),
    ("A[1.5]", 3, "index must be an integer constant, got '1.5'"),
    ("A[1e2]", 3, "index must be an integer constant, got '1e2'"),
    ("A[(0)]", 3, "index must be an integer constant, got '('"),
    ("A[0, -y]", 7, "index must be an integer constant, got 'y'"),
    ("A[0:x]", 5, "index must be an integer constant, got 'x'"),
    ("A[1+1]", 4, "missing ',' or ':' before '+' in an index"),
    ("A[0 1]", 5, "missing ',' or ':' before '1' in an index"),
    ("A[]", 3, "empty index: expected an integer, a slice or '...' before ']'"),
    ("A[0,]", 5, "empty index"),
    ("A[,0]", 3, "empty index"),
    ("A[1:2:3:4]", 8, "a slice has at most two ':'"),
    ("A[...:1]", 6, "'...' cannot be part of a slice"),
    ("A[1:...]", 5, "'...' cannot be part of a slice"),
    ("A[... ...]", 7, "missing ',' or ':' before '...'"),
    ("A[0", 2, "unclosed '[': expected ']'"),
    ("A[0:", 2, "unclosed '[': expected ']'"),
    ("A[-", 2, "unclosed '['"),
    ("x + A[0][", 9, "unclosed '['"),
    ("A[99999999999999999999]", 3, "index '99999999999999999999' is too large"),
    ("A[" + "9" * 5000 + "]", 3, "is too large"),
    ("A[0]]", 5, "unmatched ']'"),
    ("]", 1, "unmatched ']'"),
    ("[0]", 1, "'[' must follow an expression, as in x[0]"),
    ("x + [0]", 5, "'[' must follow an expression"),
    ("x:2", 2, "':' is allowed only inside an index"),
    ("...", 1, "'...' is allowed only inside an index"),
    ("x ...", 3, "'...' is allowed only inside an index"),
    # attributes
    ("W.shape", 2, "unknown attribute 'shape' (the only attribute is .T, the transpose)"),
    ("W.t", 2, "unknown attribute 't'"),
    ("sum(W).T2", 7, "unknown attribute 'T2'"),
    (".T", 1, "'.T' must follow an expression, as in x.T"),
    ("x * .T", 5, "'.T' must follow an expression"),
    ("W.T(0)", 4, "two operands in a row: missing operator before '('"),
    ("@ x", 1, "missing operand before '@'"),
    ("x @", 3, "missing operand after '@'"),
    # tensor-function arguments
    ("sum(A, axes=1)", 8, "sum() has no keyword 'axes'; its keywords: axis, keepdims"),
    ("softmax(L, dim=1)", 12, "softmax() has no keyword 'dim'; its keywords: axis"),
    ("mse(u, b, axis=0)", 11, "mse() takes no keyword arguments, got 'axis'"),
    ("sum(A, keepdims=1)", 17, "sum(): keepdims must be True or False, got '1'"),
    ("sum(A, axis=True)", 13, "sum(): axis must be an integer or a tuple of integers or None"),
    ("transpose(A, axes=1)", 19, "transpose(): axes must be a tuple of integers or None, got '1'"),
    ("reshape(A, shape=None)", 18, "reshape(): shape must be an integer or a tuple of integers"),
    ("sum(A, axis=y)", 13, "sum(): axis must be a constant (an integer, a tuple of integers"),
    ("sum(A, axis=1.0)", 13, "sum(): axis must be an integer constant, got '1.0'"),
    ("sum(A, axis=-x)", 14, "sum(): axis must be an integer constant, got 'x'"),
    ("sum(A, axis=(0, x))", 17, "sum(): axis entry must be an integer constant, got 'x'"),
    ("sum(A, axis=(0 1))", 16, "expected ',' or ')' in the tuple of axis"),
    ("sum(A, axis=((0)))", 14, "axis entry must be an integer constant, got '('"),
    ("sum(A, axis=1+1)", 14, "expected ',' or ')' after the value of axis, got '+'"),
    ("sum(A, y)", 8, "sum(): axis must be a constant"),
    ("reshape(A, shape(2))", 12, "reshape(): shape must be a constant"),
    ("sum(A, 1, axis=1)", 11, "sum() got two values for 'axis'"),
    ("sum(A, axis=1, axis=2)", 16, "sum() got two values for 'axis'"),
    ("sum(A, axis=0, True)", 16, "sum(): positional argument after a keyword argument"),
    ("sum(axis=0, A)", 13, "sum(): positional argument after a keyword argument"),
    (
        "sum(A, 0, True, 1)",
        17,
        "sum() takes at most 2 arguments after its 1 operand (axis, keepdims), got '1'",
    ),
    ("sum(A, 0,)", 10, "empty argument: expected a value before ')'"),
    ("sum(A, ,0)", 8, "empty argument: expected a value before ','"),
    ("sum(A, axis=)", 13, "sum(): axis must be a constant"),
    ("sum(A, axis=1", 4, "unclosed '(' of sum(...): expected ')'"),
    ("sum(A, axis=(0,", 4, "unclosed '(' of sum(...)"),
    ("sum(A, 1", 4, "unclosed '(' of sum(...)"),
    ("sum()", 1, "sum() takes 1 operand (then axis, keepdims), got 0"),
    ("sum(axis=0)", 1, "sum() takes 1 operand (then axis, keepdims), got 0"),
    ("conv2d(im, stride=1)", 1, "conv2d() takes 2 operands (then stride, padding), got 1"),
    ("mse(u)", 1, "mse() takes 2 arguments, got 1"),
    ("mse(u, b, y)", 1, "mse() takes 2 arguments, got 3"),
    ("matmul(W, x, x)", 1, "matmul() takes 2 arguments, got 3"),
    ("reshape(A)", 1, "reshape() is missing its argument 'shape'"),
    ("broadcast_to(u, )", 17, "empty argument: expected a value before ')'"),
    ("max(s)", 1, "max() takes 2 arguments, got 1"),
    ("min(s, t, s)", 1, "min() takes 2 arguments, got 3"),
    ("max()", 1, "max() takes 2 arguments, got 0"),
    ("max(A, B, axis=0)", 11, "max(a, b) is the elementwise maximum and takes no 'axis'"),
    ("min(A, B, keepdims=True)", 11, "min(a, b) is the elementwise minimum"),
    ("max(A, axis=0, 1)", 16, "positional argument after a keyword argument"),
    ("sin(x=1)", 6, "unexpected character '='"),  # scalar functions take no keywords
    ("sum(A, axis=2**63)", 14, "expected ',' or ')' after the value of axis, got '**'"),
    ("sum(A, axis=9223372036854775808)", 13, "axis '9223372036854775808' is too large"),
]


@pytest.mark.parametrize(("text", "column", "message"), ERRORS, ids=[t[:40] for t, _, _ in ERRORS])
def test_bad_tensor_text_names_the_problem_and_column(text, column, message):
    with pytest.raises(ParseError) as info:
        parse(text, shapes=SHAPES)
    assert message in info.value.message
    assert info.value.column == column
    assert f"at column {column}" in str(info.value)


def prepared_graph():
    """A graph with some nodes, to check that a failed parse leaves it exactly as it was."""
    g = Graph()
    v = inputs(g)
    keep = sg.sum(v["W"] @ v["x"] + v["b"])
    return g, keep


def assert_unchanged(g, nodes, keep):
    assert dict(g.nx.nodes(data=True)) == nodes
    assert list(g.inputs) == list(SHAPES)
    assert parse("sum(W @ x + b)", g).id == keep.id  # the hash-cons table was rolled back too


@pytest.mark.parametrize(("text", "column", "message"), ERRORS, ids=[t[:40] for t, _, _ in ERRORS])
def test_failed_tensor_parse_leaves_the_graph_unchanged(text, column, message):
    g, keep = prepared_graph()
    nodes = dict(g.nx.nodes(data=True))
    with pytest.raises(ParseError):
        parse("new1 * sum(A[0] @ W.T) + mean(new2) - " + text, g, shapes={"new2": (2, 2)})
    assert_unchanged(g, nodes, keep)


# Shape errors of the ops: a ShapeError (not a ParseError) whose message ends with the column.
SHAPE_ERRORS = [
    ("W @ b", 3, "matmul: operand 1 has shape (3,) but operand 0 has shape (3, 4)"),
    ("x + W @ u @ x", 7, "matmul: operand 1 has shape (3,)"),
    ("A @ W", 3, "matmul: operand 0 must be a vector or a matrix"),
    ("s @ x", 3, "matmul: operand 0 must be a vector or a matrix"),
    ("W + A[0, :, 0]", 3, "which does not broadcast"),
    ("atan2(u, x)", 1, "atan2"),
    ("A[2]", 2, "getitem: index 2 is out of range"),
    ("A[0, 0, 0, 0]", 2, "getitem: 4 indices for operand 0 of shape (2, 3, 4)"),
    ("A[..., 0, ...]", 2, "only one '...'"),
    ("A[::0]", 2, "slice step cannot be zero"),
    ("A[5:]", 2, "is empty"),
    ("x[0][0]", 5, "getitem: 1 indices for operand 0 of shape ()"),
    ("sum(A, axis=3)", 1, "sum: axis 3 is out of range"),
    ("sum(A, axis=(0, 0))", 1, "sum: repeated axis"),
    ("reshape(A, (5, 5))", 1, "reshape: cannot reshape operand 0 of shape (2, 3, 4)"),
    ("transpose(A, (0, 1))", 1, "transpose: axes (0, 1) is not a permutation"),
    ("broadcast_to(x, (3,))", 1, "broadcast_to"),
    ("conv2d(im, W)", 1, "conv2d: operand 1 (kernel) must be O x C x kH x kW"),
    ("max_pool2d(im, 9)", 1, "max_pool2d: window (9, 9) is larger"),
    ("softmax(A, axis=None)", 1, "softmax: axis must be an int"),
    ("x + 1 + mse(u, x)", 9, "sub: operand 1 has shape (4,)"),
]


@pytest.mark.parametrize(
    ("text", "column", "message"), SHAPE_ERRORS, ids=[t for t, _, _ in SHAPE_ERRORS]
)
def test_shape_errors_of_ops_are_shape_errors_with_the_column(text, column, message):
    g, keep = prepared_graph()
    nodes = dict(g.nx.nodes(data=True))
    with pytest.raises(ShapeError) as info:
        parse("new1 + " + text, g, shapes=SHAPES)
    assert not isinstance(info.value, ParseError)
    assert message in str(info.value)
    assert f"at column {column + len('new1 + ')}\n" in str(info.value)
    assert_unchanged(g, nodes, keep)


@st.composite
def attribute_calls(draw):
    """A tensor-function call with arbitrary constant attributes, most of them wrong."""
    name = draw(st.sampled_from(sorted(_SPECS)))
    spec = _SPECS[name]
    operands = draw(
        st.sampled_from(["A, B", "im, k", "u, b", "s, t"] if spec.need == 2 else "AuWs")
    )
    integer = st.integers(-3, 5).map(str)
    value = st.one_of(
        integer,
        st.lists(integer, max_size=4).map(lambda xs: "(" + ", ".join(xs) + ",)"),
        st.sampled_from(["True", "False", "None", "()", "-1", "9223372036854775807"]),
    )
    keys = draw(st.lists(st.sampled_from([*spec.keywords, "axis"]), max_size=2, unique=True))
    args = [f"{key}={draw(value)}" for key in keys]
    return f"{name}({operands}{''.join(', ' + a for a in args)})"


@given(attribute_calls())
def test_any_constant_attributes_give_a_node_or_a_symgrad_error(text):
    g, keep = prepared_graph()
    g.input("s"), g.input("t")
    nodes = dict(g.nx.nodes(data=True))
    try:
        e = parse(text, g)
    except SymgradError:
        assert dict(g.nx.nodes(data=True)) == nodes
        return
    assert e.graph is g and len(g) > len(nodes)


# --- gradients through parsed formulas ---------------------------------------------------------

GRADIENTS = [
    ("sum(softmax(W @ x, axis=0) * y)", {"W": (3, 4), "x": (4,), "y": (3,)}),
    ("mse(sigmoid(W @ x + b), y)", {"W": (3, 4), "x": (4,), "b": (3,), "y": (3,)}),
    ("sum(max_pool2d(conv2d(im, k), 2))", {"im": (1, 1, 4, 4), "k": (1, 1, 2, 2)}),
    (
        "softmax_cross_entropy(L @ M.T, Y) + sum(M[0, 1:]**2)",
        {"L": (5, 3), "M": (3, 3), "Y": (5, 3)},
    ),
    ("logsumexp(reshape(A, (6, 4))[::2], axis=1)[1] * A[1, 2, 3]", {"A": (2, 3, 4)}),
]


@pytest.mark.parametrize(("text", "shapes"), GRADIENTS, ids=[t for t, _ in GRADIENTS])
def test_gradients_of_parsed_formulas_match_finite_differences(text, shapes):
    f = parse(text, shapes=shapes)
    assert f.shape == ()
    rng = np.random.default_rng(3)
    names = list(f.graph.inputs)
    # Distinct values in [-1, 1): no ties at the max-pool's argmax (where the gradient jumps),
    # and small enough that softmax and sigmoid are far from saturating.
    values = {}
    for n in names:
        shape = shapes.get(n, ())
        values[n] = rng.permutation(100)[: int(np.prod(shape))].reshape(shape) / 50.0 - 1.0
    grads = sg.build_grad(f, [f.graph.inputs[n] for n in names])
    for name, grad in zip(names, grads):
        got = sg.evaluate(grad, **values)
        assert got.shape == shapes.get(name, ())
        assert np.abs(got).max() > 1e-3  # a gradient worth checking, not a saturated zero
        want = central_difference(
            lambda v, name=name: sg.evaluate(f, **{**values, name: v}), values[name]
        )
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_scalar_input_in_a_tensor_formula():
    f = parse("A[1, 2, 3] * s", shapes={"A": (2, 3, 4)})
    values = arrays(4)
    got = sg.evaluate(f, A=values["A"], s=values["s"])
    np.testing.assert_allclose(got, values["A"][1, 2, 3] * values["s"], rtol=1e-12)
    (grad,) = sg.build_grad(f, [f.graph.inputs["A"]])
    expected = np.zeros((2, 3, 4))
    expected[1, 2, 3] = values["s"]
    np.testing.assert_allclose(sg.evaluate(grad, A=values["A"], s=values["s"]), expected)
