"""The CPython entries of compiled kernels: one C call from Python, no ctypes conversion.

Two sides of one job. The IR side writes ``sg_fast`` (around a scalar kernel's ``sg_point``) and
``sg_tensor_fast`` (around ``sg_tensor``) as ``METH_FASTCALL`` functions that read Python floats
and numpy data pointers straight from the objects. The ctypes side (``method``) wraps such a
function's address in a builtin function object. Layouts read: CPython >= 3.11 release builds
(refcount at byte 0, type at 8, a float's value at 16) and numpy's array struct (data pointer at
16). The CPython symbols ``sg_tensor_fast`` calls are made known to LLVM by ``jit.py``.
"""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np

# Arguments up to which sg_fast checks and loads each one in code of its own (the fastest call);
# beyond, a loop does it.
UNROLL_MAX = 64


def fast_entry(n_in: int) -> str:
    """``sg_fast``: a CPython ``METH_FASTCALL`` function around ``sg_point``.

    Called as ``fast(out, x0, ..., xn)`` with ``out`` a fresh float64 array and every x an exact
    Python float, it reads the floats' values straight from the objects, writes the outputs into
    ``out``'s data and returns ``out``; for anything else it returns ``self`` (a float, bound when
    the function object is made) and the caller takes the general path. So a call from Python
    costs one C call, with no ctypes conversion. Layouts used (CPython >= 3.11, non-debug, and
    numpy's public array struct): ``ob_refcnt`` at byte 0 and ``ob_type`` at 8 of every object,
    a float's value at 16, an array's ``data`` pointer at 16. ``self``'s type is the float type.
    """
    if n_in > UNROLL_MAX:
        return _looped_fast_entry(n_in)
    size = max(n_in, 1)
    lines = [
        "define ptr @sg_fast(ptr %self, ptr %args, i64 %nargs) #1 {",
        "entry:",
        f"  %buf = alloca [{size} x double], align 8",
        *_field("%ftype", "%self", 8, "ptr"),
        f"  %nok = icmp eq i64 %nargs, {n_in + 1}",
        "  br i1 %nok, label %check0, label %fail",
    ]
    for k in range(n_in):
        lines += [
            f"check{k}:",
            *_argument(f"%a{k}", k + 1),
            *_field(f"%t{k}", f"%a{k}", 8, "ptr"),
            f"  %ok{k} = icmp eq ptr %t{k}, %ftype",
            f"  br i1 %ok{k}, label %load{k}, label %fail",
            f"load{k}:",
            *_field(f"%v{k}", f"%a{k}", 16, "double"),
            *_store_slot(f"%v{k}", "double", f"[{size} x double]", "%buf", k),
            f"  br label %check{k + 1}",
        ]
    lines += [
        f"check{n_in}:",
        "  %arr = load ptr, ptr %args, align 8",
        *_field("%data", "%arr", 16, "ptr"),
        "  call void @sg_point(ptr %buf, ptr %data)",
        *return_new_reference("%arr"),
        "fail:",
        *return_new_reference("%self"),
        "}",
    ]
    return "\n".join(lines)


def _looped_fast_entry(n_in: int) -> str:
    """``sg_fast`` for many arguments: the same checks and loads as a loop over the arguments,
    so the function's size does not grow with them (unrolled, 8,000 arguments made 16,000
    blocks, and LLVM's passes and code generation on them grew faster than linearly)."""
    return "\n".join([
        "define ptr @sg_fast(ptr %self, ptr %args, i64 %nargs) #1 {", "entry:",
        f"  %buf = alloca [{n_in} x double], align 8", *_field("%ftype", "%self", 8, "ptr"),
        f"  %nok = icmp eq i64 %nargs, {n_in + 1}", "  br i1 %nok, label %head, label %fail",
        "head:", "  %k = phi i64 [ 0, %entry ], [ %next, %load ]",
        f"  %more = icmp ult i64 %k, {n_in}", "  br i1 %more, label %check, label %call",
        "check:", "  %next = add nuw i64 %k, 1",
        "  %a.p = getelementptr inbounds ptr, ptr %args, i64 %next",
        "  %a = load ptr, ptr %a.p, align 8", *_field("%t", "%a", 8, "ptr"),
        "  %ok = icmp eq ptr %t, %ftype", "  br i1 %ok, label %load, label %fail",
        "load:", *_field("%v", "%a", 16, "double"),
        "  %v.s = getelementptr inbounds double, ptr %buf, i64 %k",
        "  store double %v, ptr %v.s, align 8", "  br label %head",
        "call:", "  %arr = load ptr, ptr %args, align 8", *_field("%data", "%arr", 16, "ptr"),
        "  call void @sg_point(ptr %buf, ptr %data)", *return_new_reference("%arr"),
        "fail:", *return_new_reference("%self"), "}",
    ])  # fmt: skip


NPY_DOUBLE = 12  # numpy's type number of float64
NPY_ALIGNED = 0x100  # numpy's flag of an array whose data is aligned for its type


def fast_batch_entry(n_in: int, n_out: int, gather: bool = False) -> str:
    """``sg_batch_fast``: a CPython ``METH_FASTCALL`` function around ``sg_batch``.

    Called as ``fast(out, x0, ..., x{n_in-1})`` with ``out`` a fresh C-contiguous float64
    array of shape (n_out, n) and every x a 1-d float64 array of n elements, contiguous,
    aligned and in native byte order, of ``out``'s exact type (numpy.ndarray), it runs the
    batch kernel on the points: the multiple of 4 in place, the last n % 4 padded (with the
    last point, as the Python path pads) through one more 4-lane call. It returns ``out``, or
    ``self`` for any other arguments, which the caller then passes to the general path. With
    ``gather`` (a kernel that reads lanes at any stride) an x may have any stride that is a
    multiple of 8 bytes, and may be a 0-d array, read at stride 0 by every point. Layout
    read beyond ``fast_entry``'s: numpy's array struct (nd at 24, dimensions at 32, strides at
    40, descr at 56, flags at 64) and its descr (byteorder at 26, type_num at 28).
    """
    n_in, n_out = max(n_in, 1), max(n_out, 1)
    ins = f"[{n_in} x ptr]"
    return "\n".join([
        "define ptr @sg_batch_fast(ptr %self, ptr %args, i64 %nargs) #1 {", "entry:",
        f"  %ins = alloca {ins}, align 8", f"  %strides = alloca [{n_in} x i64], align 8",
        f"  %nok = icmp eq i64 %nargs, {n_in + 1}", "  br i1 %nok, label %start, label %fail",
        "start:", "  %out = load ptr, ptr %args, align 8", *_field("%atype", "%out", 8, "ptr"),
        *_field("%odata", "%out", 16, "ptr"), *_field("%odims", "%out", 32, "ptr"),
        "  %n.p = getelementptr inbounds i64, ptr %odims, i64 1",
        "  %n = load i64, ptr %n.p, align 8", "  br label %head",
        # Every argument checked, its data pointer kept.
        "head:", "  %k = phi i64 [ 0, %start ], [ %next, %keep ]",
        f"  %more = icmp ult i64 %k, {n_in}", "  br i1 %more, label %check, label %main",
        "check:", "  %next = add nuw i64 %k, 1",
        "  %a.p = getelementptr inbounds ptr, ptr %args, i64 %next",
        "  %a = load ptr, ptr %a.p, align 8", *_field("%t", "%a", 8, "ptr"),
        "  %t.ok = icmp eq ptr %t, %atype", "  br i1 %t.ok, label %shape, label %fail",
        # (1-d first: a 0-d array's dimensions and strides pointers are not to be read.)
        "shape:", "  %nd.p = getelementptr inbounds i8, ptr %a, i64 24",
        "  %nd = load i32, ptr %nd.p, align 4", "  %nd.ok = icmp eq i32 %nd, 1",
        f"  br i1 %nd.ok, label %extent, label {'%scalar' if gather else '%fail'}",
        "extent:", *_field("%dims", "%a", 32, "ptr"), "  %len = load i64, ptr %dims, align 8",
        "  %len.ok = icmp eq i64 %len, %n", *_field("%st", "%a", 40, "ptr"),
        "  %step = load i64, ptr %st, align 8", *_step_check(gather),
        "  %s2 = and i1 %len.ok, %step.ok", "  br i1 %s2, label %dtype, label %fail",
        *_zero_d(gather),
        "dtype:", *_element_stride(gather), *_float64(
            "%a", "true"), "  br i1 %a.f64, label %keep, label %fail",
        "keep:", *_field("%data", "%a", 16, "ptr"),
        f"  %in.s = getelementptr inbounds {ins}, ptr %ins, i64 0, i64 %k",
        "  store ptr %data, ptr %in.s, align 8",
        f"  %st.s = getelementptr inbounds [{n_in} x i64], ptr %strides, i64 0, i64 %k",
        "  store i64 %elems, ptr %st.s, align 8", "  br label %head",
        "main:", "  call void @sg_batch_run(ptr %ins, ptr %strides, ptr %odata, i64 %n)",
        *return_new_reference("%out"),
        "fail:", *return_new_reference("%self"), "}",
    ])  # fmt: skip


def vmap_entry(shapes: tuple[tuple[int, ...], ...], n_out: int) -> str:
    """``sg_vmap_fast``: the C entry of a batched call of a tensor function (symgrad/batched.py).

    The module is a gather kernel over the elements of the arguments of ``shapes`` (argument k's
    element e, C order, is input ``sum(sizes[:k]) + e``). Called as ``fast(out, a0, ...)`` with
    ``out`` a fresh (n_out, n) float64 array and each a an aligned, native float64
    numpy.ndarray of shape (n,) + shapes[k] (a batch: its elements' columns at its leading
    stride) or exactly shapes[k] (shared by every point: stride 0), it points the kernel at
    every element where it is and runs ``sg_batch_run``; for anything else it returns ``self``.
    Read beyond ``fast_batch_entry``'s fields: each dimension and stride of an argument (never
    for a 0-d one: its dimension and stride pointers are not read)."""
    n_in, n_out = max(sum(math.prod(s) for s in shapes), 1), max(n_out, 1)
    lines = [
        "define ptr @sg_vmap_fast(ptr %self, ptr %args, i64 %nargs) #1 {", "entry:",
        f"  %ins = alloca [{n_in} x ptr], align 8", f"  %strides = alloca [{n_in} x i64], align 8",
        f"  %nok = icmp eq i64 %nargs, {len(shapes) + 1}",
        "  br i1 %nok, label %start, label %fail",
        "start:", "  %out = load ptr, ptr %args, align 8", *_field("%atype", "%out", 8, "ptr"),
        *_field("%odata", "%out", 16, "ptr"), *_field("%odims", "%out", 32, "ptr"),
        "  %n.p = getelementptr inbounds i64, ptr %odims, i64 1",
        "  %n = load i64, ptr %n.p, align 8", "  br label %arg0",
    ]  # fmt: skip
    slot = 0
    for k, shape in enumerate(shapes):
        lines += _vmap_argument(k, shape, slot, n_in)
        slot += math.prod(shape)
    lines += [
        f"arg{len(shapes)}:",
        "  call void @sg_batch_run(ptr %ins, ptr %strides, ptr %odata, i64 %n)",
        *return_new_reference("%out"),
        "fail:", *return_new_reference("%self"), "}",
    ]  # fmt: skip
    return "\n".join(lines)


def _vmap_argument(k: int, shape: tuple[int, ...], slot: int, n_in: int) -> list[str]:
    """The blocks reading argument k (``arg{k}`` .. on to ``arg{k+1}``): its checks, then each
    element's pointer and stride in ``%ins``/``%strides`` from ``slot`` on."""
    a, d = f"%a{k}", len(shape)
    lines = [
        f"arg{k}:", *_argument(a, k + 1), *_field(f"{a}.t", a, 8, "ptr"),
        f"  {a}.tok = icmp eq ptr {a}.t, %atype", f"  br i1 {a}.tok, label %rank{k}, label %fail",
        f"rank{k}:", f"  {a}.ndp = getelementptr inbounds i8, ptr {a}, i64 24",
        f"  {a}.nd = load i32, ptr {a}.ndp, align 4",
        f"  {a}.isb = icmp eq i32 {a}.nd, {d + 1}",
        f"  br i1 {a}.isb, label %batched{k}, label %whole{k}",
        # A batch: its leading dimension is n, the element axes come after it.
        f"batched{k}:", *_field(f"{a}.bdims", a, 32, "ptr"), *_field(f"{a}.bst", a, 40, "ptr"),
        f"  {a}.len = load i64, ptr {a}.bdims, align 8", f"  {a}.lok = icmp eq i64 {a}.len, %n",
        f"  {a}.step = load i64, ptr {a}.bst, align 8",
        f"  {a}.dp1 = getelementptr inbounds i64, ptr {a}.bdims, i64 1",
        f"  {a}.sp1 = getelementptr inbounds i64, ptr {a}.bst, i64 1",
        f"  br i1 {a}.lok, label %dims{k}, label %fail",
        # Shared: exactly the declared shape (a 0-d array's pointers are never read).
        f"whole{k}:", f"  {a}.iss = icmp eq i32 {a}.nd, {d}",
        f"  br i1 {a}.iss, label %wdims{k}, label %fail",
        f"wdims{k}:",
        *(_field(f"{a}.wdims", a, 32, "ptr") + _field(f"{a}.wst", a, 40, "ptr") if d else
          [f"  {a}.wdims = getelementptr i8, ptr null, i64 0",
           f"  {a}.wst = getelementptr i8, ptr null, i64 0"]),
        f"  br label %dims{k}",
        f"dims{k}:",
        f"  {a}.dp = phi ptr [ {a}.dp1, %batched{k} ], [ {a}.wdims, %wdims{k} ]",
        f"  {a}.sp = phi ptr [ {a}.sp1, %batched{k} ], [ {a}.wst, %wdims{k} ]",
        f"  {a}.by = phi i64 [ {a}.step, %batched{k} ], [ 0, %wdims{k} ]",
    ]  # fmt: skip
    ok = "true"
    for j, size in enumerate(shape):
        lines += [
            f"  {a}.d{j}p = getelementptr inbounds i64, ptr {a}.dp, i64 {j}",
            f"  {a}.d{j} = load i64, ptr {a}.d{j}p, align 8",
            f"  {a}.d{j}ok = icmp eq i64 {a}.d{j}, {size}",
            f"  {a}.ok{j} = and i1 {ok}, {a}.d{j}ok",
            f"  {a}.s{j}p = getelementptr inbounds i64, ptr {a}.sp, i64 {j}",
            f"  {a}.s{j} = load i64, ptr {a}.s{j}p, align 8",
        ]
        ok = f"{a}.ok{j}"
    lines += [
        *_float64(a, ok), f"  br i1 {a}.f64, label %keep{k}, label %fail",
        # Each element where it is: data + its index times the strides (bytes: aligned, so
        # multiples of 8), read every stride-of-the-batch apart (0 when shared).
        f"keep{k}:", *_field(f"{a}.data", a, 16, "ptr"), f"  {a}.el = ashr i64 {a}.by, 3",
    ]  # fmt: skip
    for e, idx in enumerate(np.ndindex(*shape)):
        off = "0"
        for j, i in enumerate(idx):
            if i:
                term = f"{a}.e{e}m{j}"
                lines.append(f"  {term} = mul i64 {a}.s{j}, {i}")
                lines.append(f"  {a}.e{e}o{j} = add i64 {off}, {term}")
                off = f"{a}.e{e}o{j}"
        at = slot + e
        lines += [
            f"  {a}.e{e}p = getelementptr i8, ptr {a}.data, i64 {off}",
            f"  {a}.e{e}s = getelementptr inbounds [{n_in} x ptr], ptr %ins, i64 0, i64 {at}",
            f"  store ptr {a}.e{e}p, ptr {a}.e{e}s, align 8",
            f"  {a}.e{e}t = getelementptr inbounds [{n_in} x i64], ptr %strides, i64 0, i64 {at}",
            f"  store i64 {a}.el, ptr {a}.e{e}t, align 8",
        ]
    lines.append(f"  br label %arg{k + 1}")
    return lines


def batch_run(n_in: int, n_out: int) -> str:
    """``sg_batch_run(ins, strides, odata, n)``: ``sg_batch`` on n points whose inputs are
    ``ins``/``strides`` and whose outputs are the rows of the (n_out, n) array at ``odata``: the
    multiple of 4 where they are, the last n % 4 padded with the last point (as the Python path
    pads) through one more 4-lane call. What the C entries run once their arguments are read."""
    ins, outs = f"[{n_in} x ptr]", f"[{n_out} x ptr]"
    pads, pouts = f"[{n_in} x [4 x double]]", f"[{n_out} x [4 x double]]"
    return "\n".join([
        "define internal void @sg_batch_run(ptr %ins, ptr %strides, ptr %odata, i64 %n) #1 {",
        "entry:",
        f"  %outs = alloca {outs}, align 8", f"  %pins = alloca {ins}, align 8",
        f"  %pstrides = alloca [{n_in} x i64], align 8",
        f"  %pad = alloca {pads}, align 32", f"  %pout = alloca {pouts}, align 32",
        f"  %pouts = alloca {outs}, align 8", "  br label %main",
        # Output rows, and the points in groups of 4 where they are.
        "main:", "  br label %ohead",
        "ohead:", "  %j = phi i64 [ 0, %main ], [ %jn, %orow ]",
        f"  %omore = icmp ult i64 %j, {n_out}", "  br i1 %omore, label %orow, label %run",
        "orow:", "  %jn = add nuw i64 %j, 1", "  %row = mul i64 %j, %n",
        "  %row.p = getelementptr inbounds double, ptr %odata, i64 %row",
        f"  %out.s = getelementptr inbounds {outs}, ptr %outs, i64 0, i64 %j",
        "  store ptr %row.p, ptr %out.s, align 8",
        f"  %pout.p = getelementptr inbounds {pouts}, ptr %pout, i64 0, i64 %j",
        f"  %pouts.s = getelementptr inbounds {outs}, ptr %pouts, i64 0, i64 %j",
        "  store ptr %pout.p, ptr %pouts.s, align 8", "  br label %ohead",
        "run:", "  %whole = and i64 %n, -4", "  %some = icmp ugt i64 %whole, 0",
        "  br i1 %some, label %bulk, label %rest",
        "bulk:", "  call void @sg_batch(ptr %ins, ptr %strides, ptr %outs, i64 %whole)",
        "  br label %rest",
        "rest:", "  %left = sub i64 %n, %whole", "  %any = icmp ugt i64 %left, 0",
        "  br i1 %any, label %phead, label %done",
        # The last n % 4 points padded with the last one, as the Python path pads.
        "phead:", "  %q = phi i64 [ 0, %rest ], [ %qn, %plane ]",
        f"  %qmore = icmp ult i64 %q, {n_in}", "  br i1 %qmore, label %pfill, label %pcall",
        "pfill:", "  %qn = add nuw i64 %q, 1",
        f"  %src.s = getelementptr inbounds {ins}, ptr %ins, i64 0, i64 %q",
        "  %src = load ptr, ptr %src.s, align 8",
        f"  %sst.s = getelementptr inbounds [{n_in} x i64], ptr %strides, i64 0, i64 %q",
        "  %sst = load i64, ptr %sst.s, align 8",
        f"  %dst = getelementptr inbounds {pads}, ptr %pad, i64 0, i64 %q",
        f"  %pin.s = getelementptr inbounds {ins}, ptr %pins, i64 0, i64 %q",
        "  store ptr %dst, ptr %pin.s, align 8", "  %last = sub i64 %n, 1",
        f"  %pst.s = getelementptr inbounds [{n_in} x i64], ptr %pstrides, i64 0, i64 %q",
        "  store i64 1, ptr %pst.s, align 8",  # the pad holds 4 values in a row
        *(line for lane in range(4) for line in (
            f"  %at{lane}.raw = add i64 %whole, {lane}",
            f"  %at{lane}.hi = icmp ugt i64 %at{lane}.raw, %last",
            f"  %at{lane} = select i1 %at{lane}.hi, i64 %last, i64 %at{lane}.raw",
            f"  %el{lane} = mul i64 %at{lane}, %sst",
            f"  %x{lane}.p = getelementptr inbounds double, ptr %src, i64 %el{lane}",
            f"  %x{lane} = load double, ptr %x{lane}.p, align 8",
            f"  %y{lane}.p = getelementptr inbounds [4 x double], ptr %dst, i64 0, i64 {lane}",
            f"  store double %x{lane}, ptr %y{lane}.p, align 8")),
        "  br label %plane",
        "plane:", "  br label %phead",
        "pcall:", "  call void @sg_batch(ptr %pins, ptr %pstrides, ptr %pouts, i64 4)",
        "  br label %chead",
        "chead:", "  %c = phi i64 [ 0, %pcall ], [ %cn, %cbody ]",
        f"  %cmore = icmp ult i64 %c, {n_out}", "  br i1 %cmore, label %cbody, label %done",
        "cbody:", "  %cn = add nuw i64 %c, 1",
        f"  %from = getelementptr inbounds {pouts}, ptr %pout, i64 0, i64 %c",
        "  %crow = mul i64 %c, %n", "  %cat = add i64 %crow, %whole",
        "  %to = getelementptr inbounds double, ptr %odata, i64 %cat",
        "  %bytes = shl i64 %left, 3",
        "  call void @llvm.memcpy.p0.p0.i64(ptr %to, ptr %from, i64 %bytes, i1 false)",
        "  br label %chead",
        "done:", "  ret void", "}",
        "declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)",
    ])  # fmt: skip


def _float64(a: str, ok: str) -> list[str]:
    """``{a}.f64``: ``ok`` and the array ``a`` holds float64 in native byte order, aligned
    (its descr's type number and byte order, its flags)."""
    return [
        *_field(f"{a}.descr", a, 56, "ptr"),
        f"  {a}.tnp = getelementptr inbounds i8, ptr {a}.descr, i64 28",
        f"  {a}.tn = load i32, ptr {a}.tnp, align 4",
        f"  {a}.tnok = icmp eq i32 {a}.tn, {NPY_DOUBLE}",
        f"  {a}.bop = getelementptr inbounds i8, ptr {a}.descr, i64 26",
        f"  {a}.bo = load i8, ptr {a}.bop, align 1",
        f"  {a}.nat = icmp eq i8 {a}.bo, {ord('=')}",
        f"  {a}.lit = icmp eq i8 {a}.bo, {ord('<')}",
        f"  {a}.bok = or i1 {a}.nat, {a}.lit",
        f"  {a}.flp = getelementptr inbounds i8, ptr {a}, i64 64",
        f"  {a}.fl = load i32, ptr {a}.flp, align 4",
        f"  {a}.al = and i32 {a}.fl, {NPY_ALIGNED}",
        f"  {a}.alok = icmp ne i32 {a}.al, 0",
        f"  {a}.c1 = and i1 {ok}, {a}.tnok",
        f"  {a}.c2 = and i1 {a}.c1, {a}.bok",
        f"  {a}.f64 = and i1 {a}.c2, {a}.alok",
    ]


def _step_check(gather: bool) -> list[str]:
    """``%step.ok``: the byte stride ``%step`` is one the kernel reads (8; with ``gather`` any
    multiple of 8, of either sign), and ``%by`` the stride in doubles the kernel is given."""
    if not gather:
        return ["  %step.ok = icmp eq i64 %step, 8", "  %by = add i64 0, 1"]
    return [
        "  %step.r = and i64 %step, 7",
        "  %step.ok = icmp eq i64 %step.r, 0",
        "  %by = ashr i64 %step, 3",
    ]


def _zero_d(gather: bool) -> list[str]:
    """(``gather`` only) the block taking a 0-d array: every point reads its one value."""
    if not gather:
        return []
    return ["scalar:", "  %nd0 = icmp eq i32 %nd, 0", "  br i1 %nd0, label %dtype, label %fail"]


def _element_stride(gather: bool) -> list[str]:
    """``%elems``: the stride in doubles of the argument checked (with ``gather``, 0 for a 0-d
    array: every point reads its one value)."""
    if not gather:
        return ["  %elems = phi i64 [ %by, %extent ]"]
    return ["  %elems = phi i64 [ %by, %extent ], [ 0, %scalar ]"]


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
            *_argument(f"%a{k}", k),
            *_field(f"%d{k}", f"%a{k}", 16, "ptr"),
            *_store_slot(f"%d{k}", "ptr", f"[{n_bufs} x ptr]", "%bufs", k),
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


def _argument(value: str, k: int) -> list[str]:
    """IR lines loading the ``k``-th object pointer of the FASTCALL ``%args`` into ``value``."""
    return [
        f"  {value}.p = getelementptr inbounds ptr, ptr %args, i64 {k}",
        f"  {value} = load ptr, ptr {value}.p, align 8",
    ]


def _field(value: str, obj: str, offset: int, ty: str) -> list[str]:
    """IR lines loading the ``ty`` at byte ``offset`` of the object ``obj`` into ``value``."""
    return [
        f"  {value}.p = getelementptr inbounds i8, ptr {obj}, i64 {offset}",
        f"  {value} = load {ty}, ptr {value}.p, align 8",
    ]


def _store_slot(value: str, ty: str, array: str, slots: str, k: int) -> list[str]:
    """IR lines storing ``value`` (a ``ty``) in slot ``k`` of the stack array ``slots``."""
    return [
        f"  {value}.s = getelementptr inbounds {array}, ptr {slots}, i64 0, i64 {k}",
        f"  store {ty} {value}, ptr {value}.s, align 8",
    ]


def return_new_reference(obj: str) -> list[str]:
    """IR lines returning the Python object ``obj`` as a new reference (its ob_refcnt + 1)."""
    n = obj.lstrip("%")
    return [
        f"  %{n}.rc = load i64, ptr {obj}, align 8",
        f"  %{n}.rc1 = add i64 %{n}.rc, 1",
        f"  store i64 %{n}.rc1, ptr {obj}, align 8",
        f"  ret ptr {obj}",
    ]


class _MethodDef(ctypes.Structure):
    """CPython's PyMethodDef."""

    _fields_ = [
        ("ml_name", ctypes.c_char_p),
        ("ml_meth", ctypes.c_void_p),
        ("ml_flags", ctypes.c_int),
        ("ml_doc", ctypes.c_char_p),
    ]


METH_FASTCALL = 0x0080


def method(address: int):
    """A builtin function object calling ``sg_fast`` at ``address``, or None if not possible.

    The function object keeps its method definition alive (attached as an attribute of a
    holder that the kernels object owns), and ``self`` is a float, whose type ``sg_fast``
    compares its arguments' types with.
    """
    if not address or sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        return None  # the object layouts sg_fast reads are those of a release CPython
    definition = _MethodDef(b"sg_fast", address, METH_FASTCALL, None)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p]
    function = new(ctypes.addressof(definition), 0.5, None)
    return _FastCall(function, definition)


class _FastCall:
    """The builtin and the PyMethodDef it points into, kept alive together."""

    __slots__ = ("call", "definition")

    def __init__(self, call, definition):
        self.call, self.definition = call, definition
