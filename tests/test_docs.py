"""The documentation: the site builds strictly, and every example on it runs.

- ``mkdocs build --strict`` (any warning — a broken link or anchor, a missing API object — fails).
- Every ```` ```python ```` block of ``docs/*.md`` and ``README.md`` runs: a fresh namespace per
  page, the page's blocks in order, the working directory a temporary one. A ```` ```text ````
  block right after a python block is its printed output, compared line by line. Code that is
  not meant to run uses another fence language (``bash``, ``text``, ``llvm``); an unlabelled
  fence is an error, so no example escapes the test by accident.
- ``errors.md`` has a section per error class of ``symgrad.errors`` whose example catches that
  class and prints ``ClassName: message``, checked against the text shown.
- The function tables of ``language.md`` list exactly the names of the registry.
- ``benchmarks.md`` shows the tables of ``benchmarks/RESULTS*.md`` as measured, row for row.
- The docstring examples (``>>>``) of the modules the API page documents run as doctests: the
  API page shows them.

The examples are this repository's own documentation, so running them with ``exec`` is fine.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import inspect
import io
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import symgrad.errors
import symgrad.graph
import symgrad.ops
import symgrad.tensor

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
LANGUAGES = {"python", "text", "bash", "llvm"}
FENCE_RE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence, 1-based
    expected: str | None  # the text block that follows a python block: its output


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a page; each python block paired with the text block after it."""
    text = path.read_text(encoding="utf-8")
    found = [
        (m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1, m.start(), m.end())
        for m in FENCE_RE.finditer(text)
    ]
    out = []
    for k, (lang, code, line, _, end) in enumerate(found):
        expected = None
        if lang == "python" and k + 1 < len(found):
            nxt_lang, nxt_code, _, nxt_start, _ = found[k + 1]
            if nxt_lang == "text" and not text[end:nxt_start].strip():
                expected = nxt_code
        out.append(Block(lang, code, line, expected))
    return out


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def run_page(path: Path) -> list[tuple[Block, str]]:
    """Run the python blocks of ``path`` in order in one namespace; (block, printed text) each.

    The op registry is restored afterwards: a page may register a hypothetical op to show how.
    """
    namespace: dict = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
    saved_ops = dict(symgrad.ops.OPS)
    results = []
    try:
        for block in (b for b in blocks(path) if b.lang == "python"):
            printed = io.StringIO()
            code = compile(block.code, f"{path.name}:{block.line}", "exec")
            with contextlib.redirect_stdout(printed):
                exec(code, namespace)
            results.append((block, printed.getvalue()))
    finally:
        symgrad.ops.OPS.clear()
        symgrad.ops.OPS.update(saved_ops)
    return results


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("symgrad.grad.build_grad", "symgrad.compile.compile", "symgrad.errors"):
        assert f'id="{name}' in api, name


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_fences_are_labelled(path):
    for block in blocks(path):
        assert block.lang in LANGUAGES, f"{path.name}:{block.line}: fence {block.lang!r}"


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_examples_run_and_print_what_the_page_shows(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block, printed in run_page(path):
        if block.expected is not None:
            where = f"{path.name}:{block.line}"
            assert _lines(printed) == _lines(block.expected), f"{where} printed:\n{printed}"


def _sections(path: Path) -> dict[str, str]:
    """``## title`` -> the text under it, for a page."""
    parts = re.split(r"^## +(.+)$", path.read_text(encoding="utf-8"), flags=re.M)
    return {title.strip().strip("`"): body for title, body in zip(parts[1::2], parts[2::2])}


ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(symgrad.errors, inspect.isclass)
    if issubclass(cls, symgrad.errors.SymgradError) and cls.__module__ == "symgrad.errors"
]


def test_errors_page_catches_and_prints_each_class(tmp_path, monkeypatch):
    page = DOCS / "errors.md"
    sections = _sections(page)
    monkeypatch.chdir(tmp_path)
    printed = {block.line: text for block, text in run_page(page)}
    for cls in ERROR_CLASSES:
        name = cls.__name__
        assert name in sections, f"errors.md has no section '## {name}'"
        body = sections[name]
        assert "Cause" in body and "Fix" in body, name
        with_output = [
            b for b in blocks(page) if b.lang == "python" and b.expected and b.code in body
        ]
        assert with_output, f"errors.md: no example with its output under {name}"
        for block in with_output:
            lines = _lines(printed[block.line])
            assert lines == _lines(block.expected)
            # The example caught exactly this class and printed its (non-empty) message.
            caught = [line for line in lines if line.startswith(f"{name}: ")]
            assert caught and all(len(line) > len(name) + 2 for line in caught), lines


def _registry_table(page: str, key: str) -> list[str]:
    """First-column names of the table after ``<!-- registry: key -->`` on a docs page."""
    text = (DOCS / page).read_text(encoding="utf-8")
    start = text.index(f"<!-- registry: {key} -->")
    table = text[start:].split("\n\n", 2)[1]
    names = []
    for row in table.splitlines()[2:]:  # after the header and its rule
        cell = row.split("|")[1]
        names.append(re.search(r"`([^`(]+)", cell).group(1).strip().removeprefix("sg."))
    return names


@pytest.mark.parametrize(
    "key, registry",
    [
        ("ops.FUNCTIONS", symgrad.ops.FUNCTIONS),
        ("tensor.TENSOR_FUNCTIONS", symgrad.tensor.TENSOR_FUNCTIONS),
        ("ops.COMPARISONS", symgrad.ops.COMPARISONS),
        ("ops.CONSTANTS", symgrad.ops.CONSTANTS),
        # sg.<op> for the ops the language writes as operators (the rest are the functions).
        (
            "graph.OP_FUNCTIONS (operators)",
            set(symgrad.graph.OP_FUNCTIONS) - set(symgrad.ops.FUNCTIONS.values()),
        ),
    ],
)
def test_language_page_lists_the_registry(key, registry):
    names = _registry_table("language.md", key)
    assert len(names) == len(set(names)), f"{key}: a name is listed twice"
    assert set(names) == set(registry), (
        f"language.md table {key}: missing {sorted(set(registry) - set(names))}, "
        f"not in the registry {sorted(set(names) - set(registry))}"
    )


def test_benchmarks_page_copies_the_measured_tables():
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8").splitlines()
    for name in ("RESULTS.md", "RESULTS_tensor.md"):
        results = (ROOT / "benchmarks" / name).read_text(encoding="utf-8").splitlines()
        rows = [line for line in results if line.startswith("|")]
        assert rows, name
        missing = [row for row in rows if row not in page]
        assert not missing, f"benchmarks.md lacks rows of benchmarks/{name}: {missing[:3]}"


def _api_modules() -> list[str]:
    """The modules of the objects that api.md documents (its ``::: symgrad....`` blocks)."""
    found = {"symgrad"}
    for ident in re.findall(r"^::: (\S+)", (DOCS / "api.md").read_text(encoding="utf-8"), re.M):
        parts = ident.split(".")
        for k in range(len(parts), 0, -1):
            try:
                importlib.import_module(".".join(parts[:k]))
            except ModuleNotFoundError:
                continue
            found.add(".".join(parts[:k]))
            break
    return sorted(found)


def _needs_missing_module(test: doctest.DocTest) -> str | None:
    """The top-level module an example imports that is not installed (an optional extra)."""
    for example in test.examples:
        for name in re.findall(r"^\s*(?:import|from)\s+(\w+)", example.source, re.M):
            if importlib.util.find_spec(name) is None:
                return name
    return None


@pytest.mark.parametrize("module", _api_modules())
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    tests = doctest.DocTestFinder().find(importlib.import_module(module), module)
    ran = 0
    for test in tests:
        if test.examples and _needs_missing_module(test) is None:
            runner.run(test, out=report.write)
            ran += 1
    assert runner.failures == 0, report.getvalue()
    if module != "symgrad.errors":  # the error classes carry no examples
        assert ran, f"{module}: no docstring example ran"
