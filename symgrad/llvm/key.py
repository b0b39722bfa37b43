"""The object cache's key of a kernel, computed from its program before any lowering or planning.

A key must name everything that decides the object code, and nothing has to be lowered to know
it: the code is a function of

- the program: each step's op, operands, attributes and shape, in order, and the outputs
  (operands and outputs by their place in the schedule, not their node ids, so the same
  function built in another graph has the same key); a scan's body is hashed too (its graph,
  every node, and the roles of its nodes), found by a worklist, not by recursion;
- the arguments' names in order, the kind of kernel (scalar point + batch, tensor, tensor over
  points) and the options that change code (``opt``);
- the host and the software that writes and compiles the code: llvmlite and LLVM versions, the
  CPU and its features, Python and numpy versions (the CPython entries read their layouts),
  which libm and libmvec symbols and (for tensor kernels) which BLAS this process resolves (the
  lowering chooses by them), and a digest of symgrad's own source (the lowering is code: a
  change to it is a change to the key).

So a warm hit costs one walk over the steps and a hash, whatever planning and LLVM would have
cost (an unrolled LSTM's warm compile took 169 s while the key was a hash of the IR text).
Values the key cannot spell exactly (an attribute of a type it does not know) make it ``None``;
the caller then keys the entry by the IR text as before.
"""

from __future__ import annotations

import hashlib
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from symgrad.ops import OPS
from symgrad.program import Program

SIMPLE = (int, float, str, bool, type(None), bytes, slice, type(Ellipsis))


class Unkeyable(Exception):
    """An attribute value the key cannot spell exactly."""


def program_key(program: Program, inputs: tuple[str, ...], kind: str, options: str) -> str | None:
    """The cache key of the kernel of ``program`` (a 64-digit hex string), or None."""
    h = hashlib.sha256()
    h.update(environment().encode())
    h.update(f"\0{kind}\0{options}\0{inputs!r}\0".encode())
    if kind != "point":  # only tensor kernels call BLAS (and only they look for it)
        from symgrad.llvm.jit import blas_dgemm

        h.update(f"blas {blas_dgemm()!r}\0".encode())
    try:
        bodies = _Bodies()
        graph = program.graph
        ids = [step[0] for step in program.steps]
        _hash_steps(h, graph, program.steps, ids, bodies)
        place = dict(zip(ids, range(len(ids))))
        h.update(repr([place[o] for o in program.outputs]).encode())
        h.update(repr(sorted((place[i], p) for i, p in program.parts.items())).encode())
        bodies.drain(h)
    except Unkeyable:
        return None
    return h.hexdigest()


def _hash_steps(h, graph, steps, ids: list[int], bodies: _Bodies) -> None:
    """Each step as one line: its op, operands by place, shape and attributes."""
    place = dict(zip(ids, range(len(ids)))).__getitem__
    nodes = graph.nx._node
    rows = []
    for i, op, args, attrs in steps:  # the hot loop of a warm hit: C-level maps, no genexpr
        if attrs:
            rows.append((op, tuple(map(place, args)), nodes[i]["shape"], _spell(attrs, bodies)))
        else:
            rows.append((op, tuple(map(place, args)), nodes[i]["shape"]))
    h.update(repr(rows).encode())


class _Bodies:
    """Scan bodies met among the attributes: numbered as met, hashed after the steps."""

    def __init__(self):
        self.seen: dict[int, int] = {}  # id(body) -> its number
        self.queue: list = []

    def number(self, body) -> int:
        if id(body) not in self.seen:
            self.seen[id(body)] = len(self.queue)
            self.queue.append(body)
        return self.seen[id(body)]

    def drain(self, h) -> None:
        k = 0
        while k < len(self.queue):  # a body's steps may name nested bodies: appended here
            body = self.queue[k]
            graph = body.graph
            ids = list(range(len(graph)))
            nodes = [graph.node(i) for i in ids]
            steps = [(i, n["op"], n["args"], dict(n["attrs"])) for i, n in zip(ids, nodes)]
            h.update(f"\0body {k}\0".encode())
            _hash_steps(h, graph, steps, ids, self)
            roles = (body.carry, body.xs, body.captures, body.carry_out, body.ys)
            h.update(repr(roles).encode())
            k += 1


def _spell(attrs: dict, bodies: _Bodies) -> tuple:
    """The attributes as a tuple whose repr is exact (floats by their bits, arrays by a hash
    of their bytes, bodies by number); an unknown type raises Unkeyable."""
    out = []
    for name in sorted(attrs):
        out.append((name, _value(attrs[name], bodies)))
    return tuple(out)


def _value(v, bodies: _Bodies):
    # Attribute values nest (tuples of ints and slices): an explicit stack, no recursion.
    root: list = []
    stack = [(v, root)]
    while stack:
        item, into = stack.pop()
        if isinstance(item, float):
            into.append(("f", item.hex()))
        elif isinstance(item, SIMPLE):
            into.append(item)
        elif isinstance(item, (np.integer, np.floating)):
            stack.append((item.item(), into))
        elif isinstance(item, np.ndarray):
            digest = hashlib.sha256(np.ascontiguousarray(item).tobytes()).hexdigest()
            into.append(("array", item.dtype.str, item.shape, digest))
        elif getattr(item, "is_scan_body", False):
            into.append(("body", bodies.number(item)))
        elif isinstance(item, (tuple, list)):
            inner: list = []
            into.append(inner)
            stack.extend((x, inner) for x in reversed(item))
        else:
            raise Unkeyable(type(item).__name__)
    return root[0]  # nested lists: their repr is as exact as tuples'


@lru_cache(maxsize=1)
def environment() -> str:
    """What about this process decides the code, besides the program (computed once)."""
    import llvmlite

    from symgrad.llvm.jit import _llvm, _target, symbol_available, vector_ok

    _, cpu, features = _target()
    libm = sorted({low.name for op in OPS.values() if (low := op.llvm) and low.kind == "libm"})
    vector = sorted({low.vector for op in OPS.values() if (low := op.llvm) and low.vector})
    facts = [
        llvmlite.__version__,
        str(_llvm().llvm_version_info),
        cpu,
        features,
        sys.version,
        sys.implementation.name,
        np.__version__,
        repr([(name, symbol_available(name)) for name in libm]),
        repr([(name, vector_ok(name)) for name in vector]),
        source_digest(),
    ]
    return "\0".join(facts)


@lru_cache(maxsize=1)
def source_digest() -> str:
    """A hash of symgrad's Python source: the lowering is code, and it decides the object code."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()
