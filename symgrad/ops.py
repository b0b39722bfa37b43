"""The op registry: one frozen ``OpDef`` per op, every concern of that op a field.

An op's arity, shape rule, numpy evaluation, derivative rules (VJP, written in graph ops so that
derivatives can be differentiated again), LLVM lowering (declared as data: this file never imports
llvmlite), SymPy mapping, DOT label, algebraic flags and test sampling domain all live in the one
``_register`` call that defines it. Tests are parametrized over ``OPS``: adding an op adds its
gradient, interpreter-vs-compiled and shape tests.

VJP rules take ``(g, out, *args)`` — the output cotangent, the node itself and its operands, all
``Expr`` — and return the operand's cotangent contribution as an ``Expr``. A rule of ``None`` means
the operand gets no gradient (comparisons, the condition of ``where``).
"""

from __future__ import annotations

import ctypes
import functools
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from symgrad.errors import GraphError, ShapeError


@dataclass(frozen=True)
class Lowering:
    """How the LLVM backend emits an op, as data.

    Elementwise ops: ``"instr"`` (an LLVM instruction such as ``fadd``), ``"intrinsic"``
    (``llvm.sqrt``), ``"libm"`` (a C symbol, with an optional libmvec 4-lane variant in
    ``vector``), ``"fcmp"`` (an ordered/unordered compare predicate, result 1.0/0.0) or
    ``"custom"``: ``emit(b, *values)``, written here beside the op over the backend's value
    builder ``b`` (``b.op(name, ...)`` emits another op of this registry; ``b.const``,
    ``b.fcmp``, ``b.select``, ``b.binop`` are single instructions), so this file never imports
    the backend.

    Tensor ops, by their layout class: ``"view"`` (a new view of the operand's memory, no copy:
    ``name`` is the method of the backend's view that makes it), ``"reduce"`` (a fold over axes
    with the combining instruction or intrinsic ``name``, starting from ``start``) or
    ``"barrier"`` (reads whole arrays: ``name`` is the backend's writer of the op; a scan is
    one, writing all its parts) or ``"part"`` (a projection of a tuple-valued node, whose memory
    that node's writer fills). A tensor op without a lowering has an ``expand`` into ops that
    have one.
    """

    kind: str
    name: str
    vector: str | None = None
    emit: Callable | None = None
    start: float = 0.0


# An attribute is a constant of a node, given by name (``sum(x, axis=0)``). Each value kind a
# caller may give, and how a value of that kind is recognized; the op's ``normalize`` then checks
# the value against the operands (axes within the dimensions, ...).
VALUE_KINDS: dict[str, Callable[[object], bool]] = {
    "int": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)),
    "tuple": lambda v: isinstance(v, (tuple, list)),
    "None": lambda v: v is None,
    # keepdims: numpy takes 0 and 1 too (but not 2: a silent truthiness).
    "bool": lambda v: isinstance(v, (bool, np.bool_)) or (type(v) is int and v in (0, 1)),
    # An index: one entry (an int, a slice, '...') or a tuple of them; normalize_index checks each.
    "index": lambda v: isinstance(v, (tuple, slice, int, np.integer)) or v is Ellipsis,
    "name": lambda v: type(v) is str,
    "float": lambda v: type(v) is float,
    "array": lambda v: type(v) is np.ndarray,
    "body": lambda v: getattr(type(v), "is_scan_body", False),  # symgrad.scan.Body
}
_KIND_TEXT = {
    "int": "an int",
    "tuple": "a tuple of ints",
    "None": "None",
    "bool": "True or False",
    "index": "an index entry (an int, a slice or '...') or a tuple of them: None (newaxis) is "
    "not supported, and an array or list of indices is a take (x[array] builds one)",
    "name": "a str",
    "float": "a float",
    "array": "a numpy array",
    "body": "a scan body",
}
REQUIRED = object()  # the default of an attribute every node must be given
MOVES = "moves"  # OpDef.pattern of an op that only moves elements (see OpDef)
VARIADIC = -1  # the arity of an op whose operand count its attributes say (scan: its body)


@dataclass(frozen=True)
class Attr:
    """One attribute of an op, as data: its name, the value kinds it takes (keys of
    ``VALUE_KINDS``; the parser reads them too) and its default (``REQUIRED``: none)."""

    name: str
    kinds: tuple[str, ...]
    default: object = REQUIRED

    def check(self, op: str, value) -> None:
        """ShapeError naming ``op`` and the attribute unless ``value`` is of one of its kinds."""
        if not any(VALUE_KINDS[k](value) for k in self.kinds):
            words = [_KIND_TEXT[k] for k in self.kinds]
            expected = " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 2 else words)
            raise ShapeError(
                f"{op}: {self.name} must be {expected}, got {type(value).__name__} {show(value)}"
            )


@dataclass(frozen=True)
class OpDef:
    """Everything symgrad knows about one op."""

    name: str
    arity: int
    numpy: Callable[..., np.ndarray]
    vjp: tuple[Callable | None, ...]
    llvm: Lowering | None
    label: str
    text: str  # how the op is written: an infix symbol or a function name
    infix: bool = False
    commutative: bool = False
    # A comparison: the SymPy relational it is (``"Lt"``: sympy.Lt), read by the SymPy bridge.
    sympy_relation: str | None = None
    # The first operand selects between the others (where): build_grad passes the branches'
    # cotangents under the selection's mask, and SymPy writes it as a Piecewise.
    selects: bool = False
    domain: tuple[tuple[float, float], ...] = ()
    sympy: Callable | None = None  # (sympy_module, *sympy_args) -> sympy expression
    schema: tuple[Attr, ...] = ()  # the attributes, in the order the op's rules take them
    differentiable: bool = True  # False: the op is piecewise constant (derivative 0 a.e.)
    # (op name, operand shapes, attrs dict) -> output shape; None = numpy broadcasting.
    shape: Callable[..., tuple[int, ...]] | None = None
    # (operand shapes, raw attrs dict) -> canonical attrs dict (hashable values, axes resolved).
    normalize: Callable[..., dict] | None = None
    # (*operand Exprs, **attrs) -> Expr in primitive ops: how the LLVM backend builds the op,
    # and, for an op whose ``vjp`` is empty, how build_grad differentiates it.
    expand: Callable | None = None
    elementwise: bool = True  # output element k depends on operand elements at k only
    # The node's value is a tuple of parts (a scan's final carries and per-step stacks): only
    # projection nodes read it, each one part. Its VJP rule takes the parts' cotangents at once:
    # ``vjp_parts(cotangents: dict part -> Expr, out, active, *operands, **attrs)`` -> one
    # contribution (or None) per operand.
    multiple: bool = False
    vjp_parts: Callable | None = None
    # Forward mode: ``jvp(tangents, out, *operands, **attrs)`` -> the output's tangent, built
    # from graph ops; ``tangents`` has one Expr per operand, or None where it has none. None for
    # an elementwise op (its Jacobian is diagonal: its VJP rules applied to the tangents,
    # symgrad/forward.py) and for an op with an ``expand`` (differentiated through it).
    jvp: Callable | None = None
    part_shapes: Callable | None = None  # attrs -> a mapping part -> shape (ShapeError if none)
    # Values c of a constant last operand for which the op has an exact form in other ops
    # (pow: x**2 is x*x): c -> build(x, const, apply), read by fold and by the emitters.
    exact: dict[float, Callable] | None = None
    # Structural sparsity (sparsity.py): which operand elements each output element depends on.
    # None: by the op's kind (an elementwise op element to element, as broadcast; any other op
    # every output element on every operand element, which is safe but dense). MOVES: the op
    # places operand elements (or zeros), so its numpy form applied to the operand's element
    # numbers tells where each came from. A function ``(operand shapes, attrs, consts)`` -> one
    # pair (output flat indices, operand flat indices) of int arrays per operand, exact, or None
    # where it cannot tell (``consts``: each operand's value where it is a constant, else None;
    # take reads its constant indices).
    pattern: Callable | str | None = None
    # Its evaluation calls the BLAS (numpy's matmul, the LLVM backend's dgemm): a call of a
    # compiled function holding it sets the BLAS's threads for its duration (blas.py).
    blas: bool = False
    # A variadic op's VJP rule (its ``vjp`` is then empty): ``vjp_at(pos, g, out, *operands,
    # **attrs)`` -> the contribution to the operand at ``pos``.
    vjp_at: Callable | None = None

    def vjp_rules(self, n: int) -> tuple:
        """The VJP rule of each of ``n`` operands (``vjp``, or ``vjp_at`` for each position)."""
        if self.vjp_at is None:
            return self.vjp
        return tuple(functools.partial(self.vjp_at, pos) for pos in range(n))

    @property
    def attrs(self) -> tuple[str, ...]:
        """The names of the op's attributes."""
        return tuple(a.name for a in self.schema)

    def checked_attributes(self, attrs: dict) -> dict:
        """``attrs`` against the schema, defaults filled in: every name one of the op's (else a
        GraphError), every value of a kind its attribute takes and every required one given
        (else a ShapeError naming the op and attribute). Node creation and unpickling call it."""
        unknown = sorted(set(attrs) - set(self.attrs), key=str)
        if unknown:
            raise GraphError(f"{self.name} has no attribute {', '.join(map(show, unknown))}")
        out = {}
        for a in self.schema:
            if a.name in attrs:
                a.check(self.name, attrs[a.name])
                out[a.name] = attrs[a.name]
            elif a.default is REQUIRED:
                raise ShapeError(f"{self.name}: needs the attribute {a.name}")
            else:
                out[a.name] = a.default
        return out

    def infer_shape(self, shapes: tuple[tuple[int, ...], ...], attrs: dict | None = None):
        """Shape of the output for operand shapes ``shapes``; ShapeError if they do not fit."""
        if self.shape is None:
            return broadcast_shape(self.name, shapes)
        return self.shape(self.name, shapes, attrs or {})


MAX_NDIM = 64  # dimensions of any node: numpy 2's limit, so the interpreter evaluates any node


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x, level):
        # repr of an int of more than 4300 digits raises ValueError; 10**5000 is a hostile value.
        return repr(x) if x.bit_length() <= 128 else f"<int of {x.bit_length()} bits>"


_SHORT = _ShortRepr()
_SHORT.maxstring = _SHORT.maxother = 40
_SHORT.maxtuple = _SHORT.maxlist = 8


def show(value) -> str:
    """A short repr of a caller's value for a message: long strings and containers cut, a huge
    int by its size, an object whose repr fails by its type. Never raises."""
    try:
        return _SHORT.repr(value)
    except Exception:  # noqa: BLE001 (a caller's __repr__ may raise anything)
        return f"<{type(value).__name__}>"


def broadcast_shape(op: str, shapes: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    """numpy broadcasting of elementwise operands; names the op, the operand and both shapes."""
    out: tuple[int, ...] = ()
    for pos, s in enumerate(shapes):
        merged = _broadcast_pair(out, s)
        if merged is None:
            raise ShapeError(
                f"{op}: operand {pos} has shape {s}, which does not broadcast with "
                f"shape {out} of the operands before it"
            )
        out = merged
    return out


def _broadcast_pair(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    # numpy's rule in Python ints: np.broadcast_shapes builds arrays, ~5 us a call, and fails
    # with "array is too big" on shapes of more than 2**63 elements.
    if a == b or not b:
        return a
    if not a:
        return b
    if len(a) < len(b):
        a, b = b, a
    b = (1,) * (len(a) - len(b)) + b
    out = []
    for m, n in zip(a, b):
        if m != n and n != 1 and m != 1:
            return None
        out.append(m if n == 1 else n)
    return tuple(out)


OPS: dict[str, OpDef] = {}


def _register(name: str, arity: int, numpy, vjp, llvm, **kw) -> OpDef:
    kw.setdefault("label", kw.get("text", name))
    kw.setdefault("text", name)
    op = OpDef(name=name, arity=arity, numpy=numpy, vjp=tuple(vjp), llvm=llvm, **kw)
    OPS[name] = op
    return op


def ap(name: str, *args, **attrs):
    """Apply op ``name`` to ``args`` in the graph of the first ``Expr`` among them."""
    for a in args:
        if hasattr(a, "graph"):
            return a.graph.apply(name, *args, **attrs)
    raise TypeError(f"{name}: no Expr operand")


# x**c for constants c where one IEEE operation gives exactly what numpy's power gives (numpy
# itself computes these as 1, x, x*x and 1/x): the one statement of them, which folding
# (``x**2 -> x*x``), the LLVM emitters and their cost model all read. ``build(c, x, const,
# apply)`` writes x**c with the caller's own ``const(value)`` and ``apply(op, *operands)``.
EXACT_POWERS: dict[float, Callable] = {
    0.0: lambda x, const, apply: const(1.0),  # pow(nan, 0) is 1 too
    1.0: lambda x, const, apply: x,
    2.0: lambda x, const, apply: apply("mul", x, x),
    -1.0: lambda x, const, apply: apply("div", const(1.0), x),
}


# Custom LLVM emitters. Each mirrors the op's numpy form step by step, so compiled and
# interpreted results agree to the last few ulp; ``b`` is the backend's value builder.


def _emit_sign(b, x):
    # 1 for x > 0, -1 for x < 0, +0 for ±0 and nan for nan, as np.sign.
    zero = b.select(b.fcmp("oeq", x, b.const(0.0)), b.const(0.0), x)
    neg = b.select(b.fcmp("olt", x, b.const(0.0)), b.const(-1.0), zero)
    return b.select(b.fcmp("ogt", x, b.const(0.0)), b.const(1.0), neg)


def _emit_sigmoid(b, x):
    e = b.op("exp", b.op("neg", b.op("abs", x)))
    one_e = b.binop("fadd", b.const(1.0), e)
    pos = b.binop("fdiv", b.const(1.0), one_e)
    neg = b.binop("fdiv", e, one_e)
    return b.select(b.fcmp("oge", x, b.const(0.0)), pos, neg)


def _emit_max(b, x, y):
    # np.maximum exactly (x86 numpy 2: maxpd plus a NaN test): x if x > y or x is NaN, else y.
    # So a tie of ±0 gives y, like numpy, where llvm.maximum would give +0 whatever the order;
    # and a NaN comes back with its own sign and payload, the first operand's if both are NaN.
    return _first_if(b, b.fcmp("ogt", x, y), x, y)


def _emit_min(b, x, y):
    # np.minimum: x if x < y or x is NaN, else y (a tie of ±0 gives y).
    return _first_if(b, b.fcmp("olt", x, y), x, y)


def _first_if(b, wins, x, y):
    return b.select(b.either(wins, b.fcmp("uno", x, x)), x, y)


def _emit_relu(b, x):
    return _emit_max(b, x, b.const(0.0))  # np.maximum(x, 0.0): relu(-0.0) is +0.0


def _emit_softplus(b, x):
    log_part = b.op("log1p", b.op("exp", b.op("neg", b.op("abs", x))))
    return b.binop("fadd", _emit_max(b, x, b.const(0.0)), log_part)


def _emit_where(b, c, x, y):
    # numpy's truth test: c != 0, so nan selects x.
    return b.select(b.fcmp("une", c, b.const(0.0)), x, y)


def _custom(name: str, emit: Callable) -> Lowering:
    return Lowering("custom", name, emit=emit)


def _libm(name: str, arity: int = 1) -> Lowering:
    # libmvec's AVX2 4-lane variant: one 'v' per vector argument (_ZGVdN4vv_pow for pow).
    return Lowering("libm", name, f"_ZGVdN4{'v' * arity}_{name}")


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x):
    # Two one-sided forms so neither exp overflows: 1/(1+e^-x) for x >= 0, e^x/(1+e^x) below.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): finite for every finite x.
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _cmp(ufunc):
    return lambda a, b: ufunc(a, b).astype(np.float64)


SMALL = (-3.0, 3.0)
POS = (0.2, 4.0)
UNIT = (-0.9, 0.9)

# Leaves: inputs (by name) and constants (by value). They have no operands and no rules.
_register("input", 0, None, (), None, label="input", schema=(Attr("name", ("name",)),))
_register("const", 0, None, (), None, label="const", schema=(Attr("value", ("float", "array")),))

# Arithmetic.
_register(
    "add", 2, np.add, (lambda g, o, a, b: g, lambda g, o, a, b: g), Lowering("instr", "fadd"),
    text="+", infix=True, commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: a + b,
)  # fmt: skip
_register(
    "sub", 2, np.subtract, (lambda g, o, a, b: g, lambda g, o, a, b: -g),
    Lowering("instr", "fsub"), text="-", infix=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: a - b,
)  # fmt: skip
_register(
    "mul", 2, np.multiply, (lambda g, o, a, b: g * b, lambda g, o, a, b: g * a),
    Lowering("instr", "fmul"), text="*", infix=True, commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: a * b,
)  # fmt: skip
_register(
    "div", 2, np.divide, (lambda g, o, a, b: g / b, lambda g, o, a, b: -(g * o) / b),
    Lowering("instr", "fdiv"), text="/", infix=True, domain=(SMALL, (0.5, 3.0)),
    sympy=lambda sp, a, b: a / b,
)  # fmt: skip
_register(
    "neg", 1, np.negative, (lambda g, o, a: -g,), Lowering("instr", "fneg"),
    text="-", domain=(SMALL,), sympy=lambda sp, a: -a,
)  # fmt: skip


def _pow_base_vjp(g, o, a, b):
    # d/da a**b = b * a**(b-1). With a constant exponent, b-1 is computed here, so the
    # derivative of x**2 is 2*x**1.0 (which lowers to x), never pow(x, 2-1).
    exponent = b.value - 1 if b.op == "const" else b - 1
    return g * (b * a**exponent)


_register(
    "pow", 2, np.power,
    (_pow_base_vjp, lambda g, o, a, b: g * (o * ap("log", a))),
    _libm("pow", 2), text="**", infix=True, domain=((0.5, 3.0), (-2.0, 2.0)),
    sympy=lambda sp, a, b: a**b, exact=EXACT_POWERS,
)  # fmt: skip

# Elementary functions of one operand.
_register("sin", 1, np.sin, (lambda g, o, a: g * ap("cos", a),), _libm("sin"),
          domain=(SMALL,), sympy=lambda sp, a: sp.sin(a))  # fmt: skip
_register("cos", 1, np.cos, (lambda g, o, a: -(g * ap("sin", a)),), _libm("cos"),
          domain=(SMALL,), sympy=lambda sp, a: sp.cos(a))  # fmt: skip
_register("tan", 1, np.tan, (lambda g, o, a: g * (1 + o * o),), _libm("tan"),
          domain=((-1.2, 1.2),), sympy=lambda sp, a: sp.tan(a))  # fmt: skip
_register("asin", 1, np.arcsin, (lambda g, o, a: g / ap("sqrt", 1 - a * a),), _libm("asin"),
          domain=(UNIT,), sympy=lambda sp, a: sp.asin(a))  # fmt: skip
_register("acos", 1, np.arccos, (lambda g, o, a: -(g / ap("sqrt", 1 - a * a)),),
          _libm("acos"), domain=(UNIT,), sympy=lambda sp, a: sp.acos(a))  # fmt: skip
_register("atan", 1, np.arctan, (lambda g, o, a: g / (1 + a * a),), _libm("atan"),
          domain=(SMALL,), sympy=lambda sp, a: sp.atan(a))  # fmt: skip
_register("sinh", 1, np.sinh, (lambda g, o, a: g * ap("cosh", a),), _libm("sinh"),
          domain=(SMALL,), sympy=lambda sp, a: sp.sinh(a))  # fmt: skip
_register("cosh", 1, np.cosh, (lambda g, o, a: g * ap("sinh", a),), _libm("cosh"),
          domain=(SMALL,), sympy=lambda sp, a: sp.cosh(a))  # fmt: skip
_register("tanh", 1, np.tanh, (lambda g, o, a: g * (1 - o * o),), _libm("tanh"),
          domain=(SMALL,), sympy=lambda sp, a: sp.tanh(a))  # fmt: skip
_register("asinh", 1, np.arcsinh, (lambda g, o, a: g / ap("sqrt", a * a + 1),),
          _libm("asinh"), domain=(SMALL,), sympy=lambda sp, a: sp.asinh(a))  # fmt: skip
_register("acosh", 1, np.arccosh,
          (lambda g, o, a: g / (ap("sqrt", a - 1) * ap("sqrt", a + 1)),), _libm("acosh"),
          domain=((1.2, 4.0),), sympy=lambda sp, a: sp.acosh(a))  # fmt: skip
_register("atanh", 1, np.arctanh, (lambda g, o, a: g / (1 - a * a),), _libm("atanh"),
          domain=(UNIT,), sympy=lambda sp, a: sp.atanh(a))  # fmt: skip
_register("exp", 1, np.exp, (lambda g, o, a: g * o,), _libm("exp"),
          domain=(SMALL,), sympy=lambda sp, a: sp.exp(a))  # fmt: skip
_register("expm1", 1, np.expm1, (lambda g, o, a: g * (o + 1),), _libm("expm1"),
          domain=(SMALL,), sympy=lambda sp, a: _cfunc("expm1")(a))  # fmt: skip
_register("log", 1, np.log, (lambda g, o, a: g / a,), _libm("log"),
          domain=(POS,), sympy=lambda sp, a: sp.log(a))  # fmt: skip
_register("log1p", 1, np.log1p, (lambda g, o, a: g / (1 + a),), _libm("log1p"),
          domain=((-0.8, 4.0),), sympy=lambda sp, a: _cfunc("log1p")(a))  # fmt: skip
_register("sqrt", 1, np.sqrt, (lambda g, o, a: g / (2 * o),), Lowering("intrinsic", "llvm.sqrt"),
          domain=(POS,), sympy=lambda sp, a: sp.sqrt(a))  # fmt: skip
# abs'(0) = 0: the derivative is sign(a), and sign(0) = 0.
_register("abs", 1, np.abs, (lambda g, o, a: g * ap("sign", a),),
          Lowering("intrinsic", "llvm.fabs"), domain=(SMALL,),
          sympy=lambda sp, a: sp.Abs(a))  # fmt: skip
_register("sign", 1, np.sign, (None,), _custom("sign", _emit_sign), domain=(SMALL,),
          differentiable=False, sympy=lambda sp, a: sp.sign(a))  # fmt: skip
_register("sigmoid", 1, _sigmoid, (lambda g, o, a: g * (o * (1 - o)),),
          _custom("sigmoid", _emit_sigmoid), domain=(SMALL,),
          sympy=lambda sp, a: 1 / (1 + sp.exp(-a)))  # fmt: skip
# relu'(0) = 0: the derivative is the indicator of a > 0.
_register("relu", 1, lambda a: np.maximum(a, 0.0), (lambda g, o, a: g * ap("gt", a, 0.0),),
          _custom("relu", _emit_relu), domain=(SMALL,),
          sympy=lambda sp, a: sp.Max(a, 0))  # fmt: skip
_register("softplus", 1, _softplus, (lambda g, o, a: g * ap("sigmoid", a),),
          _custom("softplus", _emit_softplus), domain=(SMALL,),
          sympy=lambda sp, a: sp.log(1 + sp.exp(a)))  # fmt: skip
_register("erf", 1, _erf,
          (lambda g, o, a: g * (2 / math.sqrt(math.pi)) * ap("exp", -(a * a)),),
          _libm("erf"), domain=(SMALL,),
          sympy=lambda sp, a: sp.erf(a))  # fmt: skip

# The log-gamma function and its derivatives: lgamma (log |Γ(x)|), digamma (ψ = lgamma') and
# trigamma (ψ' = lgamma''). trigamma's own derivative is built from graph ops (_tetragamma), so
# every derivative of lgamma exists and can be compiled. Poles: lgamma is +inf at 0 and the
# negative integers (as C's lgamma); digamma is -inf at +0, +inf at -0 and nan at the negative
# integers and -inf; trigamma is +inf at all of them (as scipy.special's digamma and
# polygamma(1, x)). For x < 0 digamma and trigamma reflect to 1 - x.


def _c_lgamma() -> Callable[[float], float]:
    """One double's lgamma: the C library's reentrant ``lgamma_r``, the very function compiled
    code calls (glibc's ``lgamma``), so both backends agree to the bit; CPython's
    ``math.lgamma`` is a Lanczos sum that loses up to ~1e-7 relative near the zeros of lgamma
    at 1 and 2, where glibc stays within an ulp or two. Where ctypes finds no ``lgamma_r``,
    ``math.lgamma`` with C's answers at the poles (+inf) and on overflow (+inf)."""
    try:
        c = ctypes.CDLL(None).lgamma_r
    except (OSError, AttributeError, TypeError):
        c = None
    if c is not None:
        c.restype = ctypes.c_double
        c.argtypes = [ctypes.c_double, ctypes.POINTER(ctypes.c_int)]
        return lambda v: c(v, ctypes.byref(ctypes.c_int()))

    def fallback(v: float) -> float:
        try:
            return math.lgamma(v)
        except (ValueError, OverflowError):  # a pole, or beyond DBL_MAX
            return math.inf

    return fallback


_lgamma_scalar = _c_lgamma()


def _lgamma(x):
    with np.errstate(all="ignore"):  # C's lgamma raises divide-by-zero at a pole, as numpy would
        return np.vectorize(_lgamma_scalar, otypes=[np.float64])(x)


# digamma and trigamma are written once, over a small set of operations ``m``: numpy's
# (_NUMPY_MATH, the interpreter's form) and the LLVM value builder's (_LLVMMath, the custom
# emitter), so compiled code does the interpreter's IEEE operations in its order and agrees
# with it to the last few ulp (exactly, but for libmvec's log/tan/sin in the 4-lane loop).
# Measured against mpmath on (0.5, 5) and on 1e-8..1e8: digamma within 5e-15 relative,
# trigamma within 7e-16.
_PSI_SHIFTS = 10  # recurrence steps: x < 10 moves up by one, at most this many times
_PSI_LARGE = 10.0  # from here on the asymptotic series is accurate to an ulp
# B_2k / 2k, k = 1..8: psi(y) ~ log y - 1/(2y) - sum_k B_2k / (2k y^2k).
_PSI_SERIES = (
    0.08333333333333333, -0.008333333333333333, 0.003968253968253968, -0.004166666666666667,
    0.007575757575757576, -0.021092796092796094, 0.08333333333333333, -0.4432598039215686,
)  # fmt: skip
# B_2k, k = 1..9: psi'(y) ~ 1/y + 1/(2y^2) + sum_k B_2k / y^(2k+1).
_PSI1_SERIES = (
    0.16666666666666666, -0.03333333333333333, 0.023809523809523808, -0.03333333333333333,
    0.07575757575757576, -0.2531135531135531, 1.1666666666666667, -7.092156862745098,
    54.971177944862156,
)  # fmt: skip
# (2k + 1) B_2k, k = 1..9: psi''(y) ~ -1/y^2 - 1/y^3 - sum_k (2k + 1) B_2k / y^(2k+2).
_PSI2_SERIES = (
    0.5, -0.16666666666666666, 0.16666666666666666, -0.3, 0.8333333333333334,
    -3.2904761904761903, 17.5, -120.56666666666666, 1044.452380952381,
)  # fmt: skip
# Near its positive zero digamma is its Taylor series there, so it keeps its relative accuracy
# where log y - ... - sum 1/(x+k) cancels: _PSI_ROOT is the double nearest the zero and
# _PSI_ROOT_TAYLOR[n] = psi^(n)(_PSI_ROOT) / n! (mpmath, 40 digits: polygamma(n, r) / n!),
# used for |x - _PSI_ROOT| < _PSI_NEAR (the last term is then below 1e-17 of the value).
_PSI_ROOT = 1.4616321449683622
_PSI_NEAR = 0.2
_PSI_ROOT_TAYLOR = (
    -9.241265521729427e-17, 0.9676722454476212, -0.4427631689835922, 0.2584997609556511,
    -0.16394270544240658, 0.10782405069126241, -0.07219956125645474, 0.04880428816414313,
    -0.033161126474847376, 0.022597648232218118, -0.01542476590494897, 0.010538791616612184,
    -0.007204534386356875, 0.004926781395729858, -0.0033698016554393312, 0.00230512632673493,
    -0.001576936771430199, 0.0010788252019162978, -0.000738070938996006, 0.0005049532658346027,
    -0.0003454680251063082,
)  # fmt: skip

_NUMPY_MATH = SimpleNamespace(
    c=np.float64, add=np.add, sub=np.subtract, mul=np.multiply, div=np.divide, lt=np.less,
    gt=np.greater, eq=np.equal, select=np.where, log=np.log, tan=np.tan, sin=np.sin,
    abs=np.abs, floor=np.floor,
)  # fmt: skip


class _LLVMMath:
    """The operations of ``_NUMPY_MATH`` as LLVM instructions, over the value builder ``b``."""

    def __init__(self, b):
        self.b = b

    def c(self, v):
        return self.b.const(float(v))

    def add(self, x, y):
        return self.b.binop("fadd", x, y)

    def sub(self, x, y):
        return self.b.binop("fsub", x, y)

    def mul(self, x, y):
        return self.b.binop("fmul", x, y)

    def div(self, x, y):
        return self.b.binop("fdiv", x, y)

    def lt(self, x, y):
        return self.b.fcmp("olt", x, y)

    def gt(self, x, y):
        return self.b.fcmp("ogt", x, y)

    def eq(self, x, y):
        return self.b.fcmp("oeq", x, y)

    def select(self, mask, x, y):
        return self.b.select(mask, x, y)

    def log(self, x):
        return self.b.op("log", x)

    def tan(self, x):
        return self.b.op("tan", x)

    def sin(self, x):
        return self.b.op("sin", x)

    def abs(self, x):
        return self.b.op("abs", x)

    def floor(self, x):
        return self.b.intrinsic("llvm.floor", x)  # exact, as np.floor


def _horner(m, coefficients, z):
    out = m.c(coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = m.add(m.mul(out, z), m.c(c))
    return out


def _psi_reflection(m, x):
    """For x < 0 (Cephes' psi): p = floor(x), f = x - p in [0, 1), r = x - round(x) in
    [-1/2, 1/2] (exact), so the reflection's tan and sin see pi*r, not a large pi*x; and the
    argument y = 1 - x (x < 0) or x of the positive-argument series."""
    p = m.floor(x)
    f = m.sub(x, p)
    r = m.select(m.gt(f, m.c(0.5)), m.sub(x, m.add(p, m.c(1.0))), f)
    neg = m.lt(x, m.c(0.0))
    return neg, p, f, r, m.select(neg, m.sub(m.c(1.0), x), x)


def _psi_shift(m, y, term):
    """The recurrence: while y < _PSI_LARGE (at most _PSI_SHIFTS times, as selects), add
    ``term(y)`` to the sum and move y up by one. Returns the moved y and the sum."""
    total = m.c(0.0)
    for _ in range(_PSI_SHIFTS):
        small = m.lt(y, m.c(_PSI_LARGE))
        total = m.select(small, m.add(total, term(y)), total)
        y = m.select(small, m.add(y, m.c(1.0)), y)
    return y, total


def _digamma_steps(m, x):
    # psi(x) = psi(x + n) - sum_{k<n} 1/(x + k), then the asymptotic series at y = x + n >= 10;
    # near the zero 1.46..., its Taylor series; for x < 0, psi(1 - x) - pi / tan(pi x).
    neg, p, f, r, y0 = _psi_reflection(m, x)
    pi = m.c(math.pi)
    cot = m.select(m.eq(f, m.c(0.5)), m.c(0.0), m.div(pi, m.tan(m.mul(pi, r))))
    y, total = _psi_shift(m, y0, lambda v: m.div(m.c(1.0), v))
    z = m.div(m.c(1.0), m.mul(y, y))
    far = m.sub(m.log(y), m.div(m.c(0.5), y))
    far = m.sub(m.sub(far, m.mul(z, _horner(m, _PSI_SERIES, z))), total)
    t = m.sub(y0, m.c(_PSI_ROOT))  # exact where it is used (Sterbenz)
    near = _horner(m, _PSI_ROOT_TAYLOR, t)
    pos = m.select(m.lt(m.abs(t), m.c(_PSI_NEAR)), near, far)
    pole = m.eq(x, p)  # under x < 0: a negative integer, or -inf
    return m.select(neg, m.select(pole, m.c(math.nan), m.sub(pos, cot)), pos)


def _trigamma_steps(m, x):
    # psi'(x) = psi'(x + n) + sum_{k<n} 1/(x + k)^2, then the asymptotic series at y >= 10;
    # for x < 0, pi^2 / sin^2(pi x) - psi'(1 - x) (no cancellation: the first is >= pi^2).
    neg, p, f, r, y0 = _psi_reflection(m, x)
    s = m.sin(m.mul(m.c(math.pi), r))
    reflected = m.div(m.c(math.pi * math.pi), m.mul(s, s))
    y, total = _psi_shift(m, y0, lambda v: m.div(m.c(1.0), m.mul(v, v)))
    w = m.div(m.c(1.0), y)
    z = m.mul(w, w)
    pos = m.add(w, m.mul(z, m.add(m.c(0.5), m.mul(w, _horner(m, _PSI1_SERIES, z)))))
    pos = m.add(pos, total)
    pole = m.eq(x, p)
    return m.select(neg, m.select(pole, m.c(math.inf), m.sub(reflected, pos)), pos)


def _np_steps(steps):
    def numpy_form(x):
        with np.errstate(all="ignore"):
            return np.asarray(steps(_NUMPY_MATH, np.asarray(x, np.float64)), np.float64)

    return numpy_form


def _tetragamma(x):
    """psi''(x), the derivative of trigamma, as graph ops (so it is differentiated again by
    build_grad): psi''(u) = -2 sum_{k<10} 1/(u + k)^3 + the asymptotic series at u + 10, with
    u = x, or u = 1 - x and psi''(x) = psi''(1 - x) - 2 pi^3 cos(pi x) / sin^3(pi x) for x < 0."""
    neg = ap("lt", x, 0.0)
    u = ap("where", neg, 1.0 - x, x)
    total = 1.0 / (u * u * u)
    for k in range(1, _PSI_SHIFTS):
        v = u + float(k)
        total = total + 1.0 / (v * v * v)
    w = 1.0 / (u + float(_PSI_SHIFTS))
    z = w * w
    series = _PSI2_SERIES[-1]
    for c in reversed(_PSI2_SERIES[:-1]):
        series = series * z + c
    pos = -2.0 * total - z * (1.0 + w + z * series)
    s = ap("sin", math.pi * x)
    reflected = (2.0 * math.pi**3) * ap("cos", math.pi * x) / (s * s * s)
    return ap("where", neg, pos - reflected, pos)


GAMMA = (0.5, 5.0)  # away from the poles at 0, -1, ...: both zeros of lgamma and psi's inside

_register("lgamma", 1, _lgamma, (lambda g, o, a: g * ap("digamma", a),),
          Lowering("libm", "lgamma"),  # libmvec has no lgamma: four scalar calls in the loop
          domain=(GAMMA,), sympy=lambda sp, a: sp.loggamma(a))  # fmt: skip
# SymPy's digamma and trigamma evaluate to polygamma(0, a) and polygamma(1, a), which are not
# one function of the operand: the forms stay unevaluated, so from_sympy reads them back.
_register("digamma", 1, _np_steps(_digamma_steps), (lambda g, o, a: g * ap("trigamma", a),),
          _custom("digamma", lambda b, x: _digamma_steps(_LLVMMath(b), x)),
          domain=(GAMMA,), sympy=lambda sp, a: sp.digamma(a, evaluate=False))  # fmt: skip
_register("trigamma", 1, _np_steps(_trigamma_steps), (lambda g, o, a: g * _tetragamma(a),),
          _custom("trigamma", lambda b, x: _trigamma_steps(_LLVMMath(b), x)),
          domain=(GAMMA,), sympy=lambda sp, a: sp.trigamma(a, evaluate=False))  # fmt: skip

# Functions of two operands.
_register(
    "atan2", 2, np.arctan2,
    (lambda g, o, y, x: g * x / (x * x + y * y), lambda g, o, y, x: -(g * y) / (x * x + y * y)),
    _libm("atan2", 2), domain=(SMALL, POS),
    sympy=lambda sp, y, x: sp.atan2(y, x),
)  # fmt: skip


def _tie_share(a, b):
    """The share of a max's adjoint that goes to ``a``: 1 if a > b, 1/2 on a tie, else 0."""
    return ap("gt", a, b) + 0.5 * ap("eq", a, b)


_register(
    "max", 2, np.maximum,
    (lambda g, o, a, b: g * _tie_share(a, b), lambda g, o, a, b: g * _tie_share(b, a)),
    _custom("max", _emit_max), commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: sp.Max(a, b),
)  # fmt: skip
_register(
    "min", 2, np.minimum,
    (lambda g, o, a, b: g * _tie_share(b, a), lambda g, o, a, b: g * _tie_share(a, b)),
    _custom("min", _emit_min), commutative=True, domain=(SMALL, SMALL),
    sympy=lambda sp, a, b: sp.Min(a, b),
)  # fmt: skip

# Comparisons give 1.0 or 0.0 (numpy's bool cast to float) and carry no gradient.
for _name, _sym, _uf, _pred, _comm, _rel in (
    ("lt", "<", np.less, "olt", False, "Lt"),
    ("le", "<=", np.less_equal, "ole", False, "Le"),
    ("gt", ">", np.greater, "ogt", False, "Gt"),
    ("ge", ">=", np.greater_equal, "oge", False, "Ge"),
    ("eq", "==", np.equal, "oeq", True, "Eq"),
    ("ne", "!=", np.not_equal, "une", True, "Ne"),
):
    _register(
        _name, 2, _cmp(_uf), (None, None), Lowering("fcmp", _pred), text=_sym, infix=True,
        commutative=_comm, domain=(SMALL, SMALL), differentiable=False, sympy_relation=_rel,
        sympy=(lambda rel: lambda sp, a, b: sp.Piecewise((1, getattr(sp, rel)(a, b)), (0, True)))(
            _rel
        ),
    )  # fmt: skip

# where(c, a, b): a where c is nonzero (NaN counts as nonzero, as in numpy's truth test), else b.
_register(
    "where", 3, lambda c, a, b: np.where(c != 0, a, b),
    (None, lambda g, o, c, a, b: ap("where", c, g, 0.0),
     lambda g, o, c, a, b: ap("where", c, 0.0, g)),
    _custom("where", _emit_where), domain=((-1.0, 1.0), SMALL, SMALL), selects=True,
    sympy=lambda sp, c, a, b: sp.Piecewise((a, sp.Ne(c, 0)), (b, True)),
)  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Tensor ops. Operands are n-d arrays; attributes are canonical (normalized by the op's
# ``normalize`` when a node is created), so equal nodes hash-cons. Elementwise ops above already
# broadcast like numpy; their VJP contributions have the output's shape and build_grad sums them
# back to each operand's shape (unbroadcasting lives in grad.py, not in the rules).
# ----------------------------------------------------------------------------------------------


MAX_EXTENT = 2**40  # no dimension, index, stride or padding of a float64 array gets near this

# Attributes several tensor ops share (each op's schema; its normalize checks the values).
_REDUCE_ATTRS = (Attr("axis", ("int", "tuple", "None"), None), Attr("keepdims", ("bool",), False))
_SHAPE = Attr("shape", ("int", "tuple"))
_INDEX = Attr("index", ("index",))
_KERNEL = Attr("kernel_size", ("int", "tuple"))
_STRIDE = Attr("stride", ("int", "tuple"), 1)
# Pooling: 2 x 2 windows by default, each window next to the last (stride None: the kernel size).
_POOL_ATTRS = (
    Attr("kernel_size", ("int", "tuple"), 2),
    Attr("stride", ("int", "tuple", "None"), None),
)


def _int(op: str, what: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ShapeError(f"{op}: {what} must be an int, got {type(v).__name__} {show(v)}")
    if abs(int(v)) > MAX_EXTENT:
        raise ShapeError(f"{op}: {what} {show(int(v))} is too large (more than 2**40)")
    return int(v)


def _axes(op: str, shape: tuple[int, ...], axis) -> tuple[int, ...]:
    """``axis`` (None, an int or a tuple of ints, negative counting from the end) as sorted axes."""
    nd = len(shape)
    if axis is None:
        return tuple(range(nd))
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        a = _int(op, "axis", a)
        if not -nd <= a < nd:
            raise ShapeError(f"{op}: axis {a} is out of range for operand 0 of shape {shape}")
        out.append(a % nd)
        if len(out) > nd:  # a repeat for sure: stop before walking a huge tuple
            break
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: repeated axis in {show(axis)}")
    return tuple(sorted(out))


def kept_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` with the reduced ``axes`` kept as 1 (numpy's keepdims)."""
    return tuple(1 if d in axes else n for d, n in enumerate(shape))


def _reduce_normalize(op, shapes, attrs):
    keep = attrs["keepdims"]
    if not isinstance(keep, (bool, np.bool_)) and not (type(keep) is int and keep in (0, 1)):
        raise ShapeError(f"{op}: keepdims must be True or False, got {show(keep)}")
    return {"axis": _axes(op, shapes[0], attrs["axis"]), "keepdims": bool(keep)}


def _reduce_shape(op, shapes, attrs):
    axes, shape = attrs["axis"], shapes[0]
    if attrs["keepdims"]:
        return kept_shape(shape, axes)
    return tuple(n for d, n in enumerate(shape) if d not in axes)


def _restore(g, x, attrs):
    """A reduction's cotangent ``g`` reshaped so it broadcasts against the operand ``x``."""
    if attrs["keepdims"] or not x.shape:
        return g
    return ap("reshape", g, shape=kept_shape(x.shape, attrs["axis"]))


def _linear(op: str):
    """The JVP of an op linear in its one operand: the op applied to the tangent."""
    return lambda ts, o, x, **attrs: ap(op, ts[0], **attrs)


def _amax_jvp(ts, o, x, axis, keepdims):
    # The tangent of a maximum: the mean of the tangents at the maxima (ties split evenly).
    hit = ap("eq", x, _restore(o, x, {"axis": axis, "keepdims": keepdims}))
    total = ap("sum", hit * ts[0], axis=axis, keepdims=keepdims)
    return total / ap("sum", hit, axis=axis, keepdims=keepdims)


def _logsumexp_jvp(ts, o, x, axis, keepdims):
    weights = ap("exp", x - _restore(o, x, {"axis": axis, "keepdims": keepdims}))
    return ap("sum", weights * ts[0], axis=axis, keepdims=keepdims)


def _bilinear(op: str, ts, a, b, **attrs):
    """The JVP of an op linear in each operand: op(ta, b) + op(a, tb), each where it has one."""
    parts = []
    if ts[0] is not None:
        parts.append(ap(op, ts[0], b, **attrs))
    if ts[1] is not None:
        parts.append(ap(op, a, ts[1], **attrs))
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _sum_vjp(g, o, x, axis, keepdims):
    return ap("broadcast_to", _restore(g, x, {"axis": axis, "keepdims": keepdims}), shape=x.shape)


def _amax_vjp(g, o, x, axis, keepdims):
    # The adjoint goes to the maxima, split evenly among ties (as the scalar max splits 1/2-1/2).
    attrs = {"axis": axis, "keepdims": keepdims}
    hit = ap("eq", x, _restore(o, x, attrs))
    share = hit / ap("sum", hit, axis=axis, keepdims=True)
    return _restore(g, x, attrs) * share


def _reduce_pattern(shapes, attrs, consts):
    """Each operand element feeds the one output element its reduced axes collapse to."""
    shape, axes = shapes[0], attrs["axis"]
    where = np.indices(shape).reshape(len(shape), -1) if shape else np.zeros((0, 1), int)
    kept = [d for d in range(len(shape)) if d not in axes]
    out = np.ravel_multi_index(tuple(where[kept]), tuple(shape[d] for d in kept)) if kept else 0
    return [(np.broadcast_to(out, (_size(shape),)), np.arange(_size(shape)))]


def _matmul_pattern(shapes, attrs, consts):
    """out[i, j] reads row i of a and column j of b, whole."""
    (m, k), (_, n) = shapes
    i, j, inner = (a.ravel() for a in np.meshgrid(range(m), range(n), range(k), indexing="ij"))
    return [(i * n + j, i * k + inner), (i * n + j, inner * n + j)]


def _window_sum_pattern(shapes, attrs, consts):
    """Each operand element (one entry of one window) adds to the element it was taken from:
    the move ``windows`` makes from the output's shape, read backwards."""
    size = _size(attrs["shape"])
    numbers = np.arange(size, dtype=float).reshape(attrs["shape"])
    source = _windows(numbers, attrs["kernel_size"], attrs["stride"]).ravel().astype(np.int64)
    return [(source, np.arange(source.size))]


def _size(shape) -> int:
    return math.prod(int(n) for n in shape)  # Python ints: no int64 overflow


def _mean_expand(x, axis, keepdims):
    count = _size([x.shape[d] for d in axis])
    return ap("sum", x, axis=axis, keepdims=keepdims) / float(count)


_register("sum", 1, lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
          (_sum_vjp,), Lowering("reduce", "fadd", start=0.0), schema=_REDUCE_ATTRS,
          shape=_reduce_shape, jvp=_linear("sum"),
          normalize=_reduce_normalize, elementwise=False,
          domain=(SMALL,), pattern=_reduce_pattern)  # fmt: skip
_register("mean", 1, lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims),
          (), None, schema=_REDUCE_ATTRS, shape=_reduce_shape,
          normalize=_reduce_normalize, expand=_mean_expand, elementwise=False,
          domain=(SMALL,))  # fmt: skip
_register("amax", 1, lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
          (_amax_vjp,), Lowering("reduce", "llvm.maximum", start=-np.inf), text="max",
          jvp=_amax_jvp,
          schema=_REDUCE_ATTRS, shape=_reduce_shape,
          normalize=_reduce_normalize, elementwise=False, domain=(SMALL,),
          pattern=_reduce_pattern)  # fmt: skip


def _matmul_shape(op, shapes, attrs):
    a, b = shapes
    for pos, s in enumerate(shapes):
        if len(s) != 2:
            raise ShapeError(f"{op}: operand {pos} must be a matrix, got shape {s}")
    if a[1] != b[0]:
        raise ShapeError(
            f"{op}: operand 1 has shape {b} but operand 0 has shape {a}: "
            f"inner dimensions {a[1]} and {b[0]} differ"
        )
    return (a[0], b[1])


_register(
    "matmul", 2, np.matmul,
    (lambda g, o, a, b: ap("matmul", g, ap("transpose", b, axes=(1, 0))),
     lambda g, o, a, b: ap("matmul", ap("transpose", a, axes=(1, 0)), g)),
    Lowering("barrier", "matmul"), text="@", infix=True, shape=_matmul_shape, elementwise=False,
    domain=(SMALL, SMALL), jvp=lambda ts, o, a, b: _bilinear("matmul", ts, a, b),
    pattern=_matmul_pattern, blas=True,
)  # fmt: skip


def _transpose_normalize(op, shapes, attrs):
    nd = len(shapes[0])
    axes = attrs["axes"]
    if axes is None:
        return {"axes": tuple(range(nd))[::-1]}
    if not isinstance(axes, (tuple, list)):
        raise ShapeError(f"{op}: axes must be a tuple of ints, got {show(axes)}")
    if len(axes) != nd:
        raise ShapeError(
            f"{op}: axes {show(axes)} is not a permutation of the {nd} axes of operand 0 of "
            f"shape {shapes[0]}"
        )
    raw = tuple(_int(op, "axes entry", a) for a in axes)
    # An entry outside [-nd, nd) is an error, as in numpy (a bare modulo took 2 as 0 on a matrix).
    axes = tuple(a % nd for a in raw if -nd <= a < nd)
    if len(axes) != len(raw) or sorted(axes) != list(range(nd)):
        raise ShapeError(
            f"{op}: axes {show(attrs.get('axes'))} is not a permutation of the {nd} axes of "
            f"operand 0 of shape {shapes[0]}"
        )
    return {"axes": axes}


def _inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


_register("transpose", 1, lambda x, axes: np.transpose(x, axes),
          (lambda g, o, x, axes: ap("transpose", g, axes=_inverse(axes)),),
          Lowering("view", "transpose"),
          schema=(Attr("axes", ("tuple", "None"), None),), normalize=_transpose_normalize,
          elementwise=False,
          shape=lambda op, shapes, at: tuple(shapes[0][a] for a in at["axes"]),
          domain=(SMALL,), jvp=_linear("transpose"), pattern=MOVES)  # fmt: skip


def _shape_attr(op, value, positive: bool = True) -> tuple[int, ...]:
    """A ``shape`` attribute: an int or a tuple of at most MAX_NDIM ints, positive unless
    ``positive`` is False (reshape's -1 is resolved by its normalize)."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    if len(items) > MAX_NDIM:
        raise ShapeError(f"{op}: shape has {len(items)} entries, more than {MAX_NDIM}")
    shape = tuple(_int(op, "shape entry", n) for n in items)
    if positive and any(n < 1 for n in shape):
        raise ShapeError(f"{op}: shape {shape} must hold positive ints")
    return shape


def _reshape_normalize(op, shapes, attrs):
    shape = _shape_attr(op, attrs["shape"], positive=False)
    size = _size(shapes[0])
    if shape.count(-1) == 1:
        rest = _size([n for n in shape if n != -1])
        if rest and size % rest == 0:
            shape = tuple(size // rest if n == -1 else n for n in shape)
    if any(n < 1 for n in shape) or _size(shape) != size:
        raise ShapeError(
            f"{op}: cannot reshape operand 0 of shape {shapes[0]} ({size} elements) to "
            f"{show(attrs.get('shape'))}"
        )
    return {"shape": shape}


_register("reshape", 1, lambda x, shape: np.reshape(x, shape),
          (lambda g, o, x, shape: ap("reshape", g, shape=x.shape),), Lowering("view", "reshape"),
          schema=(_SHAPE,),
          normalize=_reshape_normalize, elementwise=False,
          shape=lambda op, shapes, at: at["shape"], domain=(SMALL,),
          jvp=_linear("reshape"), pattern=MOVES)  # fmt: skip


def _broadcast_normalize(op, shapes, attrs):
    shape = _shape_attr(op, attrs["shape"])
    if _broadcast_pair(shapes[0], shape) != shape:
        raise ShapeError(f"{op}: operand 0 of shape {shapes[0]} does not broadcast to {shape}")
    return {"shape": shape}


# The VJP is the cotangent itself: build_grad sums it back to the operand's shape.
_register("broadcast_to", 1, lambda x, shape: np.broadcast_to(x, shape).copy(),
          (lambda g, o, x, shape: g,), Lowering("view", "broadcast"), schema=(_SHAPE,),
          normalize=_broadcast_normalize,
          elementwise=False, shape=lambda op, shapes, at: at["shape"],
          domain=(SMALL,), jvp=_linear("broadcast_to"), pattern=MOVES)  # fmt: skip


def _index_item(op: str, item, n: int):
    """One index entry against a dimension of ``n``: an int or ``("s", start, count, step)``."""
    if type(item) is tuple and len(item) == 4 and type(item[0]) is str and item[0] == "s":
        # The canonical form (what this function returns, and what VJP rules pass on).
        start, count, step = (_int(op, "slice bound", v) for v in item[1:])
        if count < 1:
            raise ShapeError(f"{op}: slice {show(item)} selects no element")
        stop = start + count * step
        item = slice(start, stop if stop >= 0 else None, step)
    if isinstance(item, slice):
        for part in (item.start, item.stop, item.step):
            if part is not None:
                _int(op, "slice bound", part)
        if item.step == 0:
            raise ShapeError(f"{op}: slice step cannot be zero")
        start, stop, step = item.indices(n)
        count = len(range(start, stop, step))
        if count == 0:
            raise ShapeError(f"{op}: slice {show(item)} of a dimension of {n} is empty")
        return ("s", start, count, step)
    if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
        raise ShapeError(
            f"{op}: index entry {show(item)} ({type(item).__name__}) is not an int, a slice or "
            "'...': None (newaxis) is not supported, and an array or list of indices is a take "
            "(x[array] builds one)"
        )
    k = _int(op, "index", item)
    if not -n <= k < n:
        raise ShapeError(f"{op}: index {k} is out of range for a dimension of {n}")
    return k % n


def normalize_index(op: str, shape: tuple[int, ...], index, what: str = "operand 0") -> tuple:
    """A constant index (ints, slices, one Ellipsis) as one canonical entry per dimension.

    ``what`` names the indexed shape in messages (embed indexes its target ``shape`` attribute).
    """
    items = list(index) if isinstance(index, tuple) else [index]
    # By identity: ``Ellipsis in items`` compares with ==, which is ambiguous on an array entry.
    dots = [k for k, item in enumerate(items) if item is Ellipsis]
    if len(dots) > 1:
        raise ShapeError(f"{op}: an index can hold only one '...'")
    if dots:
        at = dots[0]
        items[at : at + 1] = [slice(None)] * (len(shape) - len(items) + 1)
    if len(items) > len(shape):
        raise ShapeError(f"{op}: {len(items)} indices for {what} of shape {shape}")
    items += [slice(None)] * (len(shape) - len(items))
    out = []
    for d, (item, n) in enumerate(zip(items, shape)):
        try:
            out.append(_index_item(op, item, n))
        except ShapeError as err:  # name the operand and its shape, not only the dimension
            raise ShapeError(f"{err} (axis {d} of {what} of shape {shape})") from None
    return tuple(out)


def decode_index(index: tuple) -> tuple:
    """The numpy index of a canonical one."""
    out = []
    for item in index:
        if isinstance(item, tuple):
            _, start, count, step = item
            stop = start + count * step
            out.append(slice(start, stop if stop >= 0 else None, step))
        else:
            out.append(item)
    return tuple(out)


def indexed_shape(index: tuple) -> tuple[int, ...]:
    return tuple(item[2] for item in index if isinstance(item, tuple))


def _embed(x, index, shape):
    z = np.zeros(shape)
    z[decode_index(index)] = x
    return z


def _embed_normalize(op, shapes, attrs):
    shape = _shape_attr(op, attrs["shape"])
    index = normalize_index(op, shape, attrs["index"], what="the shape attribute")
    if indexed_shape(index) != tuple(shapes[0]):
        raise ShapeError(
            f"{op}: operand 0 has shape {shapes[0]} but the index selects {indexed_shape(index)}"
        )
    return {"index": index, "shape": shape}


_register("getitem", 1, lambda x, index: x[decode_index(index)],
          (lambda g, o, x, index: ap("embed", g, index=index, shape=x.shape),),
          Lowering("view", "index"),
          text="[]", schema=(_INDEX,), elementwise=False,
          normalize=lambda op, shapes, at: {"index": normalize_index(op, shapes[0],
                                                                     at["index"])},
          shape=lambda op, shapes, at: indexed_shape(at["index"]),
          domain=(SMALL,), jvp=_linear("getitem"), pattern=MOVES)  # fmt: skip
# embed: the operand placed at ``index`` in zeros of ``shape`` (the adjoint of getitem; pads).
_register("embed", 1, _embed,
          (lambda g, o, x, index, shape: ap("getitem", g, index=index),),
          Lowering("barrier", "embed"),
          schema=(_INDEX, _SHAPE), normalize=_embed_normalize, elementwise=False,
          shape=lambda op, shapes, at: at["shape"], domain=(SMALL,),
          jvp=_linear("embed"), pattern=MOVES)  # fmt: skip


# take / scatter_add: elements along an axis picked by an index operand (a constant or any node:
# float64 holding integers, negative ones counting from the end as numpy's). An index that is not
# an integer inside [-n, n) (nan, 1.5, out of range) picks nan and adds nothing, in numpy and in
# compiled code alike: no value an input holds makes a kernel read or write outside its arrays.
_AXIS = Attr("axis", ("int",), 0)


def valid_indices(idx, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(k, ok)``: the flat indices of ``idx`` into a dimension of ``n`` in [0, n), 0 where
    ``ok`` (an integer inside [-n, n)) is False."""
    idx = np.asarray(idx, dtype=np.float64).ravel()
    with np.errstate(invalid="ignore"):
        ok = (idx == np.floor(idx)) & (idx >= -n) & (idx < n)
    k = np.where(ok, idx, 0.0).astype(np.int64)
    return np.where(k < 0, k + n, k), ok


def _take(x, idx, axis):
    k, ok = valid_indices(idx, x.shape[axis])
    out = np.take(x, k, axis=axis)
    if not ok.all():
        out[(slice(None),) * axis + (~ok,)] = np.nan
    return out.reshape(x.shape[:axis] + np.shape(idx) + x.shape[axis + 1 :])


def _scatter_add(g, idx, axis, size):
    return scatter_into(g, idx, axis, size, 0.0)


def scatter_into(g, idx, axis, size, zero):
    """scatter_add's numpy form from ``zero``: g's slices along the index axes added where the
    indices point, in the indices' order (the compiled loop's order, so both round alike). The
    element graph of batched calls passes a constant node as ``zero`` (g then holds Exprs)."""
    m, lead = math.prod(np.shape(idx)), g.shape[:axis]
    trail = g.shape[axis + np.ndim(idx) :]
    k, ok = valid_indices(idx, size)
    rows = np.moveaxis(np.reshape(g, lead + (m,) + trail), axis, 0)
    out = np.full((size,) + lead + trail, zero, dtype=object if g.dtype == object else None)
    np.add.at(out, k[ok], rows[ok])
    return np.moveaxis(out, 0, axis)


def _axis_of(op: str, ndim: int, axis, what: str) -> int:
    a = _int(op, "axis", axis)
    if not -ndim <= a < ndim:
        raise ShapeError(f"{op}: axis {a} is out of range for {what}")
    return a % ndim


def _take_normalize(op, shapes, attrs):
    x = shapes[0]
    if not x:
        raise ShapeError(f"{op}: operand 0 is a scalar: there is no axis to take along")
    return {"axis": _axis_of(op, len(x), attrs["axis"], f"operand 0 of shape {x}")}


def _take_shape(op, shapes, attrs):
    (x, idx), axis = shapes, attrs["axis"]
    return (*x[:axis], *idx, *x[axis + 1 :])


def _scatter_normalize(op, shapes, attrs):
    g, idx = shapes
    size = _int(op, "size", attrs["size"])
    if size < 1:
        raise ShapeError(f"{op}: size must be at least 1, got {size}")
    ndim = len(g) - len(idx) + 1  # the output's
    if ndim < 1:
        raise ShapeError(f"{op}: operand 0 of shape {g} has fewer axes than the indices {idx}")
    axis = _axis_of(op, ndim, attrs["axis"], f"a result of {ndim} axes")
    if tuple(g[axis : axis + len(idx)]) != tuple(idx):
        raise ShapeError(
            f"{op}: operand 0 of shape {g} does not hold the indices' shape {idx} at axis {axis}"
        )
    return {"axis": axis, "size": size}


def _scatter_shape(op, shapes, attrs):
    (g, idx), axis = shapes, attrs["axis"]
    return (*g[:axis], attrs["size"], *g[axis + len(idx) :])


def _zeros(e, shape: tuple[int, ...]):
    """Zeros of ``shape`` in ``e``'s graph: one constant 0.0, broadcast (a view, no array)."""
    zero = e.graph.const(0.0)
    return ap("broadcast_to", zero, shape=shape) if shape else zero


def _linear_first(op: str):
    """The JVP of an op linear in operand 0 whose other operand has no derivative (indices)."""

    def jvp(ts, o, x, idx, **attrs):
        return _zeros(o, o.shape) if ts[0] is None else ap(op, ts[0], idx, **attrs)

    return jvp


def _picked(attrs, idx, big: tuple[int, ...]):
    """(small flat index, big flat index) of each element take moves, for constant indices
    ``idx`` (None: unknown): ``big`` the shape indexed along the axis, the small one lead +
    idx + trail. Invalid indices move nothing."""
    if idx is None:
        return None
    axis = attrs["axis"]
    axis_size = big[axis]
    k, ok = valid_indices(idx, axis_size)
    lead, trail = big[:axis], big[axis + 1 :]
    m = k.size
    at = np.indices((_size(lead), m, _size(trail))).reshape(3, -1)
    keep = ok[at[1]]
    small = np.ravel_multi_index(tuple(at), (_size(lead), m, _size(trail)))[keep]
    big_at = np.ravel_multi_index((at[0], k[at[1]], at[2]), (_size(lead), axis_size, _size(trail)))
    return small, big_at[keep]


def _take_pattern(shapes, attrs, consts):
    pairs = _picked(attrs, consts[1], shapes[0])
    return None if pairs is None else [pairs, None]


def _scatter_pattern(shapes, attrs, consts):
    pairs = _picked(attrs, consts[1], _scatter_shape("scatter_add", shapes, attrs))
    return None if pairs is None else [pairs[::-1], None]


# concatenate: its operands joined along an axis (numpy.concatenate); stack is a concatenate of
# operands given a new axis of 1 (a free reshape). Variadic: one node, whatever the count, so a
# Jacobian of 26 columns is one copy of each column, not 26 placements of the whole.
def _concatenate_normalize(op, shapes, attrs):
    if not shapes:
        raise ShapeError(f"{op}: needs at least one operand")
    first = shapes[0]
    if not first:
        raise ShapeError(f"{op}: operand 0 is a scalar: there is no axis to join along")
    axis = _axis_of(op, len(first), attrs["axis"], f"operand 0 of shape {first}")
    for k, s in enumerate(shapes[1:], 1):
        others = [(n, m) for d, (n, m) in enumerate(zip(s, first)) if d != axis]
        if len(s) != len(first) or any(n != m for n, m in others):
            raise ShapeError(
                f"{op}: operand {k} has shape {s}, which does not join operand 0's {first} "
                f"along axis {axis}"
            )
    return {"axis": axis}


def _concatenate_shape(op, shapes, attrs):
    axis = attrs["axis"]
    return (*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1 :])


def joined_at(shapes, axis: int) -> list[int]:
    """Where each operand of a concatenate starts along ``axis`` (and the total, last)."""
    starts = [0]
    for s in shapes:
        starts.append(starts[-1] + s[axis])
    return starts


def _concatenate_vjp(pos, g, o, *xs, axis):
    lo = joined_at([x.shape for x in xs[:pos]], axis)[-1]
    index = (slice(None),) * axis + (slice(lo, lo + xs[pos].shape[axis]),)
    return ap("getitem", g, index=index)


def _concatenate_jvp(ts, o, *xs, axis):
    parts = [t if t is not None else _zeros(o, x.shape) for t, x in zip(ts, xs)]
    return ap("concatenate", *parts, axis=axis)


def _concatenate_pattern(shapes, attrs, consts):
    axis = attrs["axis"]
    out = np.arange(_size(_concatenate_shape("concatenate", shapes, attrs)))
    out = out.reshape(_concatenate_shape("concatenate", shapes, attrs))
    pieces = np.split(out, joined_at(shapes, axis)[1:-1], axis=axis)
    return [(piece.ravel(), np.arange(piece.size)) for piece in pieces]


_register("concatenate", VARIADIC, lambda *xs, axis: np.concatenate(xs, axis=axis), (),
          Lowering("barrier", "concatenate"), schema=(_AXIS,), normalize=_concatenate_normalize,
          shape=_concatenate_shape, elementwise=False, vjp_at=_concatenate_vjp,
          jvp=_concatenate_jvp, pattern=_concatenate_pattern)  # fmt: skip
# einsum: a sum of products over named axes, numpy's notation ("ij,jk->ik"; without "->" the
# output is the letters used once, sorted, as numpy's). Each letter names one axis of one size;
# a letter repeated within one operand (a diagonal), '...' and broadcasting of size-1 axes are
# not supported. Batched matrix products are a case of it.
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
MAX_EINSUM_OPERANDS = 32


def einsum_parts(spec: str) -> tuple[list[str], str]:
    """The operands' subscripts and the output's of a canonical spec."""
    ins, out = spec.split("->")
    return ins.split(","), out


def _einsum_normalize(op, shapes, attrs):
    spec = attrs["spec"].replace(" ", "")
    if not shapes or len(shapes) > MAX_EINSUM_OPERANDS:
        raise ShapeError(f"{op}: takes 1 to {MAX_EINSUM_OPERANDS} operands, got {len(shapes)}")
    if spec.count("->") > 1 or "." in spec or not set(spec) <= _LETTERS | set(",->"):
        raise ShapeError(f"{op}: spec {spec!r} is not letters, commas and one '->' ('...' is "
                         "not supported)")  # fmt: skip
    head, arrow, out = spec.partition("->")
    ins = head.split(",")
    if len(ins) != len(shapes):
        raise ShapeError(f"{op}: spec {spec!r} names {len(ins)} operands, got {len(shapes)}")
    if not arrow:  # numpy's implicit output: the letters used once, in alphabetical order
        out = "".join(sorted(c for c in set(head) - {","} if head.count(c) == 1))
    if "-" in out or ">" in out:
        raise ShapeError(f"{op}: spec {spec!r} is not letters, commas and one '->'")
    sizes: dict[str, int] = {}
    for k, (sub, shape) in enumerate(zip(ins, shapes)):
        if len(sub) != len(shape):
            raise ShapeError(f"{op}: operand {k} has shape {shape} but {len(sub)} letters {sub!r}")
        if len(set(sub)) != len(sub):
            raise ShapeError(f"{op}: a letter repeated within operand {k}'s {sub!r} (a diagonal) "
                             "is not supported")  # fmt: skip
        for c, n in zip(sub, shape):
            if sizes.setdefault(c, n) != n:
                raise ShapeError(f"{op}: letter {c!r} is {sizes[c]} long and {n} long (operand "
                                 f"{k} of shape {shape})")  # fmt: skip
    if len(set(out)) != len(out) or not set(out) <= set(sizes):
        raise ShapeError(f"{op}: output {out!r} repeats a letter or has one no operand has")
    return {"spec": ",".join(ins) + "->" + out}


def einsum_sizes(shapes, spec: str) -> dict[str, int]:
    """Each letter's length, in order of first use."""
    sizes: dict[str, int] = {}
    for sub, shape in zip(einsum_parts(spec)[0], shapes):
        sizes.update(zip(sub, shape))
    return sizes


def _einsum_shape(op, shapes, attrs):
    sizes = einsum_sizes(shapes, attrs["spec"])
    return tuple(sizes[c] for c in einsum_parts(attrs["spec"])[1])


def _einsum_vjp(pos, g, o, *xs, spec):
    # The cotangent of operand pos: the output's cotangent contracted with the other operands,
    # then spread over the letters only this operand has (summed within it).
    ins, out = einsum_parts(spec)
    target = ins[pos]
    others = [k for k in range(len(xs)) if k != pos]
    present = set(out).union(*(ins[k] for k in others))
    kept = "".join(c for c in target if c in present)
    sub = ",".join([out, *(ins[k] for k in others)]) + "->" + kept
    grad = ap("einsum", g, *(xs[k] for k in others), spec=sub)
    if kept == target:
        return grad
    shape = xs[pos].shape
    ones = tuple(n if c in present else 1 for c, n in zip(target, shape))
    return ap("broadcast_to", ap("reshape", grad, shape=ones), shape=shape)


def _einsum_jvp(ts, o, *xs, spec):
    total = None
    for k, t in enumerate(ts):
        if t is not None:
            part = ap("einsum", *(t if j == k else x for j, x in enumerate(xs)), spec=spec)
            total = part if total is None else total + part
    return total


MAX_PATTERN_POINTS = 2**22  # an einsum's exact pattern walks its whole iteration space


def _einsum_pattern(shapes, attrs, consts):
    spec = attrs["spec"]
    ins, out = einsum_parts(spec)
    sizes = einsum_sizes(shapes, spec)
    letters = list(sizes)
    if math.prod(sizes.values()) > MAX_PATTERN_POINTS:
        return None
    at = dict(zip(letters, np.indices(tuple(sizes.values())).reshape(len(letters), -1)))

    def flat(sub):
        if not sub:
            return np.zeros(math.prod(sizes.values()), dtype=np.int64)
        return np.ravel_multi_index(tuple(at[c] for c in sub), tuple(sizes[c] for c in sub))

    rows = flat(out)
    return [(rows, flat(sub)) for sub in ins]


_register("einsum", VARIADIC, lambda *xs, spec: np.einsum(spec, *xs), (),
          Lowering("barrier", "einsum"), schema=(Attr("spec", ("name",)),),
          normalize=_einsum_normalize, shape=_einsum_shape, elementwise=False,
          vjp_at=_einsum_vjp, jvp=_einsum_jvp, pattern=_einsum_pattern, blas=True)  # fmt: skip
_register("take", 2, _take,
          (lambda g, o, x, idx, axis: ap("scatter_add", g, idx, axis=axis,
                                         size=x.shape[axis]), None),
          Lowering("barrier", "take"), schema=(_AXIS,), normalize=_take_normalize,
          shape=_take_shape, elementwise=False, domain=(SMALL, (0.0, 0.0)),
          jvp=_linear_first("take"), pattern=_take_pattern)  # fmt: skip
_register("scatter_add", 2, _scatter_add,
          (lambda g, o, x, idx, axis, size: ap("take", g, idx, axis=axis), None),
          Lowering("barrier", "scatter_add"), schema=(_AXIS, Attr("size", ("int",))),
          normalize=_scatter_normalize, shape=_scatter_shape, elementwise=False,
          domain=(SMALL, (0.0, 0.0)), jvp=_linear_first("scatter_add"),
          pattern=_scatter_pattern)  # fmt: skip


def _safe_max(x, axes):
    # The shift of a stable exp: the max, or 0 where the max is ±inf (so inf - inf is avoided).
    m = np.max(x, axis=axes, keepdims=True)
    return np.where(np.abs(m) < np.inf, m, 0.0)


def _np_logsumexp(x, axis, keepdims):
    m = _safe_max(x, axis)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return (
        out
        if keepdims
        else np.reshape(out, _reduce_shape("", (x.shape,), {"axis": axis, "keepdims": False}))
    )


def _shift(x, axis):
    m = ap("amax", x, axis=axis, keepdims=True)
    return ap("where", ap("lt", ap("abs", m), math.inf), m, 0.0)


def _logsumexp_expand(x, axis, keepdims):
    m = _shift(x, axis)
    out = ap("log", ap("sum", ap("exp", x - m), axis=axis, keepdims=True)) + m
    return (
        out
        if keepdims
        else ap(
            "reshape", out, shape=_reduce_shape("", (x.shape,), {"axis": axis, "keepdims": False})
        )
    )


def _logsumexp_vjp(g, o, x, axis, keepdims):
    attrs = {"axis": axis, "keepdims": keepdims}
    # d lse / dx = softmax(x) = exp(x - lse): exponent <= 0, so it never overflows.
    return _restore(g, x, attrs) * ap("exp", x - _restore(o, x, attrs))


_register("logsumexp", 1, _np_logsumexp, (_logsumexp_vjp,), None, schema=_REDUCE_ATTRS,
          jvp=_logsumexp_jvp,
          shape=_reduce_shape, normalize=_reduce_normalize, expand=_logsumexp_expand,
          elementwise=False, domain=(SMALL,))  # fmt: skip


def _softmax_normalize(op, shapes, attrs):
    axis = attrs["axis"]
    if isinstance(axis, tuple) and len(axis) == 1:
        axis = axis[0]
    return {"axis": _axes(op, shapes[0], _int(op, "axis", axis))}


def _np_softmax(x, axis):
    e = np.exp(x - _safe_max(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


def _softmax_expand(x, axis):
    e = ap("exp", x - _shift(x, axis))
    return e / ap("sum", e, axis=axis, keepdims=True)


def _softmax_jvp(ts, o, x, axis):
    return o * (ts[0] - ap("sum", o * ts[0], axis=axis, keepdims=True))


_register("softmax", 1, _np_softmax,
          (lambda g, o, x, axis: o * (g - ap("sum", g * o, axis=axis, keepdims=True)),), None,
          schema=(Attr("axis", ("int", "tuple"), -1),), normalize=_softmax_normalize,
          expand=_softmax_expand,
          shape=lambda op, shapes, at: shapes[0], elementwise=False,
          domain=(SMALL,), jvp=_softmax_jvp)  # fmt: skip


def _pair(op: str, what: str, v, low: int) -> tuple[int, int]:
    pair = v if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2:
        raise ShapeError(f"{op}: {what} must be an int or a pair of ints, got {show(v)}")
    pair = tuple(_int(op, what, n) for n in pair)
    if min(pair) < low:
        raise ShapeError(f"{op}: {what} must be >= {low}, got {show(v)}")
    return pair


def _conv_normalize(op, shapes, attrs):
    return {"stride": _pair(op, "stride", attrs["stride"], 1),
            "padding": _pair(op, "padding", attrs["padding"], 0)}  # fmt: skip


def _conv_shape(op, shapes, attrs):
    x, w = shapes
    if len(x) != 4:
        raise ShapeError(f"{op}: operand 0 (input) must be N x C x H x W, got shape {x}")
    if len(w) != 4:
        raise ShapeError(f"{op}: operand 1 (kernel) must be O x C x kH x kW, got shape {w}")
    if w[1] != x[1]:
        raise ShapeError(
            f"{op}: operand 1 has shape {w} with {w[1]} channels but operand 0 has shape {x} "
            f"with {x[1]}"
        )
    out = [
        (x[2 + d] + 2 * attrs["padding"][d] - w[2 + d]) // attrs["stride"][d] + 1 for d in (0, 1)
    ]
    if min(out) < 1:
        raise ShapeError(f"{op}: kernel of shape {w} is larger than the padded input {x}")
    return (x[0], w[0], *out)


def _windows(x, kernel, stride):
    # Every (kh, kw) window at the given stride: shape (..., Ho, Wo, kh, kw), a view.
    win = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=(-2, -1))
    return win[..., :: stride[0], :: stride[1], :, :]


def _windows_normalize(op, shapes, attrs):
    out = {"kernel_size": _pair(op, "kernel_size", attrs["kernel_size"], 1),
           "stride": _pair(op, "stride", attrs["stride"], 1)}  # fmt: skip
    if "shape" in attrs:
        out["shape"] = _shape_attr(op, attrs["shape"])
    return out


def _windows_shape(op, shapes, attrs):
    return (*_pool_shape(op, shapes, attrs), *attrs["kernel_size"])


def _window_sum_shape(op, shapes, attrs):
    shape = attrs["shape"]
    if len(shape) < 2 or _windows_shape(op, (shape,), attrs) != tuple(shapes[0]):
        raise ShapeError(
            f"{op}: operand 0 has shape {shapes[0]}, not the windows of shape {shape} for "
            f"kernel {attrs['kernel_size']} and stride {attrs['stride']}"
        )
    return shape


def _np_window_sum(g, kernel_size, stride, shape):
    out = np.zeros(shape)
    (kh, kw), (sh, sw) = kernel_size, stride
    ho, wo = g.shape[-4:-2]
    for p in range(kh):
        for q in range(kw):
            out[..., p : p + sh * (ho - 1) + 1 : sh, q : q + sw * (wo - 1) + 1 : sw] += g[..., p, q]
    return out


# windows: every (kh, kw) window of the last two axes at a stride, as new trailing axes
# (numpy's sliding_window_view): a view in the LLVM backend, so conv2d is one im2col copy and one
# matrix product. window_sum, its adjoint, adds each window back where it came from (col2im).
_register("windows", 1, lambda x, kernel_size, stride: _windows(x, kernel_size, stride).copy(),
          (lambda g, o, x, kernel_size, stride: ap("window_sum", g, kernel_size=kernel_size,
                                                   stride=stride, shape=x.shape),),
          Lowering("view", "windows"), schema=(_KERNEL, _STRIDE),
          normalize=_windows_normalize,
          shape=_windows_shape, elementwise=False,
          domain=(SMALL,), jvp=_linear("windows"), pattern=MOVES)  # fmt: skip
_register("window_sum", 1, _np_window_sum,
          (lambda g, o, x, kernel_size, stride, shape: ap("windows", g, kernel_size=kernel_size,
                                                          stride=stride),),
          Lowering("barrier", "window_sum"), schema=(_KERNEL, _STRIDE, _SHAPE),
          normalize=_windows_normalize,
          shape=_window_sum_shape, elementwise=False,
          domain=(SMALL,), jvp=_linear("window_sum"), pattern=_window_sum_pattern)  # fmt: skip


def _np_conv2d(x, w, stride, padding):
    (ph, pw) = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    return np.einsum("nchwpq,ocpq->nohw", _windows(xp, w.shape[2:], stride), w)


def _conv2d_expand(x, w, stride, padding):
    # im2col: the windows of the padded input, laid out (C kh kw) x (N Ho Wo) by one copy, times
    # the kernel as an O x (C kh kw) matrix: one matrix product for the whole convolution.
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    if ph or pw:
        window = (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + wd))
        x = ap("embed", x, index=window, shape=(n, c, h + 2 * ph, wd + 2 * pw))
    win = ap("windows", x, kernel_size=(kh, kw), stride=(sh, sw))  # N C Ho Wo kh kw
    cols = ap("transpose", win, axes=(1, 4, 5, 0, 2, 3))  # C kh kw N Ho Wo
    cols = ap("reshape", cols, shape=(c * kh * kw, n * ho * wo))
    out = ap("matmul", ap("reshape", w, shape=(o, c * kh * kw)), cols)
    return ap("transpose", ap("reshape", out, shape=(o, n, ho, wo)), axes=(1, 0, 2, 3))


_register("conv2d", 2, _np_conv2d, (), None, schema=(_STRIDE, Attr("padding", ("int", "tuple"), 0)),
          normalize=_conv_normalize, shape=_conv_shape, expand=_conv2d_expand,
          elementwise=False, domain=(SMALL, SMALL))  # fmt: skip


def _pool_normalize(op, shapes, attrs):
    kernel = _pair(op, "kernel_size", attrs["kernel_size"], 1)
    stride = attrs["stride"]
    return {"kernel_size": kernel,
            "stride": kernel if stride is None else _pair(op, "stride", stride, 1)}  # fmt: skip


def _pool_shape(op, shapes, attrs):
    x = shapes[0]
    if len(x) < 2:
        raise ShapeError(f"{op}: operand 0 must have at least 2 dimensions, got shape {x}")
    (kh, kw), (sh, sw) = attrs["kernel_size"], attrs["stride"]
    if kh > x[-2] or kw > x[-1]:
        raise ShapeError(f"{op}: window {(kh, kw)} is larger than operand 0 of shape {x}")
    return (*x[:-2], (x[-2] - kh) // sh + 1, (x[-1] - kw) // sw + 1)


def _pool_expand(reduce_op: str):
    def expand(x, kernel_size, stride):
        (kh, kw), (sh, sw) = kernel_size, stride
        lead, (h, w) = x.shape[:-2], x.shape[-2:]
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        if (kh, kw) == (sh, sw):
            # Tiling windows: crop, split each spatial axis in two and reduce the inner ones.
            if (ho * kh, wo * kw) != (h, w):
                x = ap("getitem", x, index=(..., slice(0, ho * kh), slice(0, wo * kw)))
            x = ap("reshape", x, shape=(*lead, ho, kh, wo, kw))
            k = len(lead)
            out = ap(reduce_op, x, axis=(k + 1, k + 3))
            return out / float(kh * kw) if reduce_op == "sum" else out
        # Overlapping windows: reduce each window, a view of x.
        win = ap("windows", x, kernel_size=(kh, kw), stride=(sh, sw))
        k = len(lead)
        out = ap(reduce_op, win, axis=(k + 2, k + 3))
        return out / float(kh * kw) if reduce_op == "sum" else out

    return expand


_register("avg_pool2d", 1,
          lambda x, kernel_size, stride: np.mean(_windows(x, kernel_size, stride), axis=(-2, -1)),
          (), None, schema=_POOL_ATTRS, normalize=_pool_normalize,
          shape=_pool_shape, expand=_pool_expand("sum"), elementwise=False,
          domain=(SMALL,))  # fmt: skip


def _max_pool_vjp(g, o, x, kernel_size, stride):
    # Each window's adjoint goes to its maxima, split evenly among ties as amax's is. (Without
    # this rule build_grad differentiated the expansion, whose chain of binary maxes gave the
    # tied taps of an overlapping window 1/2, 1/4, 1/8, ...) ``eq`` carries no gradient.
    (kh, kw), (sh, sw) = kernel_size, stride
    ho, wo = o.shape[-2:]
    if (kh, kw) == (sh, sw):
        return _tiled_max_pool_vjp(g, o, x, kh, kw)
    taps = []
    for p in range(kh):
        for q in range(kw):
            rows = slice(p, p + sh * (ho - 1) + 1, sh)
            cols = slice(q, q + sw * (wo - 1) + 1, sw)
            index = (..., rows, cols)
            taps.append((index, ap("eq", ap("getitem", x, index=index), o)))
    count = taps[0][1]
    for _, hit in taps[1:]:
        count = count + hit
    share, total = g / count, None
    for index, hit in taps:
        part = ap("embed", share * hit, index=index, shape=x.shape)
        total = part if total is None else total + part
    return total


def _tiled_max_pool_vjp(g, o, x, kh, kw):
    # Tiling windows: the pool is an amax over split axes (as its expansion), so its rule is
    # amax's on the reshaped operand — one pass, no full-size array per tap.
    lead, (h, w) = x.shape[:-2], x.shape[-2:]
    ho, wo = o.shape[-2:]
    crop = (..., slice(0, ho * kh), slice(0, wo * kw))
    cropped = x if (ho * kh, wo * kw) == (h, w) else ap("getitem", x, index=crop)
    split = ap("reshape", cropped, shape=(*lead, ho, kh, wo, kw))
    k = len(lead)
    share = _amax_vjp(g, o, split, axis=(k + 1, k + 3), keepdims=False)
    share = ap("reshape", share, shape=cropped.shape)
    return share if cropped is x else ap("embed", share, index=crop, shape=x.shape)


_register("max_pool2d", 1,
          lambda x, kernel_size, stride: np.max(_windows(x, kernel_size, stride), axis=(-2, -1)),
          (_max_pool_vjp,), None, schema=_POOL_ATTRS, normalize=_pool_normalize,
          shape=_pool_shape, expand=_pool_expand("amax"), elementwise=False,
          domain=(SMALL,))  # fmt: skip


def _cfunc(name: str):
    from sympy.codegen import cfunctions

    return getattr(cfunctions, name)


# Names of the functions of the expression language, as written, mapped to op names.
# ``pow`` is ``**`` written as a call.
FUNCTIONS: dict[str, str] = {
    op.text: op.name
    for op in OPS.values()
    if not op.infix and op.arity and op.name != "neg" and op.elementwise
}
FUNCTIONS["pow"] = "pow"
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
# The literal kinds each attribute takes where it is written, over every op that has it (the parser
# turns a value of another kind into a ParseError at its column). Attributes never written in a
# call (a constant's value, an input's name, getitem's index, written with brackets; einsum's spec,
# a string: einsum is not in the text language) are left out.
ATTRIBUTE_KINDS: dict[str, tuple[str, ...]] = {}
for _op in OPS.values():
    for _a in _op.schema:
        if _a.name not in ("name", "value", "index", "spec"):
            _kinds = ATTRIBUTE_KINDS.setdefault(_a.name, ())
            ATTRIBUTE_KINDS[_a.name] = _kinds + tuple(k for k in _a.kinds if k not in _kinds)
COMPARISONS: dict[str, str] = {
    op.text: op.name for op in OPS.values() if op.infix and not op.differentiable
}
