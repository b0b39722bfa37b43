"""Stage 4a for tensor graphs: a ``plan.py`` plan written as one LLVM function, ``sg_tensor``.

ABI: ``void sg_tensor(ptr bufs)``. ``bufs[k]`` points at input k (float64, C order, exactly its
declared shape), then at each kernel output (C order, its node's shape), then at a scratch arena
of ``plan.scratch`` doubles that the caller owns (one per thread), then at each constant array
of ``plan.passed`` (those bigger than ``INLINE_CONST_SIZE``; smaller ones are module globals).
The global ``sg_plan_facts`` (``_plan_facts``) holds the scratch size and which constants are
passed, so a kernel loaded from the object cache is called without planning again.

Each fused loop group of the plan is one loop nest computing its elementwise nodes in registers
(so ``relu(x @ W + b)`` is one loop over the matmul's output, not three temporary arrays); each
barrier is its own nest. ``matmul`` calls BLAS dgemm (the OpenBLAS that numpy ships) when the
product is big enough to repay the call, and a vectorized i-k-j loop otherwise.

Innermost loops run on ``<4 x double>`` (with a scalar loop for the remainder), through the same
op emitters as the scalar kernels (``lower.emit_node``); loads whose address does not move in the
innermost loop are hoisted out of it. The module also holds ``sg_tensor_fast`` (``entry.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from symgrad.llvm.entry import fast_tensor_entry
from symgrad.llvm.lower import (
    ATTRIBUTES,
    VEC,
    WIDTH,
    Body,
    emit_step,
    hex_double,
)
from symgrad.llvm.plan import Plan, View, c_strides, plan
from symgrad.ops import OPS, einsum_parts, einsum_sizes, joined_at
from symgrad.program import Program

BLAS_MIN_FLOPS = 32 * 32 * 32  # below this m*n*k the call costs more than an inline loop
INLINE_CONST_SIZE = 64  # constant arrays up to this size are written into the module
JOIN_COLUMNS = 32  # a concatenate of at most this many along its axis copies them in one pass
# IR lines per function of a tensor kernel, about: LLVM's code generation at level 2 grows
# faster than the function (an unrolled 32-step LSTM's value + gradient in one function of 36k
# lines: 5.9 s); the steps are written into functions of about this many lines instead, each
# called in turn by sg_tensor (values pass between steps through memory anyway).
PART_LINES = 4000
BUFFER_RE = re.compile(r"%buf\d+\b|%scratch\b")
PLAN_FACTS = "sg_plan_facts"  # the global holding the scratch size and the passed constants


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


def _nest(fn: Fn, dims, accs, offs, n_reads, compute, d, vector: bool = True) -> None:
    """Loops over ``dims`` from ``d`` on; the innermost on 4 lanes unless ``vector`` is False
    (a write that does not move along it: a running sum)."""
    if d == len(dims) - 1 or not dims:
        _innermost(fn, dims, accs, offs, n_reads, compute, vector)
        return
    with fn.loop(0, dims[d], 1) as i:
        b = fn.body(1)
        inner = [_advance(b, off, i, a.strides[d]) for off, a in zip(offs, accs)]
        fn.flush(b)
        _nest(fn, dims, accs, inner, n_reads, compute, d + 1, vector)


def _advance(b: Body, off: str, i: str, stride: int) -> str:
    if stride == 0:
        return off
    step = b.emit(f"mul nsw i64 {i}, {stride}")
    return b.emit(f"add nsw i64 {off}, {step}")


def _innermost(fn: Fn, dims, accs, offs, n_reads, compute, vector: bool = True) -> None:
    if not dims:  # a scalar loop body: one element
        b = fn.body(1)
        _body(b, accs, offs, n_reads, compute, None, {})
        fn.flush(b)
        return
    n, d = dims[-1], len(dims) - 1
    # Loads that do not move along the innermost axis: once, before its loops.
    hoisted: dict[int, tuple[str, str]] = {}
    pre = fn.body(WIDTH)
    written = {a.ptr for a in accs[n_reads:]}  # a running sum's read moves with its writes
    for k in range(n_reads):
        if accs[k].strides[d] == 0 and accs[k].ptr not in written:
            x = _load(pre, accs[k].ptr, offs[k], 1)
            hoisted[k] = (x, _splat(pre, x))
    fn.flush(pre)
    main = n - n % WIDTH if vector else 0
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


def _checked_index(b: Body, value: str, n: int, stride: int) -> tuple[str, str]:
    """``(offset, valid)`` of an index read as a double (or 4 lanes of them): valid when it is
    an integer in [-n, n) (tested in floating point, so nan and huge values never reach the
    integer conversion, which would be poison); the offset ``k * stride`` of k in [0, n), 0
    when invalid."""
    ity = "i64" if b.lanes == 1 else f"<{WIDTH} x i64>"

    def int_const(v: int) -> str:
        return str(v) if b.lanes == 1 else "<" + ", ".join([f"i64 {v}"] * WIDTH) + ">"

    whole = b.fcmp("oeq", value, b.intrinsic("llvm.floor", value))
    low = b.fcmp("oge", value, b.const(float(-n)))
    high = b.fcmp("olt", value, b.const(float(n)))
    valid = b.emit(f"and {b.mask_ty} {whole}, {b.emit(f'and {b.mask_ty} {low}, {high}')}")
    k = b.emit(f"fptosi {b.ty} {b.select(valid, value, b.const(0.0))} to {ity}")
    wrapped = b.emit(f"add nsw {ity} {k}, {int_const(n)}")
    negative = b.emit(f"icmp slt {ity} {k}, {int_const(0)}")
    k = b.emit(f"select {b.mask_ty} {negative}, {ity} {wrapped}, {ity} {k}")
    return b.emit(f"mul nsw {ity} {k}, {int_const(stride)}"), valid


def _gathered(b: Body, ptr: str, base: str, shifts: str) -> str:
    """4 lanes loaded from ``ptr`` at ``base`` plus each lane of the offsets ``shifts``."""
    acc = "poison"
    for lane in range(WIDTH):
        shift = b.emit(f"extractelement <{WIDTH} x i64> {shifts}, i32 {lane}")
        x = _load(b, ptr, b.emit(f"add nsw i64 {base}, {shift}"), 1)
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

    def __init__(self, fn: Fn, program: Program, p: Plan, blas: str | None, loops=None):
        self.fn, self.program, self.p, self.blas = fn, program, p, blas
        self.loops = loops or {}  # scan id -> (LoopBody, index in bufs of its kernel's box)
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
        reads: dict[int, None] = {}  # in first-read order; a dict: membership in O(1)
        for i in ids:
            for a in self.step_of[i][1]:
                if a not in members and a not in self.p.scalars:
                    reads.setdefault(a)
        stores = [i for i in ids if i in self.p.stored]

        def compute(b: Body, loaded: list[str]) -> list[str]:
            values = dict(zip(reads, loaded))
            for i in ids:
                op, args, _ = self.step_of[i]
                operands = [values[a] if a in values else b.const(self.p.scalars[a])
                            for a in args]  # fmt: skip
                values[i] = emit_step(b, op, args, operands, self.p.scalars)
            return [values[i] for i in stores]

        emit_map(self.fn, shape, [self.access(a, shape) for a in reads],
                 [self.dest(i) for i in stores], compute)  # fmt: skip

    def barrier(self, i: int) -> None:
        """Write a barrier step: the registry's lowering says which kind, and which writer."""
        op, args, attrs = self.step_of[i]
        low = OPS[op].llvm
        if low.kind == "reduce":
            self._reduce(i, args[0], attrs["axis"], low.name, low.start)
        elif low.kind == "view":  # a view op whose operand is not laid out for it: a copy
            self._copy_out_of_view(i, args)
        else:
            getattr(self, f"write_{low.name}")(i, args, attrs)

    def fill(self, i: int, value: float) -> None:
        shape = self.graph.node(i)["shape"]
        emit_map(self.fn, shape, [], [self.dest(i)], lambda b, _: [b.const(value)])

    def copy(self, src: Access, dst: Access, shape) -> None:
        emit_map(self.fn, shape, [src], [dst], lambda b, vals: vals)

    def _copy_out_of_view(self, i, args) -> None:
        # (A reshape of memory that is not contiguous.) The operand copied out in C order is
        # the output: C order is all the output's shape asks of the same elements.
        src = self.p.views[args[0]]
        dst = Access(f"%buf{i}", 0, c_strides(src.shape))
        self.copy(Access(f"%buf{src.base}", src.offset, src.strides), dst, src.shape)

    def write_embed(self, i, args, attrs) -> None:
        self.fill(i, 0.0)
        shape = self.graph.node(i)["shape"]
        target = View(i, 0, c_strides(shape), shape).index(attrs["index"])
        src_shape = self.graph.node(args[0])["shape"]
        dst = Access(f"%buf{i}", target.offset, target.strides)
        self.copy(self.access(args[0], src_shape), dst, src_shape)

    def write_concatenate(self, i, args, attrs) -> None:
        shape, axis = self.graph.node(i)["shape"], attrs["axis"]
        out = View(i, 0, c_strides(shape), shape)
        shapes = [self.graph.node(a)["shape"] for a in args]
        if shape[axis] <= JOIN_COLUMNS:
            self._join_columns(i, args, shapes, axis)
            return
        # Each operand copied into its slab of the output along the axis.
        for a, sub, lo in zip(args, shapes, joined_at(shapes, axis)):
            whole = [("s", 0, n, 1) for n in shape]
            whole[axis] = ("s", lo, sub[axis], 1)
            slab = out.index(tuple(whole))
            dst = Access(f"%buf{i}", slab.offset, slab.strides)
            self.copy(self.access(a, sub), dst, sub)

    def _join_columns(self, i, args, shapes, axis) -> None:
        # A short joined axis (a Jacobian's 26 columns stacked last): one pass over the other
        # axes copying every column, so each stretch of the output is written while it is in
        # cache, not once per operand with a stride.
        shape = self.graph.node(i)["shape"]
        rest = tuple(n for d, n in enumerate(shape) if d != axis)
        out_strides = c_strides(shape)
        reads, writes = [], []
        for a, sub, lo in zip(args, shapes, joined_at(shapes, axis)):
            src = self.access(a, sub)
            drop = tuple(st for d, st in enumerate(src.strides) if d != axis)
            for j in range(sub[axis]):
                reads.append(Access(src.ptr, src.offset + j * src.strides[axis], drop))
                keep = tuple(st for d, st in enumerate(out_strides) if d != axis)
                writes.append(Access(f"%buf{i}", (lo + j) * out_strides[axis], keep))
        emit_map(self.fn, rest, reads, writes, lambda b, vals: vals)

    def write_einsum(self, i, args, attrs) -> None:
        # out += the product of the operands over the iteration space of every letter, in the
        # order (output letters but the last, summed letters, the output's last letter): the
        # innermost loop then writes the output contiguously, on 4 lanes (matmul's i-k-j).
        ins, out = einsum_parts(attrs["spec"])
        views = [self.p.views[a] for a in args]
        sizes = einsum_sizes([v.shape for v in views], attrs["spec"])
        if self.blas and self._batched_gemm(i, ins, out, views, sizes):
            return
        summed = [c for c in sizes if c not in out]
        order = [*out[:-1], *summed, *out[-1:]]
        self.fill(i, 0.0)
        reads = []
        for sub, v in zip(ins, views):
            by_letter = dict(zip(sub, v.strides))
            reads.append(
                Access(f"%buf{v.base}", v.offset, tuple(by_letter.get(c, 0) for c in order))
            )
        shape = self.graph.node(i)["shape"]
        by_letter = dict(zip(out, c_strides(shape)))
        acc = Access(f"%buf{i}", 0, tuple(by_letter.get(c, 0) for c in order))

        def product(b: Body, vals: list[str]) -> list[str]:
            total = vals[0]
            for v in vals[1:-1]:
                total = b.binop("fmul", total, v)
            return [b.binop("fadd", vals[-1], total)]

        accs = [*reads, acc, acc]
        offs = [str(a.offset) for a in accs]
        dims = tuple(sizes[c] for c in order)
        _nest(self.fn, dims, accs, offs, len(reads) + 1, product, 0, vector=bool(out))

    def write_take(self, i, args, attrs) -> None:
        x, idx = (self.p.views[a] for a in args)
        shape = self.graph.node(i)["shape"]
        out = View(i, 0, c_strides(shape), shape)
        self._along_indices(x, idx, out, attrs["axis"], gather=True)

    def write_scatter_add(self, i, args, attrs) -> None:
        self.fill(i, 0.0)
        g, idx = (self.p.views[a] for a in args)
        shape = self.graph.node(i)["shape"]
        out = View(i, 0, c_strides(shape), shape)
        self._along_indices(out, idx, g, attrs["axis"], gather=False)

    def _along_indices(self, big: View, idx: View, small: View, axis: int, gather: bool) -> None:
        """``small[lead, j, trail] = big[lead, idx[j], trail]`` (gather), else ``big[lead,
        idx[j], trail] += small[lead, j, trail]``, looping over lead, the index's axes and trail
        in that order (the order numpy's add.at adds in). An index that is not an integer in
        [-n, n) reads nan (from element 0 of the axis, which exists) or adds nothing."""
        fn, n = self.fn, big.shape[axis]
        lead, trail, at = big.shape[:axis], big.shape[axis + 1 :], axis + len(idx.shape)
        dims = (*lead, *idx.shape, *trail)
        strides = (
            (*big.strides[:axis], *(0,) * len(idx.shape), *big.strides[axis + 1 :]),
            (*(0,) * axis, *idx.strides, *(0,) * len(trail)),
            small.strides,
        )
        ptrs = (f"%buf{big.base}", f"%buf{idx.base}", f"%buf{small.base}")

        def element(offs: list[str], shift: str, valid: str) -> None:
            b = fn.body(1)
            where = b.emit(f"add nsw i64 {offs[0]}, {shift}")
            if gather:
                picked = b.select(valid, _load(b, ptrs[0], where, 1), b.const(float("nan")))
                _store(b, ptrs[2], offs[2], picked, 1)
            else:
                total = b.binop("fadd", _load(b, ptrs[0], where, 1), _load(b, ptrs[2], offs[2], 1))
                _store(b, ptrs[0], where, total, 1)
            fn.flush(b)

        def gather_rows(offs: list[str]) -> None:
            # The innermost axis is the indices' last (no trail): 4 indices at a time, checked
            # on vectors, their elements loaded lane by lane and stored as one vector.
            d, size = len(dims) - 1, dims[-1]
            main = size - size % WIDTH
            for lanes, lo, hi in ((WIDTH, 0, main), (1, main, size)):
                if lo == hi:
                    continue
                with fn.loop(lo, hi, lanes) as j:
                    b = fn.body(lanes)
                    at_j = [_advance(b, o, j, s[d]) for o, s in zip(offs, strides)]
                    value = _load(b, ptrs[1], at_j[1], lanes, strides[1][d])
                    shifts, valid = _checked_index(b, value, n, big.strides[axis])
                    if lanes == 1:
                        picked = _load(b, ptrs[0], b.emit(f"add nsw i64 {at_j[0]}, {shifts}"), 1)
                    else:
                        picked = _gathered(b, ptrs[0], at_j[0], shifts)
                    picked = b.select(valid, picked, b.const(float("nan")))
                    _store(b, ptrs[2], at_j[2], picked, strides[2][d])
                    fn.flush(b)

        def nest(d: int, offs: list[str], shift: str | None, valid: str | None) -> None:
            if gather and not trail and idx.shape and d == len(dims) - 1:
                gather_rows(offs)
                return
            if d == at and shift is None:
                b = fn.body(1)
                value = _load(b, ptrs[1], offs[1], 1)
                shift, valid = _checked_index(b, value, n, big.strides[axis])
                fn.flush(b)
                if not gather:  # an invalid index adds nothing: its slice is skipped
                    k = fn.fresh()
                    fn.lines.append(f"  br i1 {valid}, label %add{k}, label %skip{k}")
                    fn.start(f"add{k}")
                    nest(d, offs, shift, valid)
                    fn.lines.append(f"  br label %skip{k}")
                    fn.start(f"skip{k}")
                    return
            if d == len(dims):
                element(offs, shift, valid)
                return
            with fn.loop(0, dims[d], 1) as j:
                b = fn.body(1)
                inner = [_advance(b, o, j, s[d]) for o, s in zip(offs, strides)]
                fn.flush(b)
                nest(d + 1, inner, shift, valid)

        nest(0, [str(big.offset), str(idx.offset), str(small.offset)], None, None)

    def write_window_sum(self, i, args, attrs) -> None:
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

    def write_matmul(self, i, args, attrs) -> None:
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

    def _batched_gemm(self, i, ins, out, views, sizes) -> bool:
        """An einsum of two operands that is a (batched) matrix product, as one dgemm per batch
        element: letters in both operands and the output batch, one letter only in the first
        and the output is the rows, one only in the second and the output the columns, one in
        both operands only the contraction. False where it is not one, or too small to repay
        the calls (then the loop nest writes it)."""
        if len(ins) != 2:
            return False
        (sa, sb), (va, vb) = ins, views
        batch = [c for c in out if c in sa and c in sb]
        rows = [c for c in sa if c in out and c not in sb]
        cols = [c for c in sb if c in out and c not in sa]
        inner = [c for c in sa if c in sb and c not in out]
        if len(rows) > 1 or len(cols) > 1 or len(inner) > 1:
            return False
        if len(batch) + len(rows) + len(cols) + len(inner) != len(sizes):
            return False  # a letter summed within one operand
        m, n, k = (sizes[g[0]] if g else 1 for g in (rows, cols, inner))
        if m * n * k < BLAS_MIN_FLOPS:
            return False
        shape = self.graph.node(i)["shape"]
        sc = dict(zip(out, c_strides(shape)))
        sa, sb = dict(zip(sa, va.strides)), dict(zip(sb, vb.strides))

        def stride(by: dict, group: list) -> int:
            return by[group[0]] if group else 0

        a = View(va.base, 0, (stride(sa, rows), stride(sa, inner)), (m, k))
        b = View(vb.base, 0, (stride(sb, inner), stride(sb, cols)), (k, n))
        c_rows, c_cols = stride(sc, rows), stride(sc, cols)
        swapped = False
        if (c_cols == 1 or n == 1) and c_rows >= n:
            ldc = max(c_rows, n, 1)
        elif (c_rows == 1 or m == 1) and c_cols >= m:  # C row-major is C^T = B^T A^T
            a, b, swapped = b.transpose((1, 0)), a.transpose((1, 0)), True
            m, n, ldc = n, m, max(c_cols, m, 1)
        else:
            return False
        ta, tb = _blas_layout(a), _blas_layout(b)
        if not (ta and tb):
            return False
        fn = self.fn

        def per_batch(d: int, offs: list[str]) -> None:
            if d == len(batch):
                oa, ob = (offs[1], offs[0]) if swapped else (offs[0], offs[1])
                self._gemm_call((a, ta, oa), (b, tb, ob), (i, offs[2], ldc), m, n, k)
                return
            with fn.loop(0, sizes[batch[d]], 1) as j:
                body = fn.body(1)
                inner_offs = [_advance(body, o, j, s[batch[d]]) for o, s in zip(offs, (sa, sb, sc))]
                fn.flush(body)
                per_batch(d + 1, inner_offs)

        per_batch(0, [str(va.offset), str(vb.offset), "0"])
        return True

    def _gemm_call(self, a, b, c, m, n, k) -> None:
        """``C = A @ B`` by the BLAS's dgemm, each matrix a (view, layout, offset) triple."""
        (va, (ta, lda), oa), (vb, (tb, ldb), ob), (ic, oc, ldc) = a, b, c
        body = self.fn.body(1)
        pa = body.emit(f"getelementptr inbounds double, ptr %buf{va.base}, i64 {oa}")
        pb = body.emit(f"getelementptr inbounds double, ptr %buf{vb.base}, i64 {ob}")
        pc = body.emit(f"getelementptr inbounds double, ptr %buf{ic}, i64 {oc}")
        body.lines.append(
            f"  call void @{self.blas}(i32 101, i32 {ta}, i32 {tb}, i64 {m}, i64 {n}, i64 {k}, "
            f"double 1.0, ptr {pa}, i64 {lda}, ptr {pb}, i64 {ldb}, double 0.0, ptr {pc}, "
            f"i64 {ldc})"
        )
        self.fn.flush(body)
        self.fn.declares.add(
            f"declare void @{self.blas}(i32, i32, i32, i64, i64, i64, double, ptr, i64, ptr, "
            "i64, double, ptr, i64)"
        )

    def _dgemm(self, i, a, b, m, n, k) -> None:
        """``buf_i = A @ B`` (C order, m x n) for matmul: its views at their own offsets."""
        (va, la), (vb, lb) = a, b
        self._gemm_call((va, la, va.offset), (vb, lb, vb.offset), (i, 0, n), m, n, k)

    # --- scans ------------------------------------------------------------------------------

    def write_scan(self, i, args, attrs) -> None:
        """The loop of a scan: its body's kernel called once per step on pointers, the carries
        copied from step to step, each step's outputs written into the stacks read."""
        body, n, reverse = attrs["body"], attrs["length"], attrs["reverse"]
        info, box_at = self.loops[i]
        holders = (*body.carry, *body.xs, *body.captures)
        shapes = [body.shape(h) for h in holders]
        nc, nx = len(body.carry), len(body.xs)
        at = [self.p.loop_scratch[i]]

        def take(size: int) -> str:
            ptr = self._scratch_ptr(at[0])
            at[0] += max(size, 1)
            return ptr

        cur = [take(_size(s)) for s in shapes[:nc]]
        nxt = [take(_size(s)) for s in shapes[:nc]]
        seqs = [self._c_order(a, (n, *s), take) for a, s in zip(args[nc:], shapes[nc : nc + nx])]
        caps = [self._c_order(a, s, take) for a, s in zip(args[nc + nx :], shapes[nc + nx :])]
        arena = take(info.scratch)
        for k, shape in enumerate(shapes[:nc]):
            self.copy(self.access(args[k], shape), Access(cur[k], 0, c_strides(shape)), shape)
        slots = self._body_slots(i, info, box_at, caps, arena)
        with self.fn.loop(0, n, 1) as t:
            step = t if not reverse else self._emit(f"sub i64 {n - 1}, {t}")
            ptrs = cur + [self._emit(f"getelementptr inbounds double, ptr {x}, i64 "
                                     f"{self._emit(f'mul i64 {step}, {_size(s)}')}")
                          for x, s in zip(seqs, shapes[nc : nc + nx])]  # fmt: skip
            dests = self._step_dests(i, body, info, nxt, step)
            for k, ptr in enumerate(ptrs):
                self._store_slot(slots, k, ptr)
            for k, where in enumerate(dests):
                self._store_slot(slots, len(info.inputs) + k, where[0][0])
            self.fn.lines.append(f"  call void {slots[1]}(ptr {slots[0]})")
            for first, *more in dests:  # the same body node wanted in several places
                for ptr, shape in more:
                    self.copy(
                        Access(first[0], 0, c_strides(shape)),
                        Access(ptr, 0, c_strides(shape)),
                        shape,
                    )
            for k, shape in enumerate(shapes[:nc]):
                self.copy(
                    Access(nxt[k], 0, c_strides(shape)), Access(cur[k], 0, c_strides(shape)), shape
                )
        for j, (kind, k) in self.p.parts[i]:
            if kind == "final":
                shape = shapes[k]
                self.copy(Access(cur[k], 0, c_strides(shape)), self.dest(j), shape)

    def _emit(self, instruction: str) -> str:
        name = f"%s{self.fn.fresh()}"
        self.fn.lines.append(f"  {name} = {instruction}")
        return name

    def _scratch_ptr(self, offset: int) -> str:
        return self._emit(f"getelementptr inbounds double, ptr %scratch, i64 {offset}")

    def _c_order(self, a: int, shape, take) -> str:
        """Node ``a`` as C-order memory of ``shape``: where it lies, or a copy in scratch."""
        v = self.p.views[a]
        if v.shape == tuple(shape) and v.contiguous():
            return self._emit(f"getelementptr inbounds double, ptr %buf{v.base}, i64 {v.offset}")
        ptr = take(_size(shape))
        self.copy(self.access(a, shape), Access(ptr, 0, c_strides(shape)), shape)
        return ptr

    def _body_slots(self, i, info, box_at, caps, arena) -> tuple[str, str]:
        """The body kernel's argument array, its fixed slots filled (captures, arena, extras),
        and the kernel's address (read from the box the caller passes)."""
        n_slots = len(info.inputs) + len(info.outputs) + 1 + info.extras
        slots = self._emit(f"alloca [{n_slots} x ptr], align 8")
        n_var = len(info.inputs) - len(caps)
        for k, ptr in enumerate(caps):
            self._store_slot((slots,), n_var + k, ptr)
        fixed = len(info.inputs) + len(info.outputs)
        self._store_slot((slots,), fixed, arena)
        for e in range(info.extras):
            src = self._emit(f"getelementptr inbounds ptr, ptr %bufs, i64 {box_at + 1 + e}")
            self._store_slot((slots,), fixed + 1 + e, self._emit(f"load ptr, ptr {src}, align 8"))
        box = self._emit(f"getelementptr inbounds ptr, ptr %bufs, i64 {box_at}")
        data = self._emit(f"load ptr, ptr {box}, align 8")
        return slots, self._emit(f"load ptr, ptr {data}, align 8")

    def _store_slot(self, slots, k: int, ptr: str) -> None:
        slot = self._emit(f"getelementptr inbounds ptr, ptr {slots[0]}, i64 {k}")
        self.fn.lines.append(f"  store ptr {ptr}, ptr {slot}, align 8")

    def _step_dests(self, i, body, info, nxt, step) -> list[list[tuple[str, tuple]]]:
        """For each body output, the places this step's value goes: ``(pointer, shape)``s,
        the first written by the kernel, the others copied from it."""
        stacks = {k: j for j, (kind, k) in self.p.parts[i] if kind == "stack"}
        dests = []
        for u in info.outputs:
            shape = body.shape(u)
            where = []
            if u in stacks:
                off = self._emit(f"mul i64 {step}, {_size(shape)}")
                ptr = f"%buf{stacks[u]}"
                where.append(
                    (self._emit(f"getelementptr inbounds double, ptr {ptr}, i64 {off}"), shape)
                )
            where += [(nxt[k], shape) for k, o in enumerate(body.carry_out) if o == u]
            dests.append(where)
        return dests


def _size(shape) -> int:
    return max(int(np.prod(shape)), 1)


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
                 blas: str | None, bodies=None, points=False) -> tuple[str, Plan]:  # fmt: skip
    """The module text of ``sg_tensor`` and the plan (scratch size, copies) it was written from.

    ``bodies`` maps each scan of the program to its body's compiled ``LoopBody``; the caller
    passes, after the constant arrays, for each scan in ``sorted`` id order a box holding the
    body kernel's address and then that kernel's own extra pointers. With ``points``, the module
    also holds ``sg_points`` (a scalar graph over a batch of points, see ``points_entry``).
    """
    bodies = bodies or {}
    p = plan(program, inputs, outputs, bodies)
    fn = Fn(vector_ok)
    n_in, n_out = len(inputs), len(outputs)
    defs = _buffer_definitions(program, p, fn, n_in, n_out)
    loops, at = {}, n_in + n_out + 1 + len(p.passed)
    for i in sorted(bodies):
        loops[i] = (bodies[i], at)
        at += 1 + bodies[i].extras
    w = Writer(fn, program, p, blas, loops)
    parts = _write_parts(fn, w, p, program, n_in)
    n_bufs = at
    fn.globals.append(_plan_facts(program, p))
    text = "\n".join([
        *sorted(fn.declares), *fn.globals, "", *_part_functions(parts, defs),
        fast_tensor_entry(n_bufs), *([points_entry(n_in, n_out, n_bufs)] if points else []),
        ATTRIBUTES,
    ])  # fmt: skip
    return text, p


def _buffer_definitions(program: Program, p: Plan, fn: Fn, n_in: int, n_out: int) -> dict:
    """``%buf{i}`` -> the lines defining it from ``%bufs`` (or ``%scratch``, or a global), in
    buffer order; a function of the kernel starts with those of the buffers it uses."""
    defs: dict[str, list[str]] = {}
    for i, (where, k) in sorted(p.buffers.items()):
        value = p.scalars.get(i) if i in p.scalars else program.graph.attr(i, "value")
        if where == "const" and np.size(value) > INLINE_CONST_SIZE:
            # Passed by pointer: a 300 x 300 array as IR text was 2.4 MB and 0.3 s to compile.
            at = n_in + n_out + 1 + len(p.passed)
            p.passed.append(i)
            defs[f"%buf{i}"] = [f"  %bp{i} = getelementptr inbounds ptr, ptr %bufs, i64 {at}",
                                f"  %buf{i} = load ptr, ptr %bp{i}, align 8"]  # fmt: skip
        elif where == "const":
            fn.globals.append(_global(i, value))
            defs[f"%buf{i}"] = [f"  %buf{i} = getelementptr inbounds double, ptr @buf{i}, i64 0"]
        elif where == "scratch":
            defs[f"%buf{i}"] = [f"  %buf{i} = getelementptr inbounds double, ptr %scratch, i64 {k}"]
        else:
            at = k if where == "in" else n_in + k
            defs[f"%buf{i}"] = [f"  %bp{i} = getelementptr inbounds ptr, ptr %bufs, i64 {at}",
                                f"  %buf{i} = load ptr, ptr %bp{i}, align 8"]  # fmt: skip
    scratch = [f"  %sp = getelementptr inbounds ptr, ptr %bufs, i64 {n_in + n_out}",
               "  %scratch = load ptr, ptr %sp, align 8"]  # fmt: skip
    defs = {"%scratch": scratch, **defs}
    defs["order"] = {name: k for k, name in enumerate(defs)}
    return defs


def _write_parts(fn: Fn, w: Writer, p: Plan, program: Program, n_in: int) -> list[list[str]]:
    """The plan's steps and copies written as the bodies of functions of about ``PART_LINES``
    lines each (a step is never cut: each starts a fresh function once one is full)."""
    parts: list[list[str]] = []

    def step_boundary() -> None:
        if not parts or len(fn.lines) >= PART_LINES:
            fn.lines, fn.block = [], "entry"
            parts.append(fn.lines)

    for step in p.steps:
        step_boundary()
        if step[1] == 0:
            w.barrier(step[2])
        else:
            w.loop(step[2])
    for o, k in p.copies:
        step_boundary()
        _copy_out(w, fn, program, p, o, k, n_in)
    return parts or [[]]


def _part_functions(parts: list[list[str]], defs: dict) -> list[str]:
    """``sg_tensor``, and when the work took more than one part, ``sg_tensor{k}`` for each part
    called one after another. Each starts with the definitions of the buffers it names."""
    if len(parts) == 1:
        return [_function("define void @sg_tensor(ptr noalias nocapture readonly %bufs) #1 {",
                          parts[0], defs)]  # fmt: skip
    texts = [_function(f"define internal void @sg_tensor{k}(ptr noalias nocapture readonly %bufs) "
                       "#2 {", lines, defs) for k, lines in enumerate(parts)]  # fmt: skip
    calls = [f"  call void @sg_tensor{k}(ptr %bufs)" for k in range(len(parts))]
    texts.append("\n".join(["define void @sg_tensor(ptr noalias nocapture readonly %bufs) #1 {",
                            "entry:", *calls, "  ret void", "}"]))  # fmt: skip
    return texts


def _function(head: str, lines: list[str], defs: dict) -> str:
    # The definitions of the buffers named, in the order of ``defs`` (the scratch pointer first):
    # sorted from the names used, not filtered from every buffer (one pass over all buffers per
    # function was quadratic).
    place = defs["order"]
    used = set(BUFFER_RE.findall("\n".join(lines))) | {"%scratch"}
    header = [line for name in sorted(used, key=place.__getitem__) for line in defs[name]]
    return "\n".join([head, "entry:", *header, *lines, "  ret void", "}"])


def _plan_facts(program: Program, p: Plan) -> str:
    """``@sg_plan_facts``: what the caller of ``sg_tensor`` must know of the plan, in the object
    code itself, so a kernel loaded from the cache needs no plan: the scratch size in doubles,
    the number of constant arrays passed, then each one's place in ``program.steps``."""
    place = {step[0]: k for k, step in enumerate(program.steps)}
    facts = [p.scratch, len(p.passed), *(place[i] for i in p.passed)]
    items = ", ".join(f"i64 {v}" for v in facts)
    return f"@{PLAN_FACTS} = constant [{len(facts)} x i64] [{items}], align 8"


def points_entry(n_in: int, n_out: int, n_bufs: int) -> str:
    """``sg_points(bufs, steps, n)``: ``sg_tensor`` at points 0..n-1 of a batch, for a graph of
    scalar inputs and outputs that holds tensors inside (a scan's stacks). Input k of point p
    is ``bufs[k][p * steps[k]]`` (a step of 0: one value for all), output k ``bufs[n_in+k][p]``;
    the arena and everything after it are shared by the points, which run one after another."""
    lines = [
        "define void @sg_points(ptr noalias nocapture readonly %bufs, ptr noalias nocapture "
        "readonly %steps, i64 %n) #1 {",
        "entry:",
        f"  %local = alloca [{n_bufs} x ptr], align 8",
    ]
    for k in range(n_in + n_out, n_bufs):  # the same for every point
        lines += [f"  %fp{k} = getelementptr inbounds ptr, ptr %bufs, i64 {k}",
                  f"  %f{k} = load ptr, ptr %fp{k}, align 8",
                  f"  %fl{k} = getelementptr inbounds ptr, ptr %local, i64 {k}",
                  f"  store ptr %f{k}, ptr %fl{k}, align 8"]  # fmt: skip
    lines += ["  br label %head", "head:", "  %p = phi i64 [ 0, %entry ], [ %next, %body ]",
              "  %more = icmp slt i64 %p, %n", "  br i1 %more, label %body, label %done",
              "body:"]  # fmt: skip
    for k in range(n_in + n_out):
        if k < n_in:
            lines += [f"  %sp{k} = getelementptr inbounds i64, ptr %steps, i64 {k}",
                      f"  %st{k} = load i64, ptr %sp{k}, align 8",
                      f"  %o{k} = mul i64 %p, %st{k}"]  # fmt: skip
        offset = f"%o{k}" if k < n_in else "%p"
        lines += [f"  %bp{k} = getelementptr inbounds ptr, ptr %bufs, i64 {k}",
                  f"  %b{k} = load ptr, ptr %bp{k}, align 8",
                  f"  %e{k} = getelementptr inbounds double, ptr %b{k}, i64 {offset}",
                  f"  %l{k} = getelementptr inbounds ptr, ptr %local, i64 {k}",
                  f"  store ptr %e{k}, ptr %l{k}, align 8"]  # fmt: skip
    lines += ["  call void @sg_tensor(ptr %local)", "  %next = add nsw i64 %p, 1",
              "  br label %head", "done:", "  ret void", "}"]  # fmt: skip
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


__all__ = ["lower_tensor"]
