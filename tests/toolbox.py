"""The tests' toolbox: what several test files need, written once (shared fixtures: conftest.py;
random expressions: strategies.py; counting work: counting.py).

- op lists derived from the registry, so adding an op adds it to every test parametrized by them;
- ``domain_sample``: values inside an op's registry ``domain``;
- ``central_difference``: the one finite-difference routine, for scalars and arrays;
- ``compile_formula``: a formula and its gradient, compiled (``FORMULA`` by default);
- ``values_for``, ``compare``: arguments for a compiled tensor function, and its results
  compared with another's (``EXACT``: bit for bit); ``big_matmul``: matmuls big enough for BLAS;
- ``run_python``: code in a fresh interpreter at the repository root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np

import symgrad as sg
from symgrad.ops import OPS

ROOT = Path(__file__).resolve().parents[1]

# --- op lists from the registry ------------------------------------------------------------------

ELEMENTWISE_OPS = sorted(n for n, op in OPS.items() if op.elementwise and op.arity)
DIFF_OPS = [n for n in ELEMENTWISE_OPS if OPS[n].differentiable]
FLAT_OPS = [n for n in ELEMENTWISE_OPS if not OPS[n].differentiable]  # piecewise constant
BINARY_OPS = [n for n in ELEMENTWISE_OPS if OPS[n].arity == 2]
TENSOR_OPS = [n for n, op in OPS.items() if not op.elementwise]  # in registry order


# --- sampling an op's domain ---------------------------------------------------------------------


def domain_sample(name: str, shape=(), seed: int | np.random.Generator = 0) -> list[np.ndarray]:
    """Values drawn uniformly inside op ``name``'s registry domain: one array per operand, each
    of ``shape`` (a list of shapes gives operand k the shape ``shape[k]``). ``seed`` is a seed or
    a Generator; operands are drawn in order, all of operand 0 first.

    >>> [v.shape for v in domain_sample("atan2", 5)]
    [(5,), (5,)]
    """
    rng = np.random.default_rng(seed)  # a Generator is passed through as it is
    domain = OPS[name].domain
    shapes = shape if isinstance(shape, list) else [shape] * len(domain)
    return [rng.uniform(lo, hi, s) for (lo, hi), s in zip(domain, shapes, strict=True)]


# --- finite differences --------------------------------------------------------------------------


def central_difference(f: Callable, x, step: float = 1e-6) -> np.ndarray:
    """Central differences of ``f`` at ``x``, one for each entry of ``x``: an array of shape
    ``shape(x) + shape(f(x))`` whose entry ``[k]`` estimates the derivative of ``f`` in ``x[k]``.

    ``x`` is a number or an array and ``f`` returns a number or an array (so the differences of
    a gradient are a Hessian, and ``central_difference(lambda t: g(x + t*v), 0.0)`` is the
    derivative of ``g`` along ``v``). The step is chosen per entry, ``step * max(1, |x[k]|)``,
    so it stays relative to large values; the quotient divides by the distance between the two
    points as doubles, not by the step as written.

    >>> round(float(central_difference(lambda v: v**3, 2.0)), 6)  # 3 x**2 at 2
    12.0
    """
    x = np.asarray(x, dtype=np.float64)
    rows = []
    for k in np.ndindex(x.shape):
        h = step * max(1.0, abs(float(x[k])))
        up, down = x.copy(), x.copy()
        up[k] += h
        down[k] -= h
        rows.append((np.asarray(f(up), np.float64) - np.asarray(f(down))) / (up[k] - down[k]))
    return np.array(rows).reshape(x.shape + rows[0].shape)


# --- compiled tensor functions -------------------------------------------------------------------

EXACT = None  # the tolerance of ``compare`` that asks for equal values


def values_for(fn, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    """Standard normal values (times ``scale``) for the arguments of ``fn``, by their shapes."""
    rng = np.random.default_rng(seed)
    return {n: scale * rng.standard_normal(fn.graph.inputs[n].shape) for n in fn.inputs}


def compare(got, want, tol, label="") -> None:
    """Results ``got`` against ``want``: the same number, shapes and dtype (float64), and values
    equal (``tol`` EXACT) or within ``tol`` (assert_allclose keywords) with nan in the same
    places."""
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        msg = f"{label} output {k}"
        assert a.shape == b.shape, msg
        assert a.dtype == np.float64, msg
        if tol is EXACT:
            np.testing.assert_array_equal(a, b, err_msg=msg)
        else:
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=msg)
            np.testing.assert_allclose(a, b, err_msg=msg, **tol)


def big_matmul() -> list:
    """Three matmuls big enough for BLAS (40x50 by 50x60), two of them through views."""
    g = sg.Graph()
    x, y = g.input("x", (40, 50)), g.input("y", (50, 60))
    return [x @ y, x.T.T @ y[:, ::-1], sg.relu(x @ y[:, 1:41]).T @ x]


# --- compiling a formula, and a fresh interpreter -------------------------------------------------

FORMULA = "sin(x) * y + exp(x / (1 + y*y))"


def compile_formula(text: str = FORMULA):
    """``[f, its gradient]`` for the formula ``text``, compiled; arguments in the inputs' order."""
    f = sg.parse(text)
    xs = list(f.graph.inputs.values())
    return sg.compile([f, sg.build_grad(f, xs)], inputs=xs)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root, with ``env`` added."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
