"""The ``symgrad`` command: gradients, Hessians, DOT and IR of a formula from a shell.

    symgrad grad "(2*w2*(w1*x + b1) - label)**2" --wrt w1,b1,w2 \\
        --at x=1,label=500,w1=10,b1=1,w2=20 [--hessian] [--dot FILE] [--ir] [--asm]
    symgrad demo [--dot FILE]

Bad arguments print one line ``symgrad: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import symgrad as sg
from symgrad.errors import ParseError, SymgradError

DEMO_FORMULA = "(2*w2*(w1*x + b1) - label)**2"
DEMO_POINT = {"x": 1.0, "label": 500.0, "w1": 10.0, "b1": 1.0, "w2": 20.0}
DEMO_PARAMS = ("w1", "b1", "w2")
DEMO_LR = 0.005


class UsageError(SymgradError):
    """A command-line argument that cannot be used (reported on one line, exit status 2)."""


def _fmt(v) -> str:
    return f"{float(v):.10g}"


def _parse_point(text: str) -> dict[str, float]:
    point = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not name:
            raise UsageError(f"--at: expected name=value, got {item!r}")
        if name in point:
            raise UsageError(f"--at: {name} is given twice")
        try:
            point[name] = float(value)
        except ValueError:
            raise UsageError(f"--at: value of {name!r} is not a number: {value!r}") from None
    return point


def _values(fn, point: dict[str, float]) -> dict[str, float]:
    """The arguments of ``fn`` from ``--at``: every input needs a value, and no other name."""
    missing = [n for n in fn.inputs if n not in point]
    if missing:
        raise UsageError(f"--at: no value for {', '.join(missing)}")
    unknown = [n for n in point if n not in fn.inputs]
    if unknown:
        raise UsageError(
            f"--at: {', '.join(unknown)} not in the expression ({', '.join(fn.inputs)})"
        )
    return point


def _wrt(f: sg.Expr, names: str | None) -> list[sg.Expr]:
    inputs = f.graph.inputs
    if names is None:
        return list(inputs.values())
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise UsageError(f"--wrt: no input named in {names!r}")
    unknown = [n for n in chosen if n not in inputs]
    if unknown:
        raise UsageError(f"--wrt: {', '.join(unknown)} not in the expression ({', '.join(inputs)})")
    return [inputs[n] for n in chosen]


def _write_dot(path: str, outputs: list[sg.Expr], labels: list[str]) -> None:
    """Graphviz DOT of ``outputs`` (a flat list, already optimized), named by ``labels``."""
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(sg.to_dot(outputs, labels=labels))
    except OSError as err:
        raise UsageError(f"--dot: cannot write {path!r}: {err.strerror}") from None


def _flat(outputs) -> list[sg.Expr]:
    """The Exprs of [f, grads, hessian rows...] in order: f, the gradient, the Hessian by rows."""
    flat = []
    for item in outputs:
        if isinstance(item, sg.Expr):
            flat.append(item)
        else:
            flat.extend(e for row in item for e in (row if isinstance(row, list) else [row]))
    return flat


def _labels(f: str, wrt: list[sg.Expr], hessian: bool) -> list[str]:
    """Output names as a reader writes them: f, ∂f/∂x, ..., then ∂²f/∂x², ∂²f/∂x∂y, ..."""
    names = [w.name for w in wrt]
    labels = [f, *(f"∂{f}/∂{n}" for n in names)]
    if hessian:
        labels += [f"∂²{f}/∂{a}²" if a == b else f"∂²{f}/∂{a}∂{b}" for a in names for b in names]
    return labels


def cmd_grad(args) -> int:
    f = sg.parse(args.expr)
    wrt = _wrt(f, args.wrt)
    grads = sg.build_grad(f, wrt)
    outputs = [f, grads] + ([sg.hessian(f, wrt)] if args.hessian else [])
    point = _parse_point(args.at or "")
    fn = sg.compile(outputs)
    results = fn(**_values(fn, point))
    if args.dot is not None:  # before printing, so a bad path prints nothing but the error
        # What sg.compile runs: the optimized graph (sg.optimize), not the graph as built.
        _write_dot(args.dot, sg.optimize(_flat(outputs)), _labels("f", wrt, args.hessian))
    print(f"f = {_fmt(results[0])}")
    for w, d in zip(wrt, np.atleast_1d(results[1])):
        print(f"df/d{w.name} = {_fmt(d)}")
    if args.hessian:
        print("hessian =")
        for row in results[2]:
            print("  [" + ", ".join(_fmt(v) for v in row) + "]")
    if args.ir:
        print(fn.llvm_ir)
    if args.asm:
        print(fn.asm)
    return 0


def cmd_demo(args) -> int:
    """A worked backpropagation example: loss, gradients, one SGD step, the graph as DOT."""
    f = sg.parse(DEMO_FORMULA)
    params = [f.graph.inputs[n] for n in DEMO_PARAMS]
    grads = sg.build_grad(f, params)
    fn = sg.compile([f, grads])
    loss, grad = fn(**DEMO_POINT)
    drawn = sg.optimize([f, *grads])  # the graph sg.compile runs, smaller than the one built
    _write_dot(args.dot, drawn, _labels("loss", params, False))
    print(f"loss = (2*w2*(w1*x + b1) - label)**2 at {_point_text(DEMO_POINT)}")
    print(f"loss = {_fmt(loss)}")
    for name, d in zip(DEMO_PARAMS, grad):
        print(f"{name}.grad = {_fmt(d)}")
    print(f"after one SGD step (lr = {DEMO_LR}):")
    for name, d in zip(DEMO_PARAMS, grad):
        print(f"{name} = {_fmt(DEMO_POINT[name] - DEMO_LR * d)}")
    nodes = drawn[0].graph.nx.number_of_nodes()
    print(f"loss and gradient graph, optimized ({nodes} nodes), written to {args.dot}")
    return 0


def _point_text(point: dict[str, float]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in point.items())


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as for every other bad argument
        print(f"symgrad: error: {message}", file=sys.stderr)
        raise SystemExit(2)


GRAD_TEXT = (
    "Print the value of a formula and its derivatives (gradient, and Hessian with --hessian) at "
    "a point, computed exactly by compiled code, e.g. "
    'symgrad grad "sin(x)*y" --at x=1,y=2.'
)
DEMO_TEXT = (
    "A worked backpropagation example: the loss (2*w2*(w1*x + b1) - label)**2 at x=1, label=500, "
    "w1=10, b1=1, w2=20, its gradient with respect to w1, b1, w2, the weights after one "
    "gradient-descent step, and the optimized graph of the loss and its gradient as Graphviz DOT "
    "(outputs labelled loss, ∂loss/∂w1, ...; draw it with: "
    "dot -Tsvg symgrad-demo.dot -o symgrad-demo.svg)."
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="symgrad", description="Exact derivatives of formulas, compiled.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    grad = sub.add_parser(
        "grad", help="value and derivatives of a formula at a point", description=GRAD_TEXT
    )
    grad.add_argument("expr", help='the formula, e.g. "sin(x)*y" (use ** for powers)')
    grad.add_argument(
        "--wrt",
        metavar="NAMES",
        help="comma-separated inputs to differentiate with respect to, e.g. x,y "
        "(default: every input of the formula)",
    )
    grad.add_argument(
        "--at",
        metavar="POINT",
        help="the value of every input of the formula, e.g. x=1,y=2",
    )
    grad.add_argument(
        "--hessian", action="store_true", help="also print the Hessian (the second derivatives)"
    )
    grad.add_argument(
        "--dot",
        metavar="FILE",
        help="write the optimized graph of f and its derivatives (what is compiled) as Graphviz "
        "DOT, outputs labelled f, ∂f/∂x, ...",
    )
    grad.add_argument(
        "--ir", action="store_true", help="also print the LLVM IR of the compiled code"
    )
    grad.add_argument(
        "--asm",
        action="store_true",
        help="also print the compiled code as assembly for this machine",
    )
    grad.set_defaults(run=cmd_grad)
    demo = sub.add_parser(
        "demo",
        help="a worked example: the loss (2*w2*(w1*x + b1) - label)**2, its gradient, "
        "one gradient-descent step and the compiled graph",
        description=DEMO_TEXT,
    )
    demo.add_argument(
        "--dot",
        metavar="FILE",
        default="symgrad-demo.dot",
        help="where to write the optimized graph of the loss and its gradient, as Graphviz DOT "
        "(default: symgrad-demo.dot)",
    )
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; the exit status is returned (0, or 2 after one ``symgrad: error:`` line)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad argument (2): a status, as for the others
        return exit_.code
    try:
        return args.run(args)
    except ParseError as err:
        print(f"symgrad: error: {err.message} at column {err.column}", file=sys.stderr)
        return 2
    except SymgradError as err:
        print(f"symgrad: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
