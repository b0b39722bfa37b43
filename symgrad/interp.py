"""The numpy reference interpreter: the oracle the compiled code is tested against.

A ``Program`` is the list of nodes reachable from some outputs, in id order (a topological order),
each evaluated once with its op's ``numpy`` field. ``evaluate`` runs one with IEEE semantics
(numpy's: ``log(-1)`` is nan, ``1/0`` is inf, no warnings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from symgrad.graph import Expr, Graph, reachable
from symgrad.ops import OPS


@dataclass(frozen=True)
class Program:
    """What the interpreter runs: steps ``(id, op, args, attrs)`` and the output ids."""

    graph: Graph
    steps: tuple[tuple[int, str, tuple[int, ...], dict], ...]
    inputs: tuple[str, ...]  # names of the reachable inputs, in creation order
    outputs: tuple[int, ...]

    @classmethod
    def of(cls, graph: Graph, outputs: list[int]) -> Program:
        steps, names = [], []
        for i in reachable(graph, outputs):
            node = graph.node(i)
            attrs = dict(node["attrs"])
            if node["op"] == "input":
                names.append(attrs["name"])
            steps.append((i, node["op"], node["args"], attrs))
        return cls(graph, tuple(steps), tuple(names), tuple(outputs))

    def run(self, values: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Output values, given an array (or float) for every input name."""
        env: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for i, op, args, attrs in self.steps:
                if op == "input":
                    env[i] = np.asarray(values[attrs["name"]], dtype=np.float64)
                elif op == "const":
                    env[i] = np.asarray(attrs["value"], np.float64)
                else:
                    env[i] = np.asarray(OPS[op].numpy(*(env[a] for a in args), **attrs), np.float64)
        return [env[o] for o in self.outputs]


def evaluate(outputs, /, **values):
    """Evaluate ``outputs`` with numpy at the given input values.

    An ``Expr`` gives one float64 array; a list (or nested list) gives the tuple that
    ``sg.compile(outputs, backend="numpy")`` would return.

    >>> g = Graph(); x = g.input("x"); float(evaluate(x * x + 1, x=3.0))
    10.0
    """
    from symgrad.llvm.kernel import compile

    items = [outputs] if isinstance(outputs, Expr) else outputs
    fn = compile(items, backend="numpy")
    # Values for inputs the outputs do not use are accepted, as a user evaluating several
    # derivatives at one point expects; names the graph does not know are still errors.
    known = fn.graph.inputs
    extra = [n for n in values if n in known and n not in fn.inputs]
    if extra:
        fn = compile(items, inputs=[*fn.inputs, *extra], backend="numpy")
    result = fn(**values)
    return result[0] if isinstance(outputs, Expr) else result
