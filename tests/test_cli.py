"""The ``symgrad`` command: value, gradient, Hessian and DOT of a formula at a point, the demo, and
exactly one ``symgrad: error: ...`` line with status 2 for every bad argument."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydot
import pytest

import symgrad as sg
from symgrad.cli import main
from symgrad.dot import ORDER_COLOURS
from symgrad.ops import OPS

SEED = "(2*w2*(w1*x + b1) - label)**2"
POINT = "x=1,label=500,w1=10,b1=1,w2=20"
ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """(status, stdout, stderr) of ``symgrad *argv`` run in this process."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _parse_dot(path: Path) -> pydot.Dot:
    graphs = pydot.graph_from_dot_data(path.read_text(encoding="utf-8"))
    assert graphs is not None and len(graphs) == 1
    return graphs[0]


def test_grad_prints_value_and_gradient(capsys):
    status, out, err = _run(capsys, "grad", SEED, "--wrt", "w1,b1,w2", "--at", POINT)
    assert (status, err) == (0, "")
    assert out.splitlines() == ["f = 3600", "df/dw1 = -4800", "df/db1 = -4800", "df/dw2 = -2640"]


def test_default_wrt_is_every_input_in_source_order(capsys):
    status, out, _ = _run(capsys, "grad", SEED, "--at", POINT)
    assert status == 0
    # r = 2*w2*(w1*x + b1) - label = -60, so df/dx = 2r * 2*w2*w1 and df/dlabel = -2r.
    assert out.splitlines() == [
        "f = 3600",
        "df/dw2 = -2640",
        "df/dw1 = -4800",
        "df/dx = -48000",
        "df/db1 = -4800",
        "df/dlabel = 120",
    ]


def test_hessian_is_printed_as_a_matrix(capsys):
    status, out, _ = _run(capsys, "grad", SEED, "--wrt", "w1,b1,w2", "--at", POINT, "--hessian")
    assert status == 0
    assert out.splitlines()[4:] == [
        "hessian =",
        "  [3200, 3200, 1520]",
        "  [3200, 3200, 1520]",
        "  [1520, 1520, 968]",
    ]


def test_values_follow_ieee_semantics_not_errors(capsys):
    status, out, err = _run(capsys, "grad", "log(x) + y", "--at", " x = -1 , y=inf ")
    assert (status, err) == (0, "")
    assert out.splitlines() == ["f = nan", "df/dx = -1", "df/dy = 1"]


def test_dot_file_is_graphviz_with_derivative_nodes(capsys, tmp_path):
    path = tmp_path / "grad.dot"
    status, out, _ = _run(
        capsys, "grad", SEED, "--wrt", "w1,b1,w2", "--at", POINT, "--dot", str(path)
    )
    assert status == 0 and out.startswith("f = 3600\n")
    dot = _parse_dot(path)
    labels = {n.get_label().strip('"') for n in dot.get_nodes() if n.get_label()}
    assert {"w1", "b1", "w2", "x", "label"} <= labels
    assert ORDER_COLOURS[0] in path.read_text(encoding="utf-8")  # first-order nodes are marked


def test_dot_file_holds_second_order_nodes_with_hessian(capsys, tmp_path):
    path = tmp_path / "hess.dot"
    status, _, _ = _run(
        capsys, "grad", "sin(x)*y", "--at", "x=1,y=2", "--hessian", "--dot", str(path)
    )
    assert status == 0
    _parse_dot(path)
    assert ORDER_COLOURS[1] in path.read_text(encoding="utf-8")


def test_demo_prints_the_oneflow_example_and_writes_dot(capsys, tmp_path):
    path = tmp_path / "demo.dot"
    status, out, err = _run(capsys, "demo", "--dot", str(path))
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[1:9] == [
        "loss = 3600",
        "w1.grad = -4800",
        "b1.grad = -4800",
        "w2.grad = -2640",
        "after one SGD step (lr = 0.005):",
        "w1 = 34",
        "b1 = 25",
        "w2 = 33.2",
    ]
    assert lines[-1].endswith(f"written to {path}")
    assert len(_parse_dot(path).get_nodes()) > 10


def _drawn(path: Path) -> dict[str, dict]:
    """Node name -> its DOT attributes (quotes stripped), graph/edge defaults left out."""
    nodes = {}
    for node in _parse_dot(path).get_nodes():
        if node.get_name() not in ("graph", "node", "edge"):
            nodes[node.get_name()] = {k: v.strip('"') for k, v in node.get_attributes().items()}
    return nodes


def _units(nodes: dict[str, dict], edges: list[tuple[str, str]]) -> list[str]:
    """The ``*`` and ``**`` nodes with the constant 1 as an operand: ``x*1``, ``x**1``."""
    ones = {n for n, a in nodes.items() if a.get("label") == "1"}
    kinds = {OPS["mul"].label, OPS["pow"].label}
    return [dst for src, dst in edges if src in ones and nodes[dst].get("label") in kinds]


def _edges(path: Path) -> list[tuple[str, str]]:
    return [(e.get_source(), e.get_destination()) for e in _parse_dot(path).get_edges()]


def test_demo_draws_the_optimized_graph_with_named_outputs(capsys, tmp_path):
    path = tmp_path / "demo.dot"
    _, out, _ = _run(capsys, "demo", "--dot", str(path))
    nodes = _drawn(path)
    f = sg.parse(SEED)
    params = [f.graph.inputs[n] for n in ("w1", "b1", "w2")]
    small = sg.optimize([f, *sg.build_grad(f, params)])
    size = small[0].graph.nx.number_of_nodes()
    # The drawing is the optimized graph, node for node, and the demo says how big it is.
    assert len(nodes) == size < len(f.graph)
    assert f"optimized ({size} nodes)" in out
    outputs = sorted(a["xlabel"] for a in nodes.values() if "xlabel" in a)
    assert outputs == sorted(["loss", "∂loss/∂w1", "∂loss/∂b1", "∂loss/∂w2"])
    # No x*1 or x**1 is left, and no power at all (y**2 is y*y) ...
    assert _units(nodes, _edges(path)) == []
    assert not any(a.get("label") == OPS["pow"].label for a in nodes.values())
    # ... where the graph as built has them.
    built = tmp_path / "built.dot"
    built.write_text(sg.to_dot([f, *sg.build_grad(f, params)]), encoding="utf-8")
    assert _units(_drawn(built), _edges(built))


def test_grad_dot_names_derivatives_and_hessian_entries(capsys, tmp_path):
    path = tmp_path / "hess.dot"
    status, _, _ = _run(
        capsys, "grad", "x*y**2", "--at", "x=1,y=2", "--hessian", "--dot", str(path)
    )
    assert status == 0
    labels = {
        label for a in _drawn(path).values() if "xlabel" in a for label in a["xlabel"].split(",")
    }
    assert labels == {"f", "∂f/∂x", "∂f/∂y", "∂²f/∂x²", "∂²f/∂x∂y", "∂²f/∂y∂x", "∂²f/∂y²"}


def test_grad_dot_is_the_optimized_graph(capsys, tmp_path):
    path = tmp_path / "grad.dot"
    status, _, _ = _run(
        capsys, "grad", SEED, "--wrt", "w1,b1,w2", "--at", POINT, "--dot", str(path)
    )
    assert status == 0
    f = sg.parse(SEED)
    grads = sg.build_grad(f, [f.graph.inputs[n] for n in ("w1", "b1", "w2")])
    nodes = _drawn(path)
    assert len(nodes) == sg.optimize([f, *grads])[0].graph.nx.number_of_nodes() < len(f.graph)
    assert _units(nodes, _edges(path)) == []
    outputs = sorted(a["xlabel"] for a in nodes.values() if "xlabel" in a)
    assert outputs == sorted(["f", "∂f/∂w1", "∂f/∂b1", "∂f/∂w2"])


def test_help_returns_zero(capsys):
    status, out, _ = _run(capsys, "--help")
    assert status == 0 and "grad" in out and "demo" in out


@pytest.mark.parametrize("command", ["demo", "grad"])
def test_help_texts_speak_to_users(capsys, command):
    status, out, _ = _run(capsys, command, "--help")
    assert status == 0 and "DOT" in out and "optimized" in out
    assert "seed" not in out.lower()
    # Each command's help says what it does, not only its options.
    words = " ".join(out.split())
    assert {"demo": "gradient-descent step", "grad": "derivatives"}[command] in words
    assert {"demo": "∂loss/∂w1", "grad": "∂f/∂x"}[command] in words


BAD = {
    "parse error": (["grad", "x ^ 2", "--at", "x=1"], "use ** for powers at column 3"),
    "unclosed paren": (["grad", "sin(x", "--at", "x=1"], "column"),
    "empty expression": (["grad", "", "--at", "x=1"], "column 1"),
    "unknown --wrt name": (["grad", "x*y", "--wrt", "x,z", "--at", "x=1,y=2"], "--wrt: z"),
    "empty --wrt": (["grad", "x*y", "--wrt", ",", "--at", "x=1,y=2"], "--wrt"),
    "missing --at value": (["grad", "x*y", "--at", "x=1"], "no value for y"),
    "no --at at all": (["grad", "x*y"], "no value for x, y"),
    "non-numeric --at value": (["grad", "x*y", "--at", "x=1,y=abc"], "'abc'"),
    "--at item without =": (["grad", "x*y", "--at", "x=1,y"], "name=value"),
    "--at item without name": (["grad", "x", "--at", "=3"], "name=value"),
    "--at name twice": (["grad", "x", "--at", "x=1,x=2"], "x is given twice"),
    "--at name not in the expression": (["grad", "x", "--at", "x=1,q=2"], "q not in"),
    "unknown subcommand": (["frob"], "invalid choice: 'frob'"),
    "no subcommand": ([], "required: command"),
    "missing expression": (["grad"], "required: expr"),
    "unknown option": (["grad", "x", "--at", "x=1", "--frob"], "--frob"),
}


@pytest.mark.parametrize("argv, fragment", BAD.values(), ids=BAD.keys())
def test_bad_arguments_give_one_error_line_and_status_2(capsys, argv, fragment):
    status, out, err = _run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert err.startswith("symgrad: error: ") and err.count("\n") == 1, err
    assert fragment in err


@pytest.mark.parametrize("command", [["grad", "x*y", "--at", "x=1,y=2"], ["demo"]])
@pytest.mark.parametrize("where", ["no such folder", "a folder", "empty"])
def test_unwritable_dot_path_is_an_error_before_any_output(capsys, tmp_path, command, where):
    path = {"no such folder": str(tmp_path / "absent" / "g.dot"), "a folder": str(tmp_path)}
    status, out, err = _run(capsys, *command, "--dot", path.get(where, ""))
    assert (status, out) == (2, "")
    assert err.startswith("symgrad: error: --dot: cannot write") and err.count("\n") == 1, err


def test_real_process_exit_codes(tmp_path):
    def run(*argv: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "symgrad.cli", *argv]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)

    good = run("grad", SEED, "--wrt", "w1,b1,w2", "--at", POINT)
    assert (good.returncode, good.stderr) == (0, "")
    assert good.stdout.splitlines()[0] == "f = 3600"
    for argv in (["grad", "x ^ 2", "--at", "x=1"], ["frob"], ["grad", "x", "--at", "x=a"]):
        bad = run(*argv)
        assert (bad.returncode, bad.stdout) == (2, ""), argv
        assert bad.stderr.startswith("symgrad: error: ") and bad.stderr.count("\n") == 1


def test_ir_and_asm_print_the_compiled_module(capsys):
    status, out, err = _run(capsys, "grad", "sin(x)*y", "--at", "x=1,y=2", "--ir")
    assert (status, err) == (0, "")
    assert "define void @sg_batch" in out and "define void @sg_point" in out
    assert "call double @sin(" in out  # the point kernel's libm call
    status, out, err = _run(capsys, "grad", "sin(x)*y", "--at", "x=1,y=2", "--asm")
    assert (status, err) == (0, "")
    assert "sg_point" in out and "sg_batch" in out
