"""Stage 4a: graph -> LLVM IR text, two kernels per module.

ABI (all doubles are IEEE float64; every pointer is ``noalias``):

- ``void sg_point(ptr in, ptr out)``: one point. ``in[i]`` is input i (in ``fn.inputs`` order),
  ``out[k]`` receives flat output k.
- ``void sg_batch(ptr ins, ptr strides, ptr outs, i64 n)``: n points, n a multiple of 4 (the
  caller runs a remainder through a 4-point scratch batch, so every point of a batch goes
  through the same code and results never depend on the batch length). ``ins[i]`` points at
  input i's values and ``strides[i]`` is 1 (an array of n doubles) or 0 (a loop-invariant
  scalar, which the caller stores four times so the 4-lane load needs no special case);
  ``outs[k]`` points at n doubles. The loop runs on ``<4 x double>`` values that this module
  emits itself (no auto-vectorizer: compile time stays small), transcendental functions calling
  glibc's libmvec 4-lane variants where the process has them.

Each node is emitted once per loop body, in id order; addresses are GEPs only. Constants are
inlined as exact hex literals. No fast-math flags: results are IEEE like numpy's.

The text is written directly (not through ``llvmlite.ir``): for 5,000 ops that is ~10x faster.
This module does not import llvmlite; ``jit.py`` compiles what it produces.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from symgrad.errors import LoweringError
from symgrad.llvm.entry import batch_run, fast_batch_entry, fast_entry, vmap_entry
from symgrad.ops import OPS
from symgrad.program import Program

WIDTH = 4
VEC = f"<{WIDTH} x double>"
MASK = f"<{WIDTH} x i1>"


def hex_double(v: float) -> str:
    """LLVM's exact spelling of a double: its 64 bits in hex."""
    return f"0x{struct.unpack('<Q', struct.pack('<d', v))[0]:016X}"


@dataclass
class Body:
    """The instructions of one loop body, in scalar (lanes=1) or vector (lanes=4) form."""

    prefix: str  # value-name prefix, unique per body within a function
    lanes: int
    vector_ok: Callable[[str], bool]  # is this libmvec symbol available?
    lines: list[str] = field(default_factory=list)
    declares: set[str] = field(default_factory=set)
    counter: int = 0

    @property
    def ty(self) -> str:
        return VEC if self.lanes > 1 else "double"

    @property
    def mask_ty(self) -> str:
        return MASK if self.lanes > 1 else "i1"

    def tmp(self) -> str:
        self.counter += 1
        return f"%{self.prefix}t{self.counter}"

    def const(self, v: float) -> str:
        lit = hex_double(v)
        if self.lanes == 1:
            return lit
        return "<" + ", ".join([f"double {lit}"] * self.lanes) + ">"

    def emit(self, text: str) -> str:
        name = self.tmp()
        self.lines.append(f"  {name} = {text}")
        return name

    def intrinsic(self, name: str, *args: str) -> str:
        suffix = f"v{self.lanes}f64" if self.lanes > 1 else "f64"
        params = ", ".join([self.ty] * len(args))
        self.declares.add(f"declare {self.ty} @{name}.{suffix}({params})")
        return self.emit(f"call {self.ty} @{name}.{suffix}({self._args(args)})")

    def libm(self, name: str, vector: str | None, *args: str) -> str:
        if self.lanes == 1:
            self.declares.add(f"declare double @{name}({', '.join(['double'] * len(args))}) #0")
            return self.emit(f"call double @{name}({self._args(args)}) #0")
        if vector and self.vector_ok(vector):
            params = ", ".join([VEC] * len(args))
            self.declares.add(f"declare {VEC} @{vector}({params}) #0")
            return self.emit(f"call {VEC} @{vector}({self._args(args)}) #0")
        return self._scalarized(name, args)

    def _scalarized(self, name: str, args: tuple[str, ...]) -> str:
        # No 4-lane variant in this process: four scalar calls, lane by lane.
        self.declares.add(f"declare double @{name}({', '.join(['double'] * len(args))}) #0")
        acc = "poison"
        for lane in range(self.lanes):
            lane_args = [self.emit(f"extractelement {VEC} {a}, i32 {lane}") for a in args]
            r = self.emit(f"call double @{name}({', '.join('double ' + a for a in lane_args)}) #0")
            acc = self.emit(f"insertelement {VEC} {acc}, double {r}, i32 {lane}")
        return acc

    def fcmp(self, pred: str, a: str, b: str) -> str:
        return self.emit(f"fcmp {pred} {self.ty} {a}, {b}")

    def select(self, mask: str, a: str, b: str) -> str:
        return self.emit(f"select {self.mask_ty} {mask}, {self.ty} {a}, {self.ty} {b}")

    def binop(self, instr: str, a: str, b: str) -> str:
        return self.emit(f"{instr} {self.ty} {a}, {b}")

    def either(self, mask_a: str, mask_b: str) -> str:
        return self.emit(f"or {self.mask_ty} {mask_a}, {mask_b}")

    def op(self, name: str, *args: str) -> str:
        """Op ``name`` of the registry over ``args`` (custom emitters build on other ops)."""
        return emit_node(self, name, list(args))

    def _args(self, args) -> str:
        return ", ".join(f"{self.ty} {a}" for a in args)


def emit_node(b: Body, op: str, args: list[str]) -> str:
    """Emit one op over operand values ``args``; returns the result value."""
    low = OPS[op].llvm
    if low is None:
        raise LoweringError(f"op {op!r} has no LLVM lowering")
    if low.kind == "instr":
        if low.name == "fneg":
            return b.emit(f"fneg {b.ty} {args[0]}")
        return b.binop(low.name, *args)
    if low.kind == "intrinsic":
        return b.intrinsic(low.name, *args)
    if low.kind == "libm":
        return b.libm(low.name, low.vector, *args)
    if low.kind == "fcmp":
        mask = b.fcmp(low.name, *args)
        return b.emit(f"uitofp {b.mask_ty} {mask} to {b.ty}")
    if low.kind == "custom" and low.emit is not None:
        return low.emit(b, *args)
    raise LoweringError(f"op {op!r}: unknown lowering {low}")


def emit_body(b: Body, program: Program, slot: dict[str, int], load) -> dict[int, str]:
    """Values of every step of ``program``; ``load(b, slot[name])`` gives an input's value."""
    values: dict[int, str] = {}
    consts: dict[int, float] = {}
    for i, op, args, attrs in program.steps:
        if op == "input":
            values[i] = load(b, slot[attrs["name"]])
        elif op == "const":
            consts[i] = attrs["value"]
            values[i] = b.const(attrs["value"])
        else:
            values[i] = emit_step(b, op, args, [values[a] for a in args], consts)
    return values


def emit_step(b: Body, op: str, args, operands: list[str], consts: dict[int, float]) -> str:
    """One step of a program: its op over ``operands``, or the op's exact form where its last
    operand is a constant it has one for (``x**2`` is one ``fmul``: ``OpDef.exact``)."""
    exact = OPS[op].exact
    if exact and consts.get(args[-1]) in exact:
        build = exact[consts[args[-1]]]
        return build(operands[0], b.const, lambda name, *xs: emit_node(b, name, list(xs)))
    return emit_node(b, op, operands)


ATTRIBUTES = """
attributes #0 = { nounwind willreturn memory(none) }
attributes #1 = { nounwind }
attributes #2 = { nounwind noinline }
"""
# Computed steps per function of a big straight-line kernel. LLVM's passes and code generation
# grow faster than the function they compile (one function of a value + gradient: 1.4 s of
# codegen at 17k nodes, 3.7 s at 34k, 15.4 s at 68k); a kernel is cut into functions of at
# most this many steps (and of this many stored outputs), called one after another, the values
# a later one reads passed through a stack array. Smaller kernels are one function. Measured on
# a 100k-node value + gradient, level-0 codegen of the batch kernel: 4.5 s with functions of
# 2,000 steps, 2.8 s with 1,000, 2.7 s with 500, 3.1 s with 350.
CHUNK = 500


def lower(
    program: Program, inputs: tuple[str, ...], vector_ok: Callable[[str], bool], gather=False
) -> str:
    """The module text: ``sg_point`` and ``sg_batch`` for ``program``, arguments ``inputs``.
    With ``gather``, ``sg_batch`` reads input i's 4 lanes at ``strides[i]`` apart (any stride,
    in doubles: the columns of a batched tensor argument, read in place) instead of as one
    contiguous vector; given as the shapes of the arguments the inputs are the elements of (a
    batched call's element function), the module also holds their entry, ``sg_vmap_fast``."""
    slot = {name: k for k, name in enumerate(inputs)}
    split = Split.of(program)
    if split is None:
        point = _point_kernel(program, slot, vector_ok)
        batch = _batch_kernel(program, slot, vector_ok, bool(gather))
    else:
        batch = _split_batch(split, slot, len(program.outputs), vector_ok, bool(gather))
        point = (_point_through_batch(len(slot), len(program.outputs)), set())
    declares = sorted(point[1] | batch[1])
    n_out = len(program.outputs)
    fast = [fast_entry(len(slot)), batch_run(max(len(slot), 1), max(n_out, 1))]
    fast.append(fast_batch_entry(len(slot), n_out, bool(gather)))
    if isinstance(gather, tuple):
        fast.append(vmap_entry(gather, n_out))
    return "\n".join([*declares, "", point[0], batch[0], *fast, ATTRIBUTES])


def _point_kernel(program: Program, slot, vector_ok) -> tuple[str, set[str]]:
    b = Body("p", 1, vector_ok)

    def load(body: Body, k: int) -> str:
        ptr = body.emit(f"getelementptr inbounds double, ptr %in, i64 {k}")
        return body.emit(f"load double, ptr {ptr}, align 8")

    _emit_stores(b, program, emit_body(b, program, slot, load), lambda k: f"%out, i64 {k}")
    text = "\n".join(
        [
            "define void @sg_point(ptr noalias nocapture readonly %in, "
            "ptr noalias nocapture %out) #1 {",
            "entry:",
            *b.lines,
            "  ret void",
            "}",
        ]
    )
    return text, b.declares


def _batch_kernel(program: Program, slot, vector_ok, gather: bool) -> tuple[str, set[str]]:
    n_in, n_out = len(slot), len(program.outputs)
    entry = Body("e", 1, vector_ok)
    for k in range(n_in):
        p = entry.emit(f"getelementptr inbounds ptr, ptr %ins, i64 {k}")
        entry.lines.append(f"  %in{k} = load ptr, ptr {p}, align 8")
        s = entry.emit(f"getelementptr inbounds i64, ptr %strides, i64 {k}")
        entry.lines.append(f"  %stride{k} = load i64, ptr {s}, align 8")
    for k in range(n_out):
        p = entry.emit(f"getelementptr inbounds ptr, ptr %outs, i64 {k}")
        entry.lines.append(f"  %out{k} = load ptr, ptr {p}, align 8")
    vec = _loop_body(Body("v", WIDTH, vector_ok), program, slot, "%j", gather)
    text = "\n".join(
        [
            "define void @sg_batch(ptr noalias nocapture readonly %ins, "
            "ptr noalias nocapture readonly %strides, ptr noalias nocapture readonly %outs, "
            "i64 %n) #1 {",
            "entry:",
            *entry.lines,
            "  br label %vhead",
            "vhead:",
            "  %j = phi i64 [ 0, %entry ], [ %jnext, %vbody ]",
            "  %vmore = icmp ult i64 %j, %n",
            "  br i1 %vmore, label %vbody, label %exit",
            "vbody:",
            *vec.lines,
            f"  %jnext = add nuw i64 %j, {WIDTH}",
            "  br label %vhead",
            "exit:",
            "  ret void",
            "}",
        ]
    )
    return text, vec.declares


def _loop_body(b: Body, program: Program, slot, index: str, gather: bool = False) -> Body:
    def load(body: Body, k: int) -> str:
        if gather and body.lanes > 1:
            return _gathered(body, f"%in{k}", index, f"%stride{k}")
        off = body.emit(f"mul i64 {index}, %stride{k}")
        ptr = body.emit(f"getelementptr inbounds double, ptr %in{k}, i64 {off}")
        return body.emit(f"load {body.ty}, ptr {ptr}, align 8")

    _emit_stores(b, program, emit_body(b, program, slot, load), lambda k: f"%out{k}, i64 {index}")
    return b


def _gathered(b: Body, base: str, index: str, stride: str) -> str:
    """The 4 doubles at points ``index`` .. ``index + 3`` of a column ``stride`` doubles apart."""
    acc = "poison"
    for lane in range(b.lanes):
        at = b.emit(f"add i64 {index}, {lane}") if lane else index
        ptr = b.emit(
            f"getelementptr inbounds double, ptr {base}, i64 {b.emit(f'mul i64 {at}, {stride}')}"
        )
        x = b.emit(f"load double, ptr {ptr}, align 8")
        acc = b.emit(f"insertelement {VEC} {acc}, double {x}, i32 {lane}")
    return acc


def _emit_stores(b: Body, program: Program, values: dict[int, str], address) -> None:
    """Store output k's value at ``getelementptr double, address(k)``."""
    for k, o in enumerate(program.outputs):
        ptr = b.emit(f"getelementptr inbounds double, ptr {address(k)}")
        b.lines.append(f"  store {b.ty} {values[o]}, ptr {ptr}, align 8")


# --- big kernels, cut into functions ------------------------------------------------------------


@dataclass
class Split:
    """A big program cut into functions of bounded size: chunks of ``CHUNK`` computed steps,
    each storing the outputs it computes, then functions storing the outputs that are inputs or
    constants, ``CHUNK`` a function. ``slots`` numbers the values a later chunk reads: they are
    kept in a stack array that the kernel passes to every function."""

    chunks: list[list[tuple]]
    leaves: dict[int, tuple]  # input and constant steps by id: emitted where a chunk uses them
    slots: dict[int, int]
    out_at: dict[int, list[int]]  # a computed output's id -> its places among the outputs
    leaf_outputs: list[list[tuple[int, int]]]  # (place, id) of outputs that are leaves
    consts: dict[int, float] = field(default_factory=dict)  # constant id -> its value

    @classmethod
    def of(cls, program: Program) -> Split | None:
        """The cut of ``program``, or None when it is small enough for one function."""
        computed = [s for s in program.steps if s[1] not in ("input", "const")]
        if len(computed) <= CHUNK and len(program.outputs) <= CHUNK:
            return None
        chunks = [computed[k : k + CHUNK] for k in range(0, len(computed), CHUNK)]
        defined = {s[0]: k for k, chunk in enumerate(chunks) for s in chunk}
        slots: dict[int, int] = {}
        for k, chunk in enumerate(chunks):
            for step in chunk:
                for a in step[2]:
                    if a in defined and defined[a] < k:
                        slots.setdefault(a, len(slots))
        out_at: dict[int, list[int]] = {}
        leaf_out = []
        for place, o in enumerate(program.outputs):
            if o in defined:
                out_at.setdefault(o, []).append(place)
            else:
                leaf_out.append((place, o))
        leaf_chunks = [leaf_out[k : k + CHUNK] for k in range(0, len(leaf_out), CHUNK)]
        leaves = {s[0]: s for s in program.steps if s[1] in ("input", "const")}
        split = cls(chunks, leaves, slots, out_at, leaf_chunks)
        # Once for all chunks (once per chunk was quadratic: every constant, every chunk).
        split.consts = {i: s[3]["value"] for i, s in leaves.items() if s[1] == "const"}
        return split

    @property
    def n_functions(self) -> int:
        return len(self.chunks) + len(self.leaf_outputs)

    def emit(self, b: Body, k: int, load_input, slot_ptr, store_out) -> None:
        """Function ``k``'s work into ``b``: a chunk of steps, or past the chunks, a share of
        the leaf outputs. ``load_input(b, name)``, ``slot_ptr(b, slot)`` and
        ``store_out(b, place, value)`` write the kernel kind's own addressing."""
        if k >= len(self.chunks):
            for place, o in self.leaf_outputs[k - len(self.chunks)]:
                op, attrs = self.leaves[o][1], self.leaves[o][3]
                value = b.const(attrs["value"]) if op == "const" else load_input(b, attrs["name"])
                store_out(b, place, value)
            return
        values: dict[int, str] = {}
        consts = self.consts

        def value(a: int) -> str:
            if a not in values:
                if a in consts:
                    values[a] = b.const(consts[a])
                elif a in self.leaves:
                    values[a] = load_input(b, self.leaves[a][3]["name"])
                else:  # made by an earlier chunk
                    values[a] = b.emit(f"load {b.ty}, ptr {slot_ptr(b, self.slots[a])}, align 8")
            return values[a]

        for i, op, args, _ in self.chunks[k]:
            values[i] = emit_step(b, op, args, [value(a) for a in args], consts)
            if i in self.slots:
                ptr = slot_ptr(b, self.slots[i])
                b.lines.append(f"  store {b.ty} {values[i]}, ptr {ptr}, align 8")
            for place in self.out_at.get(i, ()):
                store_out(b, place, values[i])


def _split_batch(split: Split, slot, n_out: int, vector_ok, gather: bool) -> tuple[str, set[str]]:
    """``sg_batch``: for each group of 4 points, its loop gathers the inputs into a scratch of
    vectors, calls ``sg_batch{k}(inv, tmp, outv)`` for each function of the cut, which reads
    ``inv`` and writes ``outv``, and scatters ``outv`` to the outputs. An input read in a
    function is then two instructions, not seven (its pointer, stride and offset): a 100k-node
    value + gradient's module is ~35% fewer lines to parse and generate code for."""
    n_in, n_slots = max(len(slot), 1), max(len(split.slots), 1)

    def load_input(body: Body, name: str) -> str:
        ptr = body.emit(f"getelementptr inbounds {VEC}, ptr %inv, i64 {slot[name]}")
        return body.emit(f"load {VEC}, ptr {ptr}, align 8")

    def slot_ptr(body: Body, k: int) -> str:
        return body.emit(f"getelementptr inbounds {VEC}, ptr %tmp, i64 {k}")

    def store_out(body: Body, place: int, value: str) -> None:
        ptr = body.emit(f"getelementptr inbounds {VEC}, ptr %outv, i64 {place}")
        body.lines.append(f"  store {VEC} {value}, ptr {ptr}, align 8")

    params = ("ptr noalias nocapture readonly %inv, ptr noalias nocapture %tmp, "
              "ptr noalias nocapture %outv")  # fmt: skip
    texts, declares = _split_functions(split, "sg_batch", WIDTH, params, vector_ok,
                                       (load_input, slot_ptr, store_out))  # fmt: skip
    calls = [f"  call void @sg_batch{k}(ptr %inv, ptr %scr, ptr %outv)"
             for k in range(split.n_functions)]  # fmt: skip
    texts.append(_batch_driver(n_in, n_slots, max(n_out, 1), calls, gather))
    return "\n".join(texts), declares | {MALLOC, FREE}


def _batch_driver(n_in: int, n_slots: int, n_out: int, calls: list[str], gather: bool) -> str:
    """``sg_batch`` of a cut kernel around ``calls``. Its scratch (the values passed between
    functions, then the gathered inputs, then the outputs, each a vector) is the heap's: the
    stack's size is not ours to spend on it. If that fails every output is NaN."""
    size = WIDTH * 8 * (n_slots + n_in + n_out)
    return "\n".join([
        "define void @sg_batch(ptr noalias nocapture readonly %ins, "
        "ptr noalias nocapture readonly %strides, ptr noalias nocapture readonly %outs, "
        "i64 %n) #1 {",
        "entry:", f"  %scr = call noalias ptr @malloc(i64 {size})",
        "  %ok = icmp ne ptr %scr, null", "  br i1 %ok, label %vhead, label %nan",
        "vhead:", "  %j = phi i64 [ 0, %entry ], [ %jnext, %vnext ]",
        "  %vmore = icmp ult i64 %j, %n", "  br i1 %vmore, label %ghead, label %exit",
        "ghead:", "  %g = phi i64 [ 0, %vhead ], [ %gnext, %gbody ]",
        f"  %gmore = icmp ult i64 %g, {n_in}", "  br i1 %gmore, label %gbody, label %run",
        "gbody:", "  %g.p = getelementptr inbounds ptr, ptr %ins, i64 %g",
        "  %g.b = load ptr, ptr %g.p, align 8",
        "  %g.s = getelementptr inbounds i64, ptr %strides, i64 %g",
        "  %g.st = load i64, ptr %g.s, align 8", *_driver_load(gather),
        f"  %g.k = add nuw i64 %g, {n_slots}",
        f"  %g.d = getelementptr inbounds {VEC}, ptr %scr, i64 %g.k",
        f"  store {VEC} %g.v, ptr %g.d, align 8", "  %gnext = add nuw i64 %g, 1",
        "  br label %ghead",
        "run:", f"  %inv = getelementptr inbounds {VEC}, ptr %scr, i64 {n_slots}",
        f"  %outv = getelementptr inbounds {VEC}, ptr %scr, i64 {n_slots + n_in}",
        *calls, "  br label %shead",
        "shead:", "  %s = phi i64 [ 0, %run ], [ %snext, %sbody ]",
        f"  %smore = icmp ult i64 %s, {n_out}", "  br i1 %smore, label %sbody, label %vnext",
        "sbody:", "  %s.p = getelementptr inbounds ptr, ptr %outs, i64 %s",
        "  %s.b = load ptr, ptr %s.p, align 8",
        f"  %s.src = getelementptr inbounds {VEC}, ptr %outv, i64 %s",
        f"  %s.v = load {VEC}, ptr %s.src, align 8",
        "  %s.a = getelementptr inbounds double, ptr %s.b, i64 %j",
        f"  store {VEC} %s.v, ptr %s.a, align 8", "  %snext = add nuw i64 %s, 1",
        "  br label %shead",
        "vnext:", f"  %jnext = add nuw i64 %j, {WIDTH}", "  br label %vhead",
        "exit:", "  call void @free(ptr %scr)", "  ret void",
        "nan:", "  br label %nhead",
        "nhead:", "  %nk = phi i64 [ 0, %nan ], [ %nknext, %nlatch ]",
        f"  %nkmore = icmp ult i64 %nk, {n_out}", "  br i1 %nkmore, label %nrow, label %nret",
        "nrow:", "  %n.p = getelementptr inbounds ptr, ptr %outs, i64 %nk",
        "  %n.b = load ptr, ptr %n.p, align 8", "  br label %nphead",
        "nphead:", "  %np = phi i64 [ 0, %nrow ], [ %npnext, %npbody ]",
        "  %npmore = icmp ult i64 %np, %n", "  br i1 %npmore, label %npbody, label %nlatch",
        "npbody:", "  %n.a = getelementptr inbounds double, ptr %n.b, i64 %np",
        "  store double 0x7FF8000000000000, ptr %n.a, align 8", "  %npnext = add nuw i64 %np, 1",
        "  br label %nphead",
        "nlatch:", "  %nknext = add nuw i64 %nk, 1", "  br label %nhead",
        "nret:", "  ret void", "}"])  # fmt: skip


def _driver_load(gather: bool) -> list[str]:
    """``%g.v``: the 4 lanes of input ``%g`` at point ``%j`` (``%g.b``, stride ``%g.st``)."""
    if not gather:
        return [
            "  %g.o = mul i64 %j, %g.st",
            "  %g.a = getelementptr inbounds double, ptr %g.b, i64 %g.o",
            f"  %g.v = load {VEC}, ptr %g.a, align 8",
        ]
    lines, acc = [], "poison"
    for lane in range(WIDTH):
        lines += [
            f"  %g.j{lane} = add i64 %j, {lane}", f"  %g.o{lane} = mul i64 %g.j{lane}, %g.st",
            f"  %g.a{lane} = getelementptr inbounds double, ptr %g.b, i64 %g.o{lane}",
            f"  %g.x{lane} = load double, ptr %g.a{lane}, align 8",
            f"  %g.v{lane} = insertelement {VEC} {acc}, double %g.x{lane}, i32 {lane}",
        ]  # fmt: skip
        acc = f"%g.v{lane}"
    return [
        *lines,
        f"  %g.v = shufflevector {VEC} {acc}, {VEC} poison, <4 x i32> <i32 0, i32 1, i32 2, i32 3>",
    ]


MALLOC, FREE = "declare noalias ptr @malloc(i64) #1", "declare void @free(ptr) #1"


def _point_through_batch(n_in: int, n_out: int) -> str:
    """``sg_point`` of a cut kernel: ``sg_batch`` on one group of 4 points, every input stored
    four times. A big kernel is then compiled once, not twice: at 100k nodes the scalar copy
    cost ~1.5 s of code generation and 0.9 s of parsing and lowering, and it ran slower than the
    4-lane code on one point (a 25k-node value + gradient: 106 us a point, 86 us for 4 points).
    Its scratch is the heap's (the stack's size is not ours to spend on 4 x (inputs + outputs)
    doubles); if that fails every output is NaN."""
    n_in, n_out = max(n_in, 1), max(n_out, 1)
    tile, buf = 8 * 2 * n_in + 8 * n_out, 8 * 2 * n_in + 8 * n_out + 8 * WIDTH * n_in
    size = buf + 8 * WIDTH * n_out
    return "\n".join([
        "define void @sg_point(ptr noalias nocapture readonly %in, "
        "ptr noalias nocapture %out) #1 {",
        "entry:", f"  %ins = call noalias ptr @malloc(i64 {size})",
        "  %ok = icmp ne ptr %ins, null", "  br i1 %ok, label %ihead, label %nhead",
        "ihead:", "  %i = phi i64 [ 0, %entry ], [ %inext, %ibody ]",
        f"  %imore = icmp ult i64 %i, {n_in}", "  br i1 %imore, label %ibody, label %ohead",
        "ibody:", "  %v.p = getelementptr inbounds double, ptr %in, i64 %i",
        "  %v = load double, ptr %v.p, align 8",
        f"  %v.1 = insertelement {VEC} poison, double %v, i64 0",
        f"  %v.4 = shufflevector {VEC} %v.1, {VEC} poison, <{WIDTH} x i32> zeroinitializer",
        f"  %t.k = mul nuw i64 %i, {WIDTH}", f"  %t.b = add nuw i64 %t.k, {tile // 8}",
        "  %t.p = getelementptr inbounds double, ptr %ins, i64 %t.b",
        f"  store {VEC} %v.4, ptr %t.p, align 8",
        "  %in.p = getelementptr inbounds ptr, ptr %ins, i64 %i",
        "  store ptr %t.p, ptr %in.p, align 8", f"  %s.k = add nuw i64 %i, {n_in}",
        "  %s.p = getelementptr inbounds i64, ptr %ins, i64 %s.k",
        "  store i64 0, ptr %s.p, align 8",
        "  %inext = add nuw i64 %i, 1", "  br label %ihead",
        "ohead:", "  %o = phi i64 [ 0, %ihead ], [ %onext, %obody ]",
        f"  %omore = icmp ult i64 %o, {n_out}", "  br i1 %omore, label %obody, label %run",
        "obody:", f"  %b.k = mul nuw i64 %o, {WIDTH}", f"  %b.b = add nuw i64 %b.k, {buf // 8}",
        "  %b.p = getelementptr inbounds double, ptr %ins, i64 %b.b",
        f"  %o.k = add nuw i64 %o, {2 * n_in}",
        "  %o.p = getelementptr inbounds ptr, ptr %ins, i64 %o.k",
        "  store ptr %b.p, ptr %o.p, align 8",
        "  %onext = add nuw i64 %o, 1", "  br label %ohead",
        "run:", f"  %strides = getelementptr inbounds i64, ptr %ins, i64 {n_in}",
        f"  %outs = getelementptr inbounds ptr, ptr %ins, i64 {2 * n_in}",
        f"  call void @sg_batch(ptr %ins, ptr %strides, ptr %outs, i64 {WIDTH})",
        "  br label %chead",
        "chead:", "  %c = phi i64 [ 0, %run ], [ %cnext, %cbody ]",
        f"  %cmore = icmp ult i64 %c, {n_out}", "  br i1 %cmore, label %cbody, label %done",
        "cbody:", f"  %c.k = mul nuw i64 %c, {WIDTH}", f"  %c.b = add nuw i64 %c.k, {buf // 8}",
        "  %c.s = getelementptr inbounds double, ptr %ins, i64 %c.b",
        "  %c.v = load double, ptr %c.s, align 8",
        "  %c.d = getelementptr inbounds double, ptr %out, i64 %c",
        "  store double %c.v, ptr %c.d, align 8", "  %cnext = add nuw i64 %c, 1",
        "  br label %chead",
        "done:", "  call void @free(ptr %ins)", "  ret void",
        "nhead:", "  %n = phi i64 [ 0, %entry ], [ %nnext, %nbody ]",
        f"  %nmore = icmp ult i64 %n, {n_out}", "  br i1 %nmore, label %nbody, label %nan",
        "nbody:", "  %n.d = getelementptr inbounds double, ptr %out, i64 %n",
        "  store double 0x7FF8000000000000, ptr %n.d, align 8", "  %nnext = add nuw i64 %n, 1",
        "  br label %nhead",
        "nan:", "  ret void", "}"])  # fmt: skip


def _split_functions(split: Split, name: str, lanes: int, params: str, vector_ok, addressing):
    """The internal functions ``{name}{k}`` of the cut, and the C functions they declare."""
    texts, declares = [], set()
    for k in range(split.n_functions):
        b = Body(f"c{k}_", lanes, vector_ok)
        split.emit(b, k, *addressing)
        declares |= b.declares
        texts.append("\n".join([f"define internal void @{name}{k}({params}) #2 {{", "entry:",
                                *b.lines, "  ret void", "}"]))  # fmt: skip
    return texts, declares
