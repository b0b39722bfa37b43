"""Stage 1 of the pipeline: formula text -> graph nodes (DESIGN.md §2).

This file owns the expression language: its tokens, its precedence table and every message a bad
formula gets. ``parse`` is a shunting-yard parser driven by two explicit stacks (operands and
pending operators), so it never recurses: nesting depth is bounded by memory, not by Python's
recursion limit, and each token costs O(1) work. It never evaluates Python code.

Operators bind as in Python, loosest first: comparisons (which may not be chained), ``+ -``,
``* / @``, unary ``-``/``+``, then ``**`` (right-associative; its right operand may carry a unary
sign, ``2**-x``), then the postfix forms, which apply to the operand just read: indexing
``x[0]``, ``x[:, 1:3]``, ``x[..., -1]`` (integer constants only) and the transpose ``x.T``. So
``-x[0]**2`` is ``-((x[0])**2)``. Nodes are created while reading, so inputs appear in
``g.inputs`` in order of first appearance, and ``graph.atomic()`` removes them again if the text
turns out to be bad.

Tensors. ``parse(text, shapes={"W": (3, 4)})`` creates ``W`` as a 3 x 4 input (other names stay
scalars); ``a @ b`` is ``symgrad.tensor.matmul``. The functions of ``symgrad.tensor``
(``sum``, ``softmax``, ``conv2d``, ...) are called by name, and their arguments follow one rule:

- first the *operands*, positional expressions (``sum`` has one, ``conv2d`` and ``mse`` two);
- then the *attributes* (the parameters named like a registry op attribute: ``axis``,
  ``keepdims``, ``axes``, ``shape``, ``stride``, ``padding``, ``kernel_size``), positionally in
  the Python function's order or as keywords, ``sum(x, 1)`` = ``sum(x, axis=1)``. An attribute
  value is a constant: an integer (``-1``), a tuple of integers (``(0, 1)``, ``(2,)``, ``()``),
  ``True``, ``False`` or ``None``; never an expression.

``max``/``min`` keep their elementwise form: ``max(a, b)`` is the elementwise maximum and takes no
attributes; ``max(x)`` or ``max(x, axis=0)`` reduces. Their attributes are keywords only (a
second positional argument is the second operand, as it always was), and ``max(s)`` of a scalar
``s`` stays the arity error of the elementwise form (a reduction of one number is a no-op, far
more likely a forgotten argument). Tensor function names remain usable as input names when not
called (``sum + 1`` is an input ``sum``), as they were before tensors existed.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass

from symgrad.errors import ArgumentError, GraphError, ParseError, ShapeError
from symgrad.graph import NAME_RE, Expr, Graph, check_shape, paused_gc
from symgrad.ops import ATTRIBUTE_KINDS, COMPARISONS, CONSTANTS, FUNCTIONS, OPS
from symgrad.tensor import TENSOR_FUNCTIONS, matmul

# One alternative per token kind, each swallowing the whitespace after it (finditer skips the
# whitespace before the first token), so whitespace costs no extra match. ``bad`` catches any
# other visible character. A number is read as a whole run of number-like characters and checked
# afterwards, so ``1e`` or ``1.2.3`` is one malformed number, not a number and a stray name.
# ``num`` comes first, so ``.5`` is a number and ``.T`` (a letter after the dot) an attribute.
_TOKEN_RE = re.compile(
    r"""
    (?:
      (?P<num>(?:[0-9]|\.[0-9])(?:[A-Za-z0-9_.]|(?<=[eE])[+-])*)
    | (?P<call>[A-Za-z_][A-Za-z0-9_]*+)\s*+\(
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>\*\*|[-+*/@])
    | (?P<cmp>[<>=!]=|[<>])
    | (?P<open>\()
    | (?P<close>\))
    | (?P<comma>,)
    | (?P<lbrack>\[)
    | (?P<rbrack>\])
    | (?P<colon>:)
    | (?P<ellipsis>\.\.\.)
    | (?P<attr>\.\s*+[A-Za-z_][A-Za-z0-9_]*+)
    | (?P<bad>\S)
    )\s*
    """,
    re.VERBOSE | re.ASCII,
)
# Possessive quantifiers: a failed match of a million-digit run must not backtrack quadratically.
_NUMBER_RE = re.compile(r"(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?", re.ASCII)
_INT_RE = re.compile(r"[0-9]++", re.ASCII)
# ``name =`` (not ``==``) where an argument of a tensor function starts: a keyword argument.
_KEYWORD_RE = re.compile(r"\s*+([A-Za-z_][A-Za-z0-9_]*+)\s*+=(?!=)", re.ASCII)
_HINTS = {"=": "use == for equality", "!": "use != for inequality"}
# Indices and attribute values are numpy intp values: a bigger literal is a typo, and ops.py's
# shape arithmetic would overflow on it (OverflowError instead of a SymgradError).
_INT_LIMIT = 2**63
# Limits of one parse, each a keyword of ``parse`` that a caller can raise (or lower, for text
# from strangers). Far beyond any formula a person or a program writes: the tests parse 10 MB
# and nest 5,000,000 deep. The length bounds the time (~2-4 s per MB with every term distinct)
# and the depth the parser's stack (~110 bytes a level, so ~1 GB at the default); the graph's
# node count has its own limit, ``Graph(max_nodes=...)``.
DEFAULT_MAX_LENGTH = 50_000_000  # characters
DEFAULT_MAX_DEPTH = 10_000_000  # groups and operators open at once

# Precedences of pending entries on the operator stack. An open parenthesis or call ranks
# below everything, so only its ')' (or a ',') uncovers it.
_OPEN, _CMP, _ADD, _MUL, _PREFIX, _POW = -1, 1, 2, 3, 4, 5
# symbol -> (precedence, threshold): an incoming operator first applies every pending operator
# whose precedence exceeds its threshold. Left-associative operators use precedence - 1
# (``a-b-c`` applies the first ``-`` first); ``**`` uses its own precedence (right-assoc.), so a
# pending unary minus waits for it: ``-x**2`` is ``-(x**2)``. ``@`` ranks with ``*`` as in Python.
# Precedence is the parser's business; which op a symbol writes is the registry's (OpDef.text).
_PRECEDENCE = {
    "+": (_ADD, _ADD - 1),
    "-": (_ADD, _ADD - 1),
    "*": (_MUL, _MUL - 1),
    "/": (_MUL, _MUL - 1),
    "@": (_MUL, _MUL - 1),
    "**": (_POW, _POW),
}
_PRECEDENCE.update({sym: (_CMP, _CMP) for sym in COMPARISONS})
# symbol -> (op name, precedence, threshold), for every infix op of the registry.
_BINARY = {op.text: (op.name, *_PRECEDENCE[op.text]) for op in OPS.values() if op.infix}

# --- tensor functions: what each one takes, read off its Python signature ----------------------

# A parameter named like an attribute of some registry op is an attribute (a constant);
# every other parameter is an operand (an expression).
_ATTRIBUTES = frozenset(name for op in OPS.values() for name in op.attrs)
# The literal kinds each attribute accepts (the registry's ATTRIBUTE_KINDS), so ``keepdims=2`` is
# a ParseError at its column rather than a silent truthiness.
_VALUE_KINDS = ATTRIBUTE_KINDS
_KIND_WORDS = {
    "int": "an integer",
    "tuple": "a tuple of integers",
    "bool": "True or False",
    "None": "None",
}
_NAMED_VALUES = {"True": (True, "bool"), "False": (False, "bool"), "None": (None, "None")}


@dataclass(frozen=True)
class _Spec:
    """How a tensor function is called: operand counts and its attribute parameters."""

    need: int  # operands without a default
    most: int  # all operands (max/min have an optional second one: their elementwise form)
    positional: tuple[str, ...]  # attributes that may follow the operands positionally, in order
    keywords: tuple[str, ...]  # every attribute
    required: tuple[str, ...]  # attributes without a default (reshape's shape)


def _spec(fn) -> _Spec:
    need = most = 0
    positional, keywords, required = [], [], []
    for p in inspect.signature(fn).parameters.values():
        if p.name not in _ATTRIBUTES:
            most += 1
            need += p.default is p.empty
            continue
        keywords.append(p.name)
        if p.kind is p.POSITIONAL_OR_KEYWORD:
            positional.append(p.name)
        if p.default is p.empty:
            required.append(p.name)
    return _Spec(need, most, tuple(positional), tuple(keywords), tuple(required))


_SPECS = {name: _spec(fn) for name, fn in TENSOR_FUNCTIONS.items()}
_KNOWN = ", ".join(sorted(FUNCTIONS)) + "; tensor functions: " + ", ".join(sorted(_SPECS))


def parse(
    text: str,
    graph: Graph | None = None,
    shapes: Mapping | None = None,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Expr:
    """Parse ``text`` (DESIGN.md §2) into ``graph`` (a new one by default) and return its Expr.

    >>> e = parse("-x**2 + sin(y)"); e.op, [a.op for a in e.args]
    ('add', ['neg', 'sin'])
    >>> parse("sum(W.T @ x, axis=0)", shapes={"W": (4, 3), "x": (4, 2)}).shape
    (2,)

    ``shapes`` maps input names to shapes; those inputs are created as tensors, every other name
    is a scalar. A shape that differs from an existing input of ``graph`` is the ShapeError of
    ``Graph.input``. Tensor functions take their operands first, then constant attributes,
    positionally (in the order of the Python function) or as keywords: ``sum(x, 1)``,
    ``sum(x, axis=(0, 1), keepdims=True)``, ``reshape(x, (2, 3))``, ``max_pool2d(x, 2, stride=1)``
    (see the module docstring for the whole rule).

    Bad text raises ParseError naming the problem and its 1-based column; an op that rejects its
    operands' shapes raises ShapeError, its message ending with the column. Either way the graph
    is left exactly as it was.

    Limits, each a ParseError naming it and how to raise it: ``max_length`` characters of text
    (default 50,000,000) and ``max_depth`` groups and operators open at once (default
    10,000,000: a '(' or a call is open until its ')', an operator until its right operand is
    complete; ``sin(x)`` is 1 deep, ``-(a + b*c)`` 4). The nodes a parse may create are limited
    by the graph: pass ``graph=Graph(max_nodes=...)`` (default 10,000,000), a GraphError
    otherwise. Time and memory grow linearly with the text.
    """
    if not isinstance(text, str):
        raise ParseError(f"text: expected str, got {type(text).__name__}")
    if graph is None:
        graph = Graph()
    elif not isinstance(graph, Graph):
        raise ArgumentError(f"graph: expected a symgrad Graph or None, got {type(graph).__name__}")
    shapes = _checked_shapes(shapes, graph)
    _check_limit(max_length, "max_length")
    _check_limit(max_depth, "max_depth")
    if len(text) > max_length:
        raise ParseError(
            f"formula of {len(text)} characters is longer than max_length={max_length}: "
            "pass parse(..., max_length=...) to raise the limit",
            text,
            max_length + 1,
        )
    # No cycles among the nodes made here: the collector's scans of a growing graph would make
    # a parse of millions of nodes superlinear (a 10 MB sum took 80 s instead of 40).
    with paused_gc(), graph.atomic():
        return _Parser(text, graph, shapes, max_depth).run()


def _check_limit(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{name}: expected an int >= 1, got {value!r}")


def _checked_shapes(shapes, graph: Graph) -> dict[str, tuple[int, ...]]:
    """``shapes`` with canonical shapes, all checked before the parse creates anything."""
    if shapes is None:
        return {}
    if not isinstance(shapes, Mapping):
        raise ArgumentError(
            f"shapes: expected a dict of input name -> shape, got {type(shapes).__name__}"
        )
    out = {}
    existing = graph.inputs
    for name, shape in shapes.items():
        if not isinstance(name, str) or not NAME_RE.match(name) or name.startswith("__"):
            raise GraphError(
                f"shapes: {name!r} is not an input name: use letters, digits and '_', not "
                "starting with a digit or '__'"
            )
        if name in CONSTANTS or name in FUNCTIONS:
            kind = "constant" if name in CONSTANTS else "function"
            raise GraphError(f"shapes: {name!r} is a {kind}, not an input name")
        out[name] = check_shape(shape, f"input {name!r}")
        if name in existing:
            graph.input(name, out[name])  # creates nothing; the ShapeError of a conflicting shape
    return out


def _show(source: str) -> str:
    # Quote a token for a message; a megabyte-long number must not make a megabyte message.
    return repr(source if len(source) <= 30 else source[:27] + "...")


def _plural(n: int, noun: str = "argument") -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


class _ConstantReader:
    """The token stream of one parse, and the readers of its constant-only parts.

    An index in brackets and the attributes of a tensor call hold only constants and are flat,
    so they are read by small loops pulling tokens from the same iterator as the parser's main
    loop. Tokens are ``(kind, source text, offset)``, offsets 0-based (columns are offset + 1).
    """

    def __init__(self, text: str):
        self.text = text
        self.tokens = _TOKEN_RE.finditer(text)

    def error(self, message: str, pos: int) -> ParseError:
        return ParseError(message, self.text, pos + 1)

    def _token(self, m: re.Match) -> tuple:
        """``(kind, source, offset)`` of a match, or the ParseError of a bad character/number."""
        kind = m.lastgroup
        source, pos = m.group(kind), m.start()
        if kind == "bad":
            if source == "^":
                raise self.error("'^' is not an operator: use ** for powers", pos)
            hint = f": {_HINTS[source]}" if source in _HINTS else ""
            raise self.error(f"unexpected character {source!r}{hint}", pos)
        if kind == "num" and not _NUMBER_RE.fullmatch(source):
            raise self.error(f"malformed number {_show(source)}", pos)
        return kind, source, pos

    def _pull(self, unclosed: tuple[str, int]) -> tuple:
        """The next token for a constant-reading loop; ``unclosed`` is the (message, offset) of
        the error if the text ends first."""
        m = next(self.tokens, None)
        if m is None:
            raise self.error(*unclosed)
        return self._token(m)

    def _read_index(self, pos: int):
        """The constant index from after the '[' at ``pos`` through its ']'.

        An index is entries separated by ',', each an integer, a slice ``start:stop:step`` whose
        parts are optional integers, or ``...``. A flat loop: brackets never nest.
        """
        unclosed = ("unclosed '[': expected ']'", pos)
        items: list = []
        parts: list = [None]  # the current entry: one value, or the parts of a slice
        while True:
            token = self._pull(unclosed)
            kind, source, at = token
            if kind == "comma" or kind == "rbrack":
                items.append(self._index_entry(parts, source, at))
                if kind == "rbrack":
                    break
                parts = [None]
            elif kind == "colon":
                if parts[-1] is Ellipsis or len(parts) == 3:
                    what = "'...' cannot be part of a slice" if parts[-1] is Ellipsis else ""
                    raise self.error(what or "a slice has at most two ':'", at)
                parts.append(None)
            elif kind == "ellipsis" and parts == [None]:
                parts[0] = Ellipsis
            elif parts[-1] is not None:
                raise self.error(f"missing ',' or ':' before {_show(source)} in an index", at)
            elif kind == "ellipsis":
                raise self.error("'...' cannot be part of a slice", at)
            else:
                parts[-1] = self._integer(token, "index", unclosed)
        return items[0] if len(items) == 1 else tuple(items)

    def _index_entry(self, parts: list, source: str, pos: int):
        if parts == [None]:
            raise self.error(
                f"empty index: expected an integer, a slice or '...' before {source!r}", pos
            )
        return parts[0] if len(parts) == 1 else slice(*parts)

    def _integer(self, token: tuple, what: str, unclosed: tuple[str, int]) -> int:
        """An integer constant: digits with an optional sign (pulling the token after a sign)."""
        kind, source, pos = token
        sign = 1
        if kind == "op" and source in ("+", "-"):
            sign = -1 if source == "-" else 1
            kind, source, pos = self._pull(unclosed)
        if kind != "num" or not _INT_RE.fullmatch(source):
            raise self.error(f"{what} must be an integer constant, got {_show(source)}", pos)
        # Count digits before converting: int() of a 5,000-digit run raises a ValueError.
        digits = source.lstrip("0") or "0"
        if len(digits) > 19 or int(digits) >= _INT_LIMIT:
            raise self.error(f"{what} {_show(source)} is too large (at most 2**63 - 1)", pos)
        return sign * int(digits)

    def _attribute_arguments(self, name: str, start: int, at: int) -> tuple[list, dict]:
        """Constant arguments from offset ``at`` through the call's ')': positional values and
        keyword -> (value, offset of the keyword)."""
        paren = self.text.index("(", start + len(name))
        unclosed = (f"unclosed '(' of {name}(...): expected ')'", paren)
        positional: list = []
        keywords: dict = {}
        while True:
            keyword = _KEYWORD_RE.match(self.text, at)
            if keyword is not None:
                self._pull(unclosed)  # the keyword's name...
                next(self.tokens)  # ... and its '=' (a 'bad' token: not through _token)
                key = self._check_keyword(name, keyword, positional, keywords)
                token = self._pull(unclosed)
            else:
                token = self._pull(unclosed)
                key = self._positional_name(name, token, keywords, len(positional))
            value, kind, end = self._constant(token, name, key, unclosed)
            allowed = _VALUE_KINDS.get(key, tuple(_KIND_WORDS))
            if kind not in allowed:
                shown = _show(self.text[token[2] : end[2]].rstrip())
                expected = " or ".join(_KIND_WORDS[k] for k in allowed)
                raise self.error(f"{name}(): {key} must be {expected}, got {shown}", token[2])
            if keyword is not None:
                keywords[key] = (value, keyword.start(1))
            else:
                positional.append(value)
            if end[0] == "close":
                return positional, keywords
            if end[0] != "comma":
                raise self.error(
                    f"expected ',' or ')' after the value of {key}, got {_show(end[1])}: "
                    "attribute values are constants, not expressions",
                    end[2],
                )
            at = end[2] + 1

    def _check_keyword(self, name: str, keyword: re.Match, positional: list, keywords: dict):
        spec, key, pos = _SPECS[name], keyword.group(1), keyword.start(1)
        if key not in spec.keywords:
            if not spec.keywords:
                raise self.error(f"{name}() takes no keyword arguments, got {key!r}", pos)
            known = ", ".join(spec.keywords)
            raise self.error(f"{name}() has no keyword {key!r}; its keywords: {known}", pos)
        if key in keywords or key in spec.positional[: len(positional)]:
            raise self.error(f"{name}() got two values for {key!r}", pos)
        return key

    def _positional_name(self, name: str, token: tuple, keywords: dict, count: int) -> str:
        """The attribute a positional constant binds to (its error if it has none)."""
        spec, (kind, source, pos) = _SPECS[name], token
        if kind == "close" or kind == "comma":
            raise self.error(f"empty argument: expected a value before {source!r}", pos)
        if keywords:
            raise self.error(f"{name}(): positional argument after a keyword argument", pos)
        if count >= len(spec.positional):
            more = _plural(len(spec.positional))
            after = _plural(spec.most, "operand")
            allowed = ", ".join(spec.positional)
            raise self.error(
                f"{name}() takes at most {more} after its {after} ({allowed}), got {_show(source)}",
                pos,
            )
        return spec.positional[count]

    def _constant(self, token: tuple, name: str, key: str, unclosed: tuple) -> tuple:
        """An attribute value starting at ``token``: ``(value, kind, the token after it)``."""
        kind, source, pos = token
        what = f"{name}(): {key}"
        if kind == "name" and source in _NAMED_VALUES:
            return (*_NAMED_VALUES[source], self._pull(unclosed))
        if kind != "open":
            if kind != "num" and (kind != "op" or source not in ("+", "-")):
                raise self.error(
                    f"{what} must be a constant (an integer, a tuple of integers, True, False "
                    f"or None), got {_show(source)}",
                    pos,
                )
            return self._integer(token, what, unclosed), "int", self._pull(unclosed)
        # A parenthesized tuple, with Python's rule: (2) is 2, (2,) and () are tuples.
        items, commas = [], 0
        token = self._pull(unclosed)
        while token[0] != "close":
            items.append(self._integer(token, f"{what} entry", unclosed))
            token = self._pull(unclosed)
            if token[0] == "comma":
                commas += 1
                token = self._pull(unclosed)
            elif token[0] != "close":
                raise self.error(f"expected ',' or ')' in the tuple of {key}", token[2])
        end = self._pull(unclosed)
        if len(items) == 1 and not commas:
            return items[0], "int", end
        return tuple(items), "tuple", end


class _Parser(_ConstantReader):
    """One parse: the operand stack, the operator stack and a state flag.

    ``want_operand`` is the whole grammar state: True where an operand (number, name, call, '(' or
    a unary sign) must come next, False where an operator, ')', ',', a postfix or the end must
    come next. Operator-stack entries are ``(kind, op, precedence, offset, base)``: kind is "bin",
    "pre", "(" or "call"; ``base`` is, for a call, the operand-stack height where its arguments
    start. Constant-only parts (an index, a tensor call's attributes) are read by the
    ``_ConstantReader`` methods from the same token stream.
    """

    def __init__(self, text: str, graph: Graph, shapes: dict, max_depth: int):
        super().__init__(text)
        self.max_depth = max_depth
        self.graph = graph
        self.shapes = shapes
        self.operands: list[Expr] = []
        self.ops: list[tuple] = []
        self.want_operand = True
        self.prev: re.Match | None = None  # the previous token, for "missing operand after ..."
        self.leaves: dict[str, Expr] = {}  # inputs and constants already made, by source text

    def run(self) -> Expr:
        # The hot loop: leaves, binary operators and parentheses are almost every token of a big
        # formula, so they take the fewest calls; other tokens go to _operand or _operator.
        leaves, operands, ops = self.leaves, self.operands, self.ops
        for m in self.tokens:
            kind = m.lastgroup
            if not self.want_operand:
                if kind == "op" or kind == "cmp":
                    self._binary(m.group(kind), m.start())
                elif kind == "close":
                    self._close(m.start())
                else:
                    self._operator(self._token(m))
            elif kind == "name" or kind == "num":
                e = leaves.get(m.group(kind))
                operands.append(self._leaf(self._token(m)) if e is None else e)
                self.want_operand = False
            elif kind == "open":
                if len(ops) >= self.max_depth:
                    raise self._too_deep(m.start())
                ops.append(("(", None, _OPEN, m.start(), 0))
            else:
                self._operand(self._token(m))
            self.prev = m
        return self._finish()

    def _too_deep(self, pos: int) -> ParseError:
        return self.error(
            f"formula nests deeper than max_depth={self.max_depth} (groups and operators open "
            "at once): pass parse(..., max_depth=...) to raise the limit",
            pos,
        )

    def _located(self, err: ShapeError, pos: int) -> ShapeError:
        # An op's shape complaint, with the column and caret a ParseError would show, so the
        # user sees which '@' or call of a long formula it is about. Still a ShapeError.
        return ShapeError(str(ParseError(str(err), self.text, pos + 1)))

    # --- where an operand is expected -----------------------------------------------------

    def _operand(self, token: tuple) -> None:
        """A token other than a number, name or '(' where an operand is expected."""
        kind, value, pos = token
        if kind == "call":
            self._open_call(value, pos)
        elif value == "-" and kind == "op":
            if len(self.ops) >= self.max_depth:
                raise self._too_deep(pos)
            self.ops.append(("pre", "neg", _PREFIX, pos, 0))
        elif value != "+" or kind != "op":  # unary plus is the identity: nothing to record
            raise self._out_of_place(token) or self._missing_operand(token)

    def _leaf(self, token: tuple) -> Expr:
        """The node of a number or name seen for the first time; repeats hit ``leaves``."""
        kind, source, pos = token
        e = self.graph.const(float(source)) if kind == "num" else self._name(source, pos)
        self.leaves[source] = e
        return e

    def _name(self, name: str, pos: int) -> Expr:
        if name in CONSTANTS:
            return self.graph.const(CONSTANTS[name])
        if name in FUNCTIONS:
            raise self.error(f"{name!r} is a function: call it as {name}(...)", pos)
        if name.startswith("__"):
            raise self.error(f"name {name!r} is reserved: names may not start with '__'", pos)
        return self.graph.input(name, self.shapes.get(name))

    def _open_call(self, name: str, pos: int) -> None:
        if name in CONSTANTS:
            raise self.error(f"{name!r} is a constant, not a function", pos)
        if name not in FUNCTIONS and name not in _SPECS:
            raise self.error(f"unknown function {name!r}; known functions: {_KNOWN}", pos)
        if len(self.ops) >= self.max_depth:
            raise self._too_deep(pos)
        self.ops.append(("call", name, _OPEN, pos, len(self.operands)))
        if name in _SPECS:
            self._tensor_argument(self.text.index("(", pos + len(name)) + 1)

    def _out_of_place(self, token: tuple) -> ParseError | None:
        """The error of a token that is wrong wherever the main loop meets it, else None."""
        kind, value, pos = token
        if kind == "lbrack" and self.want_operand:
            return self.error(
                "'[' must follow an expression, as in x[0]: list literals are not supported", pos
            )
        if kind == "rbrack":
            return self.error("unmatched ']'", pos)
        if kind == "colon":
            return self.error("':' is allowed only inside an index, as in x[1:3]", pos)
        if kind == "ellipsis":
            return self.error("'...' is allowed only inside an index, as in x[..., 0]", pos)
        if kind == "attr" and self.want_operand:
            return self.error(f"{_show(value)} must follow an expression, as in x.T", pos)
        return None

    def _missing_operand(self, token: tuple) -> ParseError:
        """The error for ``token`` (an operator, ')' or ',') standing where an operand belongs."""
        kind, value, pos = token
        group = self._innermost_group()
        if kind == "close" and group is None:
            return self.error("unmatched ')'", pos)
        if kind == "comma" and (group is None or group[0] != "call"):
            return self.error("',' outside a function call", pos)
        prev_kind, prev_value, prev_pos = self._token(self.prev) if self.prev else (None, "", 0)
        if prev_kind in ("op", "cmp"):
            return self.error(f"missing operand after {prev_value!r}", prev_pos)
        if kind == "close" and prev_kind == "call":
            return self._arity_error(prev_value, prev_pos, 0)
        if kind == "close" and prev_kind == "open":
            return self.error("empty parentheses: expected an expression inside '()'", pos)
        if kind in ("close", "comma"):
            return self.error(f"empty argument: expected an expression before {value!r}", pos)
        return self.error(f"missing operand before {value!r}", pos)

    def _innermost_group(self) -> tuple | None:
        # Only on the error path, so scanning the stack is fine.
        return next((entry for entry in reversed(self.ops) if entry[2] == _OPEN), None)

    # --- where an operator is expected -----------------------------------------------------

    def _operator(self, token: tuple) -> None:
        """A token other than a binary operator or ')' where an operator is expected."""
        kind, value, pos = token
        if kind == "comma":
            self._comma(pos)
        elif kind == "lbrack":
            self._index(pos)
        elif kind == "attr":
            self._attribute(value, pos)
        else:
            error = self._out_of_place(token)
            if error is not None:
                raise error
            shown = _show(value + "(" if kind == "call" else value)
            raise self.error(f"two operands in a row: missing operator before {shown}", pos)

    def _binary(self, symbol: str, pos: int) -> None:
        op, prec, threshold = _BINARY[symbol]
        ops = self.ops
        if ops and ops[-1][2] > threshold:
            self._reduce_above(threshold)
        if prec == _CMP and ops and ops[-1][2] == _CMP:
            raise self.error(
                f"chained comparison at {symbol!r}: 'a < b < c' is not supported; "
                "write (a < b) * (b < c) or add parentheses",
                pos,
            )
        if len(ops) >= self.max_depth:
            raise self._too_deep(pos)
        ops.append(("bin", op, prec, pos, 0))
        self.want_operand = True

    def _reduce_above(self, threshold: int) -> None:
        """Apply pending operators, innermost first, while their precedence exceeds threshold."""
        ops, operands, apply = self.ops, self.operands, self.graph.apply
        while ops and ops[-1][2] > threshold:
            kind, op, _, pos, _ = ops.pop()
            try:
                if kind == "pre":
                    operands[-1] = self._negate(operands[-1])
                    continue
                right = operands.pop()
                # '@' is symgrad.tensor.matmul, which also handles vectors (the op takes matrices).
                if op == "matmul":
                    operands[-1] = matmul(operands[-1], right)
                else:
                    operands[-1] = apply(op, operands[-1], right)
            except ShapeError as err:
                raise self._located(err, pos) from None

    def _negate(self, e: Expr) -> Expr:
        # A negated number is a negative constant, as in Python: "x*-2" is x * (-2.0), the very
        # node that the Python expression x * -2 builds. Exact in IEEE arithmetic.
        if e.op == "const":
            return self.graph.const(-e.value)
        return self.graph.apply("neg", e)

    def _close(self, pos: int) -> None:
        self._reduce_above(_OPEN)
        if not self.ops:
            raise self.error("unmatched ')'", pos)
        kind, name, _, start, base = self.ops.pop()
        if kind != "call":
            return
        if name in _SPECS:
            self._apply_tensor(name, start, base, [], {})
        else:
            self._apply_call(name, start, base)

    def _apply_call(self, name: str, pos: int, base: int) -> None:
        args = self.operands[base:]
        if len(args) != OPS[FUNCTIONS[name]].arity:
            raise self._arity_error(name, pos, len(args))
        del self.operands[base:]
        try:
            self.operands.append(self.graph.apply(FUNCTIONS[name], *args))
        except ShapeError as err:
            raise self._located(err, pos) from None

    def _arity_error(self, name: str, pos: int, got: int) -> ParseError:
        if name in _SPECS:
            return self._count_error(name, pos, got)
        expected = _plural(OPS[FUNCTIONS[name]].arity)
        return self.error(f"{name}() takes {expected}, got {got}", pos)

    def _comma(self, pos: int) -> None:
        self._reduce_above(_OPEN)
        if not self.ops or self.ops[-1][0] != "call":
            raise self.error("',' outside a function call", pos)
        self.want_operand = True
        if self.ops[-1][1] in _SPECS:
            self._tensor_argument(pos + 1)

    # --- postfix: indexing and attributes ---------------------------------------------------

    def _attribute(self, source: str, pos: int) -> None:
        """``.T`` after an operand: its transpose. Nothing else is an attribute."""
        name = source[1:].strip()
        if name != "T":
            # The '.' keeps the message of the days before attributes ("unexpected character").
            raise self.error(
                f"unexpected character '.': unknown attribute {name!r} (the only attribute is "
                ".T, the transpose)",
                pos,
            )
        self.operands[-1] = self.operands[-1].T  # any shape has a transpose: nothing to check

    def _index(self, pos: int) -> None:
        """Apply the constant index in brackets after the '[' at ``pos``."""
        index = self._read_index(pos)
        try:
            self.operands[-1] = self.operands[-1][index]
        except ShapeError as err:
            raise self._located(err, pos) from None

    # --- tensor functions ---------------------------------------------------------------------

    def _tensor_argument(self, at: int) -> None:
        """Where an argument of the tensor call on top of the stack starts (``at``: the offset
        after its '(' or ','): an operand is left to the main loop; once the operands are all
        read (or a keyword comes), the rest of the call is constants, read here through ')'."""
        _, name, _, start, base = self.ops[-1]
        spec = _SPECS[name]
        count = len(self.operands) - base
        keyword = _KEYWORD_RE.match(self.text, at) is not None
        # Without positional attributes (max, mse), extra arguments are read as expressions, so
        # the arity error can count them all: "max() takes 2 arguments, got 3".
        if not keyword and (count < spec.most or not spec.positional):
            return
        self.ops.pop()
        positional, keywords = self._attribute_arguments(name, start, at)
        self._apply_tensor(name, start, base, positional, keywords)
        self.want_operand = False

    def _apply_tensor(self, name: str, pos: int, base: int, positional: list, keywords: dict):
        """Call the tensor function on the operands above ``base`` and the attributes."""
        spec = _SPECS[name]
        operands = self.operands[base:]
        n = len(operands)
        # max(s) of a scalar s keeps the scalar language's arity error (see the module docstring).
        lone_scalar = spec.most > spec.need and n == 1 and not operands[0].shape
        if not spec.need <= n <= spec.most or (lone_scalar and not positional and not keywords):
            raise self._count_error(name, pos, n)
        if n > spec.need and keywords:  # max(a, b): the elementwise form takes no attributes
            key, (_, at) = next(iter(keywords.items()))
            raise self.error(
                f"{name}(a, b) is the elementwise {name}imum and takes no {key!r}; write "
                f"{name}(x, {key}=...) to reduce",
                at,
            )
        attrs = dict(zip(spec.positional, positional))
        attrs.update((key, value) for key, (value, _) in keywords.items())
        missing = [key for key in spec.required if key not in attrs]
        if missing:
            raise self.error(f"{name}() is missing its argument {missing[0]!r}", pos)
        try:
            out = TENSOR_FUNCTIONS[name](*operands, **attrs)
        except ShapeError as err:
            raise self._located(err, pos) from None
        del self.operands[base:]
        self.operands.append(out)

    def _count_error(self, name: str, pos: int, got: int) -> ParseError:
        spec = _SPECS[name]
        if spec.most > spec.need or not spec.keywords:
            # max/min: the elementwise form's message, as before tensors; mse: no attributes.
            return self.error(f"{name}() takes {_plural(spec.most)}, got {got}", pos)
        operands = _plural(spec.most, "operand")
        then = ", ".join(spec.keywords)
        return self.error(f"{name}() takes {operands} (then {then}), got {got}", pos)

    # --- the end of the text ---------------------------------------------------------------

    def _finish(self) -> Expr:
        if self.prev is None:
            raise self.error("empty formula: expected an expression", 0)
        prev_kind, prev_value, prev_pos = self._token(self.prev)
        if self.want_operand and prev_kind in ("op", "cmp"):
            raise self.error(f"missing operand after {prev_value!r}", prev_pos)
        if not self.want_operand:
            self._reduce_above(_OPEN)
        if self.ops:  # only open groups are left: the innermost one is never closed
            raise self._unclosed(self.ops[-1])
        return self.operands[0]

    def _unclosed(self, entry: tuple) -> ParseError:
        kind, name, _, pos, _ = entry
        if kind == "call":  # the entry holds the name's offset; its '(' follows
            paren = self.text.index("(", pos + len(name))
            return self.error(f"unclosed '(' of {name}(...): expected ')'", paren)
        return self.error("unclosed '(': expected ')'", pos)
