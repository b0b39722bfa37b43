"""The plan of a tensor kernel: views, fused loop groups, barriers and buffers.

How a graph becomes a plan (no recursion; one walk in id order):

- *Views* cost nothing: ``transpose``, ``broadcast_to``, ``getitem``, ``windows`` and ``reshape``
  of a contiguous operand are (base buffer, offset, strides) over their operand's memory.
- *Elementwise* ops fuse: each gets a *stage* (the number of barriers it waits behind) and all
  elementwise nodes of one (stage, shape) run in one loop nest, each computed once per element.
  Only what another loop, a barrier or the caller reads is stored.
- *Barriers* (``matmul``, ``sum``, ``amax``, ``embed``, copies) read whole arrays: they run before
  the loops of their stage.

Outputs write into the caller's arrays; everything else gets a slot of a scratch arena reused
once its last reader has run. ``loops.py`` writes the plan as LLVM IR.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from symgrad.errors import LoweringError
from symgrad.ops import OPS
from symgrad.program import Program

# An op's layout class is its registry lowering's kind: "view" ops are views made by the View
# method ``as_<name>``; "reduce" and "barrier" ops read whole arrays (loops.py writes them).
BARRIER_KINDS = frozenset({"reduce", "barrier"})


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= n
    return tuple(reversed(out))


@dataclass(frozen=True)
class View:
    """Elements of node ``base``'s buffer: element ``idx`` at ``offset + sum(idx * strides)``."""

    base: int
    offset: int
    strides: tuple[int, ...]
    shape: tuple[int, ...]

    def contiguous(self) -> bool:
        return all(s == c or n == 1 for s, c, n in zip(self.strides, c_strides(self.shape),
                                                       self.shape))  # fmt: skip

    def transpose(self, axes) -> View:
        return View(self.base, self.offset, tuple(self.strides[a] for a in axes),
                    tuple(self.shape[a] for a in axes))  # fmt: skip

    def broadcast(self, shape: tuple[int, ...]) -> View:
        lead = len(shape) - len(self.shape)
        strides = [0] * lead + [
            0 if n == 1 and m != 1 else s for s, n, m in zip(self.strides, self.shape, shape[lead:])
        ]
        return View(self.base, self.offset, tuple(strides), tuple(shape))

    def windows(self, kernel: tuple[int, int], stride: tuple[int, int]) -> View:
        """Every window of the last two axes, as two new trailing axes (overlapping views)."""
        (kh, kw), (sh, sw) = kernel, stride
        h, w = self.shape[-2:]
        s_h, s_w = self.strides[-2:]
        shape = (*self.shape[:-2], (h - kh) // sh + 1, (w - kw) // sw + 1, kh, kw)
        strides = (*self.strides[:-2], s_h * sh, s_w * sw, s_h, s_w)
        return View(self.base, self.offset, strides, shape)

    # The views of Lowering("view", name) ops: ``as_<name>(attrs, shape)``, the view the op's
    # output is, or None where it is not a view of this one (it is then copied, a barrier).

    def as_transpose(self, attrs: dict, shape) -> View:
        return self.transpose(attrs["axes"])

    def as_broadcast(self, attrs: dict, shape) -> View:
        return self.broadcast(shape)

    def as_index(self, attrs: dict, shape) -> View:
        return self.index(attrs["index"])

    def as_windows(self, attrs: dict, shape) -> View:
        return self.windows(attrs["kernel_size"], attrs["stride"])

    def as_reshape(self, attrs: dict, shape) -> View | None:
        # Only C-contiguous memory reads in a new shape without moving.
        return View(self.base, self.offset, c_strides(shape), shape) if self.contiguous() else None

    def index(self, index) -> View:
        offset, strides, shape = self.offset, [], []
        for item, s in zip(index, self.strides):
            if isinstance(item, tuple):
                _, start, count, step = item
                offset += start * s
                strides.append(s * step)
                shape.append(count)
            else:
                offset += item * s
        return View(self.base, offset, tuple(strides), tuple(shape))


@dataclass(frozen=True)
class LoopBody:
    """A scan's body compiled as a kernel of its own, as the scan's loop calls it: ``inputs``
    (placeholder names, in its argument order), ``outputs`` (body node ids, in its output
    order), its arena (``scratch`` doubles) and how many pointers it takes after the arena
    (``extras``: its constant arrays and the bodies of the scans inside it)."""

    inputs: tuple[str, ...]
    outputs: tuple[int, ...]
    scratch: int
    extras: int

    def loop_scratch(self, body, length: int, views: list) -> int:
        """Doubles the loop needs: the carries twice (this step's and the next), copies in C
        order of the sequences and captures whose ``views`` are not, the body's arena."""
        nc, nx = len(body.carry), len(body.xs)
        shapes = [body.shape(h) for h in (*body.carry, *body.xs, *body.captures)]
        shapes[nc : nc + nx] = [(length, *s) for s in shapes[nc : nc + nx]]
        size = 2 * sum(_size(s) for s in shapes[:nc]) + self.scratch
        for v, shape in zip(views, shapes[nc:]):
            if v.shape != tuple(shape) or not v.contiguous():
                size += _size(shape)
        return size


def _size(shape) -> int:
    return max(int(np.prod(shape)), 1)


# Nodes per fused loop at most (see ``_pieces``): enough that the values stored between the
# pieces of a long chain cost little next to the work of a piece.
GROUP_MAX = 256


@dataclass
class Plan:
    """What the function computes, in order: steps are ("barrier", id) or ("loop", ids)."""

    views: dict[int, View] = field(default_factory=dict)
    scalars: dict[int, float] = field(default_factory=dict)
    buffers: dict[int, tuple[str, int]] = field(default_factory=dict)  # id -> (kind, k/offset)
    steps: list[tuple] = field(default_factory=list)
    stored: set[int] = field(default_factory=set)  # elementwise nodes written to memory
    scratch: int = 0
    copies: list[tuple[int, int]] = field(default_factory=list)  # (node, output slot)
    # Constant arrays too big to write into the module: the caller passes them after the
    # scratch pointer, in this order.
    passed: list[int] = field(default_factory=list)
    # A scan: its projections (id, part), and where its scratch (carries, body arena) starts.
    parts: dict[int, list[tuple[int, tuple]]] = field(default_factory=dict)
    loop_scratch: dict[int, int] = field(default_factory=dict)


def plan(program: Program, inputs: tuple[str, ...], outputs: list[int], loop_sizes=None) -> Plan:
    """Stages, fused loops and buffers for ``program``; ``outputs`` distinct node ids.

    A scan is a barrier step writing the buffers of its projections; ``loop_sizes`` gives, for
    each scan, its compiled body (a ``LoopBody``): its loop's scratch follows from it.
    """
    graph = program.graph
    p = Plan()
    stage: dict[int, int] = {}
    ready: dict[int, int] = {}  # from which stage a node's memory can be read
    kind: dict[int, str] = {}
    slot = {name: k for k, name in enumerate(inputs)}
    is_output = {o: k for k, o in enumerate(outputs)}

    def need(a: int) -> int:
        """Node ``a`` will be read from memory: when is it there?"""
        if kind[a] == "ew":
            p.stored.add(a)
            return stage[a] + 1
        return ready[a]

    for i, op, args, attrs in program.steps:
        shape = graph.node(i)["shape"]
        if op == "input":
            kind[i], ready[i] = "leaf", 0
            p.buffers[i] = ("in", slot[attrs["name"]])
            p.views[i] = View(i, 0, c_strides(shape), shape)
        elif op == "const" and not shape:
            kind[i], ready[i] = "scalar", 0
            p.scalars[i] = attrs["value"]
        elif op == "const":
            kind[i], ready[i] = "leaf", 0
            p.buffers[i] = ("const", i)
            p.views[i] = View(i, 0, c_strides(shape), shape)
        elif OPS[op].elementwise:
            kind[i] = "ew"
            s = 0
            for a in args:
                if kind[a] == "ew" and graph.node(a)["shape"] == shape:
                    s = max(s, stage[a])
                elif kind[a] != "scalar":
                    s = max(s, need(a))
            stage[i] = s
            for a in args:  # a same-shape operand from an earlier stage is read from memory
                if kind[a] == "ew" and stage[a] < s:
                    p.stored.add(a)
        elif OPS[op].multiple:  # a scan: one step, writing all its projections
            kind[i] = "tuple"
            for a in args:  # it passes pointers: a scalar constant gets a global
                if kind[a] == "scalar":
                    _view_of(p, graph, a, kind)
            ready[i] = max([need(a) for a in args if kind[a] != "scalar"], default=0)
            p.steps.append((ready[i], 0, i))
            p.parts[i] = []
        elif len(args) == 1 and kind[args[0]] == "tuple":  # written by the scan's step
            kind[i], ready[i] = "part", ready[args[0]]
            p.parts[args[0]].append((i, attrs["part"]))
        elif _is_view(op) and (
            view := _derive(OPS[op].llvm, _view_of(p, graph, args[0], kind), attrs, shape)
        ):
            kind[i], ready[i] = "view", need(args[0]) if kind[args[0]] != "scalar" else 0
            p.views[i] = view
        elif _is_view(op) or _is_barrier(op):  # a view op that is not a view here is a copy
            kind[i] = "barrier"
            for a in args:  # a barrier reads memory: a scalar constant (sum(2.0)) gets a global
                if kind[a] == "scalar":
                    _view_of(p, graph, a, kind)
            ready[i] = max([need(a) for a in args if kind[a] != "scalar"], default=0)
            p.steps.append((ready[i], 0, i))
        else:
            raise LoweringError(f"op {op!r} has no tensor lowering")
    for o in outputs:
        if kind[o] == "ew":
            p.stored.add(o)
    _group_loops(p, graph, stage)
    p.steps.sort(key=lambda step: step[:2])
    _assign_buffers(p, program, kind, is_output, loop_sizes or {})
    return p


def _view_of(p: Plan, graph, a: int, kind: dict) -> View:
    """How node ``a`` lies in memory: its own view, or its own C-order buffer (made later)."""
    if a in p.views:
        return p.views[a]
    if kind[a] == "scalar":  # a scalar constant viewed as an array: a one-element global
        p.buffers[a] = ("const", a)
        p.views[a] = View(a, 0, (), ())
        return p.views[a]
    shape = graph.node(a)["shape"]
    return View(a, 0, c_strides(shape), shape)


def _is_view(op: str) -> bool:
    return OPS[op].llvm is not None and OPS[op].llvm.kind == "view"


def _is_barrier(op: str) -> bool:
    return OPS[op].llvm is not None and OPS[op].llvm.kind in BARRIER_KINDS


def _derive(low, v: View, attrs: dict, shape: tuple[int, ...]) -> View | None:
    """The view a view op makes of its operand's view ``v``, or None if it cannot be one."""
    return getattr(v, f"as_{low.name}")(attrs, shape)


def _group_loops(p: Plan, graph, stage: dict[int, int]) -> None:
    groups: dict[tuple, list[int]] = {}
    for i, s in stage.items():
        groups.setdefault((s, graph.node(i)["shape"]), []).append(i)
    for (s, _), ids in groups.items():
        # Loops of stage s run after the barriers of stage s (sort key (s, 1) vs (s, 0)); the
        # pieces of one group keep their order (the sort is stable).
        for piece in _pieces(p, graph, sorted(ids)):
            p.steps.append((s, 1, piece))


def _pieces(p: Plan, graph, ids: list[int]) -> list[tuple[int, ...]]:
    """A fused group cut into loops of at most ``GROUP_MAX`` nodes, in id order; a node that a
    later piece reads is stored, to be read from memory there.

    One loop body of an unrolled recurrence's whole chain of elementwise nodes was tens of
    thousands of instructions, and LLVM's code generation grows faster than a loop body (a
    32-step LSTM's value + gradient: 5.9 s at level 2)."""
    if len(ids) <= GROUP_MAX:
        return [tuple(ids)]
    pieces = [tuple(ids[k : k + GROUP_MAX]) for k in range(0, len(ids), GROUP_MAX)]
    piece_of = {i: n for n, piece in enumerate(pieces) for i in piece}
    for n, piece in enumerate(pieces):
        for i in piece:
            for a in graph.node(i)["args"]:
                if piece_of.get(a, n) < n:
                    p.stored.add(a)
    return pieces


def _assign_buffers(
    p: Plan, program: Program, kind: dict, is_output: dict[int, int], loop_sizes: dict
) -> None:
    """Outputs write into the caller's arrays; everything else gets a slot of the scratch arena
    that is reused once its last reader has run (so the arena stays small and in cache)."""
    graph = program.graph
    for o, k in is_output.items():
        if kind[o] in ("leaf", "view", "scalar"):
            p.copies.append((o, k))  # an input, constant or view returned as it is: copied out
    last = _last_reads(p, program, kind)
    # The owners whose last reader is step t, in the order of ``last``: found by step, not by a
    # scan of ``last`` at every step (that was quadratic in the steps).
    dying: dict[int, list[int]] = {}
    for i, at in last.items():
        dying.setdefault(at, []).append(i)
    arena = _Arena()
    for t, step in enumerate(p.steps):
        made = [step[2]] if step[1] == 0 else [i for i in step[2] if i in p.stored]
        if step[1] == 0 and step[2] in p.parts:  # a scan makes its projections' memory
            made = [j for j, _ in p.parts[step[2]]]
        for i in made:
            shape = graph.node(i)["shape"]
            if i in is_output:
                p.buffers[i] = ("out", is_output[i])
            else:
                p.buffers[i] = ("scratch", arena.take(max(int(np.prod(shape)), 1)))
            p.views[i] = View(i, 0, c_strides(shape), shape)
        for i in made:  # never read (an output only): nothing to keep
            if i not in last:
                last[i] = t
                dying.setdefault(t, []).append(i)
        if step[1] == 0 and step[2] in loop_sizes:  # the loop's own scratch, for its step only
            i = step[2]
            attrs = dict(graph.node(i)["attrs"])
            operands = graph.node(i)["args"][len(attrs["body"].carry) :]
            views = [p.views[a] for a in operands]
            size = loop_sizes[i].loop_scratch(attrs["body"], attrs["length"], views)
            p.loop_scratch[step[2]] = arena.take(size)
            arena.give(p.loop_scratch[step[2]], size)
        for i in dying.pop(t, ()):
            if p.buffers.get(i, ("",))[0] == "scratch":
                arena.give(p.buffers[i][1], max(int(np.prod(graph.node(i)["shape"])), 1))
    p.scratch = arena.size


def _last_reads(p: Plan, program: Program, kind: dict) -> dict[int, int]:
    """For each buffer owner, the index of the last step reading its memory (views included)."""
    args_of = {i: args for i, _, args, _ in program.steps}

    def bases(i: int, members=()) -> set[int]:
        out = set()
        for a in args_of[i]:
            if a in members or (kind[a] == "scalar" and a not in p.views):
                continue
            out.add(p.views[a].base if a in p.views else a)
        return out

    last: dict[int, int] = {}
    for t, step in enumerate(p.steps):
        ids = (step[2],) if step[1] == 0 else step[2]
        # One set per step, not one per member: a fused group of n nodes made n sets of n ids
        # (quadratic: 142 s of a 174 s compile of an unrolled LSTM).
        members = frozenset(ids) if step[1] else frozenset()
        for i in ids:
            for b in bases(i, members):
                last[b] = t
    end = len(p.steps)
    for o, _ in p.copies:  # copied out after every step
        if o in p.views:
            last[p.views[o].base] = end
    return last


class _Arena:
    """First-fit allocation of scratch slots (in doubles), merging freed neighbours."""

    def __init__(self):
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted by offset
        self.size = 0

    def take(self, n: int) -> int:
        for k, (at, size) in enumerate(self.free):
            if size >= n:
                self.free[k : k + 1] = [(at + n, size - n)] if size > n else []
                return at
        if self.free and self.free[-1][0] + self.free[-1][1] == self.size:
            at = self.free.pop()[0]  # grow the free block at the end rather than past it
        else:
            at = self.size
        self.size = at + n
        return at

    def give(self, at: int, n: int) -> None:
        # The free list is kept sorted and merged: the block goes in at its place and joins its
        # neighbours if it touches them (a sort and a merge of the whole list at every give was
        # 2.6 s of planning a 256-step unrolled LSTM).
        free = self.free
        k = bisect.bisect_left(free, (at, n))
        if k < len(free) and at + n == free[k][0]:  # joins the next block
            n += free.pop(k)[1]
        if k and free[k - 1][0] + free[k - 1][1] == at:  # joins the previous block
            free[k - 1] = (free[k - 1][0], free[k - 1][1] + n)
        else:
            free.insert(k, (at, n))
