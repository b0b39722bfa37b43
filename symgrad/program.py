"""``Program``: the linear schedule every backend runs, and its numpy evaluation.

The nodes reachable from some outputs, in id order (a topological order: ids grow with creation),
each a step ``(id, op, args, attrs)``, with the names of the inputs they read. The numpy
interpreter evaluates the steps one by one (``run``, also how a scan runs its body); the LLVM
backend emits each step once. Built from the graph alone, so it sits below the compile face and
the backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from symgrad.graph import Graph, reachable
from symgrad.ops import OPS


@dataclass(frozen=True)
class Program:
    """Steps ``(id, op, args, attrs)`` in id order, the reachable inputs and the output ids.

    ``parts`` maps each node whose value is a tuple (a scan) to the parts the program's
    projections of it read, so a backend computes and keeps only those.
    """

    graph: Graph
    steps: tuple[tuple[int, str, tuple[int, ...], dict], ...]
    inputs: tuple[str, ...]  # names of the reachable inputs, in creation order
    outputs: tuple[int, ...]
    parts: dict[int, tuple] = field(default_factory=dict)

    @classmethod
    def of(cls, graph: Graph, outputs: list[int]) -> Program:
        steps, names, parts = [], [], {}
        for i in reachable(graph, outputs):
            node = graph.node(i)
            attrs = dict(node["attrs"])
            if node["op"] == "input":
                names.append(attrs["name"])
            elif len(node["args"]) == 1 and OPS[graph.node(node["args"][0])["op"]].multiple:
                parts.setdefault(node["args"][0], set()).add(attrs["part"])
            steps.append((i, node["op"], node["args"], attrs))
        parts = {i: tuple(sorted(p)) for i, p in parts.items()}
        return cls(graph, tuple(steps), tuple(names), tuple(outputs), parts)


def run(program: Program, values: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Output values of ``program`` in numpy, given an array (or float) for every input name."""
    env: dict[int, np.ndarray] = {}
    with np.errstate(all="ignore"):
        for i, op, args, attrs in program.steps:
            if op == "input":
                env[i] = np.asarray(values[attrs["name"]], dtype=np.float64)
            elif op == "const":
                env[i] = np.asarray(attrs["value"], np.float64)
            elif i in program.parts:  # a tuple: the parts the program reads, by part
                env[i] = OPS[op].numpy(*(env[a] for a in args), parts=program.parts[i], **attrs)
            else:
                env[i] = np.asarray(OPS[op].numpy(*(env[a] for a in args), **attrs), np.float64)
    return [env[o] for o in program.outputs]
