"""Tests of symgrad/parse.py: the expression language of DESIGN.md §2 and its error messages (§5).

There is no evaluator here, so structure is checked through hash-consing: parsing text into a
graph returns the very node that the same formula built with Python operators returns.
"""

import math

import pytest

from symgrad.errors import ParseError, SymgradError
from symgrad.graph import Graph
from symgrad.ops import CONSTANTS, FUNCTIONS, OPS
from symgrad.parse import parse

NAMES = ("a", "b", "c", "x", "y", "z")


def leaves(g):
    """The inputs a..z of ``g`` by name, plus ``c_`` = ``g.const``."""
    return {**{n: g.input(n) for n in NAMES}, "c_": g.const}


def chain_ops(e, step):
    """Ops met walking ``step(e)`` from ``e`` until a leaf: a loop, so any depth works."""
    ops = []
    while e.op not in ("input", "const"):
        ops.append(e.op)
        e = step(e)
    return ops, e


# (text, the same formula through the Python API). ``c_(2)`` is the constant 2.0: a bare Python
# number would be folded by Python itself (``-2**2`` is -4 before symgrad sees it).
PRECEDENCE = [
    ("-x**2", lambda a, b, c, x, y, z, c_: -(x**2)),
    ("-2**2", lambda a, b, c, x, y, z, c_: -(c_(2) ** 2)),
    ("2**3**2", lambda a, b, c, x, y, z, c_: c_(2) ** (c_(3) ** 2)),
    ("2**-1", lambda a, b, c, x, y, z, c_: c_(2) ** -1),
    ("2**-x", lambda a, b, c, x, y, z, c_: c_(2) ** (-x)),
    ("2**-x*3", lambda a, b, c, x, y, z, c_: (c_(2) ** (-x)) * 3),
    ("x**-y**z", lambda a, b, c, x, y, z, c_: x ** (-(y**z))),
    ("a-b-c", lambda a, b, c, x, y, z, c_: (a - b) - c),
    ("a/b/c", lambda a, b, c, x, y, z, c_: (a / b) / c),
    ("a-b+c", lambda a, b, c, x, y, z, c_: (a - b) + c),
    ("a/b*c", lambda a, b, c, x, y, z, c_: (a / b) * c),
    ("a+b*c", lambda a, b, c, x, y, z, c_: a + b * c),
    ("(a+b)*c", lambda a, b, c, x, y, z, c_: (a + b) * c),
    ("a*b**c", lambda a, b, c, x, y, z, c_: a * (b**c)),
    ("a**b*c", lambda a, b, c, x, y, z, c_: (a**b) * c),
    ("x*-y", lambda a, b, c, x, y, z, c_: x * (-y)),
    ("x*-2", lambda a, b, c, x, y, z, c_: x * -2),
    ("-x*y", lambda a, b, c, x, y, z, c_: (-x) * y),
    ("-a-b", lambda a, b, c, x, y, z, c_: (-a) - b),
    ("a - -b", lambda a, b, c, x, y, z, c_: a - (-b)),
    ("- - a", lambda a, b, c, x, y, z, c_: (-a).__neg__()),
    ("+a", lambda a, b, c, x, y, z, c_: a),
    ("a + +b", lambda a, b, c, x, y, z, c_: a + b),
    ("-(a+b)", lambda a, b, c, x, y, z, c_: -(a + b)),
    ("(((a)))", lambda a, b, c, x, y, z, c_: a),
    ("x*y+1", lambda a, b, c, x, y, z, c_: x * y + 1),
    ("1+x*y", lambda a, b, c, x, y, z, c_: 1 + x * y),
    ("a < b + c", lambda a, b, c, x, y, z, c_: a < b + c),
    ("a*b >= c-1", lambda a, b, c, x, y, z, c_: (a * b) >= (c - 1)),
    ("-a < b", lambda a, b, c, x, y, z, c_: (-a) < b),
    ("a**2 <= b", lambda a, b, c, x, y, z, c_: a**2 <= b),
    ("a > b", lambda a, b, c, x, y, z, c_: a > b),
    ("(a < b) < c", lambda a, b, c, x, y, z, c_: (a < b) < c),
    ("a < (b < c)", lambda a, b, c, x, y, z, c_: a < (b < c)),
    ("(a < b) * (b < c)", lambda a, b, c, x, y, z, c_: (a < b) * (b < c)),
    ("2*pi*e", lambda a, b, c, x, y, z, c_: c_(2) * math.pi * math.e),
    ("-pi", lambda a, b, c, x, y, z, c_: c_(-math.pi)),
    (" \t x\n +\n y \n", lambda a, b, c, x, y, z, c_: x + y),
]


@pytest.mark.parametrize(("text", "build"), PRECEDENCE, ids=[t for t, _ in PRECEDENCE])
def test_precedence_and_associativity_match_python(g, text, build):
    expected = build(**leaves(g))
    assert parse(text, g).id == expected.id


@pytest.mark.parametrize(("symbol", "op"), [("==", "eq"), ("!=", "ne"), ("<", "lt"), (">=", "ge")])
def test_comparisons_build_their_op_below_arithmetic(g, symbol, op):
    x, y = g.input("x"), g.input("y")
    e = parse(f"x + 1 {symbol} y * 2", g)
    assert e.id == g.apply(op, x + 1, y * 2).id


def test_structure_is_visible_on_the_nodes(g):
    e = parse("-x**2", g)
    assert e.op == "neg"
    (p,) = e.args
    assert p.op == "pow"
    assert [a.op for a in p.args] == ["input", "const"]
    assert (p.args[0].name, p.args[1].value) == ("x", 2.0)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2", 2.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("2.", 2.0),
        ("2.5e-3", 0.0025),
        ("1e10", 1e10),
        ("1E3", 1000.0),
        ("1e+3", 1000.0),
        ("2.e2", 200.0),
        ("0", 0.0),
        ("-2", -2.0),
        ("1e999", math.inf),
    ],
)
def test_numbers_are_float_constants(text, value):
    e = parse(text)
    assert e.op == "const"
    assert e.value == value
    assert e.graph.inputs == {}


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_pi_and_e_are_constants_not_inputs(name):
    e = parse(name)
    assert (e.op, e.value) == ("const", CONSTANTS[name])
    assert e.graph.inputs == {}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_with_its_arity(g, name):
    op = FUNCTIONS[name]
    names = ["x", "y", "z"][: OPS[op].arity]
    e = parse(f"{name}({', '.join(names)})", g)
    assert e.op == op
    assert e.id == g.apply(op, *(g.input(n) for n in names)).id


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("extra", [-1, 1])
def test_every_function_rejects_a_wrong_argument_count(name, extra):
    arity = OPS[FUNCTIONS[name]].arity
    got = arity + extra
    args = ", ".join(["x"] * got)
    with pytest.raises(ParseError) as info:
        parse(f"1 + {name}({args})")
    expected = f"{arity} argument" + ("" if arity == 1 else "s")
    assert info.value.message == f"{name}() takes {expected}, got {got}"
    assert info.value.column == 5


def test_calls_take_expressions_and_nest(g):
    x, y = g.input("x"), g.input("y")
    e = parse("where(x < y, max(x, y**2), pow(atan2(y, x), -1))", g)
    sg_max = g.apply("max", x, y**2)
    sg_pow = g.apply("pow", g.apply("atan2", y, x), -1)
    assert e.id == g.apply("where", x < y, sg_max, sg_pow).id


def test_space_between_function_name_and_paren(g):
    assert parse("sin (x)", g).id == g.apply("sin", g.input("x")).id


def test_inputs_are_created_in_order_of_first_appearance():
    e = parse("b*a + c - a + sin(d) + b")
    assert list(e.graph.inputs) == ["b", "a", "c", "d"]


def test_parse_into_an_existing_graph_shares_its_inputs(g):
    y = g.input("y")
    e = parse("x + y", g)
    assert e.graph is g
    assert list(g.inputs) == ["y", "x"]
    assert y.id in [a.id for a in e.args]
    assert parse("y + x", g).id == e.id  # add is commutative: the same node


def test_parsing_twice_builds_nothing_new(g):
    parse("sin(x)*y + 1", g)
    before = len(g)
    parse("sin(x) * y + 1", g)
    assert len(g) == before


# --- depth and size: no recursion anywhere, linear time --------------------------------------


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_parentheses(g, depth):
    e = parse("(" * depth + "x" + ")" * depth, g)
    assert e.id == g.input("x").id


def test_deeply_nested_calls(g):
    depth = 5_000
    e = parse("sin(" * depth + "x" + ")" * depth, g)
    ops, leaf = chain_ops(e, lambda n: n.args[0])
    assert ops == ["sin"] * depth
    assert leaf.name == "x"


@pytest.mark.parametrize("sep", ["", " "])
def test_long_unary_minus_chain(sep):
    n = 20_001
    ops, leaf = chain_ops(parse(f"-{sep}" * n + "x"), lambda e: e.args[0])
    assert ops == ["neg"] * n
    assert leaf.name == "x"


def test_long_power_chain_is_right_associative():
    n = 5_000
    ops, leaf = chain_ops(parse("x**" * n + "y"), lambda e: e.args[1])
    assert ops == ["pow"] * n
    assert leaf.name == "y"


def test_long_subtraction_chain_is_left_associative():
    n = 20_000
    ops, leaf = chain_ops(parse("x-" * n + "y"), lambda e: e.args[0])
    assert ops == ["sub"] * n
    assert leaf.name == "x"


def test_megabytes_of_formula_parse():
    # 1.8 MB: parentheses, whitespace and a 50,000-term sum. The parser's per-token cost is what
    # is exercised (building a million-node graph would measure Graph.apply instead).
    depth = 800_000
    text = "(" * depth + " x " + ")" * depth + "+ y " * 50_000
    assert len(text) > 1_500_000
    ops, leaf = chain_ops(parse(text), lambda e: e.args[0] if e.args[0].op == "add" else e.args[1])
    assert ops == ["add"] * 50_000
    assert leaf.name == "y"


# --- bad input ---------------------------------------------------------------------------------

KNOWN = ", ".join(sorted(FUNCTIONS))
ERRORS = [
    ("", 1, "empty formula"),
    ("  \n\t ", 1, "empty formula"),
    ("x +", 3, "missing operand after '+'"),
    ("* x", 1, "missing operand before '*'"),
    ("x * * y", 3, "missing operand after '*'"),
    ("(x -)", 4, "missing operand after '-'"),
    ("x <", 3, "missing operand after '<'"),
    ("-", 1, "missing operand after '-'"),
    ("sin(** x)", 5, "missing operand before '**'"),
    ("x +\n  * y", 3, "missing operand after '+'"),
    ("x y", 3, "two operands in a row: missing operator before 'y'"),
    ("2 3", 3, "two operands in a row: missing operator before '3'"),
    ("x sin(y)", 3, "missing operator before 'sin('"),
    ("2 (x)", 3, "missing operator before '('"),
    ("x ^ 2", 3, "'^' is not an operator: use ** for powers"),
    ("x $ y", 3, "unexpected character '$'"),
    ("x = y", 3, "unexpected character '=': use == for equality"),
    ("a.b", 2, "unexpected character '.'"),
    ("x + \u00e9", 5, "unexpected character '\u00e9'"),
    ("(x + y", 1, "unclosed '('"),
    ("((x) + (y)", 1, "unclosed '('"),
    ("x + (y * (z)", 5, "unclosed '('"),
    ("max(x, y", 4, "unclosed '(' of max(...)"),
    ("sin(", 4, "unclosed '(' of sin(...)"),
    ("x)", 2, "unmatched ')'"),
    ("(x))", 4, "unmatched ')'"),
    (")", 1, "unmatched ')'"),
    ("x + )", 5, "unmatched ')'"),
    ("foo(x)", 1, f"unknown function 'foo'; known functions: {KNOWN}"),
    ("x(2)", 1, "unknown function 'x'"),
    ("__import__('os')", 1, "unknown function '__import__'"),
    ("1 + pi(2)", 5, "'pi' is a constant, not a function"),
    ("e(1)", 1, "'e' is a constant, not a function"),
    ("sin + 1", 1, "'sin' is a function: call it as sin(...)"),
    ("max(x,)", 7, "empty argument"),
    ("max(,x)", 5, "empty argument"),
    ("where(a,,b)", 9, "empty argument"),
    ("sin()", 1, "sin() takes 1 argument, got 0"),
    ("()", 2, "empty parentheses"),
    ("x, y", 2, "',' outside a function call"),
    ("(x, y)", 3, "',' outside a function call"),
    (", x", 1, "',' outside a function call"),
    ("1e", 1, "malformed number '1e'"),
    ("1e+", 1, "malformed number '1e+'"),
    ("x + 1.2.3", 5, "malformed number '1.2.3'"),
    ("2x", 1, "malformed number '2x'"),
    ("a < b < c", 7, "chained comparison at '<'"),
    ("a == b != c", 8, "chained comparison at '!='"),
    ("a < b + c >= d", 11, "chained comparison at '>='"),
    ("__x + 1", 1, "name '__x' is reserved"),
]


@pytest.mark.parametrize(("text", "column", "message"), ERRORS, ids=[t for t, _, _ in ERRORS])
def test_bad_text_names_the_problem_and_column(text, column, message):
    with pytest.raises(ParseError) as info:
        parse(text)
    assert message in info.value.message
    assert info.value.column == column
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("text", "column", "message"), ERRORS, ids=[t for t, _, _ in ERRORS])
def test_failed_parse_leaves_the_graph_unchanged(text, column, message):
    g = Graph()
    x, y = g.input("x"), g.input("y")
    keep = g.apply("sin", x * y)
    nodes = dict(g.nx.nodes(data=True))
    with pytest.raises(ParseError):
        parse("new1 * sin(x) + new2 - " + text, g)
    assert dict(g.nx.nodes(data=True)) == nodes
    assert list(g.inputs) == ["x", "y"]
    assert parse("sin(x*y)", g).id == keep.id  # the hash-cons table was rolled back too
    assert len(g) == len(nodes)


def test_error_message_shows_a_caret_under_the_column():
    with pytest.raises(ParseError) as info:
        parse("sin(x) ^ 2")
    assert str(info.value).splitlines() == [
        "'^' is not an operator: use ** for powers at column 8",
        "  sin(x) ^ 2",
        "         ^",
    ]


def test_unclosed_paren_deep_inside_points_at_the_innermost():
    depth = 100_000
    with pytest.raises(ParseError) as info:
        parse("(" * depth + "x")
    assert info.value.column == depth
    assert "unclosed '('" in info.value.message


def test_a_huge_bad_token_gives_a_short_message():
    with pytest.raises(ParseError) as info:
        parse("x + " + "9" * 1_000_000 + "e")
    assert info.value.column == 5
    assert len(str(info.value)) < 500


@pytest.mark.parametrize(("text", "type_name"), [(b"x", "bytes"), (None, "NoneType"), (3, "int")])
def test_text_must_be_a_str(text, type_name):
    with pytest.raises(ParseError, match=f"expected str, got {type_name}"):
        parse(text)


def test_graph_must_be_a_graph():
    with pytest.raises(SymgradError, match="graph: expected a symgrad Graph"):
        parse("x", graph={})


def test_graph_errors_during_a_parse_roll_back_too():
    g = Graph(max_nodes=4)
    g.input("x")
    with pytest.raises(SymgradError, match="max_nodes"):
        parse("x + y + z", g)
    assert len(g) == 1
    assert list(g.inputs) == ["x"]
