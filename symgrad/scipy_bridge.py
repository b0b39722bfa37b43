"""The SciPy bridge: a scalar formula as ``fun``, ``jac``, ``hess`` and ``hessp`` over one flat
parameter vector, compiled once, in the form ``scipy.optimize.minimize`` takes as it is.

The parameters (``wrt``: scalar or tensor inputs) are laid end to end in the order given, each
raveled in C order. The value and the gradient come from one compiled call, remembered for the
last ``x`` (SciPy asks for ``fun`` and ``jac`` at the same point); ``hessp`` is the compiled
Hessian-vector product (two reverse passes, no Hessian built), and ``hess`` assembles the
Hessian from it, column by column (for scalar parameters: all columns in one batch call).
``sparse_hess`` is the compiled sparse Hessian (``sg.sparse_hessian``, one forward-over-reverse
sweep per colour of its columns, built on first use), a ``scipy.sparse.csr_array`` that
``minimize(method="trust-constr")`` takes as it is.

``scipy_residuals`` is the same bridge for ``scipy.optimize.least_squares``: a vector of
residuals as ``fun``, its compiled sparse Jacobian as ``jac`` and the structure as
``jac_sparsity``.
"""

from __future__ import annotations

import numpy as np

from symgrad.compile import compile
from symgrad.errors import ArgumentError, GradError
from symgrad.grad import build_grad, hvp
from symgrad.graph import Expr


class ScipyObjective:
    """``fun(x)``, ``jac(x)``, ``hess(x)``, ``hessp(x, p)`` of ``f`` over the flat vector of
    ``wrt``, with the graph's other inputs fixed to ``values``.

    >>> import symgrad as sg
    >>> f = sg.parse("(1 - a)**2 + 100*(b - a**2)**2")
    >>> obj = sg.scipy_objective(f, [f.graph.inputs["a"], f.graph.inputs["b"]], backend="numpy")
    >>> obj.fun([1.0, 1.0]), obj.jac([1.0, 1.0]).tolist()
    (0.0, [-0.0, 0.0])
    """

    def __init__(self, f: Expr, wrt, values: dict | None = None, backend: str = "llvm"):
        if not isinstance(f, Expr) or f.shape != ():
            raise GradError("scipy_objective: f must be a scalar Expr")
        graph = f.graph
        wrt = _checked_wrt(f, wrt)
        self.names = [w.name for w in wrt]
        self.shapes = [w.shape for w in wrt]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)
        self.values = _checked_values(values)
        # Everything below builds nodes or compiles: a failure anywhere (an unknown value, a bad
        # backend) removes the derivative nodes again, so a failed call leaves f's graph as is.
        with graph.atomic():
            grads = build_grad(f, wrt)
            directions = [graph.input(_fresh(graph, f"v_{w.name}"), shape=w.shape) for w in wrt]
            products = hvp(f, wrt, directions)
            reads = compile(f, backend="numpy").inputs
            fixed = _fixed_inputs("scipy_objective", "f does", reads, self.names, self.values)
            self._fixed = [self.values[n] for n in fixed]
            inputs = self.names + fixed
            self._value_grad = compile([f, *grads], inputs=inputs, backend=backend)
            self._hvp = compile(products, inputs=inputs + [d.name for d in directions],
                                backend=backend)  # fmt: skip
        self._scalar = not any(self.shapes)
        self._last: tuple[bytes, float, np.ndarray] | None = None
        self._f, self._wrt, self._fixed_names = f, wrt, fixed
        self._sparse = None

    def split(self, x) -> list:
        """The flat vector ``x`` as one value per parameter (floats for scalars)."""
        return _parts(self._vector(x, "x"), self.shapes)

    def flatten(self, parts) -> np.ndarray:
        """One value per parameter (a list, or a dict by name) as the flat vector."""
        if isinstance(parts, dict):
            if set(parts) != set(self.names):
                raise ArgumentError(
                    f"parts: a dict needs exactly the keys {self.names}, "
                    f"got {sorted(parts, key=str)}"
                )
            parts = [parts[n] for n in self.names]
        elif not isinstance(parts, (list, tuple)) or len(parts) != len(self.names):
            raise ArgumentError(
                f"parts: expected a list of {len(self.names)} values or a dict by name, got "
                f"{_kind(parts)}"
            )
        flat = [_real_array(p, f"parts[{k}]").reshape(-1) for k, p in enumerate(parts)]
        for k, (p, n) in enumerate(zip(flat, self.sizes)):
            if p.size != n:
                raise ArgumentError(f"parts[{k}] ({self.names[k]}) has {p.size} values, not {n}")
        return np.concatenate(flat)

    def _vector(self, x, what: str) -> np.ndarray:
        return _flat_vector(x, self.size, what)

    def _evaluate(self, x) -> tuple[float, np.ndarray]:
        x = self._vector(x, "x")
        key = x.tobytes()
        if self._last is None or self._last[0] != key:
            value, *grads = self._value_grad(*self.split(x), *self._fixed)
            self._last = (key, float(value), self.flatten(grads))
        return self._last[1], self._last[2]

    def fun(self, x) -> float:
        """The value of f at the flat parameters ``x``."""
        return self._evaluate(x)[0]

    def jac(self, x) -> np.ndarray:
        """The gradient of f at ``x``, flat (a new array)."""
        return self._evaluate(x)[1].copy()

    def hessp(self, x, p) -> np.ndarray:
        """The Hessian of f at ``x`` times the flat vector ``p``."""
        x, p = self._vector(x, "x"), self._vector(p, "p")
        return self.flatten(self._hvp(*self.split(x), *self._fixed, *self.split(p)))

    def hess(self, x) -> np.ndarray:
        """The Hessian of f at ``x``, ``size`` x ``size``."""
        if self._scalar:
            # Every column at once: the directions are the rows of the identity, as a batch.
            eye = np.eye(self.size)
            columns = self._hvp(*self.split(x), *self._fixed, *eye)
            # Output k over the batch j is (H e_j)[k] = H[k, j]: row k.
            return np.stack([np.asarray(c) for c in columns], axis=0)
        eye = np.eye(self.size)
        return np.stack([self.hessp(x, e) for e in eye], axis=1)

    def _sparse_hessian(self):
        if self._sparse is None:
            from symgrad.sparse import sparse_hessian

            self._sparse = sparse_hessian(self._f, self._wrt, backend=self._value_grad.backend)
        return self._sparse

    @property
    def hess_sparsity(self):
        """The structure of the Hessian (a boolean csr_array), read off the graph."""
        return self._sparse_hessian().pattern

    def sparse_hess(self, x):
        """The Hessian of f at ``x`` as a ``scipy.sparse.csr_array`` of fixed structure."""
        h = self._sparse_hessian()
        return h(**_arguments(self.names, self.split(x), self._fixed_names, self._fixed))


def scipy_objective(f: Expr, wrt, values: dict | None = None, backend: str = "llvm"):
    """``f`` as SciPy's ``fun``, ``jac``, ``hess``, ``hessp`` over the flat vector of ``wrt``.

    ``values`` fixes the graph's other inputs (data). Use as
    ``minimize(obj.fun, x0, jac=obj.jac, hess=obj.hess, method="trust-exact")``, with
    ``hessp=obj.hessp`` (``"trust-ncg"``, ``"Newton-CG"``, ``"trust-krylov"``), or with the
    sparse Hessian, ``hess=obj.sparse_hess`` (``"trust-constr"``).
    """
    return ScipyObjective(f, wrt, values=values, backend=backend)


class ScipyResiduals:
    """``fun(x)`` (the residuals, flat), ``jac(x)`` (their sparse Jacobian) and ``jac_sparsity``
    of ``ys`` over the flat vector of ``wrt``, the graph's other inputs fixed to ``values``.

    >>> import symgrad as sg
    >>> g = sg.Graph(); a, b = g.input("a"), g.input("b")
    >>> r = sg.scipy_residuals([a - 1.0, 10.0 * (b - a**2)], [a, b], backend="numpy")
    >>> r.fun([0.0, 0.0]).tolist(), r.jac([0.0, 0.0]).toarray().tolist()
    ([-1.0, 0.0], [[1.0, 0.0], [0.0, 10.0]])
    """

    def __init__(self, ys, wrt, values: dict | None = None, backend: str = "llvm"):
        from symgrad.sparse import sparse_jacobian

        ys = [ys] if isinstance(ys, Expr) else ys
        if not isinstance(ys, (list, tuple)) or not ys or not all(isinstance(y, Expr) for y in ys):
            raise GradError("scipy_residuals: ys must be an Expr or a non-empty list of Exprs")
        wrt = _checked_wrt(ys[0], wrt, "scipy_residuals")
        self.names = [w.name for w in wrt]
        self.shapes = [w.shape for w in wrt]
        self.size = sum(int(np.prod(s)) for s in self.shapes)
        self.values = _checked_values(values)
        self._residuals = compile(ys, backend=backend)
        reads = self._residuals.inputs
        fixed = _fixed_inputs("scipy_residuals", "ys do", reads, self.names, self.values)
        self._fixed_names, self._fixed = fixed, [self.values[n] for n in fixed]
        self._jac = sparse_jacobian(ys, wrt, backend=backend)
        self.jac_sparsity = self._jac.pattern

    def _split(self, x) -> list:
        return _parts(_flat_vector(x, self.size, "x"), self.shapes)

    def fun(self, x) -> np.ndarray:
        """The residuals at the flat parameters ``x``, one flat vector."""
        args = _arguments(self.names, self._split(x), self._fixed_names, self._fixed)
        read = {n: args[n] for n in self._residuals.inputs}  # a wrt ys do not read: no argument
        return np.concatenate([np.ravel(r) for r in self._residuals(**read)])

    def jac(self, x):
        """The Jacobian of the residuals at ``x``, a ``scipy.sparse.csr_array``."""
        return self._jac(**_arguments(self.names, self._split(x), self._fixed_names, self._fixed))


def scipy_residuals(ys, wrt, values: dict | None = None, backend: str = "llvm"):
    """Residuals ``ys`` as ``scipy.optimize.least_squares``' ``fun`` and sparse ``jac`` over
    the flat vector of ``wrt``: ``least_squares(r.fun, x0, jac=r.jac)`` (SciPy then solves with
    LSMR, for a sparse Jacobian); ``r.jac_sparsity`` is the structure."""
    return ScipyResiduals(ys, wrt, values=values, backend=backend)


def _flat_vector(x, size: int, what: str) -> np.ndarray:
    """``x`` as a float64 vector of ``size`` real numbers (nan and inf pass: f is IEEE)."""
    x = _real_array(x, what)
    if x.shape != (size,):
        raise ArgumentError(
            f"{what} must have shape ({size},): one real number per parameter, got shape {x.shape}"
        )
    return x


def _parts(x: np.ndarray, shapes) -> list:
    """The flat vector ``x`` as one value per parameter of ``shapes`` (floats for scalars)."""
    parts, k = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        parts.append(float(x[k]) if not shape else x[k : k + n].reshape(shape))
        k += n
    return parts


def _fixed_inputs(what: str, who: str, reads, names: list[str], values: dict) -> list[str]:
    """The inputs read besides ``names``: each must have a value, and each value an input."""
    fixed = [n for n in reads if n not in names]
    unknown = sorted(set(values) - set(fixed))
    if unknown:
        raise ArgumentError(f"{what}: values for {unknown} which {who} not use")
    missing = [n for n in fixed if n not in values]
    if missing:
        raise ArgumentError(f"{what}: no value for input {', '.join(missing)}")
    return fixed


def _arguments(names, parts, fixed_names, fixed) -> dict:
    return {**dict(zip(names, parts)), **dict(zip(fixed_names, fixed))}


def _checked_wrt(f: Expr, wrt, what: str = "scipy_objective") -> list[Expr]:
    """``wrt`` as a list of distinct inputs of ``f``'s graph (GradError naming the bad one)."""
    if isinstance(wrt, Expr):
        wrt = [wrt]
    if not isinstance(wrt, (list, tuple)) or not wrt:
        raise GradError(f"{what}: wrt must be a non-empty list of inputs, got {_kind(wrt)}")
    seen: dict[str, int] = {}
    for k, w in enumerate(wrt):
        if not isinstance(w, Expr) or w.graph is not f.graph or w.op != "input":
            raise GradError(f"{what}: wrt[{k}] must be an input of the formula's graph")
        if w.name in seen:
            raise GradError(f"{what}: wrt[{k}] repeats wrt[{seen[w.name]}] ({w.name})")
        seen[w.name] = k
    return list(wrt)


def _checked_values(values) -> dict:
    """The fixed inputs: a dict of name -> real number or array of them (ArgumentError else)."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ArgumentError(
            f"scipy_objective: values must be a dict of name -> value, got {_kind(values)}"
        )
    for name, v in values.items():
        if not isinstance(name, str):
            raise ArgumentError(f"scipy_objective: values: key {name!r} is not an input name")
        _real_array(v, f"values[{name!r}]")
    return dict(values)


def _real_array(v, what: str) -> np.ndarray:
    """``v`` as a float64 array, if it holds real numbers only (no text, complex, objects)."""
    if isinstance(v, (str, bytes)):
        raise ArgumentError(f"{what} must be real numbers, got {_kind(v)}")
    try:
        arr = np.asarray(v)
    except (TypeError, ValueError) as err:  # a ragged list, an object numpy cannot read
        raise ArgumentError(f"{what} must be real numbers, got {_kind(v)} ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise ArgumentError(f"{what} must be real numbers, got {_kind(v)} of dtype {arr.dtype}")
    return arr.astype(np.float64)


def _kind(v) -> str:
    return type(v).__name__


def _fresh(graph, stem: str) -> str:
    name, k = stem, 1
    while name in graph.inputs:
        name, k = f"{stem}_{k}", k + 1
    return name
