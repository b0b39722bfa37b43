"""Loops as graph nodes: ``scan``, the body graph it holds, its evaluation and its derivative.

``scan(step, init, xs)`` traces the Python function ``step`` once, on placeholder ``Expr``s of a
fresh *body* graph, and adds one ``scan`` node to the graph of ``init``/``xs``. The node's
operands are the initial carries, the sequences and every node of the enclosing graph the step
used (its *captures*: weights, parameters); its attribute ``body`` (a ``Body``) holds the body
graph and which of its nodes are the carries in and out, the per-step slices, the captures and
the step's ys. A body is closed once traced and compares by its nodes, so equal scans
hash-cons like any other node.

A scan's value is a tuple of *parts*, each read by a ``scan_out`` projection: ``("final", k)``
is carry k after the last step; ``("stack", j)`` the value body node j took at each step,
stacked along a new leading axis. The ys are stacks of the step's y nodes, and the carries that
entered each step are stacks of the carry placeholders. A backend computes and keeps only the
parts a program projects.

``build_grad`` differentiates a scan through its ``vjp_parts`` rule: a *reverse scan* (one more
scan node, running the other way) whose body is the ``vjp`` of the step body. Its carries are
the carries' cotangents and the captures' accumulated cotangents; its per-step inputs are the
carries that entered each step (stacks of the forward scan) and the cotangents of the stacked
parts. So derivatives of derivatives need nothing more. ``checkpoint`` says what the reverse
body reads from the forward pass: ``"recompute"``, only the carries (each step's
intermediates are computed again from them); ``"store"``, also every intermediate of the step
its VJP reads (stacks of the forward scan: more memory, no recomputation).
"""

from __future__ import annotations

import numbers

import numpy as np

from symgrad.errors import ArgumentError, GraphError, ShapeError
from symgrad.forward import forward
from symgrad.grad import vjp
from symgrad.graph import Expr, Graph, zeros
from symgrad.ops import OPS, VARIADIC, Attr, Lowering, _register, ap, show
from symgrad.program import Program, run

CHECKPOINTS = ("store", "recompute")


class Body:
    """A scan's step as a closed graph, and the roles of its nodes (ids of ``graph``).

    ``carry``, ``xs`` and ``captures`` are placeholder inputs named ``carry{k}``, ``x{k}`` and
    ``p{k}``; ``carry_out`` are the carries the step returns (same shapes as ``carry``) and
    ``ys`` the nodes it returns as y. Two bodies are equal when their graphs have the same nodes
    in the same order and the same roles: the ``key``.
    """

    is_scan_body = True  # an attribute value of this kind (ops.VALUE_KINDS["body"])
    compares_by_key = True  # graph._same compares it with ==

    def __init__(self, graph: Graph, carry, xs, captures, carry_out, ys):
        graph._capture, graph._closed = None, True
        self.graph = graph
        self.carry, self.xs, self.captures = tuple(carry), tuple(xs), tuple(captures)
        self.carry_out, self.ys = tuple(carry_out), tuple(ys)
        self.key = (tuple(graph._keys), self.carry, self.xs, self.captures, self.carry_out)
        self.key += (self.ys,)
        self._hash = hash(self.key)
        self._cache: dict = {}  # programs and reverse bodies, built once per body

    def __eq__(self, other) -> bool:
        return type(other) is Body and (self is other or self.key == other.key)

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return (
            f"<scan body: {len(self.graph)} nodes, {len(self.carry)} carries, {len(self.xs)} "
            f"sequences, {len(self.captures)} captures, {len(self.ys)} ys>"
        )

    def __reduce__(self):
        # The graph travels through Graph.__getstate__ (every node checked on arrival).
        return _restore_body, (
            self.graph,
            self.carry,
            self.xs,
            self.captures,
            self.carry_out,
            self.ys,
        )

    def shape(self, j: int) -> tuple[int, ...]:
        return self.graph.node(j)["shape"]

    def program(self, stacked: tuple[int, ...]) -> Program:
        """The schedule of one step computing the carries out and the nodes ``stacked``."""
        key = ("program", stacked)
        if key not in self._cache:
            self._cache[key] = Program.of(self.graph, [*self.carry_out, *stacked])
        return self._cache[key]


def _restore_body(graph, carry, xs, captures, carry_out, ys) -> Body:
    """A body from a pickle: every id checked against the (already checked) graph."""
    if type(graph) is not Graph:
        raise GraphError("a scan body's graph must be a Graph")
    roles = {"carry": carry, "xs": xs, "captures": captures, "carry_out": carry_out, "ys": ys}
    for what, ids in roles.items():
        if type(ids) is not tuple or any(
            type(i) is not int or not 0 <= i < len(graph) for i in ids
        ):
            raise GraphError(f"a scan body's {what} must be a tuple of node ids")
    names = [*(f"carry{k}" for k in range(len(carry))), *(f"x{k}" for k in range(len(xs)))]
    names += [f"p{k}" for k in range(len(captures))]
    if list(graph.inputs) != sorted(names, key=list(graph.inputs).index) or set(
        graph.inputs
    ) != set(names):
        raise GraphError(f"a scan body's inputs must be {names}, got {list(graph.inputs)}")
    for name, i in zip(names, carry + xs + captures):
        if graph.inputs[name].id != i:
            raise GraphError(f"a scan body's placeholder {name} is not node {i}")
    for k, (i, o) in enumerate(zip(carry, carry_out)):
        if len(carry) != len(carry_out) or graph.node(i)["shape"] != graph.node(o)["shape"]:
            raise GraphError(f"a scan body's carry {k} changes its shape")
    return Body(graph, carry, xs, captures, carry_out, ys)


# --- tracing ----------------------------------------------------------------------------------


def scan(step, init, xs=None, length=None, checkpoint="store"):
    """Repeat ``step`` over a sequence: ``(carry, ys)`` as nodes of the graph.

    ``step(carry, x) -> (carry, y)`` is called once, on placeholders: ``carry`` is an ``Expr``
    or a tuple of ``Expr``s (scalars or tensors) with the structure and shapes of ``init``,
    which every step must return unchanged; ``x`` is one slice of ``xs`` along its leading axis
    (``xs`` an ``Expr`` or a tuple of them, all with the same leading length), or None when
    ``xs`` is None and ``length`` gives the number of steps. ``y`` may be None (then ``ys`` is
    None), an ``Expr`` or a tuple of them: ``ys`` stacks them along a new leading axis. The step
    may use any node of the graph the scan belongs to (weights, parameters).

    ``checkpoint`` says what a gradient keeps from the forward pass: ``"store"`` every
    intermediate of each step its derivative reads (most memory, no recomputation);
    ``"recompute"`` only the carry entering each step (the reverse pass computes each step again
    from it); an int k, the carry entering every k-th step: the loop is written as a scan of
    n // k segments of k steps (and a last scan of the n % k steps left), and the reverse pass
    recomputes one segment at a time, storing its k steps (memory ~ n/k + k carries and
    intermediates: k ~ sqrt(n) for the least).

    >>> import symgrad as sg
    >>> g = sg.Graph(); a = g.input("a")
    >>> final, ys = sg.scan(lambda c, x: (c * a, c), g.const(1.0), length=3)
    >>> float(sg.evaluate(final, a=2.0)), sg.evaluate(ys, a=2.0).tolist()
    (8.0, [1.0, 2.0, 4.0])
    """
    if not callable(step):
        raise ArgumentError(f"scan: step must be a function, got {type(step).__name__}")
    carry_items, carry_tuple = _items(init, "init")
    x_items, x_tuple = ([], False) if xs is None else _items(xs, "xs")
    graph = _graph_of(carry_items + x_items)
    with graph.atomic():
        init_exprs = [_outer_expr(graph, v, f"init[{k}]") for k, v in enumerate(carry_items)]
        xs_exprs = [_outer_expr(graph, v, f"xs[{k}]") for k, v in enumerate(x_items)]
        n = _step_count(xs_exprs, xs is None, length)
        if _is_int(checkpoint) and checkpoint >= 1:
            return _segmented(step, init_exprs, carry_tuple, xs_exprs, x_tuple, n, int(checkpoint))
        if checkpoint not in CHECKPOINTS:
            raise ArgumentError(
                "scan: checkpoint must be 'store', 'recompute' or a positive int (store every "
                f"k-th carry), got {show(checkpoint)}"
            )
        body, captured, y_kind = _trace(step, graph, init_exprs, carry_tuple, xs_exprs, xs, x_tuple)
        node = graph.apply(
            "scan", *init_exprs, *xs_exprs, *captured, body=body, length=n, reverse=False,
            checkpoint=checkpoint,
        )  # fmt: skip
        finals = [graph.apply("scan_out", node, part=("final", k)) for k in range(len(body.carry))]
        stacks = [graph.apply("scan_out", node, part=("stack", j)) for j in body.ys]
    carry = tuple(finals) if carry_tuple else finals[0]
    if y_kind == "none":
        return carry, None
    return carry, (tuple(stacks) if y_kind == "tuple" else stacks[0])


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _segmented(step, init, carry_tuple, xs, x_tuple, n, k):
    """``scan(..., checkpoint=k)``: a scan of segments, each a scan of ``k`` steps (stored),
    the outer one keeping only the carries between segments (recomputed), then the rest."""
    k = min(k, n)
    segments, done = n // k, (n // k) * k
    carry0 = tuple(init) if carry_tuple else init[0]

    def pack(items):
        return None if not items else (tuple(items) if x_tuple else items[0])

    def segment(carry, chunk):
        return scan(step, carry, xs=chunk, length=k, checkpoint="store")

    chunks = [x[0:done].reshape((segments, k, *x.shape[1:])) for x in xs]
    carry, ys = scan(segment, carry0, xs=pack(chunks), length=segments, checkpoint="recompute")
    ys = _map_ys(ys, lambda y: y.reshape((done, *y.shape[2:])))
    if done == n:
        return carry, ys
    rest = [x[done:n] for x in xs]
    carry, tail = scan(step, carry, xs=pack(rest), length=n - done, checkpoint="store")
    if ys is None:
        return carry, None

    # The two stacks side by side: each placed in zeros of the whole length, then added.
    def join(a, b):
        full = (n, *a.shape[1:])
        head = a.graph.apply("embed", a, index=(slice(0, done),), shape=full)
        return head + a.graph.apply("embed", b, index=(slice(done, n),), shape=full)

    if isinstance(ys, tuple):
        return carry, tuple(join(a, b) for a, b in zip(ys, tail))
    return carry, join(ys, tail)


def _map_ys(ys, f):
    if ys is None:
        return None
    return tuple(f(y) for y in ys) if isinstance(ys, tuple) else f(ys)


def _items(value, what: str) -> tuple[list, bool]:
    """``value`` as a list of items and whether it was a tuple (or list)."""
    if isinstance(value, (tuple, list)):
        if not value:
            raise ArgumentError(f"scan: {what} is an empty tuple: give at least one Expr")
        return list(value), True
    return [value], False


def _graph_of(items: list) -> Graph:
    for v in items:
        if isinstance(v, Expr):
            return v.graph
    raise ArgumentError("scan: init or xs must hold an Expr, so that the scan has a graph")


def _outer_expr(graph: Graph, v, what: str) -> Expr:
    if isinstance(v, Expr):
        if v.graph is not graph:
            raise GraphError(f"scan: {what} belongs to another graph than the others")
        return v
    if isinstance(v, (numbers.Real, np.ndarray)) and not isinstance(v, (bool, np.bool_)):
        return graph.const(v)
    raise ArgumentError(f"scan: {what} must be an Expr or a number, got {type(v).__name__}")


def _step_count(xs: list[Expr], no_xs: bool, length) -> int:
    if length is not None and (
        isinstance(length, (bool, np.bool_)) or not isinstance(length, (int, np.integer))
    ):
        raise ArgumentError(f"scan: length must be an int, got {show(length)}")
    if no_xs:
        if length is None:
            raise ArgumentError("scan: give xs, or length (the number of steps) when xs is None")
    else:
        for k, x in enumerate(xs):
            if not x.shape:
                raise ShapeError(f"scan: xs[{k}] is a scalar: its leading axis is the steps")
        lengths = [x.shape[0] for x in xs]
        if len(set(lengths)) > 1 or (length is not None and length != lengths[0]):
            given = "" if length is None else f" and length={length}"
            raise ShapeError(f"scan: the leading axes of xs differ: {lengths}{given}")
        length = lengths[0]
    if length < 1:
        raise ArgumentError(f"scan: length must be at least 1, got {length}")
    return int(length)


class _Tracer:
    """The body graph of one scan while its step runs, capturing nodes of enclosing graphs."""

    def __init__(self, outer: Graph):
        self.outer = outer
        self.body = Graph(max_nodes=outer.max_nodes, max_elements=outer.max_elements)
        self.body._depth = outer._depth + 1
        self.captured: list[Expr] = []  # the enclosing graph's nodes, in capture order
        self.ids: dict[int, int] = {}  # enclosing id -> placeholder id

    def capture(self, v: Expr) -> int:
        """The body id standing for ``v``, a node of the enclosing graph (or of one around it)."""
        if v.graph is not self.outer:
            if self.outer._capture is None:
                raise GraphError(
                    f"scan: the step uses {v!r} of another graph (neither the scan's graph nor "
                    "one around it)"
                )
            v = Expr(self.outer, self.outer._capture(v))  # a nested scan: capture outward first
        if v.id not in self.ids:
            self.body._capture = None  # the placeholder itself is not a capture
            try:
                self.ids[v.id] = self.body.input(f"p{len(self.captured)}", v.shape).id
            finally:
                self.body._capture = self.capture
            self.captured.append(v)
        return self.ids[v.id]

    def node(self, v, what: str) -> int:
        """The body id of a value the step returned."""
        if isinstance(v, Expr):
            return v.id if v.graph is self.body else self.capture(v)
        if isinstance(v, (numbers.Real, np.ndarray)) and not isinstance(v, (bool, np.bool_)):
            return self.body.const_id(v)
        raise ArgumentError(
            f"scan: the step returned {what} of type {type(v).__name__}, not an Expr or a number"
        )


def _trace(step, outer, init, carry_tuple, xs, xs_given, x_tuple):
    tracer = _Tracer(outer)
    body = tracer.body
    carry = [body.input(f"carry{k}", e.shape) for k, e in enumerate(init)]
    x = [body.input(f"x{k}", e.shape[1:]) for k, e in enumerate(xs)]
    body._capture = tracer.capture
    try:
        result = step(
            tuple(carry) if carry_tuple else carry[0],
            None if xs_given is None else (tuple(x) if x_tuple else x[0]),
        )
        new_carry, ys, y_kind = _step_result(result, carry_tuple, len(carry))
        carry_out = [tracer.node(v, f"carry[{k}]") for k, v in enumerate(new_carry)]
        y_ids = [tracer.node(v, f"y[{k}]") for k, v in enumerate(ys)]
    finally:
        body._capture = None
    for k, (c, o) in enumerate(zip(carry, carry_out)):
        if body.node(o)["shape"] != c.shape:
            raise ShapeError(
                f"scan: the step returned carry[{k}] of shape {body.node(o)['shape']}, but "
                f"init[{k}] has shape {c.shape}: a carry keeps its shape from step to step"
            )
    placeholders = len(carry) + len(x) + len(tracer.captured)
    if len(body.inputs) != placeholders:
        made = list(body.inputs)[len(carry) + len(x) :]
        raise GraphError(
            f"scan: the step made inputs of its own ({show(made)}): inputs belong to the scan's "
            "graph, and the step may use its nodes"
        )
    out = Body(
        body, [c.id for c in carry], [e.id for e in x], tracer.ids.values(), carry_out, y_ids
    )
    return out, tracer.captured, y_kind


def _step_result(result, carry_tuple: bool, n: int) -> tuple[list, list, str]:
    """The step's ``(carry, y)`` as lists, checked against the structure of ``init``."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ArgumentError(
            f"scan: the step must return a pair (carry, y), got {type(result).__name__}"
        )
    new_carry, y = result
    if carry_tuple != isinstance(new_carry, (tuple, list)) or (carry_tuple and len(new_carry) != n):
        want = f"a tuple of {n}" if carry_tuple else "one Expr"
        got = (
            f"a {type(new_carry).__name__} of {len(new_carry)}"
            if isinstance(new_carry, (tuple, list))
            else f"one {type(new_carry).__name__}"
        )
        raise ArgumentError(
            f"scan: the step returned a carry of another structure than init ({want}): got {got}"
        )
    new_carry = list(new_carry) if carry_tuple else [new_carry]
    if y is None:
        return new_carry, [], "none"
    if isinstance(y, (tuple, list)):
        return new_carry, list(y), "tuple"
    return new_carry, [y], "one"


# --- the ops: scan and its projections ------------------------------------------------------------


class PartShapes:
    """The parts of one scan node and their shapes: what its ``scan_out`` nodes may read."""

    def __init__(self, body: Body, length: int):
        self.body, self.length = body, length

    def __getitem__(self, part) -> tuple[int, ...]:
        kind, j = part
        if kind == "final" and 0 <= j < len(self.body.carry):
            return self.body.shape(self.body.carry_out[j])
        if kind == "stack" and 0 <= j < len(self.body.graph):
            return (self.length, *self.body.shape(j))
        raise ShapeError(f"scan_out: the scan has no part {show(part)}")


def _scan_normalize(op, shapes, attrs):
    body, length = attrs["body"], attrs["length"]
    if isinstance(length, bool) or length < 1:
        raise ShapeError(f"{op}: length must be a positive int, got {show(length)}")
    if attrs["checkpoint"] not in CHECKPOINTS:
        raise ShapeError(
            f"{op}: checkpoint must be one of {CHECKPOINTS}, got {show(attrs['checkpoint'])}"
        )
    want = [body.shape(i) for i in body.carry]
    want += [(length, *body.shape(i)) for i in body.xs]
    want += [body.shape(i) for i in body.captures]
    if list(shapes) != want:
        raise ShapeError(
            f"{op}: operands of shapes {list(shapes)} do not fit the body, which takes {want}"
        )
    return {**attrs, "length": int(length), "reverse": bool(attrs["reverse"])}


def _part_normalize(op, shapes, attrs):
    part = attrs["part"]
    if (
        type(part) is not tuple
        or len(part) != 2
        or part[0] not in ("final", "stack")
        or type(part[1]) is not int
    ):
        raise ShapeError(f"{op}: part must be ('final', k) or ('stack', j), got {show(part)}")
    if not isinstance(shapes[0], PartShapes):
        raise ShapeError(f"{op}: operand 0 must be a scan")
    shapes[0][part]  # noqa: B018 (a ShapeError for a part the scan does not have)
    return attrs


def _evaluate(*values, body, length, reverse, checkpoint, parts):
    """A scan in numpy: the body's program once per step; the parts ``parts`` as arrays."""
    del checkpoint  # what a gradient keeps: the values are the same
    nc, nx = len(body.carry), len(body.xs)
    carry, xs, caps = list(values[:nc]), values[nc : nc + nx], values[nc + nx :]
    stacked = tuple(j for kind, j in parts if kind == "stack")
    program = body.program(stacked)
    names = [body.graph.attr(i, "name") for i in (*body.carry, *body.xs, *body.captures)]
    fixed = dict(zip(names[nc + nx :], caps))
    stacks = {j: np.empty((length, *body.shape(j))) for j in stacked}
    for t in range(length - 1, -1, -1) if reverse else range(length):
        step = dict(zip(names, [*carry, *(x[t] for x in xs)]), **fixed)
        out = run(program, step)
        carry = out[:nc]
        for j, value in zip(stacked, out[nc:]):
            stacks[j][t] = value
    return {
        (kind, j): (np.asarray(carry[j], np.float64) if kind == "final" else stacks[j])
        for kind, j in parts
    }


_register(
    "scan", VARIADIC, _evaluate, (), Lowering("barrier", "scan"), elementwise=False,
    schema=(Attr("body", ("body",)), Attr("length", ("int",)), Attr("reverse", ("bool",), False),
            Attr("checkpoint", ("name",), "store")),
    normalize=_scan_normalize, shape=lambda op, shapes, attrs: (), multiple=True,
    part_shapes=lambda attrs: PartShapes(attrs["body"], attrs["length"]),
    vjp_parts=lambda cts, out, active, *args, **attrs: _vjp(cts, out, active, args, **attrs),
    jvp=lambda ts, out, *args, **attrs: _jvp(ts, out, args, **attrs),
)  # fmt: skip
_register(
    "scan_out", 1, lambda parts, part: parts[part], (lambda g, o, s, part: g,),
    Lowering("part", "scan_out"),
    elementwise=False, schema=(Attr("part", ("tuple",)),), normalize=_part_normalize,
    shape=lambda op, shapes, attrs: shapes[0][attrs["part"]],
    # The tangent of a part: that part's tangent in the tangent scan (see _jvp).
    jvp=lambda ts, o, s, part: ap("scan_out", ts[0][0], part=ts[0][1][part]),
)  # fmt: skip


# --- the derivative: a reverse scan ---------------------------------------------------------


def _vjp(cts: dict, out: Expr, active: list[bool], args, body, length, reverse, checkpoint):
    """The cotangents of a scan's operands from those of its parts: one reverse scan."""
    graph = out.graph
    nc, nx = len(body.carry), len(body.xs)
    xs, caps = args[nc : nc + nx], args[nc + nx :]
    want_x, want_p = tuple(active[nc : nc + nx]), tuple(active[nc + nx :])
    stacked = tuple(sorted(j for kind, j in cts if kind == "stack"))
    rev, residuals = _reverse_body(body, stacked, checkpoint, want_x, want_p)
    c_bar = [cts.get(("final", k)) for k in range(nc)]
    c_bar = [zeros(graph, body.shape(i)) if c is None else c for c, i in zip(c_bar, body.carry)]
    p_bar = [zeros(graph, cap.shape) for cap, w in zip(caps, want_p) if w]
    history = [graph.apply("scan_out", out, part=("stack", i)) for i in body.carry]
    stored = [graph.apply("scan_out", out, part=("stack", j)) for j in residuals]
    y_bar = [cts[("stack", j)] for j in stacked]
    node = graph.apply(
        "scan", *c_bar, *p_bar, *history, *xs, *y_bar, *stored, *caps, body=rev, length=length,
        reverse=not reverse, checkpoint=checkpoint,
    )  # fmt: skip
    finals = iter(range(len(rev.carry)))
    c_out = [graph.apply("scan_out", node, part=("final", next(finals))) for _ in range(nc)]
    p_out = iter([graph.apply("scan_out", node, part=("final", k)) for k in finals])
    x_out = iter([graph.apply("scan_out", node, part=("stack", j)) for j in rev.ys])
    return [
        *(c if active[k] else None for k, c in enumerate(c_out)),
        *(next(x_out) if w else None for w in want_x),
        *(next(p_out) if w else None for w in want_p),
    ]


def _reverse_body(body: Body, stacked, checkpoint, want_x, want_p) -> tuple[Body, tuple]:
    """The body of the reverse scan, and the forward body nodes it reads as stacks (store).

    Its carries are the carries' cotangents and, for each wanted capture, its cotangent summed
    so far; its per-step inputs the carries that entered the forward step, the forward xs, the
    cotangents of the stacked parts ``stacked`` and (store) the stored intermediates; its
    captures the forward captures. Built once per body and question (cached on the body).
    """
    key = ("reverse", stacked, checkpoint, want_x, want_p)
    if key not in body._cache:
        body._cache[key] = _build_reverse(body, stacked, checkpoint, want_x, want_p)
    return body._cache[key]


def _build_reverse(body: Body, stacked, checkpoint, want_x, want_p):
    src = body.graph
    nc, nx, npar = len(body.carry), len(body.xs), len(body.captures)
    rb = Graph(max_nodes=src.max_nodes, max_elements=src.max_elements)
    wanted_p = [k for k in range(npar) if want_p[k]]
    c_bar = [rb.input(f"carry{k}", body.shape(i)) for k, i in enumerate(body.carry)]
    p_acc = [
        rb.input(f"carry{nc + m}", body.shape(body.captures[k])) for m, k in enumerate(wanted_p)
    ]
    ins = [*body.carry, *body.xs]
    hist_x = [rb.input(f"x{k}", body.shape(i)) for k, i in enumerate(ins)]
    y_bar = [rb.input(f"x{nc + nx + m}", body.shape(j)) for m, j in enumerate(stacked)]
    caps = [rb.input(f"p{k}", body.shape(i)) for k, i in enumerate(body.captures)]
    mapped = {i: e.id for i, e in zip([*ins, *body.captures], [*hist_x, *caps])}
    roots = [*body.carry_out, *stacked]
    copy_nodes(src, rb, roots, mapped)
    boundary = len(rb)
    wrt = [*hist_x[:nc], *(hist_x[nc + k] for k in range(nx) if want_x[k])]
    wrt += [caps[k] for k in wanted_p]
    grads = vjp([Expr(rb, mapped[i]) for i in roots], [*c_bar, *y_bar], wrt)
    n_x = sum(want_x)
    order = max((rb.node(e.id)["order"] for e in grads), default=1)
    with rb.stamped("grad", max(order, 1)):  # the running sum of a capture's cotangent
        carry_out = [*grads[:nc], *(a + g for a, g in zip(p_acc, grads[nc + n_x :]))]
    ys = grads[nc : nc + n_x]
    placeholders = [*c_bar, *p_acc, *hist_x, *y_bar]
    if checkpoint == "store":
        return _storing(rb, boundary, mapped, placeholders, caps, carry_out, ys)
    rev = Body(rb, [e.id for e in c_bar + p_acc], [e.id for e in hist_x + y_bar],
               [e.id for e in caps], [e.id for e in carry_out], [e.id for e in ys])  # fmt: skip
    return rev, ()


def _storing(rb: Graph, boundary, mapped, placeholders, caps, carry_out, ys):
    """The reverse body with every forward value its derivative nodes read as a per-step
    input (a stack the forward scan keeps), instead of computed again."""
    forward_of = {b: a for a, b in mapped.items()}
    leaves = {e.id for e in placeholders} | {e.id for e in caps}
    read = set()
    for i in range(boundary, len(rb)):
        for a in rb.node(i)["args"]:
            if a < boundary and a not in leaves and _storable(rb.node(a)):
                read.add(a)
    residuals = sorted(read)
    out = Graph(max_nodes=rb.max_nodes, max_elements=rb.max_elements)
    n_in = sum(1 for e in placeholders if e.name.startswith("x"))
    new = {e.id: out.input(e.name, e.shape).id for e in placeholders + caps}
    for m, a in enumerate(residuals):
        new[a] = out.input(f"x{n_in + m}", rb.node(a)["shape"]).id
    roots = [e.id for e in carry_out + ys]
    copy_nodes(rb, out, roots, new)
    names = out.inputs
    n_carry = len(carry_out)
    rev = Body(
        out,
        [names[f"carry{k}"].id for k in range(n_carry)],
        [names[f"x{k}"].id for k in range(n_in + len(residuals))],
        [names[f"p{k}"].id for k in range(len(caps))],
        [new[i] for i in roots[:n_carry]],
        [new[i] for i in roots[n_carry:]],
    )
    return rev, tuple(forward_of[a] for a in residuals)


def _storable(node: dict) -> bool:
    # Constants are free to read again; a tuple-valued node (a nested scan) is no array.
    return node["op"] != "const" and not OPS[node["op"]].multiple


def copy_nodes(src: Graph, dst: Graph, roots, mapped: dict[int, int]) -> None:
    """Copy the nodes of ``src`` the ``roots`` need into ``dst``, each one node there;
    ``mapped`` (src id -> dst id) gives the nodes already there, and the walk stops at them."""
    seen, stack = set(), [r for r in roots if r not in mapped]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(a for a in src.node(i)["args"] if a not in mapped and a not in seen)
    for i in sorted(seen):
        node = src.node(i)
        if node["op"] == "const":
            mapped[i] = dst.const_id(node["attrs"][0][1])
            continue
        if node["op"] == "input":
            raise GraphError(f"scan: body input {node['attrs'][0][1]!r} has no placeholder")
        dst._stamp = (node["role"], node["order"])
        mapped[i] = dst.node_id(node["op"], tuple(mapped[a] for a in node["args"]), node["attrs"])
    dst._stamp = ("primal", 0)


# --- forward mode: a tangent scan ---------------------------------------------------------------


def _jvp(ts, out: Expr, args, body, length, reverse, checkpoint):
    """The tangent of a scan: one scan carrying the carries and their tangents, its body the
    step body with its forward-mode tangents. Returns the tangent scan and, for each part of
    this scan its projections read, the part of the tangent scan holding that part's tangent."""
    graph = out.graph
    parts = sorted({graph.attr(j, "part") for j in graph.nx.succ[out.id]})
    stacked = tuple(j for kind, j in parts if kind == "stack")
    tangent_body, tangent_of = _tangent_body(body, stacked)
    nc, nx = len(body.carry), len(body.xs)
    tangents = [t if t is not None else zeros(graph, a.shape) for a, t in zip(args, ts)]
    node = graph.apply(
        "scan", *args[:nc], *tangents[:nc], *args[nc : nc + nx], *tangents[nc : nc + nx],
        *args[nc + nx :], *tangents[nc + nx :], body=tangent_body, length=length,
        reverse=reverse, checkpoint=checkpoint,
    )  # fmt: skip
    mapping = {("final", k): ("final", nc + k) for k in range(nc)}
    mapping.update({("stack", j): ("stack", tangent_of[j]) for j in stacked})
    return node, mapping


def _tangent_body(body: Body, stacked: tuple) -> tuple[Body, dict[int, int]]:
    """The step with its tangents: placeholders for the carries, xs and captures and then for
    their tangents; carries out and then their tangents; the tangent of each node ``stacked``.
    Cached on the body; returns it with body node id -> id of its tangent there."""
    key = ("tangent", stacked)
    if key not in body._cache:
        body._cache[key] = _build_tangent(body, stacked)
    return body._cache[key]


def _build_tangent(body: Body, stacked: tuple):
    src = body.graph
    tb = Graph(max_nodes=src.max_nodes, max_elements=src.max_elements)
    roles = [("carry", body.carry), ("x", body.xs), ("p", body.captures)]
    values, tangents = {}, {}
    for prefix, ids in roles:
        n = len(ids)
        for k, i in enumerate(ids):
            values[i] = tb.input(f"{prefix}{k}", body.shape(i))
        for k, i in enumerate(ids):
            tangents[i] = tb.input(f"{prefix}{n + k}", body.shape(i))
    mapped = {i: e.id for i, e in values.items()}
    roots = [*body.carry_out, *stacked]
    copy_nodes(src, tb, roots, mapped)
    outs = forward(
        tb, [Expr(tb, mapped[i]) for i in roots], {values[i].id: t for i, t in tangents.items()}
    )
    carry_out = [mapped[i] for i in body.carry_out] + [e.id for e in outs[: len(body.carry_out)]]
    tangent_of = {j: e.id for j, e in zip(stacked, outs[len(body.carry_out) :])}
    holders = [[values[i].id for i in ids] + [tangents[i].id for i in ids] for _, ids in roles]
    rebuilt = Body(tb, *holders, carry_out, list(tangent_of.values()))
    return rebuilt, tangent_of
