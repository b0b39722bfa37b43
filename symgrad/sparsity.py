"""Structural sparsity of derivatives, read off the graph, and the colourings that compress them.

``jacobian_sparsity(ys, wrt)`` walks the graph once, in id order (a topological order), and
gives each node the set of wrt elements it depends on: a set of column numbers for a scalar
node, a sparse boolean-valued matrix (one row per element) for a tensor node. An op's rule is
its registry entry's: ``OpDef.pattern`` (an op that moves elements, a reduction, a matrix
product), else element to element as broadcast for an elementwise op, else every output element
on every operand element (safe, dense). An operand without a derivative (a comparison, the
condition of ``where``, a piecewise-constant op) adds nothing. Composite ops are expanded into
primitive ones first, in a copy: the caller's graph is never changed. So an entry is present
unless the graph proves it zero, without evaluating anything.

``hessian_sparsity(y, wrt)`` is the Jacobian sparsity of the gradient, built and folded in a
copy (folding drops the products with constant zeros that the reverse sweep writes).

``color_columns(pattern)`` colours the columns so that no two columns of a colour share a row
(distance-2 colouring of the column intersection graph, greedy in smallest-last order): one
compressed sweep per colour recovers every entry directly.
``star_color`` colours a symmetric pattern's columns with fewer colours where rows share
columns (an arrowhead: 2 colours instead of n), and ``recovery`` says where each entry is read.
"""

from __future__ import annotations

import math

import numpy as np

from symgrad.errors import ArgumentError, GradError
from symgrad.grad import build_grad
from symgrad.graph import Expr, paused_gc, reachable
from symgrad.ops import MOVES, OPS
from symgrad.optimize import optimize
from symgrad.optimize.expand import expand


def _scipy_sparse():
    try:
        import scipy.sparse as sparse
    except ImportError:  # pragma: no cover - scipy is in the test and sparse extras
        raise ArgumentError(
            "sparsity patterns are scipy.sparse arrays: pip install 'symgrad[sparse]'"
        ) from None
    return sparse


def jacobian_sparsity(ys, wrt):
    """Which entries of ``sg.jacobian(ys, wrt)`` the graph does not prove zero.

    A ``scipy.sparse.csr_array`` of booleans with one row per element of the outputs (``ys``
    in order, each flattened in C order) and one column per element of ``wrt`` (likewise).

    >>> import symgrad as sg
    >>> g = sg.Graph(); x, y, z = g.input("x"), g.input("y"), g.input("z")
    >>> jacobian_sparsity([x * y, sg.sin(z)], [x, y, z]).toarray().astype(int).tolist()
    [[1, 1, 0], [0, 0, 1]]
    """
    return dependencies(*expanded_copy(ys, wrt, "jacobian_sparsity"))


def hessian_sparsity(y, wrt):
    """Which entries of the Hessian of the scalar ``y`` the graph does not prove zero: a
    symmetric ``scipy.sparse.csr_array`` of booleans, one row and column per element of
    ``wrt``.

    >>> import symgrad as sg
    >>> g = sg.Graph(); x, y, z = g.input("x"), g.input("y"), g.input("z")
    >>> hessian_sparsity(x * y + z**2 + x, [x, y, z]).toarray().astype(int).tolist()
    [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    """
    return hessian_pattern(*gradient_copy(y, wrt, "hessian_sparsity"))


def hessian_pattern(grads: list[Expr], wrt: list[Expr]):
    """The Hessian's structure from the gradient's (symmetric, indices sorted)."""
    pattern = dependencies(grads, wrt)
    pattern = _scipy_sparse().csr_array((pattern + pattern.T).astype(bool), dtype=bool)
    pattern.sort_indices()
    return pattern


def expanded_copy(ys, wrt, what: str) -> tuple[list[Expr], list[Expr]]:
    """``ys`` and ``wrt`` checked, then copied into a fresh graph with composite ops expanded
    (the caller's graph gets no node)."""
    ys, wrt = _checked(ys, wrt, what)
    flat = expand([*ys, *wrt])
    return flat[: len(ys)], flat[len(ys) :]


def gradient_copy(y, wrt, what: str) -> tuple[list[Expr], list[Expr]]:
    """The gradient of ``y`` built in a copy of its graph, folded and expanded, and the wrt
    there. The caller's graph gets no node."""
    [y], wrt = expanded_copy([y], wrt, what)
    if y.shape != ():
        raise GradError(f"{what}: y must be a scalar, got shape {y.shape}")
    grads = build_grad(y, wrt)
    flat = optimize([*grads, *wrt])
    if _composite(flat):  # the VJP rules wrote a composite op: expand it too
        flat = expand(flat)
    return flat[: len(wrt)], flat[len(wrt) :]


def _composite(outputs: list[Expr]) -> bool:
    graph = outputs[0].graph
    nodes = graph.nx._node
    return any(OPS[nodes[i]["op"]].expand for i in reachable(graph, [e.id for e in outputs]))


def _checked(ys, wrt, what: str) -> tuple[list[Expr], list[Expr]]:
    ys = [ys] if isinstance(ys, Expr) else ys
    wrt = [wrt] if isinstance(wrt, Expr) else wrt
    for name, group in (("ys", ys), ("wrt", wrt)):
        if not isinstance(group, (list, tuple)) or not group:
            raise GradError(f"{what}: {name} must be an Expr or a non-empty list of Exprs")
    graph = None
    for name, group in (("ys", ys), ("wrt", wrt)):
        for k, e in enumerate(group):
            if not isinstance(e, Expr):
                raise GradError(f"{what}: {name}[{k}] must be an Expr, got {type(e).__name__}")
            if graph is not None and e.graph is not graph:
                raise GradError(f"{what}: {name}[{k}] belongs to another graph than ys[0]")
            graph = e.graph
    return list(ys), list(wrt)


def dependencies(ys: list[Expr], wrt: list[Expr]):
    """The structural Jacobian of ``ys`` with respect to ``wrt`` (nodes of one graph, composite
    ops already expanded), as a boolean csr_array."""
    sparse = _scipy_sparse()
    graph = ys[0].graph
    nodes = graph.nx._node
    sizes = [math.prod(w.shape) for w in wrt]
    n = sum(sizes)
    walk = _Walk(sparse, n)
    seeds: dict[int, object] = {}
    start = 0
    for w, size in zip(wrt, sizes):
        columns = range(start, start + size)
        seed = set(columns) if not w.shape else walk.identity(start, size)
        seeds[w.id] = walk.union(seeds[w.id], seed) if w.id in seeds else seed
        start += size
    order = reachable(graph, [y.id for y in ys])
    walk.count_uses(order, nodes, seeds, {y.id for y in ys})
    with paused_gc():
        deps = dict(seeds)
        for i in order:
            if i in seeds:
                continue
            node = nodes[i]
            found = walk.node(node, [deps.get(a) for a in node["args"]], nodes)
            walk.release(node["args"], deps)
            if found is not None:
                deps[i] = found
    rows = [walk.matrix(deps.get(y.id), math.prod(y.shape)) for y in ys]
    return sparse.vstack(rows, format="csr").astype(bool)


def _const_value(node: dict):
    """A constant node's value (the indices of a take read off the graph), else None."""
    return dict(node["attrs"])["value"] if node["op"] == "const" else None


class _Walk:
    """The rules of ``dependencies``, and what they share: scipy, the column count, how often
    each node is still to be read (a set read for the last time is grown in place, so a chain
    of n additions costs O(n), not O(n^2))."""

    def __init__(self, sparse, n: int):
        self.sparse, self.n = sparse, n
        self.uses: dict[int, int] = {}
        self.seeds: dict = {}

    def count_uses(self, order, nodes, seeds, outputs: set[int]) -> None:
        self.seeds = seeds  # never grown in place, never released
        for i in outputs:  # read once more at the end: kept to the end, never grown in place
            self.uses[i] = 1
        for i in order:
            if i not in seeds:
                for a in nodes[i]["args"]:
                    self.uses[a] = self.uses.get(a, 0) + 1

    def release(self, args, deps: dict) -> None:
        for a in args:
            self.uses[a] -= 1
            if self.uses[a] == 0 and a not in self.seeds:
                deps.pop(a, None)

    def identity(self, start: int, size: int):
        rows = np.arange(size)
        return self._csr(rows, rows + start, (size, self.n))

    def _csr(self, rows, cols, shape):
        data = np.ones(len(rows))
        return self.sparse.csr_array((data, (rows, cols)), shape=shape)

    def union(self, a, b):
        if isinstance(a, set) and isinstance(b, set):
            return a | b
        return self.row(a) + self.row(b)

    def row(self, d):
        """A scalar node's set as a 1 x n matrix (a tensor's matrix as it is)."""
        if not isinstance(d, set):
            return d
        cols = np.fromiter(d, dtype=np.int64, count=len(d))
        return self._csr(np.zeros(len(cols), np.int64), cols, (1, self.n))

    def matrix(self, d, size: int):
        if d is None:
            return self.sparse.csr_array((size, self.n))
        return self.row(d)

    def node(self, node: dict, deps: list, nodes):
        opdef = OPS[node["op"]]
        if not opdef.differentiable:
            return None
        live = [
            k
            for k, d in enumerate(deps)
            if d is not None and (not opdef.vjp or opdef.vjp[k] is not None)
        ]
        if not live:
            return None
        shape = node["shape"]
        shapes = [nodes[a]["shape"] for a in node["args"]]
        if opdef.multiple or (opdef.arity < 0 and not callable(opdef.pattern)) or shape is None:
            return self._dense(deps, live, shape)
        if not shape and all(not shapes[k] for k in live) and opdef.elementwise:
            return self._scalar_union(node["args"], deps, live)
        attrs = dict(node["attrs"])
        consts = [_const_value(nodes[a]) for a in node["args"]]
        pairs = self._pairs(opdef, shapes, attrs, shape, consts)
        if pairs is None:
            return self._dense(deps, live, shape)
        out_size = math.prod(shape)
        total = None
        for k in live:
            rows, cols = pairs[k]
            local = self._csr(rows, cols, (out_size, math.prod(shapes[k])))
            part = local @ self.row(deps[k])
            total = part if total is None else total + part
        return self._shaped(total, shape)

    def _scalar_union(self, args, deps, live):
        # Each set in the walk belongs to one node. The biggest operand's set is grown in place
        # when this is its node's last read (so a chain of n additions costs O(n), not
        # O(n^2)); otherwise it is copied. A seed's set is never handed on.
        sizes = [len(deps[k]) for k in live]
        big = live[sizes.index(max(sizes))]
        owner = args[big]
        mine = self.uses.get(owner) == 1 and owner not in self.seeds and args.count(owner) == 1
        base = deps[big] if mine else set(deps[big])
        for k in live:
            if k != big and deps[k] is not base:
                base |= deps[k]
        return base

    def _pairs(self, opdef, shapes, attrs, shape, consts):
        """Per operand, (output flat indices, operand flat indices) it feeds, or None."""
        if opdef.pattern == MOVES:
            size = math.prod(shapes[0])
            numbers = np.arange(1, size + 1, dtype=float).reshape(shapes[0])
            source = np.asarray(opdef.numpy(numbers, **attrs), dtype=float).ravel()
            rows = np.flatnonzero(source)
            return [(rows, source[rows].astype(np.int64) - 1)]
        if callable(opdef.pattern):
            return opdef.pattern(shapes, attrs, consts)
        if opdef.elementwise:
            out = math.prod(shape)
            return [
                (np.arange(out), np.broadcast_to(np.arange(math.prod(s)).reshape(s), shape).ravel())
                for s in shapes
            ]
        return None

    def _dense(self, deps, live, shape):
        """Every output element on every column some operand element depends on."""
        columns: set[int] = set()
        for k in live:
            d = deps[k]
            columns |= d if isinstance(d, set) else set(d.indices.tolist())
        if not shape:
            return columns
        cols = np.array(sorted(columns), dtype=np.int64)
        size = math.prod(shape)
        rows = np.repeat(np.arange(size), len(cols))
        return self._csr(rows, np.tile(cols, size), (size, self.n))

    def _shaped(self, matrix, shape):
        matrix = matrix.tocsr()
        matrix.sum_duplicates()
        return set(matrix.indices.tolist()) if not shape else matrix


def color_columns(pattern) -> np.ndarray:
    """A colour (0, 1, ...) per column of ``pattern`` (a scipy sparse matrix) such that no two
    columns of one colour have an entry in the same row. Distance-2 colouring: greedy over the
    column intersection graph (``pattern.T @ pattern``, scipy), in smallest-last order."""
    sparse = _scipy_sparse()
    p = sparse.csr_array(pattern, dtype=np.float64)
    if p.shape[1] == 0:
        return np.zeros(0, np.int64)
    adj = adjacency(p.T @ p)
    return np.array(_greedy(adj, smallest_last(adj)), dtype=np.int64)


def adjacency(symmetric) -> list[list[int]]:
    """Neighbour lists of the graph whose adjacency matrix is ``symmetric`` (its diagonal
    dropped). Plain lists over the CSR arrays: building a networkx graph of 100k vertices and
    letting ``greedy_color`` copy it took ~1.8 s of a 1.9 s colouring; this walk, ~0.2 s."""
    m = symmetric.tocsr()
    m.sum_duplicates()
    indptr, indices = m.indptr.tolist(), m.indices.tolist()
    return [[u for u in indices[indptr[v] : indptr[v + 1]] if u != v] for v in range(m.shape[0])]


def smallest_last(adj: list[list[int]]) -> list[int]:
    """Vertices in smallest-last order (Matula and Beck): repeatedly take out a vertex of least
    degree among those left, then colour in the reverse order. It bounds the greedy colours by
    the graph's degeneracy + 1. Buckets by current degree; the least degree drops by at most
    one per removal."""
    degree = [len(a) for a in adj]
    buckets: list[set[int]] = [set() for _ in range(max(degree, default=0) + 1)]
    for v, d in enumerate(degree):
        buckets[d].add(v)
    gone = [False] * len(adj)
    order, low = [], 0
    for _ in range(len(adj)):
        low = max(low - 1, 0)
        while not buckets[low]:
            low += 1
        v = buckets[low].pop()
        gone[v] = True
        order.append(v)
        for u in adj[v]:
            if not gone[u]:
                d = degree[u]
                buckets[d].discard(u)
                degree[u] = d - 1
                buckets[d - 1].add(u)
    order.reverse()
    return order


def _greedy(adj: list[list[int]], order: list[int]) -> list[int]:
    """Each vertex in ``order`` takes the least colour none of its neighbours has."""
    color = [-1] * len(adj)
    for v in order:
        used = {color[u] for u in adj[v]}
        c = 0
        while c in used:
            c += 1
        color[v] = c
    return color


def star_color(pattern) -> np.ndarray | None:
    """A star colouring of the columns of the symmetric ``pattern`` (a proper colouring of its
    adjacency graph in which every path on four vertices uses three colours), greedy in
    smallest-last order, or None where this greedy pass leaves an entry it cannot recover.

    Why: a Hessian entry H[i, j] is then read either from the product of column j's colour at
    row i (if j is i's only neighbour of that colour) or from that of column i's colour at row
    j. So a column shared by every row (one parameter in every term: an arrowhead) costs one
    colour more, not one colour per column as a distance-2 colouring does.

    A vertex v may not take: a neighbour's colour; the colours next to an uncoloured
    neighbour w (two of them would meet at w); a colour a seen at x next to a coloured
    neighbour w when x already has another neighbour of w's colour (v-w-x-y would alternate);
    and, when two neighbours share a colour, any colour next to them (x-v-w-y would).
    ``recovery`` checks the result, entry by entry.
    """
    sparse = _scipy_sparse()
    p = sparse.csr_array(pattern, dtype=bool)
    n = p.shape[0]
    adj = adjacency(p)
    color = [-1] * n
    count: list[dict[int, int]] = [{} for _ in range(n)]  # x -> colour -> coloured neighbours
    bad: list[set[int]] = [set() for _ in range(n)]  # coloured w -> colours v may not take
    seen: list[set[int]] = [set() for _ in range(n)]  # colours next to w
    for v in smallest_last(adj):
        forbidden: set[int] = set()
        twice = {a for a, m in count[v].items() if m >= 2}
        for w in adj[v]:
            if color[w] >= 0:
                forbidden.add(color[w])
                forbidden |= bad[w]
                if color[w] in twice:  # x-v-w-y with x, w of one colour: y's may not be v's
                    forbidden |= seen[w]
            else:
                forbidden |= seen[w]
        c = 0
        while c in forbidden:
            c += 1
        color[v] = c
        _note_colour(v, c, adj, color, count, bad, seen)
    out = np.array(color, dtype=np.int64)
    return out if recovery(p, out) is not None else None


def _note_colour(v, c, adj, color, count, bad, seen) -> None:
    """Update the walk's records after v took colour c."""
    for x in adj[v]:
        seen[x].add(c)
        count[x][c] = count[x].get(c, 0) + 1
        if color[x] >= 0 and count[x][c] == 2:  # x now has two neighbours of colour c
            for w in adj[x]:
                if color[w] == c:  # v among them
                    bad[w].add(color[x])
        elif color[x] >= 0 and count[x][c] > 2:  # the others were told: v is new
            bad[v].add(color[x])
    for w in adj[v]:  # v itself is an x for its coloured neighbours w
        if color[w] >= 0 and count[v].get(color[w], 0) >= 2:
            bad[w].add(c)


def recovery(pattern, colors: np.ndarray) -> np.ndarray | None:
    """For each entry (i, j) of the symmetric ``pattern`` in CSR order, the (row, colour) of the
    compressed products ``B = H S`` that holds it, as one flat index ``colour * n + row``; None
    if an entry cannot be read directly (two columns of one colour meet it from both sides)."""
    n = pattern.shape[0]
    k = int(colors.max()) + 1 if n else 0
    rows = csr_rows(pattern)
    cols = pattern.indices
    # How many columns of each colour row i holds (the diagonal included).
    per_row = np.bincount(rows * k + colors[cols], minlength=n * k).reshape(n, k)
    direct = per_row[rows, colors[cols]] == 1  # (H S)[i, c(j)] = H[i, j]
    mirror = per_row[cols, colors[rows]] == 1  # (H S)[j, c(i)] = H[j, i] = H[i, j]
    if not np.all(direct | mirror):
        return None
    return np.where(direct, colors[cols] * n + rows, colors[rows] * n + cols)


def csr_rows(pattern) -> np.ndarray:
    """The row of each stored entry of a csr array, in its order."""
    return np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
