"""Shared test set-up: the hypothesis profiles (CI runs derandomized, so runs repeat exactly), and
the notebook runner fixture."""

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

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
