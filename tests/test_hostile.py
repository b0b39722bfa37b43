"""Hostile and bad input (DESIGN.md §5): whatever arrives, symgrad answers with a result or a
SymgradError, in bounded time, and nothing it already had breaks.

- ``parse`` fuzzed with arbitrary text (unicode, control characters, surrogates, long runs of
  operators and brackets), bytes decoded leniently, and formulas from a grammar of the language,
  with and without ``shapes=``: an Expr or a SymgradError, each within ``CALLS_PER_CHARACTER``
  function calls per character of text, and a failed parse leaves the graph as it was;
- 10 MB formulas parse, with work linear in their length (sums of distinct terms, deep nesting,
  and repeated terms, which hash-consing shares): counted in function calls and full garbage
  collections (tests/counting.py), never timed, so a busy machine cannot turn them red;
- the limits a caller can raise (``parse(max_length=, max_depth=)``, ``Graph(max_nodes=)``): a
  clear error naming the limit when exceeded, a parse when raised;
- names that could be dangerous in generated code or DOT are rejected, given to ``Graph.input``
  or in text.

Elsewhere: odd but legal names in DOT, the IR, calls and the command line,
tests/test_hostile_names.py; a compiled function called with hostile arguments,
tests/test_hostile_calls.py; the object cache under hostile conditions, tests/test_cache.py.

The fuzz tests run ``FUZZ_EXAMPLES`` examples each (derandomized in CI, tests/conftest.py); set
``SYMGRAD_FUZZ_EXAMPLES=100000`` (and ``HYPOTHESIS_PROFILE=dev`` for fresh randomness) for a
long local run.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad.errors import ArgumentError, GraphError, ParseError, SymgradError
from symgrad.graph import DEFAULT_MAX_NODES, NAME_RE, Graph
from symgrad.ops import FUNCTIONS, OPS
from symgrad.parse import DEFAULT_MAX_DEPTH, DEFAULT_MAX_LENGTH, parse
from tests.counting import count_work

FUZZ_EXAMPLES = int(os.environ.get("SYMGRAD_FUZZ_EXAMPLES", "250"))
# Work per fuzz example, in function calls per character of text (plus a fixed allowance for
# the set-up and an error's message). Measured over the 1,000 CI examples: at most 4.1 calls per
# character, and 161 calls for a text of under 5 characters: superlinear work blows it.
CALLS_PER_CHARACTER = 50
CALLS_FIXED = 5_000
LINEAR_SLACK = 1.1  # calls(10x the text) / (10 calls(text)): 1.0 if linear, ~10 if quadratic


# --- fuzzing parse ---------------------------------------------------------------------------

SHAPES = [None, {"x": (3,), "W": (3, 4), "v": (4,), "M": (2, 3, 4, 5)}, {"x": (2, 2), "y": (1,)}]
TOKENS = [
    *("x", "y", "W", "v", "M", "z_1", "_", "pi", "e", "True", "False", "None", "T", "sum"),
    *("0", "1", "2", "-1", "1.5", ".5", "1e3", "1e400", "1e-400", "9" * 40, "1.", "0x1", "1_0"),
    *("+", "-", "*", "/", "**", "@", "<", "<=", ">", ">=", "==", "!=", "=", "^", "!", "%"),
    *("(", ")", "[", "]", ",", ":", "...", ".T", ".", " ", "\n", "\t", "\r", "\x00", "\x1b"),
    *(f + "(" for f in sorted(FUNCTIONS)),
    *(f + "(" for f in ("sum", "mean", "softmax", "reshape", "conv2d", "max_pool2d", "mse")),
    *(k + "=" for k in ("axis", "keepdims", "axes", "shape", "stride", "padding", "kernel_size")),
    *("name=", "value=", "index=", "__class__", "__import__(", "'", '"', "\\", "é", "\udcff"),
]
CHARACTERS = st.one_of(
    st.characters(),
    st.characters(categories=["Cc", "Cs", "Zl", "Zp", "Nd"]),  # controls, surrogates, digits
    st.sampled_from("()[]+-*/@<>=!,:.^ \t\nxyWe019_"),
)
RUNS = st.builds(
    lambda token, n, tail: token * n + tail,
    st.sampled_from(TOKENS),
    st.integers(1, 20_000),
    st.sampled_from(["", "x", ")", "1)", "+", "]"]),
)
TEXTS = st.one_of(
    st.text(CHARACTERS, max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace")),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.lists(st.sampled_from(TOKENS), max_size=60).map("".join),
    RUNS,
)

# A grammar of the language: every formula it makes is valid; the tensor parts may not fit
# the shapes, and the mutations below make invalid text close to valid text.
NUMBERS = ["0", "2", "0.5", ".5", "1e-3", "2.5E+2", "1e308", "1e400", "5e-324", "007"]
SCALARS = ["x", "y", "z_1", "_t", "pi", "e", "True", *NUMBERS]
UNARY = sorted(f for f, op in FUNCTIONS.items() if OPS[op].arity == 1)
BINARY = sorted(f for f, op in FUNCTIONS.items() if OPS[op].arity == 2)
COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]
TENSOR_CALLS = [
    "sum({})", "sum({}, axis=0)", "mean({}, -1, True)", "softmax({})", "logsumexp({}, axis=(0,))",
    "max({}, axis=0, keepdims=False)", "transpose({})", "reshape({}, (12,))", "{}.T", "{}[0]",
    "{}[:, 1:3]", "{}[..., -1]", "{}[::2]", "broadcast_to({}, (2, 3, 4))",
]  # fmt: skip


def _grow(children, tensors: bool):
    forms = [
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**"]), children).map(
            lambda t: f"{t[0]} {t[1]} {t[2]}"
        ),
        children.map(lambda c: f"({c})"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"+{c}"),
        st.tuples(st.sampled_from(UNARY), children).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(BINARY), children, children).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"
        ),
        st.tuples(children, st.sampled_from(COMPARISONS), children, children, children).map(
            lambda t: f"where(({t[0]}) {t[1]} ({t[2]}), {t[3]}, {t[4]})"
        ),
    ]
    if tensors:
        forms += [
            st.tuples(children, children).map(lambda t: f"({t[0]}) @ ({t[1]})"),
            st.tuples(st.sampled_from(TENSOR_CALLS), children).map(lambda t: t[0].format(t[1])),
        ]
    return st.one_of(forms)


def formulas(tensors: bool = False, max_leaves: int = 25):
    leaves = st.sampled_from(SCALARS + (["W", "v", "M", "x"] if tensors else []))
    return st.recursive(leaves, lambda c: _grow(c, tensors), max_leaves=max_leaves)


TENSOR_FORMULAS = formulas(tensors=True)  # built once: hypothesis validates each new strategy


@st.composite
def mutated(draw):
    """A formula of the grammar with up to three spans replaced by tokens or deleted."""
    text = draw(TENSOR_FORMULAS)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(i + 3, len(text))))
        text = text[:i] + draw(st.sampled_from([*TOKENS, ""])) + text[j:]
    return text


def _parse_or_none(text: str, graph: Graph, shapes):
    try:
        return parse(text, graph, shapes=shapes)
    except SymgradError as err:
        str(err)  # the message renders (a caret, a window of a long line)
        return None


def parse_or_error(text: str, shapes=None):
    """Parse ``text`` into a graph that already holds nodes: an Expr (every input a proper name)
    or a SymgradError (the graph unchanged), within the work budget. Returns the Expr or None."""
    g = Graph()
    keep = g.apply("sin", g.input("keep"))
    before = dict(g.nx.nodes(data=True))
    # Work, not time: a parse that loops makes calls, a machine busy with other work does not
    # (a 2.7 s wall-clock stall of a 70-character parse was once seen under load).
    e, calls, _ = count_work(_parse_or_none, text, g, shapes)
    budget = CALLS_PER_CHARACTER * len(text) + CALLS_FIXED
    assert calls <= budget, f"{calls} calls for {len(text)} characters: {text[:80]!r}..."
    if e is None:
        assert dict(g.nx.nodes(data=True)) == before and list(g.inputs) == ["keep"]
        assert g.apply("sin", g.input("keep")) == keep  # the hash-cons table too
        return None
    assert isinstance(e, sg.Expr) and e.graph is g
    assert all(NAME_RE.match(n) and not n.startswith("__") for n in g.inputs)
    return e


@settings(max_examples=FUZZ_EXAMPLES)
@given(TEXTS, st.sampled_from(SHAPES))
def test_arbitrary_text_gives_an_expr_or_a_symgrad_error(text, shapes):
    parse_or_error(text, shapes)


@settings(max_examples=FUZZ_EXAMPLES)
@given(mutated(), st.sampled_from(SHAPES))
def test_formulas_of_the_grammar_mutated_give_an_expr_or_a_symgrad_error(text, shapes):
    parse_or_error(text, shapes)


SHAPE_ENTRIES = st.one_of(st.integers(-2, 2**70), st.booleans(), st.floats(0, 4), st.none())
SHAPE_VALUES = st.one_of(
    SHAPE_ENTRIES,
    st.text(max_size=3),
    st.lists(SHAPE_ENTRIES, max_size=5).map(tuple),
    st.lists(st.integers(1, 4), max_size=4).map(iter),
    st.lists(st.integers(-1, 4), max_size=4).map(np.array),
)
SHAPE_NAMES = st.one_of(
    st.sampled_from(["x", "W", "keep", "sin", "pi", "__x", "", "1x", "x\n"]),
    st.text(max_size=4),
    st.integers(),
    st.none(),
)


@settings(max_examples=FUZZ_EXAMPLES)
@given(
    st.dictionaries(SHAPE_NAMES, SHAPE_VALUES, max_size=4),
    st.sampled_from(["x", "sum(x) + W[0] * keep", "x @ W", "softmax(W.T)[..., -1]"]),
)
def test_arbitrary_shapes_give_an_expr_or_a_symgrad_error(shapes, text):
    parse_or_error(text, shapes)  # 'keep', a scalar input already there, may conflict


def test_a_shape_given_as_an_iterator_is_read_once():
    g = Graph()
    g.input("x", (2,))
    assert parse("x", g, shapes={"x": iter([2])}).shape == (2,)  # was "(2,), not ()"


@settings(max_examples=FUZZ_EXAMPLES)
@given(formulas(), st.sampled_from(["", " ", "\n", "\t "]))
def test_formulas_of_the_scalar_grammar_always_parse(text, space):
    spaced = text.replace(" ", space)
    e = parse_or_error(spaced)
    assert e is not None, spaced
    assert parse(spaced, e.graph) == e  # the same text builds nothing new


# --- 10 MB formulas, with linear work ----------------------------------------------------------


def nested_distinct_terms(size: int) -> str:
    """A sum of distinct inputs with 28-character names (~2 nodes per 29 characters) inside
    parentheses that take a quarter of the text (1,250,000 deep at 10 MB)."""
    depth = size // 8
    terms = "+".join(f"w{k:09d}" + "_" * 18 for k in range((size - 2 * depth) // 29))
    return "(" * depth + terms + ")" * depth


def repeated_terms(size: int) -> str:
    """``x*y+x*y+...``: the leaves and the product are made once, the sum grows."""
    return "+".join(["x*y"] * (size // 4))


def parse_work(text: str):
    """Calls and full garbage collections of one parse of ``text``, and its graph."""
    e, calls, full_collections = count_work(parse, text)
    return calls, full_collections, e.graph


def assert_linear(make, small: int, big: int) -> None:
    """The parse of ``make(big)`` makes at most LINEAR_SLACK times the calls of ``make(small)``
    per character, and neither runs a full garbage collection (the collector's rescans of the
    growing graph once made a 10 MB parse 17.5x slower than 1 MB: calls alone miss them)."""
    small_calls, small_collections, _ = parse_work(make(small))
    big_calls, big_collections, _ = parse_work(make(big))
    ratio = (big_calls / big) / (small_calls / small)
    assert ratio <= LINEAR_SLACK, (
        f"{big // small}x the text made {big_calls / small_calls:.1f}x the calls"
    )
    assert small_collections == big_collections == 0


def test_nested_distinct_terms_parse_with_linear_work():
    assert_linear(nested_distinct_terms, 100_000, 1_000_000)


def test_ten_megabytes_of_nested_distinct_terms_parse():
    graph = parse(nested_distinct_terms(10_000_000)).graph
    n = (10_000_000 - 2 * 1_250_000) // 29
    assert len(graph.inputs) == n
    assert len(graph) == 2 * n - 1


def test_repeated_terms_are_made_once_and_parse_with_linear_work():
    assert_linear(repeated_terms, 10_000, 100_000)
    graph = parse(repeated_terms(250_000)).graph
    terms = 250_000 // 4
    assert len(graph) == 3 + (terms - 1)  # x, y, x*y and one add per further term


# --- limits a caller can raise -----------------------------------------------------------------


def test_the_defaults_are_the_documented_ones():
    params = inspect.signature(parse).parameters
    assert params["max_length"].default == DEFAULT_MAX_LENGTH == 50_000_000
    assert params["max_depth"].default == DEFAULT_MAX_DEPTH == 10_000_000
    for value in (DEFAULT_MAX_LENGTH, DEFAULT_MAX_DEPTH, DEFAULT_MAX_NODES):
        assert f"{value:,}" in parse.__doc__


def test_text_longer_than_max_length_is_refused_before_any_work():
    text = " " * DEFAULT_MAX_LENGTH + "x"
    # No work: the length is checked before the first token (a scan of 50 MB would be ~10^8).
    assert count_work(_parse_or_none, text, Graph(), None).calls < 100
    with pytest.raises(ParseError) as info:
        parse(text)
    assert f"max_length={DEFAULT_MAX_LENGTH}" in info.value.message
    assert "parse(..., max_length=...)" in info.value.message
    assert info.value.column == DEFAULT_MAX_LENGTH + 1
    assert len(str(info.value)) < 500


def test_max_length_can_be_lowered_and_raised():
    text = "x + y*2"
    with pytest.raises(ParseError, match=r"longer than max_length=6: pass parse\(\.\.\., max_len"):
        parse(text, max_length=6)
    assert parse(text, max_length=7).op == "add"


# (text, its depth): each '(' or call open until its ')', each operator until its right operand
# is complete.
DEEP = [
    ("(" * 1000 + "x" + ")" * 1000, 1000),
    ("sin(" * 1000 + "x" + ")" * 1000, 1000),
    ("-" * 1000 + "x", 1000),
    ("x**" * 1000 + "y", 1000),
    ("-(a + b*c)", 4),
    ("sum(" * 50 + "x" + ", axis=0)" * 50, 50),
]


@pytest.mark.parametrize(("text", "depth"), DEEP, ids=[t[:12] for t, _ in DEEP])
def test_nesting_deeper_than_max_depth_is_a_clear_error(text, depth):
    g = Graph()
    g.input("keep")
    nodes = dict(g.nx.nodes(data=True))
    with pytest.raises(ParseError) as info:
        parse(text, g, shapes={"x": (1,) * 50} if "sum(" in text else None, max_depth=depth - 1)
    assert f"nests deeper than max_depth={depth - 1}" in info.value.message
    assert "parse(..., max_depth=...)" in info.value.message
    assert dict(g.nx.nodes(data=True)) == nodes  # nothing of the failed parse is left


@pytest.mark.parametrize(("text", "depth"), DEEP, ids=[t[:12] for t, _ in DEEP])
def test_raised_max_depth_parses(text, depth):
    shapes = {"x": (1,) * 50} if "sum(" in text else None
    assert isinstance(parse(text, shapes=shapes, max_depth=depth), sg.Expr)


def test_the_error_points_at_the_first_token_too_deep():
    with pytest.raises(ParseError) as info:
        parse("1 + (2 * (3 - (x)))", max_depth=4)
    assert info.value.column == 13  # the fifth thing open: '+', '(', '*', '(', then this '-'


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, None, "10"])
@pytest.mark.parametrize("limit", ["max_length", "max_depth"])
def test_limits_must_be_positive_ints(limit, bad):
    with pytest.raises(ArgumentError, match=f"{limit}: expected an int >= 1"):
        parse("x", **{limit: bad})


def test_max_nodes_exceeded_by_a_parse_names_the_limit_and_how_to_raise_it():
    text = "+".join(f"x{k}" for k in range(60))  # 60 inputs and 59 adds
    g = Graph(max_nodes=100)
    with pytest.raises(GraphError, match=r"max_nodes=100: raise Graph\(max_nodes=\.\.\.\)"):
        parse(text, g)
    assert len(g) == 0 and not g.inputs
    assert len(parse(text, Graph(max_nodes=119)).graph) == 119


def test_max_nodes_exceeded_by_build_grad_changes_nothing():
    f = parse("sin(x) * cos(y) + exp(x*y)", Graph(max_nodes=12))
    g = f.graph
    nodes = dict(g.nx.nodes(data=True))
    with pytest.raises(SymgradError, match=r"max_nodes=12: raise Graph\(max_nodes=\.\.\.\)"):
        sg.build_grad(f, list(g.inputs.values()))
    assert dict(g.nx.nodes(data=True)) == nodes
    g.max_nodes = 1000  # raised: the same call now works
    assert len(sg.build_grad(f, list(g.inputs.values()))) == 2


# --- names ---------------------------------------------------------------------------------------

# Names that could do harm in generated code (LLVM identifiers, Python dunders) or in DOT.
DANGEROUS = [
    'a"b', "a'b", "a\nb", "a\\b", "a\rb", "x\x00", "x\t", " x", "x ", "", "1x", "a-b", "a b",
    "a;b", "a{b}", "__class__", "__import__", "__builtins__", "__x", "%0", "%x", "@sg_point",
    "llvm.sin", "x.y", "é", "ｘ", "x\u200b", "x\u2028", "\udcff", "x\n",
]  # fmt: skip


@pytest.mark.parametrize("name", DANGEROUS + [3, None, b"x"], ids=repr)
def test_dangerous_input_names_are_rejected(name):
    g = Graph()
    with pytest.raises(GraphError, match="not a name"):
        g.input(name)
    with pytest.raises(GraphError, match="not an input name"):
        parse("1", shapes={name: (2,)})
    assert len(g) == 0


@pytest.mark.parametrize("name", DANGEROUS, ids=repr)
def test_dangerous_names_in_text_never_become_inputs(name):
    e = parse_or_error(f"{name} * 2")  # every input it makes has a proper name
    assert e is None or name not in e.graph.inputs
