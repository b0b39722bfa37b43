"""The graph: a ``Graph`` owning a networkx.DiGraph, hash-consed node creation, ``Expr`` handles.

A node's identity is its key ``(op, args, attrs)``: ``args`` is the tuple of operand ids (operand
order lives here, never in edge order — a DiGraph collapses the two edges of ``x*x``) and
``attrs`` a sorted tuple of ``(name, value)`` pairs. Creating a node whose key exists returns the
existing id, so an identical subexpression is never built twice (CSE at construction);
commutative ops sort their operands first. Ids grow with creation, so id order is a topological
order and no code needs to recurse over a graph.

Each node of ``g.nx`` carries the attributes ``op``, ``args``, ``attrs``, ``shape``, ``role``
(``"primal"`` or ``"grad"``) and ``order`` (0 for primal nodes, k for nodes a k-th derivative
added).

Every node — created by a call, by a derivative rule or rebuilt from a pickle — passes the same
checks: the op's ``normalize`` (attributes), its shape rule, and the graph's limits ``max_nodes``
and ``max_elements`` (elements of any one node). ``g.nx`` is read-only: its mutating methods raise
a GraphError, so nothing can change the nodes behind the hash-consing tables.
"""

from __future__ import annotations

import gc
import itertools
import math
import numbers
import re
import threading
from contextlib import contextmanager

import networkx as nx
import numpy as np

from symgrad.errors import GraphError, ShapeError, SymgradError
from symgrad.ops import MAX_NDIM, OPS, VARIADIC, show

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
DEFAULT_MAX_NODES = 10_000_000
# Elements of any one node (input, intermediate or output). 2**28 float64 is 2 GiB per array: a
# compiled gradient holds several arrays of that size at once (values and cotangents), and a few
# of them still fit the 24 GiB of a work machine, while no typo'd broadcast or reshape can ask
# for 10^18 elements and spin for ever. Real data above it raise ``Graph(max_elements=...)``.
DEFAULT_MAX_ELEMENTS = 2**28
# The highest ``max_elements`` accepted: far beyond any memory (8 TiB of float64), and element
# and byte offsets (8 * 2**40) stay far inside the int64 arithmetic of the compiled code.
MAX_ELEMENTS = 2**40
PICKLE_FORMAT = 2  # version of the state a pickled Graph carries (1: without max_elements)
# The methods of a networkx graph that change it: refused on ``g.nx`` (see ``_read_only``).
NX_MUTATORS = (
    "add_node", "add_nodes_from", "remove_node", "remove_nodes_from", "add_edge",
    "add_edges_from", "add_weighted_edges_from", "remove_edge", "remove_edges_from", "update",
    "clear", "clear_edges",
)  # fmt: skip


def _key_value(v):
    # Floats key by their bits: 0.0 and -0.0 are different values, and NaN equals itself.
    return float(v).hex() if isinstance(v, float) else v


class _GcPause:
    """How many threads are inside ``paused_gc``, and whether the collector ran before the first.

    Counted under a lock: with a bare ``isenabled``/``disable`` pair per thread, one thread
    could read "disabled" while another paused, then disable after the other re-enabled, and
    leave the collector off for good (8 threads pausing in a loop did, in 11 of 20 runs).
    """

    lock = threading.Lock()
    depth = 0
    resume = False


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector around a pass that creates ~10^5 nodes.

    Node data are plain dicts and tuples without cycles; the collector's generation scans over
    a graph that keeps growing were ~40% of the time of build_grad and optimize on big graphs.
    It runs again when the last thread inside leaves.
    """
    with _GcPause.lock:
        if _GcPause.depth == 0:
            _GcPause.resume = gc.isenabled()
            gc.disable()
        _GcPause.depth += 1
    try:
        yield
    finally:
        with _GcPause.lock:
            _GcPause.depth -= 1
            if _GcPause.depth == 0 and _GcPause.resume:
                gc.enable()


class Graph:
    """A computational graph. ``g.nx`` is the networkx.DiGraph holding the nodes.

    >>> g = Graph(); x = g.input("x"); (x * x).op
    'mul'
    """

    def __init__(
        self, max_nodes: int = DEFAULT_MAX_NODES, max_elements: int = DEFAULT_MAX_ELEMENTS
    ):
        max_nodes = _checked_limit("max_nodes", max_nodes)
        max_elements = _checked_limit("max_elements", max_elements, MAX_ELEMENTS)
        self._nx = _read_only_digraph()
        self._max_nodes, self._max_elements = max_nodes, max_elements
        self._ids: dict[tuple, int] = {}
        self._keys: list[tuple] = []  # key of each id, to undo a failed call
        self._inputs: dict[str, int] = {}
        self._stamp = ("primal", 0)
        # A scan body while its step is traced: how an operand of the enclosing graph becomes
        # one of this graph (symgrad.scan); None elsewhere. Once traced, a body is closed.
        self._capture = None
        self._closed = False
        self._depth = 0  # how many scan bodies this graph is inside (0: an ordinary graph)
        self._has_parts = False  # some node is tuple-valued (see _operand_shapes)

    @property
    def nx(self) -> nx.DiGraph:
        """The networkx.DiGraph of the nodes, read-only: its mutating methods raise GraphError.

        Copy it (``nx.DiGraph(g.nx)`` or ``g.nx.copy()``) to get a graph you may change.
        """
        return self._nx

    @nx.setter
    def nx(self, value) -> None:
        raise GraphError("Graph.nx is read-only: the graph owns its networkx.DiGraph")

    @property
    def max_nodes(self) -> int:
        """Most nodes the graph may hold; a call that would create more is a GraphError."""
        return self._max_nodes

    @max_nodes.setter
    def max_nodes(self, value: int) -> None:
        self._max_nodes = _checked_limit("max_nodes", value)

    @property
    def max_elements(self) -> int:
        """Most elements any one node may have (inputs, constants, intermediates, outputs);
        a node with more is a ShapeError when it is created, before anything is allocated."""
        return self._max_elements

    @max_elements.setter
    def max_elements(self, value: int) -> None:
        self._max_elements = _checked_limit("max_elements", value, MAX_ELEMENTS)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<symgrad.Graph: {len(self)} nodes, inputs {list(self._inputs)}>"

    @property
    def inputs(self) -> dict[str, Expr]:
        """Input name -> ``Expr``, in creation order."""
        return {name: Expr(self, i) for name, i in self._inputs.items()}

    def node(self, i: int) -> dict:
        """The attribute dict of node ``i`` (op, args, attrs, shape, role, order): read it only."""
        return self._nx._node[i]

    def input(self, name: str, shape=None) -> Expr:
        """The input called ``name``, created on first use; ``shape`` () (a scalar) by default.

        Fetching an existing input with a different ``shape`` is a ShapeError.
        """
        if not isinstance(name, str) or not NAME_RE.match(name) or name.startswith("__"):
            raise GraphError(
                f"input name {show(name)} is not a name: use letters, digits and '_', not "
                "starting with a digit or '__'"
            )
        what = f"input {name!r}"
        if name in self._inputs:
            e = Expr(self, self._inputs[name])
            if shape is not None and check_shape(shape, what, self._max_elements) != e.shape:
                raise ShapeError(f"{what} has shape {e.shape}, not {show(shape)}")
            return e
        shape = () if shape is None else check_shape(shape, what, self._max_elements)
        e = Expr(self, self._add("input", (), (("name", name),), shape))
        self._inputs[name] = e.id
        return e

    def const(self, value) -> Expr:
        """A constant node: a float, or a numpy array (or nested list) of floats."""
        return Expr(self, self.const_id(value))

    def const_id(self, value) -> int:
        """Id of the constant node holding ``value``, created if new."""
        if isinstance(value, (np.ndarray, list, tuple)):
            return self._array_const(value)
        if type(value) is not float:
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise GraphError(f"constant must be a real number, got {type(value).__name__}")
            try:
                value = float(value)
            except OverflowError:  # an int like 10**400: no float64 holds it
                raise GraphError(
                    f"constant {type(value).__name__} is too large for a float64"
                ) from None
        # Keyed by the float's bits: 0.0 and -0.0 are different constants, NaN equals itself.
        key = ("const", value.hex())
        found = self._ids.get(key)
        if found is not None:
            return found
        return self._new(key, "const", (), (("value", value),), ())

    def _array_const(self, value) -> int:
        # The dtype check comes first: casting a complex array would warn before the error.
        if isinstance(value, np.ndarray) and value.dtype.kind not in "biuf":
            raise GraphError(f"constant array must hold real numbers, not {value.dtype}")
        try:
            arr = np.array(value, dtype=np.float64, order="C")  # kernels read C order
        except (TypeError, ValueError, OverflowError):
            raise GraphError("constant array must hold real numbers") from None
        if arr.ndim == 0:
            return self.const_id(float(arr))
        if arr.size == 0:
            raise ShapeError(f"constant array of shape {arr.shape} is empty")
        check_shape(arr.shape, "constant array", self._max_elements)
        arr.flags.writeable = False  # the node owns it: nobody may change a hash-consed value
        # Keyed by shape and bits: -0.0 and 0.0 differ, NaN equals itself, as for scalars.
        key = ("const", arr.shape, arr.tobytes())
        found = self._ids.get(key)
        if found is not None:
            return found
        return self._new(key, "const", (), (("value", arr),), arr.shape)

    def apply(self, op: str, *operands, **attrs) -> Expr:
        """Node ``op(*operands)``; numbers among ``operands`` become constants."""
        inner = self
        for v in operands:
            if type(v) is Expr and v.graph._depth > inner._depth:
                inner = v.graph
        if inner is not self:
            # ``w @ h`` in a scan step, w of the enclosing graph: the node goes in the body,
            # which captures w (a body is deeper than the graph it was traced in).
            return inner.apply(op, *operands, **attrs)
        opdef = _opdef(op, len(operands), attrs)
        start = len(self._keys)
        try:
            ids = tuple(
                v.id if type(v) is Expr and v.graph is self else self._operand_id(op, pos, v)
                for pos, v in enumerate(operands)
            )
            return Expr(self, self.create(opdef, ids, attrs))
        except SymgradError:
            # A constant made for an earlier operand must not outlive the failed call.
            if len(self._keys) > start:
                self._truncate(start)
            raise

    def create(self, opdef, ids: tuple[int, ...], attrs: dict) -> int:
        """Id of the node ``opdef`` over operand ids ``ids`` with raw ``attrs``, created if new.

        The one checked way in, shared by ``apply`` and unpickling: the op's schema checks each
        attribute's kind and fills in defaults, the op's ``normalize`` checks the values against
        the operands and canonicalizes them (indices, axes, sizes, strides), then
        ``node_id`` runs the shape rule and the graph's limits.
        """
        attrs = opdef.checked_attributes(attrs)
        if opdef.normalize is not None:
            shapes = self._operand_shapes(ids)
            try:
                attrs = opdef.normalize(opdef.name, shapes, attrs)
            except SymgradError:
                raise
            except Exception as err:  # a safety net: every normalize rejects bad values itself
                raise GraphError(
                    f"{opdef.name}: bad attributes {show(attrs)} ({type(err).__name__})"
                ) from None
        return self.node_id(opdef.name, ids, tuple(sorted(attrs.items())) if attrs else ())

    def node_id(self, op: str, ids: tuple[int, ...], attrs: tuple = ()) -> int:
        """Id of the node ``op`` over operand ids ``ids`` (checked operands) and canonical
        ``attrs`` (what the op's ``normalize`` gives, as sorted pairs), created if new."""
        opdef = OPS[op]
        if opdef.commutative:
            ids = tuple(sorted(ids))
        shapes = self._operand_shapes(ids)
        # Scalar operands of an elementwise op are the common case: skip the shape rule.
        if not any(shapes) and opdef.shape is None:
            return self._add(op, ids, attrs, ())
        shape = opdef.infer_shape(shapes, dict(attrs))
        if len(shape) > MAX_NDIM or math.prod(shape) > self._max_elements:
            check_shape(shape, f"{op}: result", self._max_elements)
        return self._add(op, ids, attrs, shape)

    def _operand_shapes(self, ids: tuple[int, ...]) -> tuple:
        """The operands' shapes, as the op's rules see them: a tuple-valued node (a scan) is
        seen as the shapes of its parts, a mapping part -> shape."""
        nodes = self._nx._node
        if not self._has_parts:  # the common case, on the hot path of node creation
            return tuple(nodes[i]["shape"] for i in ids)
        return tuple(nodes[i].get("parts", nodes[i]["shape"]) for i in ids)

    def _operand_id(self, op: str, pos: int, v) -> int:
        if isinstance(v, Expr):
            if v.graph is not self and self._capture is not None:
                return self._capture(v)  # a scan step using a node of the enclosing graph
            if v.graph is not self:
                raise GraphError(f"{op}: operand {pos} belongs to another graph")
            return v.id
        if (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))) or isinstance(
            v, np.ndarray
        ):
            try:
                return self.const_id(v)
            except GraphError as err:
                raise GraphError(f"{op}: operand {pos}: {err}") from None
        raise GraphError(f"{op}: operand {pos} is a {type(v).__name__}, not an Expr or a number")

    def _add(self, op: str, args: tuple, attrs: tuple, shape: tuple) -> int:
        key = (op, args, tuple((k, _key_value(v)) for k, v in attrs)) if attrs else (op, args)
        found = self._ids.get(key)
        if found is not None:
            return found
        return self._new(key, op, args, attrs, shape)

    def _new(self, key: tuple, op: str, args: tuple, attrs: tuple, shape: tuple) -> int:
        i = len(self._keys)
        if self._closed:
            # A scan's body is an attribute of its node, hash-consed by its nodes: it must not
            # change once the scan exists.
            raise GraphError(
                "this graph is the body of a scan, closed once its step was traced: build "
                "nodes in the graph the scan belongs to"
            )
        if i >= self._max_nodes:
            raise GraphError(
                f"graph would exceed max_nodes={self._max_nodes}: raise Graph(max_nodes=...)"
            )
        role, order = self._stamp
        data = {"op": op, "args": args, "attrs": attrs, "shape": shape, "role": role}
        data["order"] = order
        opdef = OPS[op]
        if opdef.multiple:  # what its projections may read, and their shapes
            data["parts"] = opdef.part_shapes(dict(attrs))
            self._has_parts = True
        self._link(i, data)
        self._ids[key] = i
        self._keys.append(key)
        return i

    def _link(self, i: int, data: dict) -> None:
        # What DiGraph.add_node and add_edge do, written into its dicts directly: node creation
        # is the hot path of every stage, and the public calls cost ~3 us each in checks.
        g = self._nx
        g._node[i] = data
        g._succ[i] = {}
        pred = g._pred[i] = {}
        for a in data["args"]:
            if a not in pred:
                pred[a] = g._succ[a][i] = {}
        cache = getattr(g, "__networkx_cache__", None)
        if cache:
            cache.clear()

    @contextmanager
    def atomic(self):
        """Undo every node created inside if the block raises: a failed call changes nothing."""
        start = len(self._keys)
        try:
            yield
        except BaseException:
            self._truncate(start)
            raise

    def _truncate(self, n: int) -> None:
        for key in self._keys[n:]:
            del self._ids[key]
        # The DiGraph method itself: g.nx's own attribute refuses (see _read_only_digraph).
        nx.DiGraph.remove_nodes_from(self._nx, range(n, len(self._keys)))
        del self._keys[n:]
        self._inputs = {name: i for name, i in self._inputs.items() if i < n}

    @contextmanager
    def stamped(self, role: str, order: int):
        """Nodes created inside get ``role`` and ``order`` (``build_grad`` marks its nodes)."""
        saved, self._stamp = self._stamp, (role, order)
        try:
            yield
        finally:
            self._stamp = saved

    def attr(self, i: int, name: str):
        """Attribute ``name`` of node ``i`` (``"value"`` of a const, ``"name"`` of an input)."""
        return dict(self.node(i)["attrs"]).get(name)

    # Pickling: the nodes travel as plain data and are rebuilt through the normal creation path.

    def __getstate__(self) -> dict:
        """The graph as plain data: each node's op, args, attrs, shape, role and order in id
        order, the input names, ``max_nodes`` and ``max_elements`` (tensor constants travel as
        numpy arrays).

        Unpickling rebuilds every node through ``input``, ``const_id`` and ``create`` — the
        checks of any node creation: attributes normalized by the op, shape rule, limits — and
        requires each node to come out exactly as recorded, so a state, however crafted, gives
        a graph that normal calls could have built, or a GraphError. Pickle itself is unsafe by
        nature (a crafted pickle can run code before symgrad sees it): unpickle only data you
        trust.
        """
        nodes = self._nx._node
        return {
            "format": PICKLE_FORMAT,
            "max_nodes": self._max_nodes,
            "max_elements": self._max_elements,
            "inputs": list(self._inputs),
            "nodes": [_node_record(nodes[i]) for i in range(len(self._keys))],
        }

    def __setstate__(self, state) -> None:
        """Rebuild a pickled graph node by node (see ``__getstate__``)."""
        try:
            self._restore(state)
        except SymgradError as err:
            raise GraphError(f"cannot unpickle a Graph: {err}") from None
        except Exception as err:  # noqa: BLE001 (crafted data: every failure is a bad state)
            raise GraphError(
                f"cannot unpickle a Graph: malformed state ({type(err).__name__})"
            ) from None

    def _restore(self, state) -> None:
        if type(state) is not dict or state.get("format") not in (1, PICKLE_FORMAT):
            raise GraphError(f"not a graph state of format 1 or {PICKLE_FORMAT}")
        expected = {"format", "max_nodes", "inputs", "nodes"}
        if state["format"] == PICKLE_FORMAT:
            expected.add("max_elements")
        if set(state) != expected:
            raise GraphError(f"a state of format {state['format']} has the keys {sorted(expected)}")
        records, inputs = state["nodes"], state["inputs"]
        if type(records) is not list or type(inputs) is not list:
            raise GraphError("nodes and inputs must be lists")
        self.__init__(state["max_nodes"], state.get("max_elements", DEFAULT_MAX_ELEMENTS))
        if len(records) > self._max_nodes:
            raise GraphError(f"{len(records)} nodes are more than max_nodes={self._max_nodes}")
        try:
            with paused_gc():
                for i, record in enumerate(records):
                    self._restore_node(i, record)
        finally:
            self._stamp = ("primal", 0)
        if list(self._inputs) != inputs:
            raise GraphError(f"inputs {show(inputs)} are not the input nodes' names")

    def _restore_node(self, i: int, record) -> None:
        if type(record) is not tuple or len(record) != 6:
            raise GraphError(f"node {i}: not a record (op, args, attrs, shape, role, order)")
        op, args, attrs, shape, role, order = record
        if type(op) is not str or op not in OPS:
            raise GraphError(f"node {i}: unknown op {show(op)}")
        self._stamp = _checked_stamp(i, role, order, self._max_nodes)
        attrs = _checked_attrs(i, op, attrs)
        if op == "input":
            got = self.input(attrs[0][1], shape=shape).id
        elif op == "const":
            got = self.const_id(attrs[0][1])
        else:
            opdef = _opdef(op, OPS[op].arity, dict(attrs))
            got = self.create(opdef, _checked_args(i, op, args), dict(attrs))
        if got != i:
            raise GraphError(f"node {i} ({op}) repeats node {got}")
        node = self._nx._node[i]
        if not _same(node["attrs"], attrs):
            raise GraphError(
                f"node {i} ({op}): attrs {show(attrs)} are not what its creation gives "
                f"({show(node['attrs'])})"
            )
        if not _same(node["shape"], shape) or not _same(node["args"], args):
            raise GraphError(
                f"node {i} ({op}): args {show(args)} and shape {show(shape)} are not what its "
                f"creation gives ({node['args']!r}, {node['shape']!r})"
            )


def _checked_limit(name: str, value, ceiling: int | None = None) -> int:
    """A limit of ``Graph(...)``: a positive int (not a bool), at most ``ceiling``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise GraphError(f"Graph: {name} must be a positive int, got {type(value).__name__}")
    if value < 1 or (ceiling is not None and value > ceiling):
        bound = "" if ceiling is None else f" and at most {ceiling}"
        raise GraphError(f"Graph: {name} must be a positive int{bound}, got {show(value)}")
    return int(value)


def _read_only(*args, **kwargs):
    raise GraphError(
        "Graph.nx is read-only: create nodes with the graph's calls (apply, input, const, "
        "tensor functions); copy it (nx.DiGraph(g.nx)) to get a networkx graph you may change"
    )


def _read_only_digraph() -> nx.DiGraph:
    """A DiGraph whose mutating methods raise GraphError, as networkx's own ``nx.freeze`` does
    with its exception: the methods are shadowed on the instance, so reads cost nothing extra
    and ``g.nx.copy()`` or ``nx.DiGraph(g.nx)`` are ordinary, mutable graphs."""
    g = nx.DiGraph()
    for name in NX_MUTATORS:
        setattr(g, name, _read_only)
    g.frozen = True  # nx.is_frozen(g.nx) is True
    return g


def _opdef(op, arity: int, attrs: dict):
    """The OpDef of ``op`` applied to ``arity`` operands with attributes named ``attrs``."""
    opdef = OPS.get(op) if isinstance(op, str) else None
    if opdef is None or opdef.arity == 0:
        raise GraphError(f"unknown op {show(op)}")
    if opdef.arity != VARIADIC and arity != opdef.arity:
        raise GraphError(f"{op} takes {opdef.arity} operands, got {arity}")
    unknown = sorted(set(attrs) - set(opdef.attrs), key=str)
    if unknown:
        raise GraphError(f"{op} has no attribute {', '.join(map(show, unknown))}")
    return opdef


def _node_record(data: dict) -> tuple:
    return (data["op"], data["args"], data["attrs"], data["shape"], data["role"], data["order"])


def _checked_stamp(i: int, role, order, max_nodes: int) -> tuple[str, int]:
    """A pickled node's role and order: primal nodes have order 0, derivative nodes 1 or more."""
    if role == "primal" and type(role) is str and type(order) is int and order == 0:
        return role, order
    if role == "grad" and type(role) is str and type(order) is int and 1 <= order <= max_nodes:
        return role, order
    raise GraphError(
        f"node {i}: role {show(role)} and order {show(order)} are not 'primal' and 0 or "
        "'grad' and a derivative order"
    )


def _checked_attrs(i: int, op: str, attrs) -> tuple:
    """A pickled node's attrs: (name, value) pairs, each name one the op has, in sorted order."""
    allowed = OPS[op].attrs
    if type(attrs) is not tuple or any(
        type(a) is not tuple or len(a) != 2 or type(a[0]) is not str or a[0] not in allowed
        for a in attrs
    ):
        raise GraphError(f"node {i} ({op}): attrs must be (name, value) pairs of {allowed}")
    names = [a[0] for a in attrs]
    if names != sorted(set(names)) or (OPS[op].arity == 0 and len(names) != 1):
        raise GraphError(f"node {i} ({op}): attrs {names} are not sorted, unique and complete")
    OPS[op].checked_attributes(dict(attrs))  # each value of a kind the schema allows
    return attrs


def _checked_args(i: int, op: str, args) -> tuple[int, ...]:
    """A pickled node's operands: ``arity`` ids of earlier nodes (id order is topological)."""
    if (
        type(args) is not tuple
        or (OPS[op].arity != VARIADIC and len(args) != OPS[op].arity)
        or any(type(a) is not int or not 0 <= a < i for a in args)
    ):
        raise GraphError(f"node {i} ({op}): args {show(args)} are not {OPS[op].arity} earlier ids")
    return args


def _same(a, b) -> bool:
    """``a == b`` with equal types all the way down (1 is not True, a list is not a tuple);
    floats compare by bits and arrays by dtype, shape and bytes. An explicit stack."""
    stack = [(a, b)]
    while stack:
        a, b = stack.pop()
        if type(a) is not type(b):
            return False
        if type(a) is tuple:
            if len(a) != len(b):
                return False
            stack.extend(zip(a, b))
        elif type(a) is np.ndarray:
            if a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
                return False
        elif type(a) is float:
            if a.hex() != b.hex():
                return False
        elif getattr(type(a), "compares_by_key", False):
            if a != b:  # a scan's body: equal when its nodes and roles are (Body.key)
                return False
        elif type(a) not in (int, str, bool, type(None), type(Ellipsis)) or a != b:
            return False
    return True


def check_shape(shape, what: str, limit: int = MAX_ELEMENTS) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints with at most ``limit`` elements and ``MAX_NDIM``
    dimensions; ShapeError naming ``what`` otherwise."""
    items = (shape,) if isinstance(shape, (int, np.integer)) else shape
    if isinstance(items, (str, bytes, dict)):
        raise ShapeError(f"{what}: shape must be a tuple of ints, got {show(shape)}")
    try:  # any iterable, read once and no further than one entry past the limit
        out = tuple(itertools.islice(items, MAX_NDIM + 1))
    except Exception:  # noqa: BLE001 (a caller's object that does not iterate)
        raise ShapeError(f"{what}: shape must be a tuple of ints, got {show(shape)}") from None
    if len(out) > MAX_NDIM:
        raise ShapeError(f"{what}: shape has more than {MAX_NDIM} dimensions")
    for n in out:
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ShapeError(f"{what}: shape must be a tuple of positive ints, got {show(shape)}")
    out = tuple(int(n) for n in out)
    size = math.prod(out)
    if size > limit:
        raise ShapeError(
            f"{what} shape {show(out)} has {_count(size)} elements, more than "
            f"max_elements={limit}: raise Graph(max_elements=...)"
        )
    return out


def _count(n: int) -> str:
    # 400 exactly, 4.6e+18 rather than 19 digits; a product of huge dimensions overflows a float.
    if n < 10**6:
        return str(n)
    return f"{float(n):.2g}" if n.bit_length() < 1000 else f"about 2**{n.bit_length() - 1}"


def reachable(graph: Graph, roots) -> list[int]:
    """Ids of every node some root depends on (roots included), ascending; an explicit stack."""
    seen = set(roots)
    stack = list(seen)
    nodes = graph.nx._node
    while stack:
        for a in nodes[stack.pop()]["args"]:
            if a not in seen:
                seen.add(a)
                stack.append(a)
    return sorted(seen)


def active_nodes(graph: Graph, outs: list[int], sources: set[int]) -> list[int]:
    """Ids on a path from one of ``sources`` to one of ``outs``, ascending: the nodes a
    derivative sweep (reverse or forward) between them visits."""
    active: list[int] = []
    reached: set[int] = set()
    for i in reachable(graph, outs):
        if i in sources or any(a in reached for a in graph.node(i)["args"]):
            reached.add(i)
            active.append(i)
    return active


def zeros(graph: Graph, shape: tuple[int, ...]) -> Expr:
    """The constant 0 of ``shape`` (hash-consed: every zero of a shape is one node)."""
    zero = graph.const(0.0)
    return zero if not shape else graph.apply("broadcast_to", zero, shape=shape)


def _binary(op: str, reflected: bool = False):
    def method(self, other):
        return self.graph.apply(op, other, self) if reflected else self.graph.apply(op, self, other)

    method.__name__ = f"__{'r' if reflected else ''}{op}__"
    return method


class Expr:
    """A handle on one node: ``(graph, id)``, with Python's arithmetic operators.

    ``==`` and ``hash`` compare handles (so Exprs work as dict keys); build comparison nodes
    with ``<``, ``<=``, ``>``, ``>=`` or ``sg.eq`` / ``sg.ne``.
    """

    __slots__ = ("graph", "id")
    __array_ufunc__ = None  # numpy defers to our reflected operators: 2.0 * x stays an Expr

    def __init__(self, graph: Graph, id: int):
        self.graph = graph
        self.id = id

    @property
    def op(self) -> str:
        """The node's op name: ``"input"``, ``"const"``, ``"add"``, ``"sin"``, ``"matmul"``, ..."""
        return self.graph.node(self.id)["op"]

    @property
    def args(self) -> tuple[Expr, ...]:
        """The operands, as Exprs, in operand order."""
        return tuple(Expr(self.graph, a) for a in self.graph.node(self.id)["args"])

    @property
    def shape(self) -> tuple[int, ...]:
        """The node's shape, inferred when it was created: ``()`` for a scalar."""
        return self.graph.node(self.id)["shape"]

    @property
    def name(self) -> str | None:
        """The input's name, or None for any other node."""
        return self.graph.attr(self.id, "name")

    @property
    def value(self) -> float | None:
        """The constant's value, or None for any other node."""
        return self.graph.attr(self.id, "value")

    def __repr__(self) -> str:
        extra = f" {self.name}" if self.op == "input" else ""
        extra += f" {self.value!r}" if self.op == "const" else ""
        return f"<Expr {self.id}: {self.op}{extra}>"

    def __eq__(self, other) -> bool:
        return isinstance(other, Expr) and other.graph is self.graph and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self.graph), self.id))

    def __reduce__(self):
        # The graph travels whole (Graph.__getstate__); a pickle of several Exprs holds it once.
        return checked_expr, (self.graph, self.id)

    def __bool__(self):
        raise SymgradError(
            "an Expr has no truth value: use sg.where(cond, a, b) for a branch in the graph"
        )

    __add__, __radd__ = _binary("add"), _binary("add", True)
    __sub__, __rsub__ = _binary("sub"), _binary("sub", True)
    __mul__, __rmul__ = _binary("mul"), _binary("mul", True)
    __truediv__, __rtruediv__ = _binary("div"), _binary("div", True)
    __pow__, __rpow__ = _binary("pow"), _binary("pow", True)
    __lt__, __le__ = _binary("lt"), _binary("le")
    __gt__, __ge__ = _binary("gt"), _binary("ge")

    def __matmul__(self, other) -> Expr:
        return matmul(self, other)

    def __rmatmul__(self, other) -> Expr:
        return matmul(other, self)

    def __getitem__(self, index) -> Expr:
        items = list(index) if isinstance(index, tuple) else [index]
        if any(_is_array_entry(item) for item in items):
            return _indexed(self, items)  # an array of indices: a take
        return self.graph.apply("getitem", self, index=index)

    @property
    def ndim(self) -> int:
        """Number of dimensions (0 for a scalar)."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements (1 for a scalar)."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def T(self) -> Expr:  # noqa: N802 (numpy's name)
        """The axes reversed, as numpy's ``x.T``."""
        return self.graph.apply("transpose", self)

    def transpose(self, *axes) -> Expr:
        """Axes permuted: ``x.transpose(1, 0)`` or ``x.transpose((1, 0))``; reversed by default."""
        return self.graph.apply("transpose", self, axes=_varargs(axes))

    def reshape(self, *shape) -> Expr:
        """The elements in C order, new shape: ``x.reshape(2, -1)`` or ``x.reshape((2, -1))``."""
        return self.graph.apply("reshape", self, shape=_varargs(shape))

    def sum(self, axis=None, keepdims=False) -> Expr:
        """Sum over all elements or over ``axis`` (an int or a tuple), as ``sg.sum``."""
        return self.graph.apply("sum", self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False) -> Expr:
        """Mean over all elements or over ``axis``, as ``sg.mean``."""
        return self.graph.apply("mean", self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False) -> Expr:
        """Largest element over all elements or over ``axis`` (ties share the adjoint evenly)."""
        return self.graph.apply("amax", self, axis=axis, keepdims=keepdims)

    def __neg__(self) -> Expr:
        return self.graph.apply("neg", self)

    def __abs__(self) -> Expr:
        return self.graph.apply("abs", self)

    def __pos__(self) -> Expr:
        return self


def index_operand(op: str, graph: Graph, indices, n: int) -> Expr:
    """``indices`` as a node: an ``Expr`` of ``graph`` as it is (its values are checked as the
    kernel runs: one that is not an integer in [-n, n) gives nan, or adds nothing), an int or
    an array of ints (or of integral floats) checked against the axis's ``n`` here."""
    if isinstance(indices, Expr):
        if indices.graph is not graph:
            raise GraphError(f"{op}: indices belong to another graph than the operand")
        return indices
    if isinstance(indices, (bool, np.bool_)):
        raise ShapeError(f"{op}: indices must be ints, got a bool")
    try:
        arr = np.asarray(indices)
    except (ValueError, TypeError) as err:
        raise ShapeError(f"{op}: indices are not an array of ints ({err})") from None
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise ShapeError(f"{op}: indices must be a non-empty int or array of ints, got {arr.dtype} "
                         f"of shape {arr.shape}")  # fmt: skip
    values = arr.astype(np.float64)
    bad = ~((values == np.floor(values)) & (values >= -n) & (values < n))
    if bad.any():
        first = arr.ravel()[np.flatnonzero(bad.ravel())[0]].item()
        raise ShapeError(f"{op}: index {first!r} is not an int in [{-n}, {n - 1}] (axis of {n})")
    return graph.const(values if values.ndim else float(values))


def _is_array_entry(item) -> bool:
    return isinstance(item, (Expr, list)) or (isinstance(item, np.ndarray) and item.ndim > 0)


def _indexed(x: Expr, items: list) -> Expr:
    """``x[items]`` where one entry is an array of ints, a list of them or an ``Expr`` (the
    others ints, slices or one '...'): the rest as a view (``getitem``), then a ``take`` along
    the array entry's axis, the result's axes placed as numpy places them."""
    arrays = [k for k, item in enumerate(items) if _is_array_entry(item)]
    if len(arrays) > 1:
        raise ShapeError("getitem: only one index entry may be an array (numpy's broadcasting "
                         "of several index arrays is not supported): use take")  # fmt: skip
    at = arrays[0]
    entry = items[at]
    if isinstance(entry, np.ndarray) and entry.dtype.kind == "b":
        raise ShapeError("getitem: boolean mask indices are not supported: their result's shape "
                         "depends on the values")  # fmt: skip
    items[at] = slice(None)
    # The array entry's axis in the view: the axes the entries before it keep.
    dots = x.ndim - sum(1 for item in items if item is not Ellipsis)
    axis = sum(
        dots if item is Ellipsis else not isinstance(item, (int, np.integer)) for item in items[:at]
    )
    graph = x.graph
    with graph.atomic():
        view = graph.apply("getitem", x, index=tuple(items))
        try:
            idx = index_operand("take", graph, entry, view.shape[axis])
            out = graph.apply("take", view, idx, axis=axis)
        except ShapeError as err:
            raise ShapeError(f"getitem: {err}") from None
        except GraphError as err:
            raise GraphError(f"getitem: {err}") from None
        # numpy counts the ints as index arrays too: apart from the array (a slice or '...'
        # between), the indices' axes go to the front of the result.
        ints = [k for k, item in enumerate(items) if isinstance(item, (int, np.integer))]
        advanced = sorted([at, *ints])
        if advanced[-1] - advanced[0] + 1 == len(advanced) or not axis:
            return out
        picked = range(axis, out.ndim - (view.ndim - axis - 1))
        rest = [d for d in range(out.ndim) if d not in picked]
        return graph.apply("transpose", out, axes=(*picked, *rest))


def matmul(a, b) -> Expr:
    """Matrix product with numpy's rules for 1-d operands (a vector is a row on the left and a
    column on the right; the added dimension is removed from the result). ``a @ b`` on Exprs.

    >>> g = Graph(); W, x = g.input("W", shape=(3, 4)), g.input("x", shape=(4,))
    >>> (W @ x).shape, matmul(W.T, W).shape
    ((3,), (4, 4))

    It lives here, beside ``Expr``, because ``a @ b`` calls it; ``symgrad.tensor`` re-exports it.
    """
    g = next((v.graph for v in (a, b) if isinstance(v, Expr)), None)
    if g is None:
        raise GraphError("matmul: needs at least one Expr operand (numbers alone have no graph)")
    with g.atomic():  # the reshapes of a vector are undone if the product then fails
        return _matmul(g, a, b)


def _matmul(g: Graph, a, b) -> Expr:
    a = a if isinstance(a, Expr) else g.const(a)
    b = b if isinstance(b, Expr) else g.const(b)
    for pos, e in enumerate((a, b)):
        if e.ndim not in (1, 2):
            raise ShapeError(f"matmul: operand {pos} must be a vector or a matrix, got {e.shape}")
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    if a2.shape[1] != b2.shape[0]:
        raise ShapeError(
            f"matmul: operand 1 has shape {b.shape} but operand 0 has shape {a.shape}: "
            f"inner dimensions {a2.shape[1]} and {b2.shape[0]} differ"
        )
    out = g.apply("matmul", a2, b2)
    if a.ndim == 1 or b.ndim == 1:
        shape = (() if a.ndim == 1 else a.shape[:1]) + (() if b.ndim == 1 else b.shape[1:])
        out = out.reshape(shape) if shape else out.reshape(())
    return out


def checked_expr(graph, i) -> Expr:
    """The Expr of a pickle: node ``i`` of ``graph``, checked (GraphError if it is not one)."""
    if not isinstance(graph, Graph) or type(i) is not int or not 0 <= i < len(graph):
        raise GraphError(f"cannot unpickle an Expr: {i!r} is not a node of its graph")
    return Expr(graph, i)


def _varargs(items: tuple):
    # x.reshape(2, 3) and x.reshape((2, 3)) alike; () means "the default".
    if len(items) == 1 and (items[0] is None or isinstance(items[0], (tuple, list))):
        return items[0]
    return items or None


def _function(op: str):
    """``sg.<op>``: applies ``op`` in the graph of the first Expr operand."""

    def fn(*operands) -> Expr:
        for v in operands:
            if isinstance(v, Expr):
                return v.graph.apply(op, *operands)
        raise GraphError(f"{op}: needs at least one Expr operand (numbers alone have no graph)")

    fn.__name__ = fn.__qualname__ = op
    fn.__doc__ = f"``{op}`` of the operands, as a graph node."
    return fn


# sg.sin, sg.where, sg.lt, ... one per elementwise op of the registry (symgrad.tensor has the
# tensor ops, whose attributes are keywords).
OP_FUNCTIONS = {name: _function(name) for name, op in OPS.items() if op.arity and op.elementwise}
PI, E = math.pi, math.e
