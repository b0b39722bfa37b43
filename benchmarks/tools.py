"""One adapter per tool: how it builds value + gradient (and Hessian, H·v), how it is called.

Every adapter uses its tool the way that tool's documentation suggests and takes the same numbers
in its own natural layout (prepared outside the timed region):

- symgrad: ``sg.parse`` (or the Python API), ``sg.build_grad`` / ``sg.hessian`` / ``sg.hvp``,
  ``sg.compile(..., inputs=...)``; one contiguous array per variable.
- SymPy: ``sympy.diff`` then ``sympy.lambdify(..., "numpy", cse=True)``; one array per variable.
- JAX: ``jax.jit(jax.vmap(jax.value_and_grad(f, argnums)))`` with float64 enabled, arrays placed
  on the device beforehand; ``jax.jit(jax.value_and_grad(f))`` for one point; results waited for
  with ``block_until_ready``.
- SymEngine: ``diff`` then ``symengine.Lambdify(..., backend="llvm", cse=True)`` on an (n, k)
  array.
- CasADi: SX graph, ``casadi.gradient`` / ``hessian`` / ``jtimes``, a ``casadi.Function``
  evaluated by CasADi's virtual machine (no C code generation), ``Function.map(n)`` over 1 x n
  DM rows.

``kind`` is ``"v"`` (value alone), ``"vg"`` (value and gradient), ``"hess"`` (Hessian) or
``"hvp"`` (Hessian times the vector ``HVP_V``). ``flatten`` turns any result into numpy arrays of
a common layout, only to check that every tool computes the same numbers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import time

import numpy as np

from benchmarks.suite import CASES, HVP_V, Case


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class Tool:
    key = ""
    label = ""
    module = ""
    dists: tuple[str, ...] = ()
    size_unit = ""
    batch_only = False  # measured in (b) and (c) only

    def __init__(self):
        self.last_phases: dict[str, float] = {}

    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def version(self) -> str:
        parts = [f"{d} {_dist_version(d)}" for d in self.dists if _dist_version(d)]
        return ", ".join(parts) if parts else "not installed"

    def setup(self) -> None:
        """Import the tool (never timed)."""
        importlib.import_module(self.module)

    # -- building -------------------------------------------------------------------------
    def make(self, case: Case, kind: str, where: str = "batch"):
        """A callable for ``kind``; ``where`` is "batch" or "point" (only JAX differs)."""
        raise NotImplementedError

    # -- calling --------------------------------------------------------------------------
    def batch_args(self, case: Case, data: np.ndarray, device: bool = True) -> list:
        return [np.ascontiguousarray(row) for row in data]

    def call_batch(self, fn, args):
        return fn(*args)

    def point_args(self, case: Case, kind: str) -> tuple:
        values = case.point + (HVP_V if kind == "hvp" else ())
        return tuple(float(v) for v in values)

    def point_caller(self, fn):
        """What the single-point loop calls with ``*point_args``."""
        return fn

    # -- checking and sizes ---------------------------------------------------------------
    def flatten(self, result, case: Case, kind: str, batch: bool) -> np.ndarray:
        """Batch: (n, outputs); point: a flat vector."""
        raise NotImplementedError

    def size(self, case: Case, kind: str) -> int | None:
        """Graph size of the built function in this tool's own unit (``size_unit``)."""
        return None


def _stack_batch(parts, n: int) -> np.ndarray:
    cols = []
    for p in parts:
        a = np.asarray(p, np.float64)
        cols.append(a.reshape(n, -1) if a.size >= n else np.broadcast_to(a.reshape(-1), (n, 1)))
    return np.concatenate(cols, axis=1)


def _first_expr(obj):
    while isinstance(obj, (list, tuple)):
        obj = obj[0]
    return obj


# ------------------------------------------------------------------------------------------
class Symgrad(Tool):
    key = "symgrad"
    label = "symgrad"
    module = "symgrad"
    dists = ("symgrad", "llvmlite")
    size_unit = "nodes after `sg.optimize`"
    backend = "llvm"
    options: dict = {}

    def outputs(self, case: Case, kind: str):
        import symgrad as sg

        if case.text is not None:
            f = sg.parse(case.text)
            xs = [f.graph.inputs[name] for name in case.vars]
        else:
            g = sg.Graph()
            xs = [g.input(name) for name in case.vars]
            f = case.build(sg, *xs)
        if kind == "v":
            return [f], xs
        if kind == "vg":
            return [f, sg.build_grad(f, xs)], xs
        if kind == "hess":
            return [sg.hessian(f, xs)], xs
        if kind == "hvp":
            vs = [f.graph.input(f"v_{i}") for i in range(len(xs))]
            return [sg.hvp(f, xs, vs)], xs + vs
        raise ValueError(kind)

    def make(self, case, kind, where="batch"):
        import symgrad as sg

        t0 = time.perf_counter()
        outs, ins = self.outputs(case, kind)
        t1 = time.perf_counter()
        fn = sg.compile(outs, inputs=ins, backend=self.backend, **self.options)
        t2 = time.perf_counter()
        native = getattr(fn, "_native", None)
        self.last_phases = {
            "graph_ms": (t1 - t0) * 1e3,
            "compile_ms": (t2 - t1) * 1e3,
            "cache_hit": bool(getattr(native, "cache_hit", False)),
        }
        return fn

    def flatten(self, result, case, kind, batch):
        if batch:
            n = np.shape(result[0])[0]
            return _stack_batch(result, n)
        return np.concatenate([np.ravel(r) for r in result])

    def size(self, case, kind):
        import symgrad as sg

        outs, _ = self.outputs(case, kind)
        return len(_first_expr(sg.optimize(outs)).graph)


class SymgradOneThread(Symgrad):
    """symgrad with ``sg.compile(..., threads=1)``: shown in (b) and (c) only."""

    key = "symgrad-1t"
    label = "symgrad, 1 thread"
    options = {"threads": 1}
    batch_only = True


class SymgradNumpy(Symgrad):
    key = "symgrad-numpy"
    label = "symgrad numpy"
    dists = ("symgrad", "numpy")
    backend = "numpy"


# ------------------------------------------------------------------------------------------
class SymPy(Tool):
    key = "sympy"
    label = "SymPy"
    module = "sympy"
    dists = ("sympy",)
    size_unit = "`count_ops` after `cse`"

    def exprs(self, case: Case, kind: str):
        import sympy

        syms = [sympy.Symbol(name) for name in case.vars]
        if case.text is not None:
            f = sympy.sympify(case.text, locals=dict(zip(case.vars, syms)))
        else:
            f = case.build(sympy, *syms)
        if kind == "v":
            return syms, f
        grads = [sympy.diff(f, s) for s in syms]
        if kind == "vg":
            return syms, [f, *grads]
        if kind == "hess":
            return syms, sympy.hessian(f, syms)
        if kind == "hvp":
            vs = [sympy.Symbol(f"v_{i}") for i in range(len(syms))]
            gv = sympy.Add(*[g * v for g, v in zip(grads, vs)])
            return syms + vs, [sympy.diff(gv, s) for s in syms]
        raise ValueError(kind)

    def make(self, case, kind, where="batch"):
        import sympy

        args, exprs = self.exprs(case, kind)
        return sympy.lambdify(args, exprs, modules="numpy", cse=True)

    def flatten(self, result, case, kind, batch):
        if batch:
            parts = result if isinstance(result, (list, tuple)) else [result]
            return _stack_batch(parts, case_n(parts))
        return np.concatenate([np.ravel(np.asarray(r, np.float64)) for r in _listify(result)])

    def size(self, case, kind):
        import sympy

        _, exprs = self.exprs(case, kind)
        exprs = list(exprs) if isinstance(exprs, (list, tuple)) else [exprs]
        replacements, reduced = sympy.cse(exprs)
        return int(sum(sympy.count_ops(r) for _, r in replacements)
                   + sum(sympy.count_ops(e) for e in reduced))  # fmt: skip


def case_n(parts) -> int:
    return max(np.size(p) for p in parts)


def _listify(result):
    return result if isinstance(result, (list, tuple)) else [result]


# ------------------------------------------------------------------------------------------
class Jax(Tool):
    key = "jax"
    label = "JAX"
    module = "jax"
    dists = ("jax", "jaxlib")
    size_unit = "jaxpr equations"

    def setup(self):
        import jax

        jax.config.update("jax_enable_x64", True)

    def _f(self, case: Case):
        import jax.numpy as jnp

        if case.array_build is not None:
            return lambda x: case.array_build(jnp, x), 0
        return lambda *a: case.build(jnp, *a), tuple(range(case.nvars))

    def make(self, case, kind, where="batch"):
        import jax

        f, argnums = self._f(case)
        if kind == "v":
            inner = f
        elif kind == "vg":
            inner = jax.value_and_grad(f, argnums=argnums)
        elif kind == "hess":
            inner = jax.hessian(f, argnums=argnums)
        elif kind == "hvp":
            grad = jax.grad(f, argnums=argnums)
            inner = lambda x, v: jax.jvp(grad, (x,), (v,))[1]
        else:
            raise ValueError(kind)
        return jax.jit(jax.vmap(inner) if where == "batch" else inner)

    def batch_args(self, case, data, device=True):
        import jax

        arrays = [np.ascontiguousarray(data.T)] if case.array_build else list(data)
        return [jax.device_put(a) for a in arrays] if device else arrays

    def call_batch(self, fn, args):
        import jax

        return jax.block_until_ready(fn(*args))

    def point_args(self, case, kind):
        if case.array_build is None:
            return super().point_args(case, kind)
        x = np.array(case.point)
        return (x, np.array(HVP_V)) if kind == "hvp" else (x,)

    def point_caller(self, fn):
        import jax

        block = jax.block_until_ready
        return lambda *a: block(fn(*a))

    def flatten(self, result, case, kind, batch):
        leaves = [np.asarray(x, np.float64) for x in _leaves(result)]
        if batch:
            return _stack_batch(leaves, max(x.shape[0] for x in leaves))
        return np.concatenate([x.ravel() for x in leaves])

    def size(self, case, kind):
        import jax

        f, argnums = self._f(case)
        if kind == "v":
            inner = f
        elif kind == "vg":
            inner = jax.value_and_grad(f, argnums=argnums)
        else:
            return None
        args = self.point_args(case, kind)
        return len(jax.make_jaxpr(inner)(*args).jaxpr.eqns)


def _leaves(obj):
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _leaves(o)
    else:
        yield obj


# ------------------------------------------------------------------------------------------
class SymEngine(Tool):
    key = "symengine"
    label = "SymEngine"
    module = "symengine"
    dists = ("symengine",)
    size_unit = "`count_ops` after `cse`"

    def exprs(self, case: Case, kind: str):
        import symengine as se

        syms = [se.Symbol(name) for name in case.vars]
        f = se.sympify(case.text) if case.text is not None else case.build(se, *syms)
        if kind == "v":
            return syms, [f]
        grads = [f.diff(s) for s in syms]
        if kind == "vg":
            return syms, [f, *grads]
        if kind == "hess":
            return syms, [[g.diff(s) for s in syms] for g in grads]
        if kind == "hvp":
            vs = [se.Symbol(f"v_{i}") for i in range(len(syms))]
            gv = se.Add(*[g * v for g, v in zip(grads, vs)])
            return syms + vs, [gv.diff(s) for s in syms]
        raise ValueError(kind)

    def make(self, case, kind, where="batch"):
        import symengine as se

        args, exprs = self.exprs(case, kind)
        return se.Lambdify(args, exprs, backend="llvm", cse=True)

    def batch_args(self, case, data, device=True):
        return [np.ascontiguousarray(data.T)]

    def point_args(self, case, kind):
        args = super().point_args(case, kind)
        return (np.array(args),) if case.array_build is not None else args

    def flatten(self, result, case, kind, batch):
        a = np.asarray(result, np.float64)
        return a.reshape(a.shape[0], -1) if batch else a.ravel()

    def size(self, case, kind):
        import symengine as se

        _, exprs = self.exprs(case, kind)
        flat = list(_leaves(exprs))
        replacements, reduced = se.cse(flat)
        return int(se.count_ops(*[r for _, r in replacements], *reduced))


# ------------------------------------------------------------------------------------------
class _Mapped:
    """A CasADi Function plus its ``map(n)`` for each batch size met (built on first use)."""

    def __init__(self, function):
        self.function = function
        self.maps = {}

    def __call__(self, *args):
        return self.function(*args)

    def batch(self, args):
        n = args[0].shape[1]
        mapped = self.maps.get(n)
        if mapped is None:
            mapped = self.maps[n] = self.function.map(n)
        return mapped(*args)


class CasADi(Tool):
    key = "casadi"
    label = "CasADi"
    module = "casadi"
    dists = ("casadi",)
    size_unit = "VM instructions"

    def function(self, case: Case, kind: str):
        import casadi as ca

        if case.array_build is not None:
            X = ca.SX.sym("x", case.nvars)
            f = case.build(ca, *[X[i] for i in range(case.nvars)])
            args = [X]
        else:
            args = [ca.SX.sym(name) for name in case.vars]
            X = ca.vertcat(*args)
            f = case.build(ca, *args)
        if kind == "v":
            outs = [f]
        elif kind == "vg":
            outs = [f, ca.gradient(f, X)]
        elif kind == "hess":
            outs = [ca.hessian(f, X)[0]]
        elif kind == "hvp":
            V = ca.SX.sym("v", case.nvars)
            outs = [ca.jtimes(ca.gradient(f, X), X, V)]
            args = args + [V]
        else:
            raise ValueError(kind)
        return ca.Function(f"f_{kind}", args, outs)

    def make(self, case, kind, where="batch"):
        return _Mapped(self.function(case, kind))

    def batch_args(self, case, data, device=True):
        import casadi as ca

        if case.array_build is not None:
            return [ca.DM(data)]
        return [ca.DM(row.reshape(1, -1)) for row in data]

    def call_batch(self, fn, args):
        return fn.batch(args)

    def point_args(self, case, kind):
        if case.array_build is None:
            return super().point_args(case, kind)
        x = np.array(case.point)
        return (x, np.array(HVP_V)) if kind == "hvp" else (x,)

    def flatten(self, result, case, kind, batch):
        parts = [np.asarray(r, np.float64) for r in _listify(result)]
        if batch:
            return np.concatenate([p.reshape(-1, p.shape[-1]).T for p in parts], axis=1)
        return np.concatenate([p.ravel(order="F") for p in parts])

    def size(self, case, kind):
        return int(self.function(case, kind).n_instructions())


TOOLS: dict[str, type[Tool]] = {
    t.key: t for t in (Symgrad, SymgradOneThread, SymgradNumpy, SymPy, Jax, SymEngine, CasADi)
}


def get(key: str) -> Tool:
    return TOOLS[key]()


def warmup_case() -> Case:
    return CASES["W"]
