"""Hostile and bad input (DESIGN.md §5), names: odd but legal input names are harmless in DOT
(escaped, pydot parses it), in the IR (names never reach it), in calls (passed by keyword, even
``self``) and in the command line, where hostile input gives one error line and status 2. (Names
that could be dangerous are rejected: tests/test_hostile.py.)
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pydot
import pytest

import symgrad as sg
from symgrad.cli import main
from symgrad.dot import to_dot
from symgrad.errors import GraphError
from symgrad.graph import Graph
from symgrad.parse import parse

pytestmark = pytest.mark.usefixtures("no_cache")  # tests/conftest.py

# Legal names that mean something in DOT, in the IR, in Python calls or in the language.
ODD_LEGAL = [
    "node", "edge", "graph", "digraph", "subgraph", "strict", "n0", "n1", "label", "out0",
    "legend1", "cluster_legend", "_", "T", "True", "None", "nan", "inf", "self", "outputs",
    "args", "kwargs", "sg_point", "sg_batch", "sg_fast", "entry", "define", "double", "declare",
    "ret", "i64", "x_", "w" * 300,
]  # fmt: skip


def nodes_of(dot: pydot.Dot) -> list:
    # pydot lists the 'graph [...]' attribute statement among the nodes
    return [n for n in dot.get_nodes() if n.get_name() not in ("graph", "node", "edge")]


def _odd_graph():
    text = " + ".join(f"{n}*{k + 1}" for k, n in enumerate(ODD_LEGAL))
    f = parse(text)
    assert list(f.graph.inputs) == ODD_LEGAL
    return f, list(f.graph.inputs.values())


def test_odd_legal_names_make_valid_dot():
    f, xs = _odd_graph()
    text = to_dot([f, sg.build_grad(f, xs)], name='x" ; n9 [label="pwn"]; "\\')
    [dot] = pydot.graph_from_dot_data(text)
    assert dot.get_name() == '"x\\" ; n9 [label=\\"pwn\\"]; \\"\\\\"'
    labels = {n.get_name(): n.get("label") for n in nodes_of(dot)}
    inputs = {f"n{x.id}": f'"{x.name}"' for x in xs}
    assert {k: labels[k] for k in inputs} == inputs
    assert all(re.fullmatch(r"n\d+", name) for name in labels)
    assert '"pwn"' not in labels.values()  # the "injected" node is text of the graph's name
    if shutil.which("dot"):
        done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[:500]


@pytest.mark.parametrize("name", [3, None, b"g", "a\x00b", "\ud800", "a\udcffb"], ids=repr)
def test_dot_graph_names_graphviz_cannot_read_are_rejected(name):
    g = Graph()
    g.input("x")
    with pytest.raises(GraphError, match="to_dot: name must be text"):
        to_dot(g, name=name)


@pytest.mark.parametrize("name", ["é漢\u202e", "a\x1bb", "tab\there", "}", "{", "//", "/*", ";"])
def test_dot_graph_names_with_odd_text_are_escaped(name):
    g = Graph()
    g.input("x")
    [dot] = pydot.graph_from_dot_data(to_dot(g, name=name))
    assert [n.get_name() for n in nodes_of(dot)] == ["n0"]


@pytest.mark.parametrize("backend", ["llvm", "numpy"])
def test_odd_legal_names_compile_and_are_passed_by_keyword(backend):
    f, xs = _odd_graph()
    fn = sg.compile([f, sg.build_grad(f, xs)], backend=backend)
    point = {n: 0.5 * k for k, n in enumerate(ODD_LEGAL)}
    value, grad = fn(**point)  # 'self' and 'outputs' among them
    assert value == sum((k + 1) * v for k, v in enumerate(point.values()))
    assert grad.tolist() == [k + 1.0 for k in range(len(ODD_LEGAL))]
    assert float(sg.evaluate(f, **point)) == value


def test_an_input_named_self_is_passed_to_map_blocks_by_keyword():
    da = pytest.importorskip("dask.array")
    g = Graph()
    fn = sg.compile(g.input("self") * 2.0, backend="numpy")
    [out] = fn.map_blocks(self=da.arange(4.0, chunks=2))
    assert out.compute().tolist() == [0.0, 2.0, 4.0, 6.0]


def test_names_never_reach_the_llvm_ir():
    g = Graph()
    odd = g.input("sg_point") * g.input("entry") + g.input("declare")
    g2 = Graph()
    plain = g2.input("a") * g2.input("b") + g2.input("c")
    assert sg.compile(odd).llvm_ir == sg.compile(plain).llvm_ir


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


CLI_BAD = {
    "dunder": ["grad", "__class__ + 1", "--at", "x=1"],
    "import": ["grad", "__import__('os').system('id')", "--at", "x=1"],
    "quote": ["grad", 'x + "y"', "--at", "x=1"],
    "backslash newline": ["grad", "x\n+\\\ny", "--at", "x=1,y=2"],
    "escape sequence": ["grad", "x + \x1b[31m", "--at", "x=1"],
    "surrogate": ["grad", "x + \udcff", "--at", "x=1"],
    "unicode": ["grad", "é + 1", "--at", "é=1"],
    "newline in --wrt": ["grad", "x*y", "--at", "x=1,y=2", "--wrt", 'y"\n,x'],
    "odd name in --at": ["grad", "x*y", "--at", "x=1,y=2,z\n\nq=3"],
    "hex in --at": ["grad", "x*y", "--at", "x=0x10,y=1"],
    "name given twice": ["grad", "x", "--at", "x=1,x=2"],
    "full disk for --dot": ["grad", "x*y", "--at", "x=1,y=2", "--dot", "/dev/full"],
}


@pytest.mark.parametrize("argv", list(CLI_BAD.values()), ids=list(CLI_BAD))
def test_cli_with_hostile_input_gives_one_error_line_and_status_2(capsys, argv):
    status, out, err = _cli(capsys, *argv)
    assert (status, out) == (2, "")
    assert err.startswith("symgrad: error: ") and err.count("\n") == 1, err


def test_cli_with_odd_legal_names(capsys):
    status, out, err = _cli(capsys, "grad", "self * outputs", "--at", "self=2,outputs=3")
    assert (status, err) == (0, "")
    assert out.splitlines() == ["f = 6", "df/dself = 3", "df/doutputs = 2"]
