"""``Program``: the linear schedule every backend runs.

The nodes reachable from some outputs, in id order (a topological order: ids grow with creation),
each a step ``(id, op, args, attrs)``, with the names of the inputs they read. The numpy
interpreter evaluates the steps one by one; the LLVM backend emits each step once. Built from the
graph alone, so it sits below the compile face and the backends.
"""

from __future__ import annotations

from dataclasses import dataclass

from symgrad.graph import Graph, reachable


@dataclass(frozen=True)
class Program:
    """Steps ``(id, op, args, attrs)`` in id order, the reachable inputs and the output ids."""

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
