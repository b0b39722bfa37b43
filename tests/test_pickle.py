"""Pickling: a Graph, an Expr and a CompiledFunction travel to other processes as data.

A graph pickles as its nodes in id order and is rebuilt through the normal creation path, so the
copy hash-conses like the original; a compiled function pickles as its graph, outputs, layout,
inputs, backend and options, and compiles again where it lands (from the object cache when the
CPU is the same). Checked: exact round trips (nodes, results, IR text), no machine code in a
pickle, unpickling in a fresh interpreter with and without the cache, ``multiprocessing`` (spawn
and fork) and ``ProcessPoolExecutor`` calling scalar batch and tensor functions in workers, and
every structurally wrong state raising a SymgradError.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import ArgumentError, GraphError, SymgradError

ROOT = Path(__file__).resolve().parents[1]
ROSENBROCK = "(1 - a)**2 + 100*(b - a**2)**2"


def rosenbrock(**options):
    """Rosenbrock's value, gradient and Hessian, compiled."""
    f = sg.parse(ROSENBROCK)
    wrt = [f.graph.inputs["a"], f.graph.inputs["b"]]
    return sg.compile([f, sg.build_grad(f, wrt), sg.hessian(f, wrt)], **options)


def tensor_step(**options):
    """A tensor function: a one-layer network's loss and its gradients (matmul, tanh, sum)."""
    g = sg.Graph()
    w, x, t = g.input("W", (3, 4)), g.input("x", (4, 5)), g.input("t", (3, 5))
    bias = g.const(np.linspace(-1.0, 1.0, 3).reshape(3, 1))  # a tensor constant travels too
    y = sg.tanh(w @ x + bias)
    loss = ((y - t) * (y - t)).sum()
    return sg.compile([loss, *sg.build_grad(loss, [w, x])], **options)


def tensor_values(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W": rng.standard_normal((3, 4)), "x": rng.standard_normal((4, 5)),
            "t": rng.standard_normal((3, 5))}  # fmt: skip


def batch(n: int = 10_001, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-2.0, 2.0, n), rng.uniform(-1.0, 3.0, n)


def same(left: tuple, right: tuple) -> bool:
    """Bit-for-bit equal results (nan equal to nan)."""
    return len(left) == len(right) and all(
        a.shape == b.shape and np.array_equal(a, b, equal_nan=True) for a, b in zip(left, right)
    )


def roundtrip(obj):
    return pickle.loads(pickle.dumps(obj))


def records(graph: sg.Graph) -> list[tuple]:
    """Each node's data, with array constants as bytes so lists compare with ``==``."""
    out = []
    for i in range(len(graph)):
        node = graph.node(i)
        attrs = tuple(
            (k, (v.shape, v.tobytes()) if isinstance(v, np.ndarray) else v)
            for k, v in node["attrs"]
        )
        out.append((node["op"], node["args"], attrs, node["shape"], node["role"], node["order"]))
    return out


class Forged:
    """Pickles as ``cls`` with ``state`` handed to its ``__setstate__``: a tampered pickle."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    def __reduce__(self):
        return object.__new__, (self.cls,), self.state


def forged_loads(cls, state):
    return pickle.loads(pickle.dumps(Forged(cls, state)))


# --- Graph and Expr --------------------------------------------------------------------------


def test_graph_round_trip_keeps_every_node():
    f = sg.parse("sin(x)*y + exp(x - y)/2 + where(x < y, x, -0.0)")
    g = f.graph
    grads = sg.build_grad(f, list(g.inputs.values()))
    sg.build_grad(grads[0], list(g.inputs.values()))  # second-order nodes: role grad, order 2
    copy = roundtrip(g)
    assert copy is not g and isinstance(copy, sg.Graph)
    assert records(copy) == records(g)
    assert list(copy.inputs) == list(g.inputs) and copy.max_nodes == g.max_nodes
    assert {node["order"] for _, node in copy.nx.nodes(data=True)} == {0, 1, 2}
    assert sorted(copy.nx.edges) == sorted(g.nx.edges)


def test_graph_copy_hash_conses_like_the_original():
    f = sg.parse("x*y + y*x + 2.5")
    copy = roundtrip(f.graph)
    assert copy._ids == f.graph._ids and copy._keys == f.graph._keys
    x, y = copy.inputs["x"], copy.inputs["y"]
    before = len(copy)
    assert (y * x).id == (x * y).id and copy.const(2.5).id < before
    assert len(copy) == before  # nothing new: every node was found through its key
    assert (x - y).id == before  # and new nodes take the next id


def test_tensor_constants_travel_read_only():
    g = sg.Graph()
    c = g.const(np.arange(6.0).reshape(2, 3))
    copy = roundtrip(g)
    value = copy.attr(c.id, "value")
    assert value.shape == (2, 3) and np.array_equal(value, np.arange(6.0).reshape(2, 3))
    assert not value.flags.writeable
    assert copy.const(np.arange(6.0).reshape(2, 3)).id == c.id


def test_exprs_of_one_pickle_share_one_graph():
    f = sg.parse("a*b + c")
    a, b = f.graph.inputs["a"], f.graph.inputs["b"]
    f2, (a2, b2) = roundtrip([f, [a, b]])
    assert f2.graph is a2.graph is b2.graph and f2.graph is not f.graph
    assert (f2.id, a2.id, b2.id) == (f.id, a.id, b.id)
    assert (a2.name, f2.op, f2.shape) == ("a", f.op, ())
    assert float(sg.evaluate(f2, a=2.0, b=3.0, c=1.0)) == 7.0


def test_chain_of_100000_nodes_pickles_without_recursion():
    g = sg.Graph()
    e = g.input("x")
    for _ in range(100_000):
        e = sg.sin(e)
    copy = roundtrip(e)
    assert copy.id == e.id and len(copy.graph) == len(g)


def test_small_max_nodes_and_empty_graph_travel():
    g = sg.Graph(max_nodes=5)
    g.input("x")
    copy = roundtrip(g)
    assert copy.max_nodes == 5 and list(copy.inputs) == ["x"]
    assert len(roundtrip(sg.Graph())) == 0


# --- CompiledFunction: in process ------------------------------------------------------------


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_compiled_function_round_trip(backend):
    fn = rosenbrock(backend=backend)
    copy = roundtrip(fn)
    assert copy is not fn and copy.graph is not fn.graph
    assert (copy.inputs, copy.layout, copy.backend) == (fn.inputs, fn.layout, backend)
    x, y = batch()
    assert same(copy(x, y), fn(x, y))
    assert same(copy(0.5, 2.0), fn(0.5, 2.0))  # one point: the fast path
    assert same(copy(b=2.0, a=x), fn(b=2.0, a=x))
    if backend == "llvm":
        assert copy.llvm_ir == fn.llvm_ir


def test_tensor_function_round_trip():
    fn = tensor_step()
    copy = roundtrip(fn)
    assert copy.tensor and copy.llvm_ir == fn.llvm_ir
    assert same(copy(**tensor_values()), fn(**tensor_values()))


def test_options_and_argument_order_travel():
    f = sg.parse("x*y + z")
    g = f.graph
    fn = sg.compile(f, inputs=["z", "y", "x", g.input("unused")], threads=2, opt=0)
    copy = roundtrip(fn)
    assert copy.inputs == ("z", "y", "x", "unused") and copy.options == {"threads": 2, "opt": 0}
    assert float(copy(1.0, 2.0, 3.0, 9.0)[0]) == 7.0


def test_a_pickle_holds_data_not_machine_code():
    fn = rosenbrock()
    blob = pickle.dumps(fn)
    assert b"\x7fELF" not in blob and b"ctypes" not in blob and b"llvmlite" not in blob
    assert len(blob) < 4_000  # the graph's ~40 nodes as tuples, not kilobytes of code
    state = fn.__getstate__()
    assert set(state) == {"format", "graph", "outputs", "layout", "inputs", "backend", "options"}


def test_compiled_function_of_an_optimized_graph():
    f = sg.parse("log(1 + exp(x)) * y")
    opt = sg.optimize([f, sg.build_grad(f, [f.graph.inputs["x"]])])
    fn = sg.compile(opt)
    copy = roundtrip(fn)
    x, y = batch(1_001)
    assert same(copy(x, y), fn(x, y))


# --- other processes -------------------------------------------------------------------------

RECEIVER = """
import pickle, sys
import numpy as np
fn = pickle.loads(sys.stdin.buffer.read())
x = np.linspace(-2.0, 2.0, 1001)
v, g, h = fn(x, 0.5 * x)
native = fn._native
print(native.cache_hit, repr(float(v.sum())), repr(float(g.sum())), repr(float(h.sum())))
"""


def receive(blob: bytes, cache: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", RECEIVER], input=blob, capture_output=True, cwd=ROOT,
        env={**os.environ, "SYMGRAD_CACHE_DIR": cache}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().split()


def test_another_process_loads_from_its_cache_or_compiles(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))
    fn = rosenbrock()  # compiled here, so the shared cache holds its object code
    x = np.linspace(-2.0, 2.0, 1001)
    v, g, h = fn(x, 0.5 * x)
    expected = [repr(float(v.sum())), repr(float(g.sum())), repr(float(h.sum()))]
    blob = pickle.dumps(fn)
    assert receive(blob, str(tmp_path)) == ["True", *expected]
    assert receive(blob, "off") == ["False", *expected]


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_pool_calls_compiled_functions(method):
    scalar, tensor = rosenbrock(), tensor_step()
    x, y = batch(40_003)
    xs, ys = np.array_split(x, 4), np.array_split(y, 4)
    tensor_args = [tensor_values(seed) for seed in range(3)]
    with multiprocessing.get_context(method).Pool(2) as pool:
        parts = pool.starmap(scalar, zip(xs, ys))
        points = pool.starmap(scalar, [(0.5, 2.0), (-1.0, 3.0)])
        steps = [pool.apply_async(tensor, (), v) for v in tensor_args]
        steps = [step.get(timeout=120) for step in steps]
    assert all(same(part, scalar(u, w)) for part, u, w in zip(parts, xs, ys))
    assert same(points[1], scalar(-1.0, 3.0))
    assert all(same(step, tensor(**v)) for step, v in zip(steps, tensor_args))


def test_process_pool_executor_calls_compiled_functions():
    scalar, tensor = rosenbrock(threads=1), tensor_step()
    x, y = batch(20_000, seed=3)
    values = tensor_values(7)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(scalar, np.array_split(x, 2), np.array_split(y, 2)))
        step = pool.submit(tensor, values["W"], values["x"], values["t"]).result()
    whole = scalar(x, y)
    assert all(same(got, want) for got, want in zip(
        (np.concatenate(pieces) for pieces in zip(*parts)), whole))  # fmt: skip
    assert same(step, tensor(**values))


# --- structurally wrong states ---------------------------------------------------------------


def graph_state() -> dict:
    g = sg.Graph()
    x, y = g.input("x"), g.input("y")
    g.const(np.ones((2, 2)))
    _ = sg.sin(x) * y
    return g.__getstate__()


def replace_node(state: dict, i: int, **fields) -> dict:
    names = ["op", "args", "attrs", "shape", "role", "order"]
    record = dict(zip(names, state["nodes"][i]))
    record.update(fields)
    state["nodes"][i] = tuple(record[n] for n in names)
    return state


GRAPH_DAMAGE = {
    "not a dict": lambda s: ["nodes"],
    "format": lambda s: {**s, "format": 99},
    "no nodes": lambda s: {k: v for k, v in s.items() if k != "nodes"},
    "nodes not a list": lambda s: {**s, "nodes": "abc"},
    "max_nodes type": lambda s: {**s, "max_nodes": "many"},
    "max_nodes too small": lambda s: {**s, "max_nodes": 2},
    "short record": lambda s: {**s, "nodes": [s["nodes"][0][:3], *s["nodes"][1:]]},
    "record not a tuple": lambda s: {**s, "nodes": [None, *s["nodes"][1:]]},
    "unknown op": lambda s: replace_node(s, 3, op="launch"),
    "op not a str": lambda s: replace_node(s, 3, op=["sin"]),
    "forward reference": lambda s: replace_node(s, 3, args=(4,)),
    "self reference": lambda s: replace_node(s, 3, args=(3,)),
    "negative id": lambda s: replace_node(s, 3, args=(-1,)),
    "id not an int": lambda s: replace_node(s, 3, args=(0.0,)),
    "args not a tuple": lambda s: replace_node(s, 3, args=[0]),
    "arity": lambda s: replace_node(s, 3, args=(0, 1)),
    "duplicate node": lambda s: {**s, "nodes": [*s["nodes"], s["nodes"][3]]},
    "duplicate input": lambda s: replace_node(s, 1, attrs=(("name", "x"),)),
    "bad input name": lambda s: replace_node(s, 1, attrs=(("name", "1y"),)),
    "input without name": lambda s: replace_node(s, 1, attrs=()),
    "unknown attr": lambda s: replace_node(s, 3, attrs=(("axis", 0),)),
    "attrs not pairs": lambda s: replace_node(s, 3, attrs=("axis",)),
    "unhashable attr": lambda s: replace_node(s, 1, attrs=(("name", ["y"]),)),
    "const value": lambda s: replace_node(s, 2, attrs=(("value", "one"),)),
    "wrong shape": lambda s: replace_node(s, 3, shape=(2,)),
    "wrong const shape": lambda s: replace_node(s, 2, shape=(4,)),
    "bad input shape": lambda s: replace_node(s, 0, shape=(0,)),
    "role type": lambda s: replace_node(s, 3, role=None),
    "order": lambda s: replace_node(s, 3, order=-1),
    "unsorted operands": lambda s: replace_node(s, 4, args=(s["nodes"][4][1][::-1])),
    "inputs": lambda s: {**s, "inputs": ["y", "x"]},
    "bad shape rule input": lambda s: replace_node(s, 3, args=(2,)),
}


def test_the_graph_state_under_test_is_valid():
    assert len(forged_loads(sg.Graph, graph_state())) == 5


@pytest.mark.parametrize("damage", sorted(GRAPH_DAMAGE))
def test_wrong_graph_state_is_a_graph_error(damage):
    state = GRAPH_DAMAGE[damage](graph_state())
    with pytest.raises(GraphError, match="cannot unpickle a Graph"):
        forged_loads(sg.Graph, state)


def function_state() -> dict:
    return rosenbrock(backend="numpy").__getstate__()


FUNCTION_DAMAGE = {
    "not a dict": lambda s: 42,
    "format": lambda s: {**s, "format": 0},
    "graph": lambda s: {**s, "graph": "graph"},
    "output id": lambda s: {**s, "outputs": [*s["outputs"][:-1], 10_000]},
    "output id type": lambda s: {**s, "outputs": [*s["outputs"][:-1], "7"]},
    "outputs not a list": lambda s: {**s, "outputs": None},
    "too few ids": lambda s: {**s, "outputs": s["outputs"][:-1]},
    "too many ids": lambda s: {**s, "outputs": [*s["outputs"], 0]},
    "layout item": lambda s: {**s, "layout": [(), (2,), (2, 2, 1)]},
    "layout size": lambda s: {**s, "layout": [(), (-2,), (2, 2)]},
    "layout type": lambda s: {**s, "layout": [(), [2], (2, 2)]},
    "inputs": lambda s: {**s, "inputs": "ab"},
    "unknown input": lambda s: {**s, "inputs": ["a", "zz"]},
    "missing input": lambda s: {**s, "inputs": ["a"]},
    "options": lambda s: {**s, "options": {"inputs": ["a"]}},
    "option value": lambda s: {**s, "backend": "llvm", "options": {"threads": 0}},
    "backend": lambda s: {**s, "backend": "gpu"},
    "no layout": lambda s: {k: v for k, v in s.items() if k != "layout"},
}


@pytest.mark.parametrize("damage", sorted(FUNCTION_DAMAGE))
def test_wrong_function_state_is_a_symgrad_error(damage):
    state = FUNCTION_DAMAGE[damage](function_state())
    with pytest.raises(SymgradError):
        forged_loads(sg.CompiledFunction, state)


def test_wrong_states_name_what_is_wrong():
    with pytest.raises(GraphError, match="node 3: unknown op 'launch'"):
        forged_loads(sg.Graph, GRAPH_DAMAGE["unknown op"](graph_state()))
    with pytest.raises(GraphError, match="10000 is not a node"):
        forged_loads(sg.CompiledFunction, FUNCTION_DAMAGE["output id"](function_state()))
    with pytest.raises(ArgumentError, match="backend must be one of"):
        forged_loads(sg.CompiledFunction, FUNCTION_DAMAGE["backend"](function_state()))


class Reduced:
    """Pickles as ``function(*args)``: an Expr's pickle with any graph and id."""

    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_wrong_expr_is_a_graph_error():
    f = sg.parse("x + 1")
    function, (graph, i) = f.__reduce__()
    assert pickle.loads(pickle.dumps(Reduced(function, (graph, i)))).op == "add"
    for args in [(graph, 99), (graph, -1), (graph, "1"), (graph, 1.0), ("graph", 0)]:
        with pytest.raises(GraphError, match="cannot unpickle an Expr"):
            pickle.loads(pickle.dumps(Reduced(function, args)))
