"""Stage 1 of the pipeline: formula text -> graph nodes (DESIGN.md §2).

This file owns the expression language: its tokens, its precedence table and every message a bad
formula gets. ``parse`` is a shunting-yard parser driven by two explicit stacks (operands and
pending operators), so it never recurses: nesting depth is bounded by memory, not by Python's
recursion limit, and each token costs O(1) work. It never evaluates Python code.

Operators bind as in Python, loosest first: comparisons (which may not be chained), ``+ -``,
``* /``, unary ``-``/``+``, then ``**`` (right-associative; its right operand may carry a unary
sign, ``2**-x``). Nodes are created while reading, so inputs appear in ``g.inputs`` in order of
first appearance, and ``graph.atomic()`` removes them again if the text turns out to be bad.
"""

from __future__ import annotations

import re

from symgrad.errors import ArgumentError, ParseError
from symgrad.graph import Expr, Graph
from symgrad.ops import COMPARISONS, CONSTANTS, FUNCTIONS, OPS

# One alternative per token kind, each swallowing the whitespace after it (finditer skips the
# whitespace before the first token), so whitespace costs no extra match. ``bad`` catches any
# other visible character. A number is read as a whole run of number-like characters and checked
# afterwards, so ``1e`` or ``1.2.3`` is one malformed number, not a number and a stray name.
_TOKEN_RE = re.compile(
    r"""
    (?:
      (?P<num>(?:[0-9]|\.[0-9])(?:[A-Za-z0-9_.]|(?<=[eE])[+-])*)
    | (?P<call>[A-Za-z_][A-Za-z0-9_]*+)\s*+\(
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>\*\*|[-+*/])
    | (?P<cmp>[<>=!]=|[<>])
    | (?P<open>\()
    | (?P<close>\))
    | (?P<comma>,)
    | (?P<bad>\S)
    )\s*
    """,
    re.VERBOSE | re.ASCII,
)
# Possessive quantifiers: a failed match of a million-digit run must not backtrack quadratically.
_NUMBER_RE = re.compile(r"(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?", re.ASCII)
_HINTS = {"=": "use == for equality", "!": "use != for inequality"}

# Precedences of pending entries on the operator stack. An open parenthesis or call ranks
# below everything, so only its ')' (or a ',') uncovers it.
_OPEN, _CMP, _ADD, _MUL, _PREFIX, _POW = -1, 1, 2, 3, 4, 5
# symbol -> (op name, precedence, threshold): an incoming operator first applies every pending
# operator whose precedence exceeds its threshold. Left-associative operators use precedence - 1
# (``a-b-c`` applies the first ``-`` first); ``**`` uses its own precedence (right-assoc.), so a
# pending unary minus waits for it: ``-x**2`` is ``-(x**2)``.
_BINARY = {
    "+": ("add", _ADD, _ADD - 1),
    "-": ("sub", _ADD, _ADD - 1),
    "*": ("mul", _MUL, _MUL - 1),
    "/": ("div", _MUL, _MUL - 1),
    "**": ("pow", _POW, _POW),
}
_BINARY.update({sym: (op, _CMP, _CMP) for sym, op in COMPARISONS.items()})


def parse(text: str, graph: Graph | None = None) -> Expr:
    """Parse ``text`` (DESIGN.md §2) into ``graph`` (a new one by default) and return its Expr.

    >>> e = parse("-x**2 + sin(y)"); e.op, [a.op for a in e.args]
    ('add', ['neg', 'sin'])

    Bad text raises ParseError naming the problem and its 1-based column; the graph is then
    left exactly as it was.
    """
    if not isinstance(text, str):
        raise ParseError(f"text: expected str, got {type(text).__name__}")
    if graph is None:
        graph = Graph()
    elif not isinstance(graph, Graph):
        raise ArgumentError(f"graph: expected a symgrad Graph or None, got {type(graph).__name__}")
    with graph.atomic():
        return _Parser(text, graph).run()


def _show(source: str) -> str:
    # Quote a token for a message; a megabyte-long number must not make a megabyte message.
    return repr(source if len(source) <= 30 else source[:27] + "...")


def _plural(n: int) -> str:
    return f"{n} argument" + ("" if n == 1 else "s")


class _Parser:
    """One parse: the operand stack, the operator stack and a state flag.

    ``want_operand`` is the whole grammar state: True where an operand (number, name, call, '(' or
    a unary sign) must come next, False where an operator, ')', ',' or the end must come next.
    Operator-stack entries are ``(kind, op, precedence, offset, base)``: kind is "bin", "pre",
    "(" or "call"; ``base`` is, for a call, the operand-stack height where its arguments start.
    Tokens are ``(kind, source text, offset)``, offsets 0-based (columns are offset + 1).
    """

    def __init__(self, text: str, graph: Graph):
        self.text = text
        self.graph = graph
        self.operands: list[Expr] = []
        self.ops: list[tuple] = []
        self.want_operand = True
        self.prev: re.Match | None = None  # the previous token, for "missing operand after ..."
        self.leaves: dict[str, Expr] = {}  # inputs and constants already made, by source text

    def run(self) -> Expr:
        # The hot loop: leaves, binary operators and parentheses are almost every token of a big
        # formula, so they take the fewest calls; other tokens go to _operand or _operator.
        leaves, operands, ops = self.leaves, self.operands, self.ops
        for m in _TOKEN_RE.finditer(self.text):
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
                ops.append(("(", None, _OPEN, m.start(), 0))
            else:
                self._operand(self._token(m))
            self.prev = m
        return self._finish()

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

    # --- where an operand is expected -----------------------------------------------------

    def _operand(self, token: tuple) -> None:
        """A token other than a number, name or '(' where an operand is expected."""
        kind, value, pos = token
        if kind == "call":
            self._open_call(value, pos)
        elif value == "-":
            self.ops.append(("pre", "neg", _PREFIX, pos, 0))
        elif value != "+":  # unary plus is the identity: nothing to record
            raise self._missing_operand(token)

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
        return self.graph.input(name)

    def _open_call(self, name: str, pos: int) -> None:
        if name in CONSTANTS:
            raise self.error(f"{name!r} is a constant, not a function", pos)
        if name not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.error(f"unknown function {name!r}; known functions: {known}", pos)
        self.ops.append(("call", name, _OPEN, pos, len(self.operands)))

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
        else:
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
        ops.append(("bin", op, prec, pos, 0))
        self.want_operand = True

    def _reduce_above(self, threshold: int) -> None:
        """Apply pending operators, innermost first, while their precedence exceeds threshold."""
        ops, operands, apply = self.ops, self.operands, self.graph.apply
        while ops and ops[-1][2] > threshold:
            kind, op, _, _, _ = ops.pop()
            if kind == "pre":
                operands[-1] = self._negate(operands[-1])
            else:
                right = operands.pop()
                operands[-1] = apply(op, operands[-1], right)

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
        if kind == "call":
            self._apply_call(name, start, base)

    def _apply_call(self, name: str, pos: int, base: int) -> None:
        args = self.operands[base:]
        if len(args) != OPS[FUNCTIONS[name]].arity:
            raise self._arity_error(name, pos, len(args))
        del self.operands[base:]
        self.operands.append(self.graph.apply(FUNCTIONS[name], *args))

    def _arity_error(self, name: str, pos: int, got: int) -> ParseError:
        expected = _plural(OPS[FUNCTIONS[name]].arity)
        return self.error(f"{name}() takes {expected}, got {got}", pos)

    def _comma(self, pos: int) -> None:
        self._reduce_above(_OPEN)
        if not self.ops or self.ops[-1][0] != "call":
            raise self.error("',' outside a function call", pos)
        self.want_operand = True

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
