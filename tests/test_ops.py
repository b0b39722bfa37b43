"""The registry is complete: every op of ``OPS`` states every fact the pipeline reads from it.

Each stage finds what it needs about an op in its ``OpDef`` and nowhere else (docs/adding-an-op.md):
its numpy form, VJP rules or expansion, label, how the parser writes it, its SymPy form, how the
LLVM backend emits it (an elementwise lowering, or a tensor op's layout class with the view,
reduction or writer it names), and exact forms for constant operands. These tests hold every
entry to that, parametrized over the registry, so an op added without one of them fails here.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import symgrad as sg
from symgrad.errors import GraphError, ShapeError
from symgrad.llvm.loops import Writer
from symgrad.llvm.plan import View
from symgrad.ops import COMPARISONS, FUNCTIONS, OPS, REQUIRED, VALUE_KINDS, VARIADIC, Lowering
from symgrad.sympy_bridge import RELATIONALS, from_sympy, to_sympy
from tests.toolbox import ELEMENTWISE_OPS, TENSOR_OPS, domain_sample, snapshot

COMPUTED = sorted(n for n, op in OPS.items() if op.arity)  # every op but the leaves
ELEMENTWISE_KINDS = {"instr", "intrinsic", "libm", "fcmp", "custom"}
TENSOR_KINDS = {"view", "reduce", "barrier", "part"}


def test_the_registry_is_read():
    # Vacuous lists would pass every test below.
    assert len(ELEMENTWISE_OPS) >= 35 and len(TENSOR_OPS) >= 15
    assert {"input", "const"} <= set(OPS) and set(OPS) == set(COMPUTED) | {"input", "const"}


@pytest.mark.parametrize("name", COMPUTED)
def test_every_op_can_be_evaluated_and_differentiated(name):
    op = OPS[name]
    assert op.name == name and callable(op.numpy) and op.label
    if op.multiple:  # a tuple-valued op (scan): one rule for all its parts, their shapes
        assert callable(op.vjp_parts) and callable(op.part_shapes) and op.arity == VARIADIC
        return
    # A VJP rule (or None: no gradient) per operand, or an expansion build_grad differentiates.
    # A variadic op (concatenate): one rule for the operand at any position.
    assert (
        len(op.vjp) == op.arity
        or (not op.vjp and op.expand is not None)
        or (not op.vjp and callable(op.vjp_at) and op.arity == VARIADIC)
    )
    assert all(rule is None or callable(rule) for rule in op.vjp)
    assert len(op.domain) in (0, op.arity)


@pytest.mark.parametrize("name", COMPUTED)
def test_every_op_has_a_lowering_of_its_class(name):
    op, low = OPS[name], OPS[name].llvm
    if low is None:  # lowered through what it expands to
        assert op.expand is not None, f"{name}: no lowering and no expansion"
        return
    assert isinstance(low, Lowering)
    assert low.kind in (ELEMENTWISE_KINDS if op.elementwise else TENSOR_KINDS)
    if low.kind == "custom":
        assert callable(low.emit) and len(inspect.signature(low.emit).parameters) == op.arity + 1
    if low.kind == "view":
        assert callable(getattr(View, f"as_{low.name}", None))
    if low.kind == "barrier":
        assert callable(getattr(Writer, f"write_{low.name}", None))
    if low.kind == "libm" and low.vector:
        assert low.vector.endswith(f"_{low.name}")  # libmvec's name for the same function


@pytest.mark.parametrize("name", sorted(n for n in ELEMENTWISE_OPS if n in FUNCTIONS.values()))
def test_the_parser_writes_every_function_of_the_registry(name):
    text = next(t for t, op in FUNCTIONS.items() if op == name)
    args = ", ".join(["x", "y", "z"][: OPS[name].arity])
    assert sg.parse(f"{text}({args})").op == name


@pytest.mark.parametrize("name", sorted(n for n in OPS if OPS[n].infix and OPS[n].elementwise))
def test_the_parser_writes_every_operator_of_the_registry(name):
    assert sg.parse(f"x {OPS[name].text} y").op == name


def test_comparisons_have_a_sympy_relation_and_one_symbol_each():
    assert set(RELATIONALS) == set(COMPARISONS.values())
    assert {OPS[n].text for n in RELATIONALS} == set(COMPARISONS)
    assert [n for n, op in OPS.items() if op.selects] == ["where"]


@pytest.mark.parametrize(
    "name", sorted(n for n in ELEMENTWISE_OPS if OPS[n].sympy is not None and OPS[n].arity <= 2)
)
def test_sympy_forms_round_trip_to_the_same_values(name):
    g = sg.Graph()
    names = ["x", "y"][: OPS[name].arity]
    e = g.apply(name, *(g.input(n) for n in names))
    back = from_sympy(to_sympy(e))
    values = dict(zip(names, domain_sample(name, (5,), seed=3)))
    want = sg.evaluate(e, **values)
    got = sg.evaluate(back, **{n: values[n] for n in back.graph.inputs})
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("name", sorted(n for n in OPS if OPS[n].exact))
def test_exact_forms_equal_the_op_itself(name):
    # The folding rule and both emitters trust these: each form must give the op's value exactly.
    base = np.array([-3.5, -1.0, -0.0, 0.0, 1e-300, 0.7, 2.0, 1e300, np.inf, -np.inf, np.nan])
    for c, build in OPS[name].exact.items():
        g = sg.Graph()
        x = g.input("x")
        form = build(x, g.const, g.apply)
        with np.errstate(all="ignore"):
            want = OPS[name].numpy(base, np.full_like(base, c))
        got = np.broadcast_to(sg.evaluate(form, x=base), base.shape)
        np.testing.assert_array_equal(got, want)  # nan equals nan here; ±0 compare equal


def test_every_attribute_the_parser_reads_has_its_kinds_in_the_registry():
    from symgrad.ops import ATTRIBUTE_KINDS
    from symgrad.parse import _KIND_WORDS, _SPECS

    written = {name for spec in _SPECS.values() for name in spec.keywords}
    assert written and written <= set(ATTRIBUTE_KINDS)
    assert all(set(kinds) <= set(_KIND_WORDS) for kinds in ATTRIBUTE_KINDS.values())
    # Each named attribute belongs to some op of the registry.
    assert set(ATTRIBUTE_KINDS) <= {name for op in OPS.values() for name in op.attrs}


# --- the attribute schema -------------------------------------------------------------------------

# Ops whose attributes a test can fill in (a scan's body: tests/test_scan.py).
WITH_ATTRIBUTES = sorted(n for n in COMPUTED if OPS[n].schema and OPS[n].arity != VARIADIC)


def test_ops_have_attributes():
    assert len(WITH_ATTRIBUTES) >= 12


@pytest.mark.parametrize("name", sorted(n for n in OPS if OPS[n].schema))
def test_every_attribute_has_known_kinds_and_a_default_of_its_kind(name):
    op = OPS[name]
    # The rules take the attributes by name: numpy's form names the same ones, in schema order.
    if op.numpy is not None and op.arity != VARIADIC:
        params = list(inspect.signature(op.numpy).parameters)
        assert params[op.arity :] == list(op.attrs)
    elif op.numpy is not None:  # variadic: the operands, then the attributes by keyword
        params = inspect.signature(op.numpy).parameters.values()
        keywords = [p.name for p in params if p.kind == p.KEYWORD_ONLY]
        assert keywords[: len(op.attrs)] == list(op.attrs)
    for a in op.schema:
        assert a.kinds and set(a.kinds) <= set(VALUE_KINDS)
        if a.default is not REQUIRED:
            a.check(name, a.default)  # a default the schema itself would refuse is a bug


_OF_KIND = {"int": 2, "tuple": (2, 2), "index": 0}


def _operands(name):
    g = sg.Graph()
    return g, [g.input(f"x{k}", (2, 2, 4, 4)) for k in range(OPS[name].arity)]


@pytest.mark.parametrize("name", WITH_ATTRIBUTES)
def test_node_creation_refuses_an_attribute_of_no_kind_it_takes(name):
    op = OPS[name]
    for a in op.schema:
        g, xs = _operands(name)
        before = snapshot(g)
        # Every other attribute of a kind it takes (required ones too), this one a str.
        attrs = {
            b.name: _OF_KIND[b.kinds[0]] if b.default is REQUIRED else b.default for b in op.schema
        }
        attrs[a.name] = "1"  # a str: no attribute of a computed op takes one
        with pytest.raises(ShapeError, match=f"{name}: {a.name} must be"):
            g.apply(name, *xs, **attrs)
        assert snapshot(g) == before


@pytest.mark.parametrize("name", [n for n in WITH_ATTRIBUTES if any(
    a.default is REQUIRED for a in OPS[n].schema)])  # fmt: skip
def test_node_creation_refuses_a_missing_required_attribute(name):
    g, xs = _operands(name)
    required = [a.name for a in OPS[name].schema if a.default is REQUIRED]
    with pytest.raises(ShapeError, match=f"{name}: needs the attribute {required[0]}"):
        g.apply(name, *xs)


def test_window_sum_without_its_shape_is_refused_not_a_key_error():
    g = sg.Graph()
    x = g.input("x", (1, 1, 3, 3, 2, 2))
    with pytest.raises(ShapeError, match="window_sum: needs the attribute shape"):
        g.apply("window_sum", x, kernel_size=2)


@pytest.mark.parametrize("value", [5, b"x", ("x",)])
def test_unpickling_checks_a_leaf_attribute_against_the_schema(value):
    g = sg.Graph()
    g.input("x")
    state = g.__getstate__()
    op, args, attrs, shape, role, order = state["nodes"][0]
    state["nodes"][0] = (op, args, (("name", value),), shape, role, order)
    with pytest.raises(GraphError, match="name must be a str"):
        sg.Graph.__new__(sg.Graph).__setstate__(state)


def test_defaults_come_from_the_schema():
    g = sg.Graph()
    x = g.input("x", (1, 1, 4, 4))
    # Pooling's stride defaults to its kernel size, a reduction's axis to all axes.
    assert g.apply("max_pool2d", x).shape == (1, 1, 2, 2)
    assert g.apply("avg_pool2d", x, kernel_size=3).shape == (1, 1, 1, 1)
    assert g.apply("sum", x).shape == ()
    assert g.apply("softmax", x).id == g.apply("softmax", x, axis=3).id


@pytest.mark.parametrize("name", COMPUTED)
def test_every_op_has_a_forward_mode_rule(name):
    # An elementwise op's is its VJP rules (a diagonal Jacobian); the others state one, or are
    # differentiated through their expansion (symgrad/forward.py).
    op = OPS[name]
    assert op.elementwise or callable(op.jvp) or op.expand is not None
