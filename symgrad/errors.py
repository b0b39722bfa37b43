"""The error tree: every error symgrad raises for bad input derives from SymgradError.

Each class also subclasses the builtin a Python user would expect (ValueError for bad text or
values, TypeError/ValueError for bad call arguments), so ``except ValueError`` keeps working.
Messages name the place: the column and a caret for text, the op and operand position for graphs,
the argument name for calls.
"""


class SymgradError(Exception):
    """Base of every error symgrad raises on bad input."""


class ParseError(SymgradError, ValueError):
    """Text that is not a formula of the expression language.

    ``column`` is 1-based; ``str(err)`` shows the text with a caret under the column.
    """

    def __init__(self, message: str, text: str = "", column: int = 0):
        self.message = message
        self.text = text
        self.column = column
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.text:
            return self.message
        # Show only the line holding the column, so multi-line text stays readable.
        start = self.text.rfind("\n", 0, max(self.column - 1, 0)) + 1
        end = self.text.find("\n", start)
        line = self.text[start : end if end >= 0 else len(self.text)]
        caret = " " * (self.column - 1 - start) + "^"
        if len(line) > 200:  # keep a 10 MB one-liner's message small: a window around the column
            lo = max(self.column - 1 - start - 80, 0)
            line = line[lo : lo + 160]
            caret = " " * (self.column - 1 - start - lo) + "^"
        return f"{self.message} at column {self.column}\n  {line}\n  {caret}"


class ShapeError(SymgradError, ValueError):
    """Operands whose shapes do not fit the op (names the op, operand position and shapes)."""


class GraphError(SymgradError, ValueError):
    """A graph built wrongly: operands from another graph, unknown op, bad attribute."""


class GradError(SymgradError, ValueError):
    """A derivative that cannot be built: non-scalar output, foreign ``wrt``, bad seed."""


class LoweringError(SymgradError, RuntimeError):
    """A graph that the LLVM backend cannot lower or compile."""


class ArgumentError(SymgradError, TypeError, ValueError):
    """A bad call of a compiled function: missing, unknown or mis-shaped argument, or a value
    that is not a real number (or an array of them) numpy holds as an int or float of <= 64 bits."""


class SizeError(ArgumentError, MemoryError):
    """A call whose batch or outputs would have more elements than the graph's ``max_elements``,
    refused before anything is allocated. Both an ArgumentError (so callers catching those catch
    it) and a MemoryError (what the allocation would have raised, if it did not swap first)."""
