"""Shared test set-up: the hypothesis profiles (CI runs derandomized, so runs repeat exactly) and
the fixtures several test files use: a fresh graph ``g``, ``no_cache`` (compiles never touch the
user's object cache), ``fn`` (a compiled scalar function on each backend), the notebook runner
and a notebook test module's ``results``. Helpers that are not fixtures: tests/toolbox.py."""

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import symgrad as sg
from tests.toolbox import scalar_fn

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def g() -> sg.Graph:
    return sg.Graph()


@pytest.fixture
def no_cache(monkeypatch):
    """The object cache off (and no size cap from the caller's environment): each test compiles
    for real unless it sets a folder of its own. Modules use it with
    ``pytestmark = pytest.mark.usefixtures("no_cache")``."""
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", "off")
    monkeypatch.delenv("SYMGRAD_CACHE_MAX_BYTES", raising=False)


@pytest.fixture(scope="module", params=["llvm", "numpy"])
def fn(request):
    """``toolbox.scalar_fn`` (x*y + x/y, value and gradient) on each backend, compiled once per
    module with the object cache off."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYMGRAD_CACHE_DIR", "off")
        return scalar_fn(request.param)


@pytest.fixture(scope="session")
def notebook():
    """``notebook(name)`` -> (fresh RESULTS, committed RESULTS, seconds), each notebook run once
    per test session through notebooks/execute.py (nbclient, top to bottom)."""
    spec = importlib.util.spec_from_file_location("nb_execute", NOTEBOOKS / "execute.py")
    execute = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(execute)
    done: dict[str, tuple] = {}

    def run(name: str):
        if name not in done:
            import nbformat

            path = NOTEBOOKS / name
            committed = execute.results_of(nbformat.read(path, as_version=4))
            _, fresh, seconds = execute.run(path)
            done[name] = (fresh, committed, seconds)
        return done[name]

    return run


@pytest.fixture(scope="module")
def results(notebook, request) -> dict:
    """The RESULTS that the notebook named by the test module's ``NAME`` prints, fresh."""
    name = request.module.NAME
    fresh, _, _ = notebook(name)
    assert fresh is not None, f"{name} printed no RESULTS line"
    return fresh
