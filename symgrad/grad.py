"""Stage 2: reverse-mode differentiation that appends derivative nodes to the same graph.

``build_grad(y, wrt)`` visits only the nodes on a path from a ``wrt`` node to ``y``, in reverse id
order (ids are a topological order, so no recursion). Cotangent contributions are kept in a list
per node and summed once, when the node is reached; a missing entry is the symbolic zero, so no
zero node is ever built. Each op's VJP rule (in ``ops.py``) builds graph nodes, which is why a
gradient can be differentiated again: ``hessian`` and ``hvp`` are just ``build_grad`` applied to
gradient nodes. New nodes carry ``role="grad"`` and ``order`` = one more than the highest order
among the nodes differentiated. ``y`` is first rewritten into its stable form (stable.py), so
the derivative of a naive ``log(1 + exp(x))``-style formula is the stable one.
"""

from __future__ import annotations

import math

import numpy as np

from symgrad.errors import GradError, GraphError, ShapeError, SymgradError
from symgrad.forward import jvp
from symgrad.graph import Expr, Graph, active_nodes, paused_gc, zeros
from symgrad.ops import OPS
from symgrad.stable import stabilize
from symgrad.tensor import stack


def build_grad(y: Expr, wrt, seed=None) -> list[Expr]:
    """Gradient of the scalar ``y`` with respect to each of ``wrt``, as nodes of ``y.graph``.

    ``y`` must have shape ``()`` (reduce a tensor first, e.g. ``sg.sum``); ``wrt`` is a list of
    Exprs of the same graph, usually inputs. A ``wrt`` that ``y`` does not depend on gets the
    constant 0 (zeros of its shape). ``seed`` (an Expr or number) multiplies the output adjoint,
    giving a vector-Jacobian product; with the scalar ``y`` that is ``seed`` times the gradient.
    Nodes created carry ``role="grad"`` and a derivative ``order``; if the call fails, none is
    left in the graph.

    >>> g = Graph(); x = g.input("x"); [d] = build_grad(x * x, [x]); d.op
    'add'
    >>> from symgrad.interp import evaluate
    >>> float(evaluate(d, x=3.0)), float(evaluate(build_grad(x * x, [x], seed=0.5)[0], x=3.0))
    (6.0, 3.0)
    """
    graph = _check_output(y, "y")
    wrt = _check_wrt(graph, wrt)
    with graph.atomic(), paused_gc():
        # The derivative of the stable form (log1p, softplus, logsumexp, ...), whatever the
        # order of calls: differentiating log(sigmoid(z)) as written gives nan where it underflows.
        y = stabilize(y, keep=wrt)
        return _gradients(graph, [y], [seed], wrt)


def vjp(ys: list[Expr], cotangents: list[Expr], wrt: list[Expr]) -> list[Expr]:
    """``sum_k cotangents[k] · d ys[k] / d w`` for each ``w`` of ``wrt``, as nodes of the graph:
    the vector-Jacobian product of several outputs at once (each cotangent of its output's
    shape, ys of any shape). How a scan's reverse body is built from its step body."""
    graph = ys[0].graph
    with graph.atomic(), paused_gc():
        ys = [stabilize(y, keep=wrt) for y in ys]
        return _gradients(graph, ys, cotangents, wrt)


def _gradients(graph: Graph, ys: list[Expr], seeds: list, wrt: list[Expr]) -> list[Expr]:
    """The VJP of ``ys`` with output adjoints ``seeds`` (None: 1), each node of derivative
    order one more than the highest among the nodes differentiated."""
    active = active_nodes(graph, [y.id for y in ys], {w.id for w in wrt})
    order = 1 + max((graph.node(i)["order"] for i in active), default=0)
    with graph.stamped("grad", order):
        pending: dict[int, list[Part]] = {}
        for y, seed in zip(ys, seeds):
            pending.setdefault(y.id, []).append((_seed(graph, seed, y.shape), ()))
        ct = _backward(graph, pending, active)
        # The constant is hash-consed: every unconnected wrt shares one zero node.
        return [_apply(graph, *ct[w.id]) if w.id in ct else zeros(graph, w.shape) for w in wrt]


def jacobian(ys, wrt, mode: str = "auto") -> list[list[Expr]]:
    """``J[i][j]`` = d ys[i] / d wrt[j], of shape ``ys[i].shape + wrt[j].shape`` (a scalar
    ``Expr`` when both are scalars).

    ``mode="reverse"`` builds one gradient per output element, ``"forward"`` one tangent
    (``sg.jvp``) per wrt element; ``"auto"`` takes forward when the wrt have fewer elements in
    all than the outputs, else reverse. Tensor entries are stacked from those sweeps
    (``sg.stack``). If the call fails, no node is left in the graph.

    >>> from symgrad.parse import parse
    >>> f = parse("x * y"); x, y = f.graph.inputs.values()
    >>> J = jacobian([f, x + y], [x, y]); len(J), len(J[0])
    (2, 2)
    """
    ys = [ys] if isinstance(ys, Expr) else _as_list(ys, "ys")
    if mode not in ("auto", "forward", "reverse"):
        raise GradError(f"jacobian: mode must be 'auto', 'forward' or 'reverse', got {mode!r}")
    if not ys:
        return []
    # Every output and wrt is checked before the first gradient is built, and the graph is
    # rolled back if one fails anyway: a bad ys[1] must not leave ys[0]'s gradient behind.
    graph = _check_tensor(ys[0], "ys[0]")
    for k, y in enumerate(ys[1:], 1):
        if _check_tensor(y, f"ys[{k}]") is not graph:
            raise GradError(f"ys[{k}] belongs to another graph than ys[0]")
    wrt = _check_wrt(graph, wrt)
    if mode == "auto":
        n_out, n_in = (sum(math.prod(e.shape) for e in group) for group in (ys, wrt))
        mode = "forward" if n_in < n_out else "reverse"
    with graph.atomic(), paused_gc():
        return _forward_jacobian(ys, wrt) if mode == "forward" else _reverse_jacobian(ys, wrt)


def _reverse_jacobian(ys: list[Expr], wrt: list[Expr]) -> list[list[Expr]]:
    """One gradient per element of each output, stacked (output shape first)."""
    rows = []
    for y in ys:
        grads = [build_grad(y[index] if y.shape else y, wrt) for index in _indices(y.shape)]
        if not y.shape:
            rows.append(grads[0])
            continue
        rows.append([_stacked([g[j] for g in grads], y.shape, w.shape, 0)
                     for j, w in enumerate(wrt)])  # fmt: skip
    return rows


def _forward_jacobian(ys: list[Expr], wrt: list[Expr]) -> list[list[Expr]]:
    """One tangent of all outputs per element of each wrt, stacked (wrt shape last)."""
    columns = []  # per wrt: per element, the tangents of every output
    for w in wrt:
        seeds = [1.0] if not w.shape else [_one_hot(w.shape, index) for index in _indices(w.shape)]
        columns.append([jvp(ys, [w], [seed]) for seed in seeds])
    rows = []
    for i, y in enumerate(ys):
        row = []
        for w, cols in zip(wrt, columns):
            if not w.shape:
                row.append(cols[0][i])
            else:
                row.append(_stacked([c[i] for c in cols], y.shape, w.shape, len(y.shape)))
        rows.append(row)
    return rows


def _stacked(parts: list[Expr], y_shape, w_shape, axis: int) -> Expr:
    """``parts`` (one per element of the stacked shape) stacked at ``axis``, reshaped so the
    stacked axis becomes the whole stacked shape (``y_shape`` at 0, ``w_shape`` at the end)."""
    whole = stack(parts, axis=axis)
    shape = (*y_shape, *w_shape)
    return whole if whole.shape == shape else whole.graph.apply("reshape", whole, shape=shape)


def _indices(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    return [tuple(int(k) for k in index) for index in np.ndindex(*shape)] if shape else [()]


def _one_hot(shape: tuple[int, ...], index: tuple[int, ...]) -> np.ndarray:
    seed = np.zeros(shape)
    seed[index] = 1.0
    return seed


def hessian(y: Expr, wrt) -> list[list[Expr]]:
    """``H[i][j]`` = d² y / d wrt[i] d wrt[j], of shape ``wrt[i].shape + wrt[j].shape``: the
    Jacobian of the gradient (reverse over reverse for scalar ``wrt``, forward over reverse, one
    tangent per element, for tensors).

    Entries are nodes of derivative order 2; compile ``[H]`` (a list of lists) to get a matrix.

    >>> from symgrad.interp import evaluate
    >>> from symgrad.parse import parse
    >>> f = parse("x**2 * y"); x, y = f.graph.inputs.values()
    >>> [[float(evaluate(h, x=3.0, y=2.0)) for h in row] for row in hessian(f, [x, y])]
    [[4.0, 6.0], [6.0, 0.0]]
    """
    graph = _check_output(y, "y")
    wrt = _check_wrt(graph, wrt)
    with graph.atomic(), paused_gc():
        grads = build_grad(y, wrt)
        if all(not w.shape for w in wrt):
            return [build_grad(gi, wrt) for gi in grads]
        return _forward_jacobian(grads, wrt)


def hvp(y: Expr, wrt, v, mode: str = "reverse") -> list[Expr]:
    """Hessian-vector product H·v as graph nodes, at the cost of two gradients.

    d/dx (∇y · v) = H v, so it is the gradient of one scalar: no Hessian is ever built. ``v`` has
    one Expr or number per ``wrt``, each of that ``wrt``'s shape (tensors work too).
    ``mode="forward-over-reverse"`` builds it instead as the tangent of the gradient along ``v``
    (``sg.jvp``): the same values, one forward sweep over the gradient's nodes instead of a
    second reverse sweep (no cotangent of the whole gradient graph is kept).

    >>> from symgrad.interp import evaluate
    >>> from symgrad.parse import parse
    >>> f = parse("x**2 * y"); x, y = f.graph.inputs.values()
    >>> [float(evaluate(e, x=3.0, y=2.0)) for e in hvp(f, [x, y], [1.0, 0.0])]
    [4.0, 6.0]
    """
    graph = _check_output(y, "y")
    if mode not in ("reverse", "forward-over-reverse"):
        raise GradError(f"hvp: mode must be 'reverse' or 'forward-over-reverse', got {mode!r}")
    single = isinstance(wrt, Expr) and not isinstance(v, (list, tuple))
    wrt = _check_wrt(graph, wrt)
    v = [v] if single else _as_list(v, "v")  # hvp(y, x, 1.0) as hvp(y, [x], [1.0])
    if len(v) != len(wrt):
        raise GradError(f"hvp: v has {len(v)} entries but wrt has {len(wrt)}")
    if not wrt:
        return []
    with graph.atomic():
        grads = build_grad(y, wrt)
        if mode == "forward-over-reverse":
            v = [_coerce(graph, vi, f"v[{i}]") for i, vi in enumerate(v)]
            for i, (gi, vi) in enumerate(zip(grads, v)):
                if vi.shape != gi.shape:
                    raise GradError(f"hvp: v[{i}] has shape {vi.shape} but wrt[{i}] has {gi.shape}")
            return jvp(grads, wrt, v)
        total = None
        for i, (gi, vi) in enumerate(zip(grads, v)):
            vi = _coerce(graph, vi, f"v[{i}]")
            if vi.shape != gi.shape:
                raise GradError(f"hvp: v[{i}] has shape {vi.shape} but wrt[{i}] has {gi.shape}")
            term = gi * vi
            if term.shape:
                term = graph.apply("sum", term)
            total = term if total is None else total + term
        return build_grad(total, wrt)


# A cotangent is kept as (expr, mask): ``mask`` is a tuple of (condition id, branch) pairs still
# to apply — the adjoint is ``where(cond, expr, 0)`` for the taken branch, nested. Masks of a
# ``where`` are deferred through elementwise ops and applied once, where the branch's cotangent
# leaves it (a sum with unmasked parts, a tensor op, a wrt). So the inactive branch's values —
# sqrt(-1), 0/0 — are never multiplied by the zero cotangent (0 * nan = nan): they are selected
# away. JAX users write the "double where" trick for this; build_grad does it by itself.
Part = tuple  # (Expr, mask)


def _backward(graph: Graph, pending: dict[int, list], active: list[int]) -> dict[int, Part]:
    """Walk ``active`` in reverse id order from the cotangents in ``pending``, summing each
    node's contributions once.

    Returns each reached node's cotangent with its mask still deferred: the caller applies the
    masks of the nodes it wants (its wrt), so no select is built for intermediate nodes.
    """
    done: dict[int, Part] = {}
    active_set = frozenset(active)
    for i in reversed(active):
        parts = pending.pop(i, None)
        if parts is None:
            continue  # symbolic zero: nothing flows into this node
        node = graph.node(i)
        if OPS[node["op"]].multiple:
            _propagate_parts(graph, i, node, parts, pending, active_set)
            continue
        done[i] = _sum(graph, parts)
        if not node["args"]:
            continue
        _propagate(graph, i, node, done[i], pending, active_set)
    return done


def _propagate(graph, i, node, total: Part, pending, active_set) -> None:
    opdef = OPS[node["op"]]
    out = Expr(graph, i)
    args = tuple(Expr(graph, a) for a in node["args"])
    attrs = dict(node["attrs"])
    g, mask = total
    if mask and not opdef.elementwise:
        g, mask = _apply(graph, g, mask), ()  # positions do not carry over a tensor op
    if not opdef.vjp and opdef.expand is not None:
        _propagate_expanded(graph, opdef, args, attrs, g, pending, active_set)
        return
    for pos, (a, rule) in enumerate(zip(node["args"], opdef.vjp_rules(len(args)))):
        if rule is None or a not in active_set:
            continue
        if opdef.selects and g.shape == args[pos].shape:
            # The branch's cotangent is g where its side is taken: deferred, not built.
            pending.setdefault(a, []).append((g, mask + ((args[0].id, pos == 1),)))
            continue
        if OPS[graph.node(a)["op"]].multiple:
            # A projection (not elementwise: no mask left): the cotangent of one part of a
            # tuple-valued node (a scan), which takes all its parts' cotangents at once.
            pending.setdefault(a, []).append((rule(g, out, *args, **attrs), (), attrs["part"]))
            continue
        try:
            contribution = rule(g, out, *args, **attrs)
            if contribution.shape != args[pos].shape and mask:
                contribution, part_mask = _apply(graph, contribution, mask), ()
            else:
                part_mask = mask
            contribution = _fit(contribution, args[pos].shape)
        except SymgradError as err:
            raise _rule_error(err, node["op"], i, pos) from err
        pending.setdefault(a, []).append((contribution, part_mask))


def _rule_error(err: SymgradError, op: str, i: int, pos: int) -> SymgradError:
    # The graph's limits (max_nodes, max_elements) keep their class: they are not a rule that
    # failed, and the caller raises the limit to get past them.
    kind = type(err) if type(err) in (GraphError, ShapeError) else GradError
    return kind(f"{op} (node {i}), operand {pos}: {err}")


def _propagate_parts(graph, i, node, parts: list, pending, active_set) -> None:
    """A tuple-valued node (a scan): its rule takes the summed cotangent of each part at once."""
    by_part: dict = {}
    for expr, _, part in parts:
        by_part[part] = expr if part not in by_part else by_part[part] + expr
    opdef = OPS[node["op"]]
    args = tuple(Expr(graph, a) for a in node["args"])
    active = [a in active_set for a in node["args"]]
    try:
        contributions = opdef.vjp_parts(
            by_part, Expr(graph, i), active, *args, **dict(node["attrs"])
        )
    except SymgradError as err:
        raise _rule_error(err, node["op"], i, 0) from err
    for a, arg, flag, c in zip(node["args"], args, active, contributions):
        if flag and c is not None:
            pending.setdefault(a, []).append((_fit(c, arg.shape), ()))


def _propagate_expanded(graph, opdef, args, attrs, g, pending, active_set) -> None:
    """An op without VJP rules (conv2d, pooling, mean): differentiate its expansion in primitive
    ops, built in the graph, and pass on what reaches its operands."""
    expanded = opdef.expand(*args, **attrs)
    wanted = {a.id for a in args if a.id in active_set}
    local = active_nodes(graph, [expanded.id], wanted)
    done = _backward(graph, {expanded.id: [(g, ())]}, local)
    for a in args:
        if a.id in wanted and a.id in done:
            pending.setdefault(a.id, []).append(done[a.id])
            wanted.discard(a.id)  # an operand used twice got both uses summed already


def _sum(graph: Graph, parts: list[Part]) -> Part:
    """One cotangent from ``parts``: the masks they share stay deferred, the rest is applied."""
    shared = parts[0][1]
    for _, mask in parts[1:]:
        k = 0
        while k < min(len(shared), len(mask)) and shared[k] == mask[k]:
            k += 1
        shared = shared[:k]
    total = None
    for expr, mask in parts:
        expr = _apply(graph, expr, mask[len(shared) :])
        total = expr if total is None else total + expr
    return total, shared


def _apply(graph: Graph, expr: Expr, mask: tuple) -> Expr:
    """``expr`` where every condition of ``mask`` selects its branch, else 0."""
    for cond, taken in reversed(mask):
        c = Expr(graph, cond)
        expr = graph.apply("where", c, expr, 0.0) if taken else graph.apply("where", c, 0.0, expr)
    return expr


def _fit(c: Expr, shape: tuple[int, ...]) -> Expr:
    """A contribution of the output's (broadcast) shape summed back to an operand's ``shape``.

    This is the one place unbroadcasting happens: elementwise rules return cotangents of the
    output's shape, whatever numpy broadcasting did to their operands.
    """
    have = c.shape
    if have == shape:
        return c
    lead = len(have) - len(shape)
    if lead < 0 or any(n != 1 and n != have[lead + d] for d, n in enumerate(shape)):
        return c.graph.apply("broadcast_to", c, shape=shape)  # a smaller (e.g. scalar) part
    axes = tuple(range(lead)) + tuple(
        lead + d for d, n in enumerate(shape) if n == 1 and have[lead + d] != 1
    )
    total = c.graph.apply("sum", c, axis=axes, keepdims=False)
    return total if total.shape == shape else total.reshape(shape)


def _check_tensor(y, what: str) -> Graph:
    if not isinstance(y, Expr):
        raise GradError(f"{what} must be an Expr, got {type(y).__name__}")
    return y.graph


def _check_output(y, what: str) -> Graph:
    _check_tensor(y, what)
    if y.shape != ():
        raise GradError(
            f"{what} must be a scalar, got shape {y.shape}: reduce it (sg.sum(y), or "
            "sg.sum(y * u) for a vector-Jacobian product)"
        )
    return y.graph


def _check_wrt(graph: Graph, wrt) -> list[Expr]:
    wrt = [wrt] if isinstance(wrt, Expr) else _as_list(wrt, "wrt")
    for k, w in enumerate(wrt):
        if not isinstance(w, Expr):
            raise GradError(f"wrt[{k}] must be an Expr, got {type(w).__name__}")
        if w.graph is not graph:
            raise GradError(f"wrt[{k}] belongs to another graph than y")
    return wrt


def _seed(graph: Graph, seed, shape: tuple[int, ...]) -> Expr:
    """The output adjoint: 1, or ``seed`` (an Expr or a number) of ``y``'s shape exactly.

    A seed of another shape is refused rather than broadcast or summed: a vector seed for a
    scalar ``y`` would otherwise give the gradient times the seed's sum, silently.
    """
    if seed is None:
        return graph.const(1.0)
    seed = _coerce(graph, seed, "seed")
    if seed.shape != shape:
        raise GradError(f"seed has shape {seed.shape} but y has shape {shape}: they must be equal")
    return seed


def _coerce(graph: Graph, v, what: str) -> Expr:
    if isinstance(v, Expr):
        if v.graph is not graph:
            raise GradError(f"{what} belongs to another graph than y")
        return v
    try:
        return graph.const(v)
    except SymgradError as err:
        raise GradError(
            f"{what} must be an Expr or a number (or an array of them), got "
            f"{type(v).__name__}: {err}"
        ) from None


def _as_list(v, what: str) -> list:
    if isinstance(v, (list, tuple)):
        return list(v)
    raise GradError(f"{what} must be a list of Expr, got {type(v).__name__}")
