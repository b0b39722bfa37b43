"""The numpy backend: the reference interpreter, the oracle compiled code is tested against.

It runs a ``Program`` step by step (``program.run``), each node once with its op's ``numpy``
field, with IEEE semantics (numpy's: ``log(-1)`` is nan, ``1/0`` is inf, no warnings).
``evaluate`` is its public face; ``sg.compile(..., backend="numpy")`` reaches it through
``executor``.
"""

from __future__ import annotations

import numpy as np

from symgrad.compile import compile
from symgrad.graph import Expr
from symgrad.outputs import flatten_outputs
from symgrad.program import Program, run


class Interpreter:
    """The numpy backend's executor: a compiled function's calls run ``program`` in numpy."""

    def __init__(self, program: Program, inputs: tuple[str, ...]):
        self.program, self.inputs = program, inputs

    def run_points(self, arrays: list[np.ndarray], batch: tuple[int, ...], flat: list) -> None:
        """Fill the flat output views from arguments that broadcast to ``batch``."""
        if not self.program.parts or not batch:
            self.run_tensor(arrays, flat)  # numpy broadcasts the arguments itself
            return
        # A scan over scalars: each point runs its own loop (a stack holds one point's steps).
        full = [np.broadcast_to(a, batch) for a in arrays]
        for index in np.ndindex(*batch):
            values = dict(zip(self.inputs, (a[index] for a in full)))
            for view, value in zip(flat, run(self.program, values)):
                view[index] = value

    def run_tensor(self, arrays: list[np.ndarray], flat: list) -> None:
        """Fill the flat output arrays from arguments of their declared shapes."""
        for view, value in zip(flat, run(self.program, dict(zip(self.inputs, arrays)))):
            view[...] = value


def check_options(options: dict) -> dict:
    """The numpy backend has no options of its own; those of the llvm backend are ignored, so
    one call works with either backend."""
    return options


def executor(program: Program, flat: list, inputs: tuple[str, ...], tensor: bool, options: dict):
    """The executor ``sg.compile(..., backend="numpy")`` calls."""
    del flat, tensor, options  # the same interpreter runs scalar and tensor programs
    return Interpreter(program, inputs)


def evaluate(outputs, /, **values):
    """Evaluate ``outputs`` with numpy at the given input values, exactly as written.

    An ``Expr`` gives one float64 array; a list (or nested list) gives the tuple that
    ``sg.compile(outputs, backend="numpy", optimize=False)`` would return. No pass runs first:
    this is the reference that optimized and compiled code is checked against.

    >>> from symgrad.graph import Graph
    >>> g = Graph(); x = g.input("x"); float(evaluate(x * x + 1, x=3.0))
    10.0
    """
    items = [outputs] if isinstance(outputs, Expr) else outputs
    fn = compile(items, backend="numpy", optimize=False)
    # Values for inputs the outputs do not use are accepted, as a user evaluating several
    # derivatives at one point expects; names the graph does not know are still errors.
    known = flatten_outputs(items)[0][0].graph.inputs
    taken = set(fn.inputs)  # a set: many inputs made this quadratic
    extra = [n for n in values if n in known and n not in taken]
    if extra:
        fn = compile(items, inputs=[*fn.inputs, *extra], backend="numpy", optimize=False)
    result = fn(**values)
    return result[0] if isinstance(outputs, Expr) else result
