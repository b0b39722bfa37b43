"""Run the notebooks top to bottom, as CI does, and optionally save them with their outputs.

    python notebooks/execute.py                 # run every notebook, report times and RESULTS
    python notebooks/execute.py --write a.ipynb # run and save with outputs (what is committed)

Each notebook ends with a cell printing one line ``RESULTS {json}``: the values its test asserts
(tests/test_notebooks.py). Notebooks run with the working directory set to this folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT = 600  # seconds per cell


def notebooks() -> list[Path]:
    return sorted(HERE.glob("*.ipynb"))


def run(path: Path, write: bool = False):
    """Execute ``path``; returns (notebook, RESULTS dict, seconds)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}})  # fmt: skip
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if write:
        nbformat.write(nb, path)
    return nb, results_of(nb), seconds


def results_of(nb) -> dict | None:
    """The ``RESULTS {json}`` line printed by the notebook's last code cell, or None."""
    cells = [c for c in nb.cells if c.cell_type == "code"]
    if not cells:
        return None
    for out in cells[-1].get("outputs", []):
        text = out.get("text", "") if out.get("output_type") == "stream" else ""
        for line in text.splitlines():
            if line.startswith("RESULTS "):
                return json.loads(line[len("RESULTS ") :])
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook files (default: all)")
    parser.add_argument("--write", action="store_true", help="save the outputs into the files")
    args = parser.parse_args(argv)
    paths = [HERE / Path(n).name for n in args.names] or notebooks()
    for path in paths:
        _, results, seconds = run(path, write=args.write)
        print(f"{path.name}: {seconds:.1f} s, RESULTS {json.dumps(results, sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
