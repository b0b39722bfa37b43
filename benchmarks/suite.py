"""The benchmark suite: F1-F5 of ANCHORS.md, each as text and as a Python builder.

A builder takes a math namespace ``m`` (``symgrad``, ``sympy``, ``symengine``, ``casadi``,
``jax.numpy``) and the variables, and builds the function with ``m.sin``, ``m.exp``, ... and
operators, so every tool computes the same formula. Tools that read formulas (symgrad, SymPy,
SymEngine) parse ``text`` where a case has one; F4 and F5 are built through the Python API by
every tool.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    vars: tuple[str, ...]
    build: Callable  # build(m, *variables) -> scalar expression
    text: str | None = None  # the same formula as text, for tools that parse
    point: tuple[float, ...] = ()  # the single-point call (d) is made here
    lo: float = -2.0  # batch data: uniform in [lo, hi) for every variable, seed 0
    hi: float = 2.0
    array_build: Callable | None = None  # build(m, x) on a vector x (JAX's natural form)
    transcendental: bool = False
    notes: dict = field(default_factory=dict)

    @property
    def nvars(self) -> int:
        return len(self.vars)

    def data(self, n: int) -> np.ndarray:
        """The batch: an array (nvars, n), row k the values of variable k; the same for all."""
        rng = np.random.default_rng(0)
        return rng.uniform(self.lo, self.hi, size=(self.nvars, n))


def _f1(m, w1, b1, w2):
    x, label = 1, 500  # the seed-000 loss with its data fixed (ANCHORS.md)
    return (2 * w2 * (w1 * x + b1) - label) ** 2


def _f2(m, x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _f3(m, x, y):
    return (
        m.exp(-(x**2) - y**2) * m.cos(3 * x) * m.log(1 + y**2)
        + m.tanh(x * y) / (1 + x**2)
        + m.sqrt(1 + x**2 + y**2)
    )


def _f4(m, x, y):
    z = x * y
    for _ in range(20):
        z = m.sin(z) * m.cos(x + z) + y
    return z


def _rosenbrock(m, *xs):
    terms = [(1 - xs[i]) ** 2 + 100 * (xs[i + 1] - xs[i] ** 2) ** 2 for i in range(len(xs) - 1)]
    return functools.reduce(operator.add, terms)


def _rosenbrock_array(m, x):
    return m.sum((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2)


def _warmup(m, a, b):
    return m.sin(a) * m.exp(b) + m.log(1 + a**2) * m.tanh(b) + m.sqrt(1 + b**2) / m.cos(a)


N5 = 100

CASES = {
    "F1": Case(
        "F1",
        "seed-000 loss (2*w2*(w1*x + b1) - label)**2, x = 1, label = 500",
        ("w1", "b1", "w2"),
        _f1,
        text="(2*w2*(w1*1 + b1) - 500)**2",
        point=(10.0, 1.0, 20.0),
    ),
    "F2": Case(
        "F2",
        "Rosenbrock (1-x)**2 + 100*(y-x**2)**2",
        ("x", "y"),
        _f2,
        text="(1-x)**2 + 100*(y-x**2)**2",
        point=(1.5, 2.0),
    ),
    "F3": Case(
        "F3",
        "exp(-x²-y²)·cos(3x)·log(1+y²) + tanh(xy)/(1+x²) + sqrt(1+x²+y²)",
        ("x", "y"),
        _f3,
        text="exp(-x**2-y**2)*cos(3*x)*log(1+y**2) + tanh(x*y)/(1+x**2) + sqrt(1+x**2+y**2)",
        point=(0.5, -0.7),
        transcendental=True,
    ),
    "F4": Case(
        "F4",
        "20-fold nest z0 = x·y, z_{k+1} = sin(z_k)·cos(x+z_k) + y (Python API)",
        ("x", "y"),
        _f4,
        point=(0.3, 0.8),
        transcendental=True,
    ),
    "F5": Case(
        "F5",
        f"Rosenbrock in {N5} variables (Python API)",
        tuple(f"x{i}" for i in range(N5)),
        _rosenbrock,
        point=tuple(float(v) for v in np.linspace(-1.2, 1.2, N5)),
        lo=-1.5,
        hi=1.5,
        array_build=_rosenbrock_array,
    ),
    # Not a suite function: compiled first in a "warm process" so one-time initialization
    # (loading llvmlite, starting XLA, ...) is not charged to the formula that follows.
    "W": Case(
        "W",
        "warm-up",
        ("a", "b"),
        _warmup,
        text="sin(a)*exp(b) + log(1 + a**2)*tanh(b) + sqrt(1 + b**2)/cos(a)",
        point=(0.3, 0.4),
    ),
}

SUITE = ("F1", "F2", "F3", "F4", "F5")
SCALAR = ("F1", "F2", "F3", "F4")  # measured over batches of points
F5_KINDS = ("vg", "hess", "hvp")  # F5 at one point: value + gradient, Hessian, H·v
HVP_V = tuple(float(v) for v in np.linspace(1.0, -1.0, N5))  # the vector of H·v
