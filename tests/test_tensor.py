"""Tensors: shapes, every tensor op of the registry against numpy, gradients, passes, tensor calls.

Every test runs on the numpy backend (the interpreter). The references are written here, apart
from the ops' own numpy fields: reductions over explicit 1-d slices with ``math.fsum``, matmul,
conv2d and the pools by loops, logsumexp and softmax through SciPy when it is installed.
Tests over ``TENSOR_OPS`` are parametrized by the registry, and an op without cases in ``CASES``
fails them: adding a tensor op adds its value, shape and gradient tests.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest

import symgrad as sg
from tests.toolbox import TENSOR_OPS, central_difference, domain_sample

try:
    import scipy.special as sps
except ImportError:  # pragma: no cover - the loops below stand in
    sps = None


# ------------------------------------------------------------------------------------------------
# References, independent of symgrad's numpy fields.
# ------------------------------------------------------------------------------------------------


def _axes(nd, axis):
    if axis is None:
        return tuple(range(nd))
    return tuple(a % nd for a in (axis if isinstance(axis, tuple) else (axis,)))


def _reduce_by(fn1d):
    """A reduction over ``axis`` as ``fn1d`` applied to each 1-d slice of the reduced axes."""

    def ref(x, axis=None, keepdims=False):
        nd = x.ndim
        axes = _axes(nd, axis)
        rest = [d for d in range(nd) if d not in axes]
        moved = np.transpose(x, rest + list(axes)).reshape([x.shape[d] for d in rest] + [-1])
        out = np.empty(moved.shape[:-1])
        for k in np.ndindex(out.shape):
            out[k] = fn1d(moved[k])
        if keepdims:
            out = out.reshape([1 if d in axes else n for d, n in enumerate(x.shape)])
        return out

    return ref


def _lse1d(v):
    if sps is not None:
        return float(sps.logsumexp(v))
    m = max(v)
    return m + math.log(math.fsum(math.exp(t - m) for t in v))


def _ref_softmax(x, axis=-1):
    if sps is not None:
        return sps.softmax(x, axis=axis)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _ref_matmul(a, b):
    out = np.empty((a.shape[0], b.shape[1]))
    for i, j in np.ndindex(out.shape):
        out[i, j] = math.fsum(a[i, k] * b[k, j] for k in range(a.shape[1]))
    return out


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _ref_conv2d(x, w, stride=1, padding=0):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, o, ho, wo))
    for b, oc, i, j in np.ndindex(out.shape):
        patch = xp[b, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
        out[b, oc, i, j] = math.fsum((patch * w[oc]).ravel())
    return out


def _ref_pool(fn):
    def ref(x, kernel_size=2, stride=None):
        (kh, kw) = _pair(kernel_size)
        (sh, sw) = (kh, kw) if stride is None else _pair(stride)
        ho, wo = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        out = np.empty(x.shape[:-2] + (ho, wo))
        for k in np.ndindex(x.shape[:-2]):
            for i, j in np.ndindex(ho, wo):
                out[k + (i, j)] = fn(x[k][i * sh : i * sh + kh, j * sw : j * sw + kw].ravel())
        return out

    return ref


def _ref_windows(name, x, kernel_size, stride=1, shape=None):
    # By loops: window (i, j) of the last two axes starts at (i*sh, j*sw).
    (kh, kw), (sh, sw) = _pair(kernel_size), _pair(stride)
    if name == "windows":
        ho, wo = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
        out = np.empty(x.shape[:-2] + (ho, wo, kh, kw))
        for i, j, p, q in np.ndindex(ho, wo, kh, kw):
            out[..., i, j, p, q] = x[..., i * sh + p, j * sw + q]
        return out
    out = np.zeros(shape)
    ho, wo = x.shape[-4:-2]
    for i, j, p, q in np.ndindex(ho, wo, kh, kw):
        out[..., i * sh + p, j * sw + q] += x[..., i, j, p, q]
    return out


def _ref_embed(x, index, shape):
    z = np.zeros(shape)
    z[index] = x
    return z


# ------------------------------------------------------------------------------------------------
# Cases: per tensor op, operand shapes, attributes and the reference.
# ------------------------------------------------------------------------------------------------


@dataclass
class Case:
    shapes: tuple  # an array among them: a constant operand (a take's indices), not an input
    attrs: dict = field(default_factory=dict)
    lo: float = -3.0
    hi: float = 3.0

    def __repr__(self):
        return f"{self.shapes} {self.attrs}"


_REDUCE_ATTRS = [
    {},
    {"axis": 1},
    {"axis": (0, 2)},
    {"axis": -1, "keepdims": True},
    {"axis": (-1, -3), "keepdims": True},
    {"axis": None, "keepdims": True},
    {"axis": ()},
]
_POOL_CASES = [
    Case(((1, 2, 4, 4),), {"kernel_size": 2}),
    Case(((1, 2, 5, 5),), {"kernel_size": 2}),  # non-divisible: the last row/column dropped
    Case(((2, 1, 4, 5),), {"kernel_size": 2, "stride": 1}),  # overlapping windows
    Case(((1, 1, 5, 6),), {"kernel_size": 3, "stride": 2}),  # overlapping, non-divisible
    Case(((1, 1, 4, 6),), {"kernel_size": (2, 3), "stride": (1, 2)}),
    Case(((4, 6),), {"kernel_size": 3}),  # a plain matrix: no leading axes
    Case(((2, 3, 5),), {"kernel_size": (1, 2), "stride": (2, 1)}),
]

CASES: dict[str, list[Case]] = {
    "sum": [Case(((2, 3, 4),), a) for a in _REDUCE_ATTRS] + [Case(((),), {})],
    "mean": [Case(((2, 3, 4),), a) for a in _REDUCE_ATTRS],
    "amax": [Case(((2, 3, 4),), a) for a in _REDUCE_ATTRS] + [Case(((5,),), {"axis": 0})],
    "logsumexp": [Case(((2, 3, 4),), a) for a in _REDUCE_ATTRS],
    "matmul": [Case(((2, 3), (3, 4))), Case(((1, 3), (3, 1))), Case(((4, 1), (1, 2)))],
    "transpose": [
        Case(((2, 3, 4),), {}),
        Case(((2, 3, 4),), {"axes": (1, 2, 0)}),
        Case(((2, 3, 4),), {"axes": (-1, 0, -2)}),
        Case(((2, 3),), {}),
    ],
    "reshape": [
        Case(((2, 3, 4),), {"shape": (4, 6)}),
        Case(((2, 3, 4),), {"shape": (-1, 2)}),
        Case(((2, 3, 4),), {"shape": (24,)}),
        Case(((2, 3, 4),), {"shape": (2, 1, 12)}),
        Case(((1,),), {"shape": ()}),
    ],
    "broadcast_to": [
        Case(((3,),), {"shape": (2, 3)}),
        Case(((2, 1),), {"shape": (2, 4)}),
        Case(((),), {"shape": (2, 2)}),
        Case(((1, 3),), {"shape": (2, 2, 3)}),
    ],
    "getitem": [
        Case(((3, 4, 5),), {"index": 1}),
        Case(((3, 4, 5),), {"index": slice(None, None, -1)}),
        Case(((3, 4, 5),), {"index": (Ellipsis, 2)}),
        Case(((3, 4, 5),), {"index": (slice(4, 0, -2), Ellipsis, slice(1, None))}),
        Case(((3, 4, 5),), {"index": (-1, slice(None), slice(None, None, -3))}),
        Case(((3, 4, 5),), {"index": (0, 1, 2)}),
        Case(((3, 4, 5),), {"index": (slice(-2, None), Ellipsis, -1)}),
        Case(((3, 4, 5),), {"index": (slice(None, -10, -1), slice(1, 3))}),
    ],
    "embed": [
        Case(((3,),), {"index": (slice(None, None, -1), 1), "shape": (3, 4)}),
        Case(((2, 3),), {"index": (slice(1, 3), slice(None, None, 2)), "shape": (4, 5)}),
        Case(((2,),), {"index": (Ellipsis, 0), "shape": (2, 3)}),
        Case(((2, 2),), {"index": (slice(3, 0, -2), 1, slice(0, 2)), "shape": (4, 3, 2)}),
    ],
    "softmax": [
        Case(((2, 3, 4),), {}),
        Case(((2, 3, 4),), {"axis": 0}),
        Case(((2, 3, 4),), {"axis": 1}),
        Case(((2, 3, 4),), {"axis": (-2,)}),
        Case(((5,),), {}),
    ],
    "conv2d": [
        Case(((2, 2, 5, 5), (3, 2, 3, 3)), {}),
        Case(((1, 2, 5, 5), (2, 2, 3, 3)), {"stride": 2, "padding": 1}),
        Case(((1, 2, 5, 4), (2, 2, 2, 3)), {"stride": (1, 2), "padding": (0, 1)}),
        Case(((1, 1, 6, 6), (2, 1, 2, 2)), {"stride": 3, "padding": 2}),
        Case(((2, 3, 3, 3), (2, 3, 1, 1)), {}),
    ],
    "avg_pool2d": _POOL_CASES,
    "max_pool2d": _POOL_CASES,
    "windows": [
        Case(((1, 2, 4, 4),), {"kernel_size": 2}),
        Case(((2, 1, 5, 6),), {"kernel_size": (2, 3), "stride": (1, 2)}),
        Case(((4, 6),), {"kernel_size": 3, "stride": 2}),
    ],
    "window_sum": [
        Case(((1, 2, 3, 3, 2, 2),), {"kernel_size": 2, "shape": (1, 2, 4, 4)}),
        Case(
            ((2, 1, 4, 2, 2, 3),), {"kernel_size": (2, 3), "stride": (1, 2), "shape": (2, 1, 5, 6)}
        ),  # fmt: skip
        Case(((1, 2, 3, 3),), {"kernel_size": 3, "stride": 2, "shape": (4, 6)}),
    ],
}


_TAKES = [  # x's shape, the indices (repeated, negative), axis
    ((5,), np.array([4.0, 0.0, -1.0, 4.0]), 0),
    ((4, 3), np.array([[1.0, 3.0], [0.0, -4.0]]), 0),
    ((2, 5, 3), np.array([2.0, 2.0, 0.0]), 1),
    ((2, 3, 4), np.array(3.0), 2),
    ((3, 2), np.array([1.0, 0.0, 1.0, 1.0, 0.0]), -1),
]


def _scatter_case(shape, idx, axis) -> Case:
    values = (*shape[: axis % len(shape)], *idx.shape, *shape[axis % len(shape) + 1 :])
    return Case((values, idx), {"axis": axis, "size": shape[axis]})


CASES["concatenate"] = [
    Case(((2, 3), (2, 1), (2, 3)), {"axis": 1}),
    Case(((4,), (1,)), {"axis": 0}),
    Case(((1, 2, 3), (3, 2, 3)), {"axis": -3}),
    Case(((2, 3, 1), (2, 3, 2), (2, 3, 1), (2, 3, 4)), {"axis": 2}),
    Case(((3, 2),), {"axis": 1}),
]
CASES["einsum"] = [
    Case(((2, 3), (3, 4)), {"spec": "ij,jk->ik"}),
    Case(((3, 2, 3), (3, 3, 4)), {"spec": "bij,bjk->bik"}),
    Case(((4, 3, 3), (5, 4, 3)), {"spec": "kij,nkj->nki"}),
    Case(((2, 3),), {"spec": "ij->"}),
    Case(((2, 3),), {"spec": "ij->ji"}),
    Case(((3,), (3,)), {"spec": "i,i"}),
    Case(((2,), (3,)), {"spec": "i,j->ij"}),
    Case(((2, 3), (3, 4), (4,)), {"spec": "ij , jk , k -> i"}),
    Case(((2, 3, 2), (3,)), {"spec": "ijk,j->k"}),
    Case(((), (2,)), {"spec": ",i->i"}),
]
CASES["take"] = [Case((shape, idx), {"axis": axis}) for shape, idx, axis in _TAKES]
CASES["scatter_add"] = [_scatter_case(*t) for t in _TAKES]


def _ref_take(name: str, x, idx, axis, size=None):
    """take and scatter_add by explicit loops over every element of the small array."""
    idx = np.asarray(idx, dtype=int)
    if name == "take":
        axis %= x.ndim
        out = np.empty(x.shape[:axis] + idx.shape + x.shape[axis + 1 :])
        for at in np.ndindex(out.shape):
            j = at[axis : axis + idx.ndim]
            out[at] = x[at[:axis] + (idx[j],) + at[axis + idx.ndim :]]
        return out
    axis %= x.ndim - idx.ndim + 1
    out = np.zeros(x.shape[:axis] + (size,) + x.shape[axis + idx.ndim :])
    for at in np.ndindex(x.shape):
        j = at[axis : axis + idx.ndim]
        out[at[:axis] + (idx[j],) + at[axis + idx.ndim :]] += x[at]
    return out


def _reference(name: str, arrays: list, attrs: dict):
    """The expected value of op ``name`` on ``arrays``, computed here."""
    x = arrays[0]
    if name in ("sum", "mean", "amax", "logsumexp"):
        fn1d = {
            "sum": lambda v: math.fsum(v),
            "mean": lambda v: math.fsum(v) / len(v),
            "amax": lambda v: max(v),
            "logsumexp": _lse1d,
        }[name]
        return _reduce_by(fn1d)(x, **attrs)
    if name == "matmul":
        return _ref_matmul(*arrays)
    if name == "transpose":
        return np.transpose(x, attrs.get("axes"))
    if name == "reshape":
        return x.ravel().reshape(attrs["shape"])
    if name == "broadcast_to":
        return np.broadcast_to(x, attrs["shape"])
    if name == "getitem":
        return x[attrs["index"]]
    if name == "embed":
        return _ref_embed(x, attrs["index"], attrs["shape"])
    if name == "softmax":
        axis = attrs.get("axis", -1)
        return _ref_softmax(x, axis[0] if isinstance(axis, tuple) else axis)
    if name == "conv2d":
        return _ref_conv2d(*arrays, **attrs)
    if name == "avg_pool2d":
        return _ref_pool(lambda v: math.fsum(v) / len(v))(x, **attrs)
    if name == "max_pool2d":
        return _ref_pool(max)(x, **attrs)
    if name in ("windows", "window_sum"):
        return _ref_windows(name, x, **attrs)
    if name in ("take", "scatter_add"):
        return _ref_take(name, x, arrays[1], **attrs)
    if name == "einsum":  # every point of the iteration space, its product added to the output
        ins, out = attrs["spec"].replace(" ", "").split("->") if "->" in attrs["spec"] else (
            attrs["spec"], None)  # fmt: skip
        ins = ins.split(",")
        if out is None:
            out = "".join(sorted(c for c in set("".join(ins)) if "".join(ins).count(c) == 1))
        sizes = {c: n for sub, a in zip(ins, arrays) for c, n in zip(sub, np.shape(a))}
        letters = list(sizes)
        result = np.zeros(tuple(sizes[c] for c in out))
        for point in np.ndindex(*(sizes[c] for c in letters)):
            at = dict(zip(letters, point))
            term = math.prod(float(np.asarray(a)[tuple(at[c] for c in sub)])
                             for sub, a in zip(ins, arrays))  # fmt: skip
            result[tuple(at[c] for c in out)] += term
        return result
    if name == "concatenate":  # element by element, from the operand each position falls in
        axis = attrs["axis"] % x.ndim
        shape = list(x.shape)
        shape[axis] = sum(a.shape[axis] for a in arrays)
        out = np.empty(shape)
        for at in np.ndindex(*shape):
            k, j = 0, at[axis]
            while j >= arrays[k].shape[axis]:
                j, k = j - arrays[k].shape[axis], k + 1
            out[at] = arrays[k][at[:axis] + (j,) + at[axis + 1 :]]
        return out
    raise AssertionError(f"no reference for {name}: write one in _reference")


def _op_case(name: str, case: Case, seed: int = 0):
    """(graph, operands, node, input values) for one case of one op: the operands inputs x0,
    x1, ... or constants where the case gives an array."""
    rng = np.random.default_rng(seed)
    g = sg.Graph()
    xs = [
        g.const(s) if isinstance(s, np.ndarray) else g.input(f"x{k}", shape=s)
        for k, s in enumerate(case.shapes)
    ]
    node = g.apply(name, *xs, **case.attrs)
    values = {x.name: rng.uniform(case.lo, case.hi, x.shape) for x in _inputs(xs)}
    return g, xs, node, values


def _inputs(operands) -> list:
    return [o for o in operands if o.op == "input"]


def _arrays(operands, values) -> list[np.ndarray]:
    """Each operand's value: an input's from ``values``, a constant's own."""
    return [values[o.name] if o.op == "input" else o.value for o in operands]


def _cases(name: str) -> list[Case]:
    assert name in CASES, f"tensor op {name!r} has no test cases: add them to CASES"
    return CASES[name]


def test_cases_cover_the_registry():
    assert sorted(CASES) == sorted(TENSOR_OPS)


# ------------------------------------------------------------------------------------------------
# 1. Shapes.
# ------------------------------------------------------------------------------------------------


def test_input_shapes():
    g = sg.Graph()
    assert g.input("s").shape == ()
    assert g.input("v", shape=3).shape == (3,)
    assert g.input("m", shape=(2, 3)).shape == (2, 3)
    assert g.input("m").shape == (2, 3)  # fetched without a shape: the declared one
    assert g.input("m", shape=[2, 3]).shape == (2, 3)
    assert g.inputs["m"].ndim == 2 and g.inputs["m"].size == 6
    for bad in [(0,), (2, -1), (1.5,), "ab", (True,)]:
        with pytest.raises(sg.ShapeError, match="'bad'"):
            g.input("bad", shape=bad)
    assert "bad" not in g.inputs


def test_refetching_an_input_with_another_shape_is_a_shape_error():
    g = sg.Graph()
    g.input("A", shape=(2, 3))
    n = len(g)
    with pytest.raises(sg.ShapeError, match=r"'A'.*\(2, 3\).*\(3, 2\)"):
        g.input("A", shape=(3, 2))
    with pytest.raises(sg.ShapeError, match=r"'A'"):
        g.input("A", shape=())
    assert len(g) == n and g.inputs["A"].shape == (2, 3)


def _shape_graph():
    g = sg.Graph()
    ins = {
        "A": g.input("A", shape=(2, 3)),
        "B": g.input("B", shape=(4, 2)),
        "v": g.input("v", shape=(4,)),
        "s": g.input("s"),
        "X": g.input("X", shape=(1, 2, 4, 4)),
        "W": g.input("W", shape=(3, 3, 2, 2)),
        "K": g.input("K", shape=(3, 2, 5, 5)),
        "T": g.input("T", shape=(2, 4, 4)),
    }
    return g, ins


NODE_SHAPES = [
    (lambda i: i["A"].T @ i["B"].T, (3, 4)),
    (lambda i: i["B"] @ i["A"], (4, 3)),
    (lambda i: i["v"] @ i["B"], (2,)),  # numpy's rules for vectors
    (lambda i: i["B"] @ i["A"][:, 0], (4,)),
    (lambda i: i["v"] @ i["v"], ()),
    (lambda i: i["A"] + i["s"], (2, 3)),
    (lambda i: i["A"][:, :1] * i["A"][0], (2, 3)),
    (lambda i: sg.where(i["A"][:1], i["s"], i["A"][:, 1:2]), (2, 3)),
    (lambda i: sg.sin(i["T"]), (2, 4, 4)),
    (lambda i: i["T"].sum(), ()),
    (lambda i: i["T"].sum(axis=(0, -1)), (4,)),
    (lambda i: i["T"].mean(axis=1, keepdims=True), (2, 1, 4)),
    (lambda i: i["T"].max(axis=-1), (2, 4)),
    (lambda i: sg.min(i["T"], axis=0), (4, 4)),
    (lambda i: sg.logsumexp(i["T"], axis=(1, 2), keepdims=True), (2, 1, 1)),
    (lambda i: sg.softmax(i["T"], axis=1), (2, 4, 4)),
    (lambda i: sg.log_softmax(i["A"]), (2, 3)),
    (lambda i: i["T"].transpose(2, 0, 1), (4, 2, 4)),
    (lambda i: i["A"].T, (3, 2)),
    (lambda i: i["T"].reshape(-1, 8), (4, 8)),
    (lambda i: sg.broadcast_to(i["A"], (5, 2, 3)), (5, 2, 3)),
    (lambda i: i["T"][1, ::-2], (2, 4)),
    (lambda i: i["T"][..., 0], (2, 4)),
    (lambda i: sg.conv2d(i["X"], i["K"][:, :, :3, :3], padding=1), (1, 3, 4, 4)),
    (lambda i: sg.conv2d(i["X"], i["K"][:, :, :2, :3], stride=(2, 1)), (1, 3, 2, 2)),
    (lambda i: sg.avg_pool2d(i["X"], 3, 1), (1, 2, 2, 2)),
    (lambda i: sg.max_pool2d(i["T"], (2, 3)), (2, 2, 1)),
    (lambda i: sg.mse(i["A"], i["s"]), ()),
    (lambda i: sg.softmax_cross_entropy(i["A"], i["A"]), ()),
]


@pytest.mark.parametrize("k", range(len(NODE_SHAPES)))
def test_node_shapes_are_inferred(k):
    g, ins = _shape_graph()
    build, shape = NODE_SHAPES[k]
    e = build(ins)
    assert e.shape == shape
    assert g.node(e.id)["shape"] == shape
    # The interpreter agrees with the inferred shape.
    rng = np.random.default_rng(k)
    values = {n: rng.uniform(0.5, 1.5, x.shape) for n, x in g.inputs.items()}
    assert sg.evaluate(e, **values).shape == shape


def _apply(name):
    return lambda i, *a, **kw: i[a[0]].graph.apply(name, *(i[n] for n in a), **kw)


# (what to build, strings the message must hold: op, operand position, shapes)
SHAPE_ERRORS = [
    (lambda i: i["A"] @ i["B"], ["matmul", "operand 1", "(4, 2)", "(2, 3)"]),
    (lambda i: _apply("matmul")(i, "A", "B"), ["matmul", "operand 1", "(4, 2)", "(2, 3)"]),
    (lambda i: i["A"] @ np.ones((4, 4)), ["matmul", "operand 1", "(4, 4)", "(2, 3)"]),
    (lambda i: i["v"] @ i["A"], ["matmul", "operand 1", "(2, 3)", "(4,)"]),
    (lambda i: i["A"] @ i["T"], ["matmul", "operand 1", "(2, 4, 4)"]),
    (lambda i: i["A"] + i["B"], ["add", "operand 1", "(4, 2)", "(2, 3)"]),
    (lambda i: i["A"] * np.ones((4, 2)), ["mul", "operand 1", "(4, 2)", "(2, 3)"]),
    (lambda i: i["v"] * i["A"], ["mul", "operand 1", "(2, 3)", "(4,)"]),
    (lambda i: sg.where(i["A"], i["s"], i["B"]), ["where", "operand 2", "(4, 2)", "(2, 3)"]),
    (lambda i: sg.where(i["B"], i["A"], 1.0), ["where", "operand 1", "(2, 3)", "(4, 2)"]),
    (lambda i: i["A"].sum(axis=2), ["sum", "axis 2", "operand 0", "(2, 3)"]),
    (lambda i: i["A"].mean(axis=-3), ["mean", "axis -3", "operand 0", "(2, 3)"]),
    (lambda i: i["A"].max(axis=(0, -2)), ["amax", "repeated axis"]),
    (lambda i: sg.logsumexp(i["A"], axis=5), ["logsumexp", "axis 5", "(2, 3)"]),
    (lambda i: sg.softmax(i["A"], axis=2), ["softmax", "axis 2", "operand 0", "(2, 3)"]),
    (lambda i: sg.min(i["A"], axis=2), ["amax", "axis 2", "(2, 3)"]),
    (lambda i: i["A"].reshape(4, 2), ["reshape", "operand 0", "(2, 3)", "(4, 2)"]),
    (lambda i: i["A"].reshape(-1, 4), ["reshape", "operand 0", "(2, 3)", "(-1, 4)"]),
    (lambda i: i["A"].transpose(0, 0), ["transpose", "(0, 0)", "operand 0", "(2, 3)"]),
    (lambda i: i["A"].transpose(1, 2), ["transpose", "(1, 2)", "operand 0", "(2, 3)"]),
    (lambda i: i["A"].transpose(0, 1, 2), ["transpose", "operand 0", "(2, 3)"]),
    (lambda i: sg.broadcast_to(i["A"], (3, 3)), ["broadcast_to", "operand 0", "(2, 3)"]),
    (lambda i: sg.broadcast_to(i["A"], (3,)), ["broadcast_to", "operand 0", "(2, 3)"]),
    (lambda i: i["A"][2], ["getitem", "index 2", "operand 0", "(2, 3)"]),
    (lambda i: i["A"][:, -4], ["getitem", "index -4", "operand 0", "(2, 3)"]),
    (lambda i: i["A"][0, 0, 0], ["getitem", "3 indices", "operand 0", "(2, 3)"]),
    (lambda i: i["A"][..., 0, ...], ["getitem", "one '...'"]),
    (lambda i: i["A"][1:1], ["getitem", "empty", "operand 0", "(2, 3)"]),
    (lambda i: i["A"][:, 3:], ["getitem", "empty", "operand 0", "(2, 3)"]),
    (lambda i: i["A"][::0], ["getitem", "step"]),
    (lambda i: sg.conv2d(i["X"], i["W"]), ["conv2d", "operand 1", "(3, 3, 2, 2)", "(1, 2, 4, 4)"]),
    (lambda i: sg.conv2d(i["X"], i["K"]), ["conv2d", "larger", "(3, 2, 5, 5)", "(1, 2, 4, 4)"]),
    (lambda i: sg.conv2d(i["T"], i["K"]), ["conv2d", "operand 0", "(2, 4, 4)"]),
    (lambda i: sg.conv2d(i["X"], i["A"]), ["conv2d", "operand 1", "(2, 3)"]),
    (lambda i: sg.max_pool2d(i["X"], 5), ["max_pool2d", "(5, 5)", "operand 0", "(1, 2, 4, 4)"]),
    (lambda i: sg.avg_pool2d(i["X"], (1, 5)), ["avg_pool2d", "(1, 5)", "(1, 2, 4, 4)"]),
    (lambda i: sg.max_pool2d(i["v"]), ["max_pool2d", "operand 0", "(4,)"]),
    (lambda i: sg.softmax_cross_entropy(i["A"], i["B"]), ["mul", "(4, 2)", "(2, 3)"]),
    (lambda i: sg.binary_cross_entropy(i["A"], i["B"]), ["mul", "(4, 2)", "(2, 3)"]),
]


@pytest.mark.parametrize("k", range(len(SHAPE_ERRORS)))
def test_shape_errors_name_op_operand_and_shapes_and_change_nothing(k):
    build, parts = SHAPE_ERRORS[k]
    g, ins = _shape_graph()
    n, names = len(g), list(g.inputs)
    keys = dict(g._ids)
    with pytest.raises(sg.ShapeError) as info:
        build(ins)
    for part in parts:
        assert part in str(info.value), (part, str(info.value))
    assert len(g) == n and list(g.inputs) == names
    assert g._ids == keys
    assert isinstance(info.value, ValueError) and isinstance(info.value, sg.SymgradError)


def test_failed_call_keeps_the_graph_usable():
    g, ins = _shape_graph()
    with pytest.raises(sg.ShapeError):
        ins["A"] @ np.full((4, 4), 7.0)
    # The constant made for the failed call is gone; making it again gives a fresh, working node.
    c = g.const(np.full((3, 4), 7.0))
    out = sg.evaluate(ins["A"] @ c, A=np.ones((2, 3)))
    np.testing.assert_array_equal(out, np.full((2, 4), 21.0))


def test_array_constants_hash_cons_by_value_bits():
    g = sg.Graph()
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    c = g.const(a)
    assert c.op == "const" and c.shape == (2, 2)
    assert g.const(a.copy()) == c  # same values: the same node
    assert g.const([[1, 2], [3, 4]]) == c  # a nested list of ints holds the same bits
    assert g.const(a.reshape(1, 4)) != c  # same bits, another shape
    assert g.const(np.array([0.0, 1.0])) != g.const(np.array([-0.0, 1.0]))
    nan = g.const(np.array([np.nan, 1.0]))
    assert g.const(np.array([np.nan, 1.0])) == nan  # NaN equals itself, bit for bit
    assert g.const(np.array([5.0])).shape == (1,)
    assert g.const(np.array(5.0)).shape == ()  # a 0-d array is a scalar constant
    assert g.const(np.array(5.0)) == g.const(5.0)


def test_array_constants_are_read_only_copies():
    g = sg.Graph()
    x = g.input("x", shape=(2, 2))
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    c = g.const(a)
    a[0, 0] = 99.0  # the caller's array changes later ...
    np.testing.assert_array_equal(c.value, [[1.0, 2.0], [3.0, 4.0]])  # ... the node does not
    assert not c.value.flags.writeable
    with pytest.raises(ValueError):
        c.value[0, 0] = 5.0
    np.testing.assert_array_equal(sg.evaluate(x * c, x=np.ones((2, 2))), [[1, 2], [3, 4]])
    assert g.const(a) != c  # the changed array is a new value


def test_bad_array_constants():
    g = sg.Graph()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning on the way to the error
        with pytest.raises(sg.GraphError, match="real numbers"):
            g.const(np.array([1 + 2j]))
    with pytest.raises(sg.GraphError, match="real numbers"):
        g.const(np.array(["a"]))
    with pytest.raises(sg.ShapeError, match="empty"):
        g.const(np.zeros((0, 3)))
    assert len(g) == 0


# ------------------------------------------------------------------------------------------------
# 2. Every tensor op against numpy.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_matches_numpy(name):
    for k, case in enumerate(_cases(name)):
        g, xs, node, values = _op_case(name, case, seed=k)
        want = _reference(name, _arrays(xs, values), case.attrs)
        got = sg.evaluate(node, **values)
        assert node.shape == np.shape(want), case
        assert got.shape == np.shape(want), case
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13, err_msg=repr(case))


@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_nodes_hash_cons_on_canonical_attrs(name):
    # Building the same op twice gives one node (attrs are normalized, so they hash).
    for case in _cases(name):
        g, xs, node, _ = _op_case(name, case)
        n = len(g)
        assert g.apply(name, *xs, **case.attrs) == node
        assert len(g) == n


def test_equivalent_attrs_give_one_node():
    g = sg.Graph()
    x = g.input("x", shape=(2, 3, 4))
    assert x.sum(axis=-1) == x.sum(axis=2) == x.sum(axis=(2,))
    assert x.sum(axis=(2, 0)) == x.sum(axis=(0, -1))
    assert x.transpose() == x.transpose(2, 1, 0) == x.T
    assert x.reshape(-1, 4) == x.reshape(6, 4)
    assert x[1] == x[-1 + 2 - 1 + 1, ...] == x[1, :, :]
    assert sg.max_pool2d(x, 2) == sg.max_pool2d(x, (2, 2), stride=2)
    assert x.sum(axis=0) != x.sum(axis=0, keepdims=True)


def test_tensor_api_against_numpy():
    rng = np.random.default_rng(3)
    g = sg.Graph()
    A, B = g.input("A", shape=(3, 4)), g.input("B", shape=(4, 2))
    v, u = g.input("v", shape=(4,)), g.input("u", shape=(3,))
    P, Y = g.input("P", shape=(3, 4)), g.input("Y", shape=(3, 4))
    vals = {
        "A": rng.normal(size=(3, 4)),
        "B": rng.normal(size=(4, 2)),
        "v": rng.normal(size=4),
        "u": rng.normal(size=3),
        "P": rng.uniform(0.1, 0.9, (3, 4)),
        "Y": rng.uniform(0, 1, (3, 4)),
    }
    a, b, vv, uu, p, y = (vals[n] for n in "ABvuPY")
    lsm = a - np.log(np.sum(np.exp(a), axis=1, keepdims=True))
    checks = [
        (sg.matmul(A, B), a @ b),
        (A @ v, a @ vv),
        (u @ A, uu @ a),
        (v @ v, vv @ vv),
        (A @ np.eye(4), a),
        (np.eye(3) @ A, a),
        (sg.min(A, axis=1), a.min(axis=1)),
        (sg.max(A, axis=0, keepdims=True), a.max(axis=0, keepdims=True)),
        (sg.max(A, B.T[0, 0]), np.maximum(a, b[0, 0])),
        (sg.min(A, 0.0), np.minimum(a, 0.0)),
        (sg.log_softmax(A, axis=1), lsm),
        (sg.mse(A, Y), np.mean((a - y) ** 2)),
        (sg.binary_cross_entropy(P, Y), np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))),
        (
            sg.binary_cross_entropy_with_logits(A, Y),
            np.mean(-(y * np.log(1 / (1 + np.exp(-a))) + (1 - y) * np.log(1 / (1 + np.exp(a))))),
        ),
        (sg.softmax_cross_entropy(A, Y), np.mean(-np.sum(y * lsm, axis=1))),
        (A.reshape(2, 6).transpose(), a.reshape(2, 6).T),
        (A[1:, ::-1].mean(axis=0), a[1:, ::-1].mean(axis=0)),
    ]
    for e, want in checks:
        got = sg.evaluate(e, **vals)
        assert e.shape == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)


def test_tensor_functions_reject_non_expr():
    with pytest.raises(sg.GraphError, match="sum"):
        sg.sum(np.ones(3))
    with pytest.raises(sg.GraphError, match="conv2d"):
        sg.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)))
    g = sg.Graph()
    x = g.input("x", shape=(2, 2))
    with pytest.raises(sg.GraphError, match="no attribute"):
        g.apply("sum", x, axes=0)


# ------------------------------------------------------------------------------------------------
# 3. Gradients.
# ------------------------------------------------------------------------------------------------


def _check_grads(loss, wrt, values, rtol=1e-6, atol=1e-8):
    grads = sg.build_grad(loss, wrt)
    f = sg.compile(loss, backend="numpy")
    fn = sg.compile(grads, inputs=f.inputs, backend="numpy")
    got = fn(**{n: values[n] for n in f.inputs})
    for w, gw in zip(wrt, got):
        assert gw.shape == w.shape
        want = central_difference(
            lambda v, name=w.name: float(f(**{**values, name: v})[0]), values[w.name]
        )
        np.testing.assert_allclose(gw, want, rtol=rtol, atol=atol, err_msg=w.name)
    return got


def _random_projection(out: sg.Expr, rng):
    # sum(out * r): every output element weighs in, so every row of the Jacobian is checked.
    r = rng.normal(size=out.shape)
    return sg.sum(out * (out.graph.const(r) if out.shape else float(r)))


@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_gradient_matches_central_differences(name):
    for k, case in enumerate(_cases(name)):
        g, xs, node, values = _op_case(name, case, seed=k)
        loss = _random_projection(node, np.random.default_rng(100 + k))
        _check_grads(loss, _inputs(xs), values)


@pytest.mark.parametrize("name", TENSOR_OPS)
def test_tensor_op_gradient_through_composition(name):
    # The op between two nonlinear maps: the chain rule through tensor cotangents.
    case = _cases(name)[0]
    g, xs, node, values = _op_case(name, case, seed=7)
    inner = [sg.tanh(x) if x.op == "input" else x for x in xs]
    loss = sg.sum(sg.sin(g.apply(name, *inner, **case.attrs)) * 1.5)
    _check_grads(loss, _inputs(xs), values)


BINARY = ["add", "sub", "mul", "div", "pow", "atan2", "max", "min"]
BROADCASTS = [((3,), (2, 3)), ((), (2, 3)), ((2, 1), (1, 3)), ((2, 3), ()), ((4, 1, 3), (2, 1))]


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
def test_broadcasting_gradients_have_the_operand_shapes(name, shapes):
    rng = np.random.default_rng(5)
    g = sg.Graph()
    a, b = g.input("a", shape=shapes[0]), g.input("b", shape=shapes[1])
    out = g.apply(name, a, b)
    assert out.shape == np.broadcast_shapes(*shapes)
    values = dict(zip("ab", domain_sample(name, list(shapes), rng), strict=True))
    ga, gb = _check_grads(_random_projection(out, rng), [a, b], values)
    assert ga.shape == shapes[0] and gb.shape == shapes[1]


def test_bias_and_scalar_gradients_sum_over_broadcast_axes():
    g = sg.Graph()
    X, b, s = g.input("X", shape=(4, 3)), g.input("b", shape=(3,)), g.input("s")
    col, row = g.input("col", shape=(4, 1)), g.input("row", shape=(1, 3))
    loss = sg.sum((X + b) * s) + sg.sum(col * row)
    gX, gb, gs, gc, gr = sg.evaluate(
        sg.build_grad(loss, [X, b, s, col, row]),
        X=np.arange(12.0).reshape(4, 3),
        b=np.array([1.0, 2.0, 3.0]),
        s=2.0,
        col=np.array([[1.0], [2.0], [3.0], [4.0]]),
        row=np.array([[1.0, 10.0, 100.0]]),
    )
    np.testing.assert_array_equal(gX, np.full((4, 3), 2.0))
    np.testing.assert_array_equal(gb, [8.0, 8.0, 8.0])  # 4 rows times s
    assert gs.shape == () and gs == np.arange(12.0).sum() + 4 * 6.0
    np.testing.assert_array_equal(gc, np.full((4, 1), 111.0))
    np.testing.assert_array_equal(gr, [[10.0, 10.0, 10.0]])


def test_where_with_broadcasting_gradients():
    rng = np.random.default_rng(9)
    g = sg.Graph()
    c, a, b = g.input("c", shape=(3, 1)), g.input("a", shape=(1, 4)), g.input("b")
    out = sg.where(c > 0.0, a * a, sg.exp(b))
    values = {"c": np.array([[1.0], [-1.0], [2.0]]), "a": rng.normal(size=(1, 4)), "b": 0.3}
    got = _check_grads(_random_projection(out, rng), [a, b], values)
    assert got[0].shape == (1, 4) and got[1].shape == ()


def test_unconnected_tensor_wrt_gets_zeros_of_its_shape():
    g = sg.Graph()
    x, w = g.input("x", shape=(2, 3)), g.input("w", shape=(3, 2))
    [gw] = sg.build_grad(sg.sum(x), [w])
    assert gw.shape == (3, 2)
    np.testing.assert_array_equal(sg.evaluate(gw), np.zeros((3, 2)))


def _mlp(seed=0):
    """A small network: loss = mean((tanh(X W1 + b1) W2 - Y)**2) + logsumexp term."""
    rng = np.random.default_rng(seed)
    g = sg.Graph()
    X, Y = g.input("X", shape=(4, 3)), g.input("Y", shape=(4, 2))
    W1, b1, W2 = g.input("W1", shape=(3, 5)), g.input("b1", shape=(5,)), g.input("W2", (5, 2))
    h = sg.tanh(X @ W1 + b1)
    out = h @ W2
    loss = sg.mse(out, Y) + 0.1 * sg.sum(sg.logsumexp(out, axis=1))
    values = {
        "X": rng.normal(size=(4, 3)),
        "Y": rng.normal(size=(4, 2)),
        "W1": rng.normal(size=(3, 5)),
        "b1": rng.normal(size=5),
        "W2": rng.normal(size=(5, 2)),
    }
    return g, loss, (W1, b1, W2), values


def test_network_gradients_match_central_differences():
    g, loss, wrt, values = _mlp()
    _check_grads(loss, list(wrt), values)


def test_hvp_matches_differences_of_the_gradient():
    rng = np.random.default_rng(11)
    g, loss, (W1, b1, W2), values = _mlp(1)
    V1, V2 = rng.normal(size=W1.shape), rng.normal(size=W2.shape)
    hv = sg.hvp(loss, [W1, W2], [g.const(V1), g.const(V2)])
    assert [h.shape for h in hv] == [W1.shape, W2.shape]
    got = sg.evaluate(hv, **values)
    grad = sg.compile(sg.build_grad(loss, [W1, W2]), backend="numpy")

    def at(t):
        vals = {**values, "W1": values["W1"] + t * V1, "W2": values["W2"] + t * V2}
        return grad(**{n: vals[n] for n in grad.inputs})

    for k in range(2):
        want = central_difference(lambda t, k=k: at(t)[k], 0.0, step=1e-5)
        np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-7)


def test_hvp_of_a_single_tensor_wrt():
    rng = np.random.default_rng(12)
    g = sg.Graph()
    W = g.input("W", shape=(3, 3))
    x = g.const(rng.normal(size=(3, 2)))
    loss = sg.sum(sg.softmax(W @ x, axis=0) * g.const(rng.normal(size=(3, 2))))
    Wv, V = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    [hv] = sg.hvp(loss, [W], [g.const(V)])
    [gW] = sg.build_grad(loss, [W])
    fg = sg.compile(gW, backend="numpy")
    want = central_difference(lambda t: fg(W=Wv + t * V)[0], 0.0, step=1e-5)
    np.testing.assert_allclose(sg.evaluate(hv, W=Wv), want, rtol=1e-6, atol=1e-8)
    with pytest.raises(sg.GradError, match=r"v\[0\]"):
        sg.hvp(loss, [W], [g.const(np.ones((3, 2)))])


def test_hessian_in_a_tensor_graph_with_scalar_wrt():
    # Two scalars that parametrize a tensor graph (tensor wrt: test_jacobian.py).
    rng = np.random.default_rng(13)
    g = sg.Graph()
    a, b, X = g.input("a"), g.input("b"), g.input("X", shape=(3, 4))
    y = sg.logsumexp(sg.tanh(a * X + b) @ g.const(rng.normal(size=(4, 2))))
    H = sg.hessian(y, [a, b])
    values = {"a": 0.7, "b": -0.3, "X": rng.normal(size=(3, 4))}
    got = np.array(sg.evaluate(H, **values)).reshape(2, 2)
    grad = sg.compile(sg.build_grad(y, [a, b]), backend="numpy")
    # Row j of the differences: the gradient's derivative in (a, b)[j], column j of H.
    fd = central_difference(
        lambda ab: np.array(grad(**{**values, "a": ab[0], "b": ab[1]})),
        [values["a"], values["b"]],
        step=1e-5,
    )
    np.testing.assert_allclose(got, fd.T, rtol=1e-6)
    np.testing.assert_allclose(got, got.T, rtol=1e-12)


def test_amax_ties_split_the_adjoint_evenly():
    g = sg.Graph()
    x, m = g.input("x", shape=(4,)), g.input("m", shape=(2, 3))
    [gx] = sg.build_grad(sg.max(x), [x])
    np.testing.assert_array_equal(
        sg.evaluate(gx, x=np.array([1.0, 3.0, 3.0, 2.0])), [0, 0.5, 0.5, 0]
    )
    np.testing.assert_array_equal(sg.evaluate(gx, x=np.full(4, 2.0)), [0.25] * 4)
    [gm] = sg.build_grad(sg.sum(m.max(axis=1) * g.const(np.array([1.0, 6.0]))), [m])
    got = sg.evaluate(gm, m=np.array([[5.0, 5.0, 5.0], [1.0, 7.0, 7.0]]))
    np.testing.assert_array_equal(got, [[1 / 3, 1 / 3, 1 / 3], [0.0, 3.0, 3.0]])
    [gs] = sg.build_grad(sg.max(x[0], x[1]), [x])  # the scalar max: 1/2-1/2
    np.testing.assert_array_equal(sg.evaluate(gs, x=np.ones(4)), [0.5, 0.5, 0, 0])


@pytest.mark.parametrize(
    "kernel, stride, want",
    [
        (2, 2, np.full((4, 4), 0.25)),  # tiling windows
        (2, 1, np.array([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]) / 4),
        (3, 1, np.array([[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]) / 9),
        (3, 2, np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]) / 9),
    ],
)
def test_max_pool_ties_split_the_adjoint_evenly(kernel, stride, want):
    g = sg.Graph()
    x = g.input("x", shape=(1, 1, 4, 4))
    [gx] = sg.build_grad(sg.sum(sg.max_pool2d(x, kernel, stride)), [x])
    np.testing.assert_array_equal(sg.evaluate(gx, x=np.ones((1, 1, 4, 4)))[0, 0], want)


def test_max_pool_tie_in_one_window_only():
    g = sg.Graph()
    x = g.input("x", shape=(3, 3))
    [gx] = sg.build_grad(sg.sum(sg.max_pool2d(x, 2, 1)), [x])
    xv = np.array([[0.0, 5.0, 5.0], [1.0, 2.0, 3.0], [4.0, 0.0, 4.0]])
    # windows: [0 5 1 2] max 5 at (0,1); [5 5 2 3] tie (0,1),(0,2); [1 2 4 0] max at (2,0);
    # [2 3 0 4] max 4 at (2,2).
    want = np.array([[0.0, 1.5, 0.5], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(sg.evaluate(gx, x=xv), want)


def test_softmax_and_logsumexp_are_stable_at_large_logits():
    g = sg.Graph()
    x = g.input("x", shape=(4,))
    r = np.array([1.0, 2.0, 3.0, 4.0])
    xv = np.array([1000.0, -1000.0, 0.0, 1000.0])
    s, lse, lsm = sg.softmax(x), sg.logsumexp(x), sg.log_softmax(x)
    gs = sg.build_grad(sg.sum(s * g.const(r)), [x])[0]
    gl = sg.build_grad(lse, [x])[0]
    gm = sg.build_grad(sg.sum(lsm * g.const(r)), [x])[0]
    vs, vl, vm, dgs, dgl, dgm = sg.evaluate([s, lse, lsm, gs, gl, gm], x=xv)
    p = np.array([0.5, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(vs, p)
    np.testing.assert_allclose(vl, 1000.0 + math.log(2.0), rtol=1e-15)
    np.testing.assert_allclose(
        vm, [-math.log(2), -2000 - math.log(2), -1000 - math.log(2), -math.log(2)]
    )
    np.testing.assert_allclose(dgs, p * (r - p @ r), atol=1e-300)
    np.testing.assert_allclose(dgl, p, rtol=1e-12)  # exp(x - lse): lse rounds at 1000's ulp
    np.testing.assert_allclose(dgm, r - p * r.sum(), rtol=1e-12)
    for v in (vs, vl, vm, dgs, dgl, dgm):
        assert np.all(np.isfinite(v))
    # Negative logits all far below zero: still finite.
    lo = sg.evaluate([lse, gl], x=np.full(4, -1000.0))
    np.testing.assert_allclose(lo[0], -1000.0 + math.log(4.0), rtol=1e-15)
    np.testing.assert_allclose(lo[1], np.full(4, 0.25), rtol=1e-12)


def test_softmax_cross_entropy_gradient_is_softmax_minus_labels_over_rows():
    rng = np.random.default_rng(14)
    g = sg.Graph()
    Z, Y = g.input("Z", shape=(3, 4)), g.input("Y", shape=(3, 4))
    [gz] = sg.build_grad(sg.softmax_cross_entropy(Z, Y), [Z])
    z = rng.normal(size=(3, 4)) * 500.0  # huge logits: no overflow anywhere
    y = np.eye(4)[[0, 3, 1]]
    got = sg.evaluate(gz, Z=z, Y=y)
    want = (_ref_softmax(z, axis=1) - y) / 3
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("loss_kind", ["half_sum", "mse"])
def test_two_layer_sigmoid_network_matches_the_backprop_formulas(loss_kind):
    # The seed-002 network: a1 = σ(W1 x + b1), a2 = σ(W2 a1 + b2), column vectors (batch of 3).
    # Hand-written backprop: δ2 = (a2 - y) ⊙ σ'(z2), dW2 = δ2 a1ᵀ, δ1 = (W2ᵀ δ2) ⊙ σ'(z1),
    # dW1 = δ1 xᵀ, db = δ summed over the batch (for ½‖a2 - y‖²; mse scales all by 2/size).
    rng = np.random.default_rng(2)
    g = sg.Graph()
    x, y = g.input("x", shape=(2, 3)), g.input("y", shape=(2, 3))
    W1, b1 = g.input("W1", shape=(4, 2)), g.input("b1", shape=(4, 1))
    W2, b2 = g.input("W2", shape=(2, 4)), g.input("b2", shape=(2, 1))
    a1 = sg.sigmoid(W1 @ x + b1)
    a2 = sg.sigmoid(W2 @ a1 + b2)
    loss = 0.5 * sg.sum((a2 - y) * (a2 - y)) if loss_kind == "half_sum" else sg.mse(a2, y)
    grads = sg.build_grad(loss, [W1, b1, W2, b2])
    v = {
        "x": rng.normal(size=(2, 3)),
        "y": rng.uniform(size=(2, 3)),
        "W1": rng.normal(size=(4, 2)),
        "b1": rng.normal(size=(4, 1)),
        "W2": rng.normal(size=(2, 4)),
        "b2": rng.normal(size=(2, 1)),
    }
    z1 = v["W1"] @ v["x"] + v["b1"]
    h1 = _sigmoid(z1)
    z2 = v["W2"] @ h1 + v["b2"]
    h2 = _sigmoid(z2)
    scale = 1.0 if loss_kind == "half_sum" else 2.0 / h2.size
    d2 = scale * (h2 - v["y"]) * (_sigmoid(z2) * (1 - _sigmoid(z2)))
    d1 = (v["W2"].T @ d2) * (_sigmoid(z1) * (1 - _sigmoid(z1)))
    want = [d1 @ v["x"].T, d1.sum(axis=1, keepdims=True), d2 @ h1.T, d2.sum(axis=1, keepdims=True)]
    for got, w in zip(sg.evaluate(grads, **v), want):
        assert got.shape == w.shape
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# 4. optimize, to_dot, to_sympy.
# ------------------------------------------------------------------------------------------------


def test_optimize_keeps_tensor_values_and_shapes():
    g, loss, wrt, values = _mlp(4)
    X = g.inputs["X"]
    outs = [loss, *sg.build_grad(loss, list(wrt)), sg.softmax(X, axis=0), X[::-1, 1:] * 1.0]
    opt = sg.optimize(outs)
    assert [e.shape for e in opt] == [e.shape for e in outs]
    before, after = sg.evaluate(outs, **values), sg.evaluate(opt, **values)
    for b, a in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_optimize_folds_identities_only_when_shapes_agree():
    g = sg.Graph()
    X, s = g.input("X", shape=(2, 3)), g.input("s")
    ones = g.const(np.ones((2, 3)))
    assert sg.optimize(X * 1.0).op == "input"  # x*1 -> x with x a matrix
    assert sg.optimize(X / 1.0).op == "input"
    xv = np.arange(6.0).reshape(2, 3)
    cases = [
        (s * ones, np.full((2, 3), 2.5)),  # must NOT fold to the scalar s
        (s * 1.0 + g.const(np.zeros((2, 3))), np.full((2, 3), 2.5)),
        (X**0.0, np.ones((2, 3))),  # x**0 -> 1 would lose the shape
        (sg.where(X, s, s), np.full((2, 3), 2.5)),  # where(c, a, a) -> a would too
        (sg.sum(ones) * X, 6.0 * xv),  # constant tensor ops fold to a scalar constant
        (ones[0] * (X - X), xv - xv),
    ]
    for e, want in cases:
        [opt] = sg.optimize([e])
        assert opt.shape == e.shape == want.shape
        for out in (e, opt):
            values = {n: v for n, v in (("X", xv), ("s", 2.5)) if n in out.graph.inputs}
            np.testing.assert_array_equal(sg.evaluate(out, **values), want)
    folded = sg.optimize(sg.sum(ones, axis=0) + 1.0)
    assert folded.op == "const" and folded.shape == (3,)
    np.testing.assert_array_equal(folded.value, [3.0, 3.0, 3.0])


def test_to_dot_shows_tensor_shapes():
    g = sg.Graph()
    X, W = g.input("X", shape=(2, 3)), g.input("W", shape=(3, 4))
    loss = sg.sum(sg.tanh(X @ W) * g.const(np.ones((2, 4))))
    [gW] = sg.build_grad(loss, [W])
    dot = sg.to_dot([loss, gW])
    assert dot == sg.to_dot([loss, gW])  # deterministic
    for line in ("(2, 3)", "(3, 4)", "(2, 4)", "array", "sum"):
        assert line in dot, line
    mat = [ln for ln in dot.splitlines() if "tooltip" in ln and ": matmul" in ln]
    assert mat and any("\\n(2, 4)" in ln for ln in mat)
    pydot = pytest.importorskip("pydot")
    [parsed] = pydot.graph_from_dot_data(dot)
    assert len([n for n in parsed.get_nodes() if n.get_name().startswith("n")]) == len(
        [ln for ln in dot.splitlines() if ln.startswith("  n") and "->" not in ln]
    )


def test_to_sympy_rejects_tensor_nodes():
    g = sg.Graph()
    X = g.input("X", shape=(2, 2))
    with pytest.raises(sg.SymgradError, match="shape"):
        sg.to_sympy(sg.sum(X))
    with pytest.raises(sg.SymgradError, match="shape"):
        sg.to_sympy(X)


# ------------------------------------------------------------------------------------------------
# 5. CompiledFunction in tensor mode.
# ------------------------------------------------------------------------------------------------


def _tensor_fn():
    g = sg.Graph()
    X, W, s = g.input("X", shape=(2, 3)), g.input("W", shape=(3, 2)), g.input("s")
    return g, sg.compile([X @ W * s, sg.sum(X)], backend="numpy")


def test_tensor_call_returns_node_shapes():
    g, fn = _tensor_fn()
    assert fn.tensor and fn.inputs == ("X", "W", "s")
    xv, wv = np.arange(6.0).reshape(2, 3), np.ones((3, 2))
    out, total = fn(xv, wv, 2.0)
    np.testing.assert_array_equal(out, (xv @ wv) * 2.0)
    assert total.shape == () and total == 15.0
    out2, _ = fn(X=xv.tolist(), W=wv.astype(np.float32), s=np.float64(2.0))  # lists, float32
    np.testing.assert_array_equal(out2, out)
    out3, _ = fn(X=xv.astype(np.int64), W=wv, s=2)  # integers are real numbers too
    np.testing.assert_array_equal(out3, out)
    out4, _ = fn(X=np.asfortranarray(xv), W=wv[:, ::1], s=np.array(2.0))
    np.testing.assert_array_equal(out4, out)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"X": np.ones((3, 2))}, "X"),
        ({"X": np.ones(6)}, "X"),
        ({"X": np.ones((2, 2, 2))}, "X"),  # ((1, 2, 3) is a batch of one point)
        ({"W": 1.0}, "W"),
        ({"s": np.ones((2, 1))}, "s"),  # (np.ones(2) is a batch of two points)
        ({"s": np.ones((2, 3))}, "s"),
        ({"X": np.ones((2, 3), complex)}, "X"),
        ({"X": np.full((2, 3), "a")}, "X"),
        ({"X": np.ones((2, 3), object)}, "X"),
        ({"X": np.ones((2, 3), bool)}, "X"),
        ({"s": True}, "s"),
        ({"s": "1.0"}, "s"),
        ({"s": 1j}, "s"),
        ({"s": None}, "s"),
        ({"W": [[1, 2], [3]]}, "W"),
    ],
)
def test_tensor_call_rejects_bad_arguments_by_name(kwargs, name):
    _, fn = _tensor_fn()
    args = {"X": np.ones((2, 3)), "W": np.ones((3, 2)), "s": 1.0, **kwargs}
    with pytest.raises(sg.ArgumentError, match=f"'{name}'"):
        fn(**args)


def test_tensor_call_missing_unknown_and_extra_arguments():
    _, fn = _tensor_fn()
    x, w = np.ones((2, 3)), np.ones((3, 2))
    with pytest.raises(sg.ArgumentError, match="missing argument 's'"):
        fn(X=x, W=w)
    with pytest.raises(sg.ArgumentError, match="missing argument 'X', 'W'"):
        fn(s=1.0)
    with pytest.raises(sg.ArgumentError, match="unknown argument 'Q'"):
        fn(X=x, W=w, s=1.0, Q=1.0)
    with pytest.raises(sg.ArgumentError, match="'X'.*both"):
        fn(x, w, 1.0, X=x)
    with pytest.raises(sg.ArgumentError, match="takes 3 arguments"):
        fn(x, w, 1.0, 2.0)
    assert issubclass(sg.ArgumentError, TypeError)


def test_list_outputs_stack_equal_shapes():
    g = sg.Graph()
    X, s = g.input("X", shape=(2, 3)), g.input("s")
    xv = np.arange(6.0).reshape(2, 3)
    fn = sg.compile([[X, X * s, -X], [[X, X], [X * 2.0, X]], s * s], backend="numpy")
    stacked, matrix, square = fn(X=xv, s=3.0)
    assert stacked.shape == (3, 2, 3)
    np.testing.assert_array_equal(stacked, np.stack([xv, 3 * xv, -xv]))
    assert matrix.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(matrix[1, 0], 2 * xv)
    np.testing.assert_array_equal(matrix[0, 1], xv)
    assert square.shape == () and square == 9.0
    # A list of scalar nodes in a tensor graph stacks to (n,).
    [vec] = sg.compile([[sg.sum(X), sg.max(X), s]], backend="numpy")(X=xv, s=3.0)
    np.testing.assert_array_equal(vec, [15.0, 5.0, 3.0])


def test_list_outputs_of_unequal_shapes_are_a_graph_error():
    g = sg.Graph()
    X = g.input("X", shape=(2, 3))
    with pytest.raises(sg.GraphError, match=r"outputs\[1\]"):
        sg.compile([X, [X, sg.sum(X)]], backend="numpy")
    with pytest.raises(sg.GraphError, match=r"outputs\[0\]"):
        sg.compile([[[X], [X.T]]], backend="numpy")


def test_scalar_graph_batches_and_tensor_graph_batches_over_a_leading_axis():
    g = sg.Graph()
    s = g.input("s")
    [out] = sg.compile([s * s], backend="numpy")(s=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(out, [1.0, 4.0, 9.0])  # scalar graph: a batch of points
    X = g.input("X", shape=(3,))
    fn = sg.compile([s * X], backend="numpy")
    np.testing.assert_array_equal(fn(s=2.0, X=np.array([1.0, 2.0, 3.0]))[0], [2.0, 4.0, 6.0])
    np.testing.assert_array_equal(fn(2, [1, 2, 3])[0], [2.0, 4.0, 6.0])
    # A leading axis on s: three points sharing X (tests/test_batched.py); any other shape of
    # s is refused by name.
    [batched] = fn(s=np.array([1.0, 2.0, 3.0]), X=np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(batched, np.outer([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]))
    with pytest.raises(sg.ArgumentError, match="'s'"):
        fn(s=np.ones((3, 1)), X=np.ones(3))


def test_evaluate_tensor_outputs():
    g = sg.Graph()
    X = g.input("X", shape=(2, 2))
    a, (b, c) = sg.evaluate([X.T, [X, X * X]], X=np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(a, [[1.0, 3.0], [2.0, 4.0]])
    np.testing.assert_array_equal(c, [[1.0, 4.0], [9.0, 16.0]])


def test_absurd_attributes_are_shape_errors():
    g = sg.Graph()
    x = g.input("x", shape=(2, 3))
    before = len(g)
    for build in (
        lambda: sg.transpose(x, axes=5),
        lambda: sg.reshape(x, shape=(10**30,)),
        lambda: sg.conv2d(
            g.input("im", shape=(1, 1, 3, 3)), g.input("k", shape=(1, 1, 2, 2)), padding=2**62
        ),  # fmt: skip
        lambda: g.input("huge", shape=(2**30, 2**30)),
    ):
        with pytest.raises(sg.ShapeError):
            build()
    with pytest.raises(sg.GraphError, match="elementwise"):
        sg.max(x, x, axis=0)
    assert len(g) == before + 2  # only the two well-formed inputs of the conv case


def test_take_of_invalid_input_indices_is_nan_and_adds_nothing():
    # Indices that are not integers in [-n, n) read nan and add nothing, compiled or not, and
    # the gradient through them is zero: no value makes a kernel leave its arrays.
    g = sg.Graph()
    x, i = g.input("x", (3, 2)), g.input("i", (7,))
    t = sg.take(x, i)
    [gx] = sg.build_grad(sg.sum(sg.where(sg.eq(t, t), t, 0.0) * 2.0), [x])
    back = sg.scatter_add(sg.take(x, i), i, size=3)
    xv = np.arange(6.0).reshape(3, 2)
    iv = np.array([0.0, 1.5, np.nan, -4.0, 3.0, 1e300, -1.0])
    want_t = np.full((7, 2), np.nan)
    want_t[0], want_t[6] = xv[0], xv[2]
    want_g = np.zeros((3, 2))
    want_g[0] = want_g[2] = 2.0
    want_back = np.zeros((3, 2))
    want_back[0], want_back[2] = xv[0], xv[2]
    for fn in (sg.compile([t, gx, back]), sg.compile([t, gx, back], backend="numpy")):
        got = fn(x=xv, i=iv)
        np.testing.assert_array_equal(got[0], want_t)
        np.testing.assert_array_equal(got[1], want_g)
        np.testing.assert_array_equal(got[2], want_back)


def test_take_pattern_is_exact_for_constant_indices_and_dense_for_inputs():
    g = sg.Graph()
    x, i = g.input("x", (4,)), g.input("i", (2,))
    exact = sg.jacobian_sparsity([sg.take(x, [3, 3, 0])], [x]).toarray()
    np.testing.assert_array_equal(exact, np.eye(4, dtype=bool)[[3, 3, 0]])
    assert sg.jacobian_sparsity([sg.take(x, i)], [x]).toarray().all()
    summed = sg.jacobian_sparsity([sg.scatter_add(x, [1, 1, 0, 1], size=2)], [x]).toarray()
    np.testing.assert_array_equal(summed, [[0, 0, 1, 0], [1, 1, 0, 1]])


@pytest.mark.parametrize("k", [0, -1])
def test_fill_tril_is_the_inverse_of_tril_indices(k):
    g = sg.Graph()
    n = 4
    m = n * (n + 1) // 2 + k * n
    v = g.input("v", (3, m))
    filled = sg.fill_tril(v, k)
    vv = np.random.default_rng(k + 5).normal(size=(3, m))
    want = np.zeros((3, n, n))
    rows, cols = np.tril_indices(n, k)
    want[:, rows, cols] = vv
    [slope] = sg.build_grad(sg.sum(filled * g.const(np.arange(16.0).reshape(4, 4))), [v])
    for fn in (sg.compile([filled, slope]), sg.compile([filled, slope], backend="numpy")):
        got, got_slope = fn(v=vv)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(
            got_slope, np.broadcast_to(np.arange(16.0)[rows * 4 + cols], (3, m))
        )
