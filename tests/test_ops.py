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
from symgrad.llvm.loops import Writer
from symgrad.llvm.plan import View
from symgrad.ops import COMPARISONS, FUNCTIONS, OPS, Lowering
from symgrad.sympy_bridge import RELATIONALS, from_sympy, to_sympy
from tests.toolbox import ELEMENTWISE_OPS, TENSOR_OPS, domain_sample

COMPUTED = sorted(n for n, op in OPS.items() if op.arity)  # every op but the leaves
ELEMENTWISE_KINDS = {"instr", "intrinsic", "libm", "fcmp", "custom"}
TENSOR_KINDS = {"view", "reduce", "barrier"}


def test_the_registry_is_read():
    # Vacuous lists would pass every test below.
    assert len(ELEMENTWISE_OPS) >= 35 and len(TENSOR_OPS) >= 15
    assert {"input", "const"} <= set(OPS) and set(OPS) == set(COMPUTED) | {"input", "const"}


@pytest.mark.parametrize("name", COMPUTED)
def test_every_op_can_be_evaluated_and_differentiated(name):
    op = OPS[name]
    assert op.name == name and callable(op.numpy) and op.label
    # A VJP rule (or None: no gradient) per operand, or an expansion build_grad differentiates.
    assert len(op.vjp) == op.arity or (not op.vjp and op.expand is not None)
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
