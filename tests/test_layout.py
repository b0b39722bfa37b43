"""The package's layout: no import cycle, and imports only go down the pipeline.

DESIGN.md's rule, checked on the source: every ``import`` of a ``symgrad`` module, at module
level or inside a function, is an edge of the import graph. The graph has no cycle, and each
module imports only modules of its own layer or of a layer below (the layers of
docs/architecture.md). A backend is reached from ``compile.py`` by name, never imported by it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

import symgrad

PACKAGE = Path(symgrad.__file__).parent

# Layer of each module (a prefix names a package): a module may import its own layer and lower.
LAYERS = {
    "symgrad.errors": 0,
    "symgrad.ops": 0,
    "symgrad.blas": 0,
    "symgrad.graph": 1,
    "symgrad.outputs": 2,
    "symgrad.tensor": 2,
    "symgrad.stable": 2,
    "symgrad.program": 2,
    "symgrad.parse": 3,
    "symgrad.grad": 3,
    "symgrad.scan": 3,
    "symgrad.forward": 3,
    "symgrad.optimize": 3,
    "symgrad.sympy_bridge": 3,
    "symgrad.sparsity": 3,
    "symgrad.dot": 3,
    "symgrad.arguments": 4,
    "symgrad.batched": 4,
    "symgrad.blocks": 4,
    "symgrad.compile": 4,
    "symgrad.sparse": 4,
    "symgrad.interp": 5,
    "symgrad.llvm": 5,
    "symgrad.scipy_bridge": 6,
    "symgrad.cli": 6,
    "symgrad.__main__": 6,
    "symgrad": 7,  # the package's __init__ gathers the public API
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add it to LAYERS and docs/architecture.md")


def imported(path: Path, module: str, known: set[str]) -> set[str]:
    """The symgrad modules ``path`` imports anywhere in its body (functions included)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n not in (module, "symgrad")}
    return found


@pytest.fixture(scope="module")
def imports() -> nx.DiGraph:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    for module, path in paths.items():
        graph.add_node(module)
        for target in imported(path, module, set(paths)):
            graph.add_edge(module, target)
    return graph


def test_the_import_graph_is_read(imports):
    # The walk sees the edges it must: a vacuous graph would pass every test below.
    assert imports.number_of_nodes() >= 20
    assert imports.has_edge("symgrad.interp", "symgrad.compile")
    assert imports.has_edge("symgrad.llvm.kernels", "symgrad.llvm.jit")
    assert imports.has_edge("symgrad.optimize.fold", "symgrad.stable")


def test_no_import_cycle(imports):
    cycles = [sorted(c) for c in nx.strongly_connected_components(imports) if len(c) > 1]
    assert cycles == []


def test_imports_only_go_down(imports):
    upward = [(a, b) for a, b in imports.edges if layer(b) > layer(a)]
    assert upward == []


@pytest.mark.parametrize("stage", ["symgrad.optimize", "symgrad.grad", "symgrad.parse"])
def test_passes_never_reach_a_backend(imports, stage):
    starts = [m for m in imports if m == stage or m.startswith(stage + ".")]
    reached = set().union(*(nx.descendants(imports, m) for m in starts))
    assert not {m for m in reached if m.startswith("symgrad.llvm") or m == "symgrad.interp"}
    assert "symgrad.compile" not in reached


def test_compile_never_imports_a_backend(imports):
    reached = nx.descendants(imports, "symgrad.compile")
    assert not {m for m in reached if m.startswith("symgrad.llvm") or m == "symgrad.interp"}


def test_the_numpy_backend_never_loads_llvmlite():
    code = (
        "import sys, symgrad as sg\n"
        "f = sg.parse('sin(x) * y')\n"
        "fn = sg.compile([f, *sg.build_grad(f, [f.graph.inputs['x']])], backend='numpy')\n"
        "print(float(fn(x=0.0, y=2.0)[1]), 'llvmlite' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2.0", "False"]
