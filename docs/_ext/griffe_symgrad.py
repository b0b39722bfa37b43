"""Griffe extension for symgrad's API pages; ``mkdocs.yml`` loads it, nothing else imports it.

Two things the static analysis of the sources would get wrong or render badly:

- ``symgrad.__all__`` is completed at import time from the op registry (``*_FUNCTIONS``,
  ``*_TENSOR_FUNCTIONS``). Griffe cannot expand those starred names and warns, which a strict
  build turns into an error; the extension keeps the literal names only (the generated functions
  are listed on the language page, whose test checks them against the registry).
- Docstrings show doctest examples (``>>>`` lines and their output) as plain text, which Markdown
  would render as nested block quotes; the extension fences each example as ``pycon`` code.
"""

from __future__ import annotations

import griffe

FENCE = "```"


def fence_doctests(text: str) -> str:
    """``text`` with each run of doctest lines (``>>>`` up to a blank line) in a pycon fence."""
    out: list[str] = []
    in_fence = in_doctest = False
    indent = ""
    for line in text.splitlines():
        stripped = line.strip()
        if in_doctest and not stripped:
            out.append(indent + FENCE)
            in_doctest = False
        elif not in_doctest and stripped.startswith(FENCE):
            in_fence = not in_fence
        elif not in_doctest and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + FENCE + "pycon")
            in_doctest = True
        out.append(line)
    if in_doctest:
        out.append(indent + FENCE)
    return "\n".join(out)


class SymgradDocs(griffe.Extension):
    """Registered in ``mkdocs.yml`` under the python handler's ``extensions``."""

    def on_module_members(self, *, mod: griffe.Module, **kwargs) -> None:
        if mod.path == "symgrad" and mod.exports is not None:
            mod.exports = [name for name in mod.exports if isinstance(name, str)]

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
