"""Stage 4a for tensor graphs: a plan of buffers and loop nests, written as one LLVM function.

ABI: ``void sg_tensor(ptr bufs)``. ``bufs[k]`` points at input k (float64, C order, exactly its
declared shape), then at each kernel output (C order, its node's shape), then at a scratch arena
of ``plan.scratch`` doubles that the caller owns (one per thread), then at each constant array
of ``plan.passed`` (those bigger than ``INLINE_CONST_SIZE``; smaller ones are module globals).

How a graph becomes loops (no recursion; one walk in id order):

- *Views* cost nothing: ``transpose``, ``broadcast_to``, ``getitem`` and ``reshape`` of a
  contiguous operand are (base buffer, offset, strides) over their operand's memory.
- *Elementwise* ops fuse: each gets a *stage* (the number of barriers it waits behind) and all
  elementwise nodes of one (stage, shape) run in one loop nest, each computed once per element,
  in registers. Only what another loop, a barrier or the caller reads is stored. So
  ``relu(x @ W + b)`` is one loop over the matmul's output, not three temporary arrays.
- *Barriers* (``matmul``, ``sum``, ``amax``, ``embed``, copies) read whole arrays: they run
  before the loops of their stage. ``matmul`` calls BLAS dgemm (the OpenBLAS that numpy ships)
  when the product is big enough to repay the call, and a vectorized i-k-j loop otherwise.

Innermost loops run on ``<4 x double>`` (with a scalar loop for the remainder), through the same
op emitters as the scalar kernels (``lower.emit_node``); loads whose address does not move in the
innermost loop are hoisted out of it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from symgrad.errors import LoweringError
from symgrad.interp import Program
from symgrad.llvm.lower import (
    ATTRIBUTES,
    EXACT_POWERS,
    VEC,
    WIDTH,
    Body,
    emit_node,
    hex_double,
    return_new_reference,
)
from symgrad.ops import OPS, decode_index

VIEWS = frozenset({"transpose", "broadcast_to", "getitem", "reshape", "windows"})
BARRIERS = frozenset({"matmul", "sum", "amax", "embed", "window_sum"})
BLAS_MIN_FLOPS = 32 * 32 * 32  # below this m*n*k the call costs more than an inline loop
INLINE_CONST_SIZE = 64  # constant arrays up to this size are written into the module


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


def plan(program: Program, inputs: tuple[str, ...], outputs: list[int]) -> Plan:
    """Stages, fused loops and buffers for ``program``; ``outputs`` distinct node ids."""
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
        elif op in VIEWS and (op != "reshape" or _view_of(p, graph, args[0], kind).contiguous()):
            kind[i], ready[i] = "view", need(args[0]) if kind[args[0]] != "scalar" else 0
            p.views[i] = _derive(op, _view_of(p, graph, args[0], kind), attrs, shape)
        elif op in BARRIERS or op == "reshape":
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
    _assign_buffers(p, program, kind, is_output)
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


def _derive(op: str, v: View, attrs: dict, shape: tuple[int, ...]) -> View:
    if op == "transpose":
        return v.transpose(attrs["axes"])
    if op == "broadcast_to":
        return v.broadcast(shape)
    if op == "getitem":
        return v.index(attrs["index"])
    if op == "windows":
        return v.windows(attrs["kernel_size"], attrs["stride"])
    return View(v.base, v.offset, c_strides(shape), shape)  # reshape of a contiguous view


def _group_loops(p: Plan, graph, stage: dict[int, int]) -> None:
    groups: dict[tuple, list[int]] = {}
    for i, s in stage.items():
        groups.setdefault((s, graph.node(i)["shape"]), []).append(i)
    for (s, _), ids in groups.items():
        # Loops of stage s run after the barriers of stage s (sort key (s, 1) vs (s, 0)).
        p.steps.append((s, 1, tuple(sorted(ids))))


def _assign_buffers(p: Plan, program: Program, kind: dict, is_output: dict[int, int]) -> None:
    """Outputs write into the caller's arrays; everything else gets a slot of the scratch arena
    that is reused once its last reader has run (so the arena stays small and in cache)."""
    graph = program.graph
    for o, k in is_output.items():
        if kind[o] in ("leaf", "view", "scalar"):
            p.copies.append((o, k))  # an input, constant or view returned as it is: copied out
    last = _last_reads(p, program, kind)
    arena = _Arena()
    for t, step in enumerate(p.steps):
        made = [step[2]] if step[1] == 0 else [i for i in step[2] if i in p.stored]
        for i in made:
            shape = graph.node(i)["shape"]
            if i in is_output:
                p.buffers[i] = ("out", is_output[i])
            else:
                p.buffers[i] = ("scratch", arena.take(max(int(np.prod(shape)), 1)))
            p.views[i] = View(i, 0, c_strides(shape), shape)
        for i in made:  # never read (an output only): nothing to keep
            last.setdefault(i, t)
        for i in [i for i, at in last.items() if at == t]:
            if p.buffers.get(i, ("",))[0] == "scratch":
                arena.give(p.buffers[i][1], max(int(np.prod(graph.node(i)["shape"])), 1))
            del last[i]
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
        for i in ids:
            for b in bases(i, set(ids) if step[1] else ()):
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
        self.free.append((at, n))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for start, size in self.free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((start, size))
        self.free = merged


# ----------------------------------------------------------------------------------------------
# Emission
# ----------------------------------------------------------------------------------------------


@dataclass
class Fn:
    """The function being written: its lines, the current block, fresh names."""

    vector_ok: Callable[[str], bool]
    lines: list[str] = field(default_factory=list)
    declares: set[str] = field(default_factory=set)
    globals: list[str] = field(default_factory=list)
    block: str = "entry"
    n: int = 0

    def fresh(self) -> int:
        self.n += 1
        return self.n

    def body(self, lanes: int) -> Body:
        return Body(f"v{self.fresh()}_", lanes, self.vector_ok)

    def flush(self, b: Body) -> None:
        self.lines.extend(b.lines)
        self.declares |= b.declares
        b.lines = []

    def start(self, label: str) -> None:
        self.lines.append(f"{label}:")
        self.block = label

    @contextmanager
    def loop(self, lo: int, hi: int, step: int):
        """``for i in range(lo, hi, step)`` with constant bounds; yields the index value."""
        k = self.fresh()
        pred, i = self.block, f"%i{k}"
        self.lines.append(f"  br label %h{k}")
        self.start(f"h{k}")
        phi_at = len(self.lines)
        self.lines.append("")
        self.lines.append(f"  %c{k} = icmp slt i64 {i}, {hi}")
        self.lines.append(f"  br i1 %c{k}, label %b{k}, label %x{k}")
        self.start(f"b{k}")
        yield i
        self.lines.append(f"  %n{k} = add nsw i64 {i}, {step}")
        self.lines.append(f"  br label %h{k}")
        self.lines[phi_at] = f"  {i} = phi i64 [ {lo}, %{pred} ], [ %n{k}, %{self.block} ]"
        self.start(f"x{k}")


@dataclass(frozen=True)
class Access:
    """A strided stream over a loop nest: base pointer value, constant offset, strides per dim."""

    ptr: str
    offset: int
    strides: tuple[int, ...]


def merge_dims(shape: tuple[int, ...], accesses: list[Access]):
    """Drop size-1 dims and merge neighbours every access walks as one (fewer, longer loops)."""
    keep = [d for d, n in enumerate(shape) if n != 1]
    dims = [shape[d] for d in keep]
    strides = [[a.strides[d] for d in keep] for a in accesses]
    d = len(dims) - 1
    while d > 0:
        if all(s[d - 1] == s[d] * dims[d] for s in strides):
            dims[d - 1 : d + 1] = [dims[d - 1] * dims[d]]
            for s in strides:
                s[d - 1 : d + 1] = [s[d]]
        d -= 1
    merged = [Access(a.ptr, a.offset, tuple(s)) for a, s in zip(accesses, strides)]
    return tuple(dims), merged


def emit_map(fn: Fn, shape, reads: list[Access], writes: list[Access], compute) -> None:
    """A loop nest over ``shape``: load ``reads``, ``compute(body, values) -> values`` to store
    at ``writes``. Reads must not alias writes unless at the same element (load then store)."""
    dims, accs = merge_dims(tuple(shape), reads + writes)
    offs = [str(a.offset) for a in accs]
    _nest(fn, dims, accs, offs, len(reads), compute, 0)


def _nest(fn: Fn, dims, accs, offs, n_reads, compute, d) -> None:
    if d == len(dims) - 1 or not dims:
        _innermost(fn, dims, accs, offs, n_reads, compute)
        return
    with fn.loop(0, dims[d], 1) as i:
        b = fn.body(1)
        inner = [_advance(b, off, i, a.strides[d]) for off, a in zip(offs, accs)]
        fn.flush(b)
        _nest(fn, dims, accs, inner, n_reads, compute, d + 1)


def _advance(b: Body, off: str, i: str, stride: int) -> str:
    if stride == 0:
        return off
    step = b.emit(f"mul nsw i64 {i}, {stride}")
    return b.emit(f"add nsw i64 {off}, {step}")


def _innermost(fn: Fn, dims, accs, offs, n_reads, compute) -> None:
    if not dims:  # a scalar loop body: one element
        b = fn.body(1)
        _body(b, accs, offs, n_reads, compute, None, {})
        fn.flush(b)
        return
    n, d = dims[-1], len(dims) - 1
    # Loads that do not move along the innermost axis: once, before its loops.
    hoisted: dict[int, tuple[str, str]] = {}
    pre = fn.body(WIDTH)
    for k in range(n_reads):
        if accs[k].strides[d] == 0:
            x = _load(pre, accs[k].ptr, offs[k], 1)
            hoisted[k] = (x, _splat(pre, x))
    fn.flush(pre)
    main = n - n % WIDTH
    if main:
        with fn.loop(0, main, WIDTH) as j:
            _body_at(fn, WIDTH, accs, offs, n_reads, compute, (j, d), hoisted)
    if main < n:
        with fn.loop(main, n, 1) as j:
            _body_at(fn, 1, accs, offs, n_reads, compute, (j, d), hoisted)


def _body_at(fn, lanes, accs, offs, n_reads, compute, at, hoisted) -> None:
    b = fn.body(lanes)
    _body(b, accs, offs, n_reads, compute, at, hoisted)
    fn.flush(b)


def _body(b: Body, accs, offs, n_reads, compute, at, hoisted) -> None:
    j, d = at if at else (None, None)
    addr = [off if j is None else _advance(b, off, j, a.strides[d]) for off, a in zip(offs, accs)]
    values = []
    for k in range(n_reads):
        if k in hoisted:
            values.append(hoisted[k][1] if b.lanes > 1 else hoisted[k][0])
        else:
            stride = 1 if j is None else accs[k].strides[d]
            values.append(_load(b, accs[k].ptr, addr[k], b.lanes, stride))
    results = compute(b, values)
    for k, value in enumerate(results):
        w = n_reads + k
        stride = 1 if j is None else accs[w].strides[d]
        _store(b, accs[w].ptr, addr[w], value, stride)


def _load(b: Body, ptr: str, off: str, lanes: int, stride: int = 1) -> str:
    p = b.emit(f"getelementptr inbounds double, ptr {ptr}, i64 {off}")
    if lanes == 1:
        return b.emit(f"load double, ptr {p}, align 8")
    if stride == 1:
        return b.emit(f"load {VEC}, ptr {p}, align 8")
    acc = "poison"  # a strided (gather) load, lane by lane
    for lane in range(lanes):
        q = b.emit(f"getelementptr inbounds double, ptr {p}, i64 {lane * stride}")
        x = b.emit(f"load double, ptr {q}, align 8")
        acc = b.emit(f"insertelement {VEC} {acc}, double {x}, i32 {lane}")
    return acc


def _splat(b: Body, x: str) -> str:
    v = b.emit(f"insertelement {VEC} poison, double {x}, i32 0")
    return b.emit(f"shufflevector {VEC} {v}, {VEC} poison, <{WIDTH} x i32> zeroinitializer")


def _store(b: Body, ptr: str, off: str, value: str, stride: int) -> None:
    p = b.emit(f"getelementptr inbounds double, ptr {ptr}, i64 {off}")
    if b.lanes == 1:
        b.lines.append(f"  store double {value}, ptr {p}, align 8")
    elif stride == 1:
        b.lines.append(f"  store {VEC} {value}, ptr {p}, align 8")
    else:
        for lane in range(b.lanes):
            x = b.emit(f"extractelement {VEC} {value}, i32 {lane}")
            q = b.emit(f"getelementptr inbounds double, ptr {p}, i64 {lane * stride}")
            b.lines.append(f"  store double {x}, ptr {q}, align 8")


# ----------------------------------------------------------------------------------------------
# The steps
# ----------------------------------------------------------------------------------------------


class Writer:
    """Writes the steps of a plan into ``fn``."""

    def __init__(self, fn: Fn, program: Program, p: Plan, blas: str | None):
        self.fn, self.program, self.p, self.blas = fn, program, p, blas
        self.graph = program.graph
        self.step_of = {i: (op, args, attrs) for i, op, args, attrs in program.steps}

    def access(self, i: int, shape: tuple[int, ...]) -> Access:
        """Node ``i`` read as an array of ``shape`` (broadcast as numpy does)."""
        v = self.p.views[i].broadcast(shape)
        return Access(f"%buf{v.base}", v.offset, v.strides)

    def dest(self, i: int) -> Access:
        shape = self.graph.node(i)["shape"]
        return Access(f"%buf{i}", 0, c_strides(shape))

    def loop(self, ids: tuple[int, ...]) -> None:
        members = set(ids)
        shape = self.graph.node(ids[0])["shape"]
        reads: list[int] = []
        for i in ids:
            for a in self.step_of[i][1]:
                if a not in members and a not in self.p.scalars and a not in reads:
                    reads.append(a)
        stores = [i for i in ids if i in self.p.stored]

        def compute(b: Body, loaded: list[str]) -> list[str]:
            values = dict(zip(reads, loaded))
            for i in ids:
                op, args, _ = self.step_of[i]
                operands = [values[a] if a in values else b.const(self.p.scalars[a])
                            for a in args]  # fmt: skip
                exponent = self.p.scalars.get(args[1]) if op == "pow" else None
                if exponent in EXACT_POWERS:
                    values[i] = EXACT_POWERS[exponent](b, operands[0])
                else:
                    values[i] = emit_node(b, op, operands)
            return [values[i] for i in stores]

        emit_map(self.fn, shape, [self.access(a, shape) for a in reads],
                 [self.dest(i) for i in stores], compute)  # fmt: skip

    def barrier(self, i: int) -> None:
        op, args, attrs = self.step_of[i]
        getattr(self, f"_{op}")(i, args, attrs)

    def fill(self, i: int, value: float) -> None:
        shape = self.graph.node(i)["shape"]
        emit_map(self.fn, shape, [], [self.dest(i)], lambda b, _: [b.const(value)])

    def copy(self, src: Access, dst: Access, shape) -> None:
        emit_map(self.fn, shape, [src], [dst], lambda b, vals: vals)

    def _reshape(self, i, args, attrs) -> None:
        # The operand is not contiguous: copy it out in C order; the copy is the reshape.
        src = self.p.views[args[0]]
        dst = Access(f"%buf{i}", 0, c_strides(src.shape))
        self.copy(Access(f"%buf{src.base}", src.offset, src.strides), dst, src.shape)

    def _embed(self, i, args, attrs) -> None:
        self.fill(i, 0.0)
        shape = self.graph.node(i)["shape"]
        target = View(i, 0, c_strides(shape), shape).index(attrs["index"])
        src_shape = self.graph.node(args[0])["shape"]
        dst = Access(f"%buf{i}", target.offset, target.strides)
        self.copy(self.access(args[0], src_shape), dst, src_shape)

    def _window_sum(self, i, args, attrs) -> None:
        # out[..., i*sh + p, j*sw + q] += g[..., i, j, p, q], looping (..., p, q, i, j): the
        # innermost axis j never meets an element twice, so its lanes update distinct places.
        self.fill(i, 0.0)
        shape = self.graph.node(i)["shape"]
        src = self.p.views[args[0]]
        lead = len(shape) - 2
        order = (*range(lead), lead + 2, lead + 3, lead, lead + 1)  # ..., p, q, i, j
        dims = tuple(src.shape[d] for d in order)
        g = Access(f"%buf{src.base}", src.offset, tuple(src.strides[d] for d in order))
        windows = View(i, 0, c_strides(shape), shape).windows(attrs["kernel_size"],
                                                              attrs["stride"])  # fmt: skip
        out = Access(f"%buf{i}", 0, tuple(windows.strides[d] for d in order))
        add = lambda b, vals: [b.binop("fadd", vals[0], vals[1])]
        _nest(self.fn, dims, [out, g, out], ["0", str(g.offset), "0"], 2, add, 0)

    def _sum(self, i, args, attrs) -> None:
        self._reduce(i, args[0], attrs["axis"], "fadd", 0.0)

    def _amax(self, i, args, attrs) -> None:
        self._reduce(i, args[0], attrs["axis"], "llvm.maximum", -np.inf)

    def _reduce(self, i: int, x: int, axes, combine: str, start: float) -> None:
        self.fill(i, start)
        shape = self.graph.node(x)["shape"]
        src = self.access(x, shape)
        kept = c_strides(tuple(1 if d in axes else n for d, n in enumerate(shape)))
        out = Access(f"%buf{i}", 0, tuple(0 if d in axes else s for d, s in enumerate(kept)))

        def step(b: Body, vals: list[str]) -> list[str]:
            acc, value = vals
            if combine == "fadd":
                return [b.binop("fadd", acc, value)]
            return [b.intrinsic(combine, acc, value)]

        dims, (src_m, out_m) = merge_dims(shape, [src, out])
        if dims and out_m.strides[-1] == 0:
            self._reduce_inner(dims, src_m, out_m, step, start)
        else:
            # The innermost axis is kept: out[k] = combine(out[k], x[.., k]) runs on vectors.
            _nest(self.fn, dims, [out_m, src_m, out_m], [str(out_m.offset), str(src_m.offset),
                                                         str(out_m.offset)], 2,
                  lambda b, vals: step(b, vals), 0)  # fmt: skip

    def _reduce_inner(self, dims, src: Access, out: Access, step, identity: float) -> None:
        # The innermost axis is reduced: running values in registers along it, stored once —
        # four lanes of partial results (then combined pairwise), a scalar one for the rest.
        fn = self.fn

        def outer(offs: list[str], d: int) -> None:
            if d < len(dims) - 1:
                with fn.loop(0, dims[d], 1) as i:
                    b = fn.body(1)
                    inner = [_advance(b, o, i, a.strides[d]) for o, a in zip(offs, (src, out))]
                    fn.flush(b)
                    outer(inner, d + 1)
                return
            b = fn.body(1)
            acc = _load(b, out.ptr, offs[1], 1)
            fn.flush(b)
            n = dims[-1]
            main = n - n % WIDTH if n >= 2 * WIDTH else 0
            if main:
                init = fn.body(WIDTH).const(identity)
                vec = self._fold_loop(WIDTH, 0, main, src, offs[0], init, step)
                b = fn.body(1)
                lane = [b.emit(f"extractelement {VEC} {vec}, i32 {k}") for k in range(WIDTH)]
                (low,), (high,) = step(b, lane[:2]), step(b, lane[2:])
                (acc,) = step(b, [acc, step(b, [low, high])[0]])
                fn.flush(b)
            if main < n:
                acc = self._fold_loop(1, main, n, src, offs[0], acc, step)
            b = fn.body(1)
            _store(b, out.ptr, offs[1], acc, 1)
            fn.flush(b)

        outer([str(src.offset), str(out.offset)], 0)

    def _fold_loop(self, lanes: int, lo: int, hi: int, src: Access, off: str, init: str, step):
        """``acc = step(acc, src[j])`` for j in [lo, hi) by ``lanes``; returns the final acc."""
        fn = self.fn
        k = fn.fresh()
        pred, phi_at = fn.block, len(fn.lines) + 2  # right after the loop header's label
        ty = VEC if lanes > 1 else "double"
        stride = src.strides[-1]
        with fn.loop(lo, hi, lanes) as j:
            b = fn.body(lanes)
            x = _load(b, src.ptr, _advance(b, off, j, stride), lanes, stride)
            (new,) = step(b, [f"%acc{k}", x])
            fn.flush(b)
            latch = fn.block
        fn.lines.insert(phi_at, f"  %acc{k} = phi {ty} [ {init}, %{pred} ], [ {new}, %{latch} ]")
        return f"%acc{k}"

    def _matmul(self, i, args, attrs) -> None:
        a, b = (self.p.views[x] for x in args)
        m, k = a.shape
        n = b.shape[1]
        ta, tb = _blas_layout(a), _blas_layout(b)
        if self.blas and m * n * k >= BLAS_MIN_FLOPS and ta and tb:
            self._dgemm(i, (a, ta), (b, tb), m, n, k)
            return
        self.fill(i, 0.0)
        # C[i, j] += A[i, p] * B[p, j] over (i, p, j): A's element is hoisted, j runs on vectors.
        ra = Access(f"%buf{a.base}", a.offset, (a.strides[0], a.strides[1], 0))
        rb = Access(f"%buf{b.base}", b.offset, (0, b.strides[0], b.strides[1]))
        c = Access(f"%buf{i}", 0, (n, 0, 1))

        def fma(body: Body, vals: list[str]) -> list[str]:
            x, y, acc = vals
            return [body.binop("fadd", acc, body.binop("fmul", x, y))]

        _nest(self.fn, (m, k, n), [ra, rb, c, c], [str(ra.offset), str(rb.offset), "0", "0"], 3,
              fma, 0)  # fmt: skip

    def _dgemm(self, i, a, b, m, n, k) -> None:
        (va, (ta, lda)), (vb, (tb, ldb)) = a, b
        body = self.fn.body(1)
        pa = body.emit(f"getelementptr inbounds double, ptr %buf{va.base}, i64 {va.offset}")
        pb = body.emit(f"getelementptr inbounds double, ptr %buf{vb.base}, i64 {vb.offset}")
        body.lines.append(
            f"  call void @{self.blas}(i32 101, i32 {ta}, i32 {tb}, i64 {m}, i64 {n}, i64 {k}, "
            f"double 1.0, ptr {pa}, i64 {lda}, ptr {pb}, i64 {ldb}, double 0.0, ptr %buf{i}, "
            f"i64 {n})"
        )
        self.fn.flush(body)
        self.fn.declares.add(
            f"declare void @{self.blas}(i32, i32, i32, i64, i64, i64, double, ptr, i64, ptr, "
            "i64, double, ptr, i64)"
        )


def _blas_layout(v: View) -> tuple[int, int] | None:
    """CBLAS transpose flag and leading dimension of a row-major matrix view, if it has one."""
    r, c = v.shape
    sr, sc = v.strides
    if (sc == 1 or c == 1) and sr >= max(c, 1):
        return 111, max(sr, c)  # CblasNoTrans
    if (sr == 1 or r == 1) and sc >= max(r, 1):
        return 112, max(sc, r)  # CblasTrans
    return None


def _global(i: int, value) -> str:
    flat = np.asarray(value, np.float64).reshape(-1)
    items = ", ".join(f"double {hex_double(float(x))}" for x in flat)
    return f"@buf{i} = private unnamed_addr constant [{flat.size} x double] [{items}], align 32"


def lower_tensor(program: Program, inputs: tuple[str, ...], outputs: list[int], vector_ok,
                 blas: str | None) -> tuple[str, Plan]:  # fmt: skip
    """The module text of ``sg_tensor`` and the plan (scratch size, copies) it was written from."""
    p = plan(program, inputs, outputs)
    fn = Fn(vector_ok)
    n_in, n_out = len(inputs), len(outputs)
    for i, (where, k) in sorted(p.buffers.items()):
        value = p.scalars.get(i) if i in p.scalars else program.graph.attr(i, "value")
        if where == "const" and np.size(value) > INLINE_CONST_SIZE:
            # Passed by pointer: a 300 x 300 array as IR text was 2.4 MB and 0.3 s to compile.
            at = n_in + n_out + 1 + len(p.passed)
            p.passed.append(i)
            fn.lines.append(f"  %bp{i} = getelementptr inbounds ptr, ptr %bufs, i64 {at}")
            fn.lines.append(f"  %buf{i} = load ptr, ptr %bp{i}, align 8")
            continue
        if where == "const":
            fn.globals.append(_global(i, value))
            fn.lines.append(f"  %buf{i} = getelementptr inbounds double, ptr @buf{i}, i64 0")
            continue
        if where == "scratch":
            fn.lines.append(f"  %buf{i} = getelementptr inbounds double, ptr %scratch, i64 {k}")
            continue
        at = k if where == "in" else n_in + k
        fn.lines.append(f"  %bp{i} = getelementptr inbounds ptr, ptr %bufs, i64 {at}")
        fn.lines.append(f"  %buf{i} = load ptr, ptr %bp{i}, align 8")
    fn.lines.insert(0, f"  %sp = getelementptr inbounds ptr, ptr %bufs, i64 {n_in + n_out}")
    fn.lines.insert(1, "  %scratch = load ptr, ptr %sp, align 8")
    w = Writer(fn, program, p, blas)
    for step in p.steps:
        if step[1] == 0:
            w.barrier(step[2])
        else:
            w.loop(step[2])
    for o, k in p.copies:
        _copy_out(w, fn, program, p, o, k, n_in)
    n_bufs = n_in + n_out + 1 + len(p.passed)
    text = "\n".join([
        *sorted(fn.declares), *fn.globals, "",
        "define void @sg_tensor(ptr noalias nocapture readonly %bufs) #1 {", "entry:",
        *fn.lines, "  ret void", "}", fast_tensor_entry(n_bufs), ATTRIBUTES,
    ])  # fmt: skip
    return text, p


def fast_tensor_entry(n_bufs: int) -> str:
    """``sg_tensor_fast``: a CPython ``METH_FASTCALL`` function around ``sg_tensor``.

    Called as ``fast(a0, ..., a{n-1})`` with exactly ``n_bufs`` numpy arrays that the caller has
    checked (float64, C-contiguous, the right shapes; the scratch and constant arrays last), it
    reads each array's data pointer from the object (offset 16 of numpy's array struct), releases
    the GIL around ``sg_tensor`` (other threads run while BLAS and the loops do), and returns its
    first argument; with any other argument count it returns ``self`` without running. A call
    costs one C call instead of a ctypes call plus a pointer array built in Python.
    """
    lines = [
        "declare ptr @PyEval_SaveThread()",
        "declare void @PyEval_RestoreThread(ptr)",
        "define ptr @sg_tensor_fast(ptr %self, ptr %args, i64 %nargs) #1 {",
        "entry:",
        f"  %bufs = alloca [{n_bufs} x ptr], align 8",
        f"  %ok = icmp eq i64 %nargs, {n_bufs}",
        "  br i1 %ok, label %run, label %fail",
        "run:",
    ]
    for k in range(n_bufs):
        lines += [
            f"  %ap{k} = getelementptr inbounds ptr, ptr %args, i64 {k}",
            f"  %a{k} = load ptr, ptr %ap{k}, align 8",
            f"  %dp{k} = getelementptr inbounds i8, ptr %a{k}, i64 16",
            f"  %d{k} = load ptr, ptr %dp{k}, align 8",
            f"  %bp{k} = getelementptr inbounds [{n_bufs} x ptr], ptr %bufs, i64 0, i64 {k}",
            f"  store ptr %d{k}, ptr %bp{k}, align 8",
        ]
    lines += [
        "  %state = call ptr @PyEval_SaveThread()",
        "  call void @sg_tensor(ptr %bufs)",
        "  call void @PyEval_RestoreThread(ptr %state)",
        "  %first = load ptr, ptr %args, align 8",
        *return_new_reference("%first"),
        "fail:",
        *return_new_reference("%self"),
        "}",
    ]
    return "\n".join(lines)


def _copy_out(w: Writer, fn: Fn, program: Program, p: Plan, o: int, k: int, n_in: int) -> None:
    shape = program.graph.node(o)["shape"]
    name = f"%out{k}"
    fn.lines.append(f"  %outp{k} = getelementptr inbounds ptr, ptr %bufs, i64 {n_in + k}")
    fn.lines.append(f"  {name} = load ptr, ptr %outp{k}, align 8")
    dst = Access(name, 0, c_strides(shape))
    if o in p.scalars:
        value = p.scalars[o]
        emit_map(fn, shape, [], [dst], lambda b, _: [b.const(value)])
    else:
        w.copy(w.access(o, shape), dst, shape)


__all__ = ["Plan", "View", "decode_index", "lower_tensor", "plan"]
