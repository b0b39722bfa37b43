"""SymPy <-> graph: ``to_sympy`` writes nodes as SymPy expressions, ``from_sympy`` reads them back.

Neither direction recurses. ``to_sympy`` walks the reachable nodes in id order (a topological
order) with each op's ``OpDef.sympy`` form; ``from_sympy`` walks the SymPy tree in postorder with
an explicit stack, so a SymPy expression nested thousands deep converts. It also never builds
SymPy objects or asks SymPy assumptions of subtrees, which would recurse inside SymPy.

``from_sympy`` keeps the graph small and exact: n-ary ``Add``/``Mul``/``Max``/``Min`` fold left
into binary ops, negative terms become ``sub`` and negative powers ``div`` (``x - 2*y/3`` is
``x - (2*y)/3``), ``x**(1/2)`` is ``sqrt``, and ``Piecewise`` becomes nested ``where``. To get
there, a converted subexpression may be held back as a plain number or as "minus this node"
(``_Neg``) until its parent decides how to use it; ``_node`` turns either into a node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from symgrad.errors import GraphError
from symgrad.graph import Expr, Graph, reachable
from symgrad.ops import OPS

# Comparison op -> name of the SymPy relational (sympy.Lt, ...), from the registry; Piecewise
# conditions use these.
RELATIONALS = {name: op.sympy_relation for name, op in OPS.items() if op.sympy_relation}
# A SymPy relational's operator (obj.rel_op: "<", "<=", "==", ...) -> the comparison op written so.
BY_REL_OP = {OPS[name].text: name for name in RELATIONALS}


def to_sympy(e, *, evaluate: bool = True):
    """The SymPy expression of ``e``: an ``Expr``, or a (nested) list of them (same nesting back).

    Inputs become real ``Symbol``s, integral constants ``Integer``s (so ``x**2`` stays a power).
    SymPy's own evaluation recurses (``is_number`` walks the whole subtree), so an expression
    hundreds of nodes deep needs ``evaluate=False``: SymPy then keeps the forms as built.

    >>> g = Graph(); x = g.input("x")
    >>> to_sympy(2.0 * x**2.0 - 1.0)
    2*x**2 - 1
    """
    import sympy as sp

    leaves = _leaves(e, Expr, "to_sympy")
    if not leaves:
        return _refill(e, [])
    graph = leaves[0].graph
    if any(x.graph is not graph for x in leaves):
        raise GraphError("to_sympy: the expressions belong to different graphs")
    memo: dict[int, object] = {}
    rel: dict[int, object] = {}  # comparison node -> its SymPy relational, for where's condition
    with sp.evaluate(evaluate):
        for i in reachable(graph, [x.id for x in leaves]):
            try:
                memo[i] = _sympy_node(sp, graph, i, memo, rel)
            except GraphError:
                raise  # already says which node (an op without a SymPy form)
            except RecursionError:
                raise GraphError(
                    f"to_sympy: node {i}: SymPy's evaluation recursed too deep; pass evaluate=False"
                ) from None
            except (TypeError, ValueError) as err:  # e.g. Max(nan, x): nan is not comparable
                raise GraphError(f"to_sympy: node {i} ({graph.node(i)['op']}): {err}") from err
    return _refill(e, [memo[x.id] for x in leaves])


def _sympy_node(sp, graph: Graph, i: int, memo: dict, rel: dict):
    node = graph.node(i)
    op, args = node["op"], node["args"]
    if node["shape"]:
        raise GraphError(f"shape {node['shape']}: the SymPy bridge takes scalar graphs only")
    if op == "input":
        return sp.Symbol(graph.attr(i, "name"), real=True)
    if op == "const":
        return _sympy_number(sp, graph.attr(i, "value"))
    operands = [memo[a] for a in args]
    if op in RELATIONALS:
        rel[i] = getattr(sp, RELATIONALS[op])(*operands)
    opdef = OPS.get(op)
    if opdef is not None and opdef.selects and args[0] in rel:
        # Piecewise((a, x < y), ...), not Ne(Piecewise(...), 0)
        return sp.Piecewise((operands[1], rel[args[0]]), (operands[2], True))
    if opdef is None or opdef.sympy is None:
        hint = (
            " (a loop: SymPy has no form for it; evaluate it, or unroll it)"
            if (opdef is not None and (opdef.multiple or "part" in opdef.attrs))
            else ""
        )
        raise GraphError(f"to_sympy: node {i}: op {op!r} has no SymPy form{hint}")
    return opdef.sympy(sp, *operands)


def _sympy_number(sp, v: float):
    if math.isnan(v):
        return sp.nan
    if math.isinf(v):
        return sp.oo if v > 0 else sp.S.NegativeInfinity
    return sp.Integer(int(v)) if v.is_integer() else sp.Float(v)


def from_sympy(expr, graph: Graph | None = None):
    """The graph node of a SymPy expression (or a nested list of them), in ``graph`` or a new one.

    Symbols become inputs of the same name. Anything without a symgrad op raises ``GraphError``
    naming it, and leaves ``graph`` as it was; so do two different SymPy symbols of one name
    (``Dummy("x")`` beside ``Symbol("x")``: one input would silently stand for both) and a
    finite number too large for a float64 (``10**400``, as ``Graph.const`` refuses it).

    >>> import sympy
    >>> x, y = sympy.symbols("x y")
    >>> e = from_sympy(x - 2 * y / 3)
    >>> e.op, [a.op for a in e.args]
    ('sub', ['input', 'div'])
    """
    import sympy as sp

    if graph is None:
        graph = Graph()
    elif not isinstance(graph, Graph):
        raise GraphError(f"from_sympy: graph must be a symgrad Graph, not {type(graph).__name__}")
    leaves = _leaves(expr, object, "from_sympy")
    try:
        leaves = [sp.sympify(x, strict=True) for x in leaves]
    except sp.SympifyError as err:
        raise GraphError(f"from_sympy: not a SymPy expression: {err}") from None
    memo: dict[int, tuple] = {}
    symbols: dict[str, object] = {}  # input name -> the one SymPy symbol it stands for
    with graph.atomic():
        nodes = [_node(graph, _convert(sp, graph, x, memo, symbols)) for x in leaves]
    return _refill(expr, nodes)


class _Neg(NamedTuple):
    """The value ``-node``, with the ``neg`` node not built yet (``a + -b`` becomes ``a - b``)."""

    node: Expr


def _node(graph: Graph, v) -> Expr:
    """The node of a converted value: an Expr, a plain float, or a held-back negation."""
    if isinstance(v, _Neg):
        return graph.apply("neg", v.node)
    return graph.const(v) if isinstance(v, float) else v


def _convert(sp, graph: Graph, root, memo: dict[int, tuple], symbols: dict):
    """Postorder over the SymPy tree with an explicit stack; ``memo``: id(obj) -> (obj, value).

    The memo keeps each object alive, so its ``id`` cannot be reused while the walk runs.
    """
    stack = [(root, None)]
    while stack:
        obj, plan = stack.pop()
        if id(obj) in memo:
            continue
        if plan is None:
            plan = _plan(sp, obj, symbols)
            stack.append((obj, plan))
            stack.extend((k, None) for k in reversed(plan.kids) if id(k) not in memo)
            continue
        memo[id(obj)] = (obj, plan.build(graph, [memo[id(k)][1] for k in plan.kids]))
    return memo[id(root)][1]


class _Plan(NamedTuple):
    """How to convert one SymPy object: the subtrees to convert first, then ``build`` on them."""

    kids: tuple
    build: Callable


def _plan(sp, obj, symbols: dict) -> _Plan:
    """The plan for ``obj``; ``GraphError`` naming it when symgrad has no op for it."""
    number = _number(sp, obj)
    if number is not None:
        return _Plan((), lambda g, vs: number)
    if obj.is_Symbol:
        name = _symbol_name(sp, obj, symbols)
        return _Plan((), lambda g, vs: g.input(name))
    if obj is sp.I:
        raise GraphError(
            "from_sympy: SymPy ImaginaryUnit (I) has no symgrad op: symgrad's values are real"
        )
    for test, planner in _special_planners(sp):
        if test(obj):
            return planner(sp, obj)
    opname = _function_ops(sp).get(type(obj))
    if opname is not None:
        return _Plan(obj.args, lambda g, vs: _fold(g, opname, vs))
    # SymPy's own spelling of an op's form, with leading constants (digamma(x) is written
    # polygamma(0, x) once evaluated).
    head = tuple(_number(sp, a) for a in obj.args[:-1]) if obj.args else ()
    opname = _function_ops(sp).get((type(obj), head))
    if opname is None:
        raise GraphError(f"from_sympy: SymPy {type(obj).__name__}{_shown(obj)} has no symgrad op")
    return _Plan(obj.args[-1:], lambda g, vs: _fold(g, opname, vs))


def _shown(obj) -> str:
    return f"{obj.args[:-1]}"[:-2] + ", ...)" if len(obj.args) > 1 else ""


def _symbol_name(sp, obj, symbols: dict) -> str:
    """The input name of a SymPy symbol; GraphError if another symbol of the call has it.

    ``Symbol("x")`` and ``Symbol("x", real=True)`` or ``Dummy("x")`` are different SymPy
    symbols: mapping both to the input ``x`` would merge them, so that is refused, naming it.
    """
    if isinstance(obj, (sp.Dummy, sp.Wild)):
        raise GraphError(
            f"from_sympy: {type(obj).__name__} symbol {obj.name!r} is not a named input (it "
            "differs from every Symbol of its name): substitute a Symbol for it first"
        )
    other = symbols.setdefault(obj.name, obj)
    if other is not obj and other != obj:
        raise GraphError(
            f"from_sympy: two different SymPy symbols are named {obj.name!r} "
            f"({sp.srepr(other)} and {sp.srepr(obj)}): one input cannot stand for both"
        )
    return obj.name


def _number(sp, obj) -> float | None:
    """The float of a SymPy number, constant (pi, E) or truth value; None for anything else."""
    if obj is sp.true or obj is sp.false:
        return 1.0 if obj is sp.true else 0.0
    if obj is sp.nan or obj is sp.zoo:  # zoo (complex infinity, 1/0) has no real value
        return math.nan
    if obj.is_Rational:
        return _ratio(obj.p, obj.q)
    if obj.is_Number or obj.is_NumberSymbol:
        value = float(obj)
        if math.isinf(value) and obj.is_finite:  # Float("1e500"): beyond float64's range
            shown = obj.evalf(6)
            raise GraphError(f"from_sympy: the number {shown} is too large for a float64")
        return value
    return None


def _ratio(p: int, q: int) -> float:
    """p/q rounded once (Python's int division is correctly rounded); GraphError naming the
    number when it is too large for a float64 (``Graph.const(10**400)`` refuses it alike)."""
    try:
        return p / q
    except OverflowError:
        shown = _digits(p) if q == 1 else f"{_digits(p)}/{_digits(q)}"
        raise GraphError(f"from_sympy: the number {shown} is too large for a float64") from None


def _digits(n) -> str:
    """An int as text, the middle of a long one elided: 10**400 is 1000...0000 (401 digits)."""
    text = str(abs(n))
    sign = "-" if n < 0 else ""
    return sign + (text if len(text) <= 40 else f"{text[:12]}...{text[-8:]} ({len(text)} digits)")


def _fold(graph: Graph, op: str, values: list):
    """``op`` of the values, left-folded when there are more than its arity (``Max(a, b, c)``)."""
    nodes = [_node(graph, v) for v in values]
    arity = OPS[op].arity
    if len(nodes) < arity or (len(nodes) > arity and not (arity == 2 and OPS[op].commutative)):
        raise GraphError(f"from_sympy: {op} takes {arity} operands, got {len(nodes)}")
    out = graph.apply(op, *nodes[:arity])
    for v in nodes[arity:]:
        out = graph.apply(op, out, v)
    return out


def _plan_add(sp, obj) -> _Plan:
    return _Plan(obj.args, _build_add)


def _build_add(graph: Graph, values: list):
    # Positive terms are summed first; negative ones are then subtracted: x - y, not x + -y.
    pos, neg = [], []
    for v in values:
        mag, negative = _split_sign(v)
        (neg if negative else pos).append(mag)
    if not pos:
        return _Neg(_build_add(graph, neg))
    out = _node(graph, pos[0])
    for v in pos[1:]:
        out = graph.apply("add", out, v)
    for v in neg:
        out = graph.apply("sub", out, v)
    return out


def _split_sign(v) -> tuple[object, bool]:
    """(magnitude, is negative) of a converted value, for the values whose sign is visible."""
    if isinstance(v, _Neg):
        return v.node, True
    if isinstance(v, float) and v < 0:
        return -v, True
    return v, False


def _plan_mul(sp, obj) -> _Plan:
    # Factors: numerators, and denominators (base, n) for base**-n with a number n; a Rational
    # p/q gives the numerator p and the denominator q. An item is a kid's index or a float.
    kids, num, den = [], [], []
    for f in obj.args:
        if f.is_Rational and not f.is_Integer and _fits(f.p) and _fits(f.q):
            num.append(_ratio(f.p, 1))
            den.append((_ratio(f.q, 1), 1.0))
        elif f.is_Rational and not f.is_Integer:  # p or q beyond float64: the value p/q itself
            num.append(_ratio(f.p, f.q))
        elif f.is_Pow and f.exp.is_Number and f.exp.is_extended_negative:
            kids.append(f.base)
            den.append((len(kids) - 1, -_number(sp, f.exp)))
        else:
            kids.append(f)
            num.append(len(kids) - 1)
    return _Plan(tuple(kids), lambda g, vs: _build_mul(g, num, den, vs))


def _fits(n: int) -> bool:
    """Whether the int ``n`` converts to a finite float64."""
    return abs(n) < 2**1024 - 2**970  # the first int that rounds up to inf


def _build_mul(graph: Graph, num: list, den: list, values: list):
    negative = False
    nums = []
    for item in num:
        mag, neg = _split_sign(values[item] if isinstance(item, int) else item)
        negative ^= neg
        if mag != 1.0:  # a factor 1 (from -1 or from p = 1) is left out
            nums.append(mag)
    dens = []
    for item, n in den:
        base = values[item] if isinstance(item, int) else item
        if n == 1.0:
            base, neg = _split_sign(base)
            negative ^= neg
        dens.append(_power(graph, base, n))
    out = _product(graph, nums) if nums else 1.0
    if dens:
        out = graph.apply("div", _node(graph, out), _product(graph, dens))
    if isinstance(out, float):
        return -out if negative else out
    return _Neg(out) if negative else out


def _product(graph: Graph, values: list):
    """The left-folded product; a single value is returned as it is (maybe a float)."""
    out = values[0]
    for v in values[1:]:
        out = graph.apply("mul", _node(graph, out), v)
    return out


def _power(graph: Graph, base, n: float):
    """``base**n`` for a number ``n``: ``base`` itself for 1, ``sqrt`` for 1/2, else ``pow``."""
    if n == 1.0:
        return base
    if n == 0.5:
        return graph.apply("sqrt", _node(graph, base))
    return graph.apply("pow", _node(graph, base), n)


def _plan_pow(sp, obj) -> _Plan:
    base, exp = obj.args
    if not exp.is_Number:
        return _Plan((base, exp), lambda g, vs: g.apply("pow", *(_node(g, v) for v in vs)))
    n = _number(sp, exp)
    if exp.is_extended_negative:  # x**-n is 1/x**n
        return _Plan((base,), lambda g, vs: g.apply("div", 1.0, _power(g, vs[0], -n)))
    return _Plan((base,), lambda g, vs: _power(g, vs[0], n))


def _plan_log(sp, obj) -> _Plan:
    if len(obj.args) == 1:
        return _Plan(obj.args, lambda g, vs: g.apply("log", _node(g, vs[0])))
    # log(x, b) unevaluated: log(x) / log(b).
    return _Plan(obj.args, lambda g, vs: g.apply("div", *(g.apply("log", _node(g, v)) for v in vs)))


def _plan_relational(sp, obj) -> _Plan:
    op = BY_REL_OP[obj.rel_op]
    return _Plan(obj.args, lambda g, vs: g.apply(op, *(_node(g, v) for v in vs)))


def _plan_boolean(sp, obj) -> _Plan:
    # Truth values are 0/1 nodes: And is their product, Or their max, Not is 1 - c.
    if isinstance(obj, sp.Not):
        return _Plan(obj.args, lambda g, vs: g.apply("sub", 1.0, _node(g, vs[0])))
    op = "mul" if isinstance(obj, sp.And) else "max"
    return _Plan(obj.args, lambda g, vs: _fold(g, op, vs))


def _plan_piecewise(sp, obj) -> _Plan:
    """Nested ``where``, the last branch innermost; no ``True`` branch leaves nan as default."""
    kids, branches = [], []  # (value index, condition index or None for True, condition is 0/1)
    for value, cond in obj.args:
        if cond is sp.false:
            continue
        if cond is sp.true:
            kids.append(value)
            branches.append((len(kids) - 1, None, False))
            continue
        binary = cond.is_Relational or isinstance(cond, (sp.And, sp.Or, sp.Not))
        if isinstance(cond, sp.Ne) and cond.rhs.is_Number and cond.rhs.is_zero:
            cond, binary = cond.lhs, False  # where(c, a, b) reads as Ne(c, 0): use c itself
        kids += [cond, value]  # the condition first, as in where(c, a, b)
        branches.append((len(kids) - 1, len(kids) - 2, binary))
    return _Plan(tuple(kids), lambda g, vs: _build_piecewise(g, branches, vs))


def _build_piecewise(graph: Graph, branches: list, values: list):
    out = math.nan
    for vi, ci, binary in reversed(branches):
        if ci is None:
            out = values[vi]
        elif binary and isinstance(out, float) and out == 0.0 and values[vi] == 1.0:
            out = values[ci]  # Piecewise((1, c), (0, True)) is the 0/1 value of c itself
        else:
            cond, a, b = (_node(graph, values[ci]), _node(graph, values[vi]), _node(graph, out))
            out = graph.apply("where", cond, a, b)
    return out


def _plan_heaviside(sp, obj) -> _Plan:
    # Heaviside(x, h0) = h0 at 0, else x > 0 (SymPy's default h0 is 1/2).
    def build(g, vs):
        x = _node(g, vs[0])
        h0 = vs[1] if len(vs) > 1 else 0.5
        return g.apply("where", g.apply("eq", x, 0.0), _node(g, h0), g.apply("gt", x, 0.0))

    return _Plan(obj.args, build)


def _special_planners(sp) -> tuple:
    """(test, planner) for the SymPy types that need more than one op applied to the args."""
    return (
        (lambda o: o.is_Add, _plan_add),
        (lambda o: o.is_Mul, _plan_mul),
        (lambda o: o.is_Pow, _plan_pow),
        (lambda o: isinstance(o, sp.log), _plan_log),
        (lambda o: o.is_Relational, _plan_relational),
        (lambda o: isinstance(o, (sp.And, sp.Or, sp.Not)), _plan_boolean),
        (lambda o: isinstance(o, sp.Piecewise), _plan_piecewise),
        (lambda o: isinstance(o, sp.Heaviside), _plan_heaviside),
    )


_FUNCTION_OPS: dict = {}


def _function_ops(sp) -> dict:
    """SymPy function class -> op name, read off the registry: every op whose SymPy form is one
    function of its operands in order (sin, atan2, expm1, Max, ...). Adding such an op adds it.
    Also (class, leading constants) -> op name for a one-operand form that SymPy evaluates into
    another function with constants before the operand (digamma(a) -> polygamma(0, a))."""
    if not _FUNCTION_OPS:
        for op in OPS.values():
            if not op.arity or op.sympy is None:
                continue
            symbols = sp.symbols(f"a0:{op.arity}", real=True)
            form = op.sympy(sp, *symbols)
            if isinstance(form, sp.core.function.Application) and form.args == symbols:
                _FUNCTION_OPS[type(form)] = op.name
            done = form.doit() if op.arity == 1 else form
            if type(done) is not type(form) and done.args[-1:] == symbols:
                head = tuple(_number(sp, a) for a in done.args[:-1])
                if None not in head:
                    _FUNCTION_OPS[(type(done), head)] = op.name
    return _FUNCTION_OPS


def _leaves(obj, kind: type, who: str) -> list:
    """The non-list leaves of a nested list, in order (an explicit stack, no recursion)."""
    found, stack = [], [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif isinstance(item, kind):
            found.append(item)
        else:
            raise GraphError(
                f"{who}: expected an Expr or a list of Expr, got {type(item).__name__}"
            )
    return found


def _refill(obj, values: list):
    """``obj``'s nesting with its leaves replaced by ``values``, in order (lists come back)."""
    if not isinstance(obj, (list, tuple)):
        return values[0]
    leaves, root = iter(values), []
    stack = [(iter(obj), root)]
    while stack:
        src, dst = stack[-1]
        item = next(src, _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, (list, tuple)):
            dst.append([])
            stack.append((iter(item), dst[-1]))
        else:
            dst.append(next(leaves))
    return root


_END = object()
