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
import sys

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
