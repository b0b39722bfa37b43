"""Sparse derivatives: ``sg.sparse_hessian`` and ``sg.sparse_jacobian`` against CasADi and JAX.

    python -m benchmarks.sparse                                # n = 1,000 to 100,000 (~75 s)
    python -m benchmarks.sparse --quick                        # a smoke run: n = 1,000 only
    python -m benchmarks.sparse --out benchmarks/RESULTS_sparse.md

Measures, in one process on the same data (float64 everywhere):
  (1) the Hessian of the chained Rosenbrock function of one vector x of n elements,
      f = sum(100 (x[1:] - x[:-1]^2)^2 + (1 - x[:-1])^2), tridiagonal: 3n - 2 nonzeros;
  (2) the Jacobian with respect to u of the residual of one implicit step of a 1-D heat equation
      with a source, r(u) = u[1:-1] - u_old[1:-1] - c (u[2:] - 2 u[1:-1] + u[:-2])
      - dt exp(-u[1:-1]): (n - 2) x n, 3 (n - 2) nonzeros.
Tools: symgrad (``sparse_hessian`` / ``sparse_jacobian``, LLVM, object cache off, so every build
is a cold compile); CasADi on SX (``ca.hessian`` / ``ca.jacobian``, sparse, in a
``ca.Function`` evaluated by CasADi's SX virtual machine, no code generation); JAX (``jit`` of
the dense ``jax.hessian`` / ``jax.jacfwd``), only up to ``--jax-max-n`` (the dense matrix of
n = 100,000 would be 80 GB).
Build: symgrad, graph + ``sparse_*`` (sparsity, colouring, sweeps, compile); CasADi, the SX
expression + ``hessian``/``jacobian`` + ``Function``; JAX, the first call (trace + compile +
run). Each tool builds a tiny problem first, so no build pays for imports or initialization.
Calls: best of ``k`` blocks of calls, each block at least ``block_s``; two per tool, the data
(symgrad ``.values(x)``, the CasADi ``DM`` of ``fn(x)``, JAX's dense array) and a scipy sparse
matrix (symgrad ``H(x)``, a ``csr_array``; CasADi ``fn(x).sparse()``, a CSC matrix).
Every result is checked before timing: the structure (3n - 2, resp. 3 (n - 2) nonzeros, and
CasADi's pattern equal to symgrad's) and the values, max |a - b| / max |b| <= 1e-8 against
symgrad's at the same point. symgrad's build is also split into its steps (gradient, sparsity,
colouring, compile), timed inside the build by wrapping the functions ``symgrad.sparse`` calls
for them. The report (markdown) goes to stdout and to ``--out``; ADBench's hand tracking
(problem 3 of the brief) is not measured, and the report says why.
"""

from __future__ import annotations

import os

os.environ["SYMGRAD_CACHE_DIR"] = "off"  # every symgrad build is a cold compile

import argparse
import gc
import platform
import time
from dataclasses import dataclass, field

import numpy as np
import scipy
import scipy.sparse as sparse

import symgrad as sg
import symgrad.sparse as sg_sparse
from benchmarks.common import best_of, report, timed_stages
from benchmarks.common import cpu_name as _cpu
from benchmarks.common import elapsed as _elapsed
from benchmarks.common import ms as _ms
from benchmarks.common import progress as _progress
from benchmarks.run import symgrad_commit

SIZES = (1_000, 10_000, 100_000)
JAX_MAX_N = 10_000  # the dense n x n float64 matrix: 8 MB at 1,000, 800 MB at 10,000
HEAT_C, HEAT_DT = 0.5, 1e-3
RTOL = 1e-8  # max |a - b| / max |b| allowed between tools
SKIPPED = [
    "## 3. ADBench hand tracking (simple), Jacobian by forward mode: not measured",
    "",
    "Skipped: its Jacobian (residuals by 26 pose parameters) is dense, every residual reads the "
    "global rotation and translation, so it is no sparse-derivative problem (a colouring would "
    'give 26 colours, one per column: `sg.jacobian(mode="forward")` territory), and '
    "ADBench's hand model files are neither in the repository nor on the machine.",
]


# --- the problems, written once for every tool ---------------------------------------------------


def rosenbrock_terms(x):
    return 100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2


def heat_residual(u, u_old, exp):
    laplace = u[2:] - 2.0 * u[1:-1] + u[:-2]
    return u[1:-1] - u_old[1:-1] - HEAT_C * laplace - HEAT_DT * exp(-u[1:-1])


def point(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "x": rng.uniform(-2.0, 2.0, n),
        "u": rng.uniform(-1.0, 1.0, n),
        "u_old": rng.uniform(-1.0, 1.0, n),
    }


# --- one tool's build of one problem --------------------------------------------------------------


@dataclass
class Built:
    """A tool's derivative of one problem: build seconds, the calls to time, what is checked."""

    build: float
    data: object  # () -> the raw result (values, DM, dense array)
    matrix: object | None  # () -> a scipy sparse matrix, if the tool gives one
    nnz: int
    colors: str = ""
    note: str = ""
    times: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)


# The steps of a symgrad build, timed inside the build itself: the functions symgrad.sparse calls
# for them are wrapped with timers for the duration of the build (and put back afterwards). A
# call made inside another timed one (the distance-2 fallback of the star colouring) counts for
# the outer one only. A name symgrad.sparse does not have is skipped.
STAGES = {
    "gradient_copy": "gradient",
    "dependencies": "sparsity",
    "color_columns": "colouring",
    "_hessian_colors": "colouring",
    "compile_outputs": "compile",
}


def stage_timer():
    return timed_stages(sg_sparse, STAGES)


def symgrad_hessian(n: int, x0: np.ndarray) -> Built:
    with stage_timer() as stages:
        start = time.perf_counter()
        g = sg.Graph()
        x = g.input("x", shape=(n,))
        H = sg.sparse_hessian(sg.sum(rosenbrock_terms(x)), [x])
        build = _elapsed(start)
    return Built(
        build, lambda: H.values(x0), lambda: H(x0), H.nnz, str(H.colors), H.mode, stages=stages
    )


def symgrad_jacobian(n: int, u0: np.ndarray, old: np.ndarray) -> Built:
    with stage_timer() as stages:
        start = time.perf_counter()
        g = sg.Graph()
        u, u_old = g.input("u", shape=(n,)), g.input("u_old", shape=(n,))
        J = sg.sparse_jacobian([heat_residual(u, u_old, sg.exp)], [u])
        build = _elapsed(start)
    return Built(
        build,
        lambda: J.values(u0, old),
        lambda: J(u0, old),
        J.nnz,
        str(J.colors),
        J.mode,
        stages=stages,
    )


def casadi_hessian(n: int, x0: np.ndarray) -> Built:
    import casadi as ca

    start = time.perf_counter()
    x = ca.SX.sym("x", n)
    H = ca.hessian(ca.sum1(rosenbrock_terms(x)), x)[0]
    fn = ca.Function("h", [x], [H])
    build = _elapsed(start)
    return Built(build, lambda: fn(x0), lambda: fn(x0).sparse(), H.nnz(), "", "SX VM")


def casadi_jacobian(n: int, u0: np.ndarray, old: np.ndarray) -> Built:
    import casadi as ca

    start = time.perf_counter()
    u, u_old = ca.SX.sym("u", n), ca.SX.sym("u_old", n)
    J = ca.jacobian(heat_residual(u, u_old, ca.exp), u)
    fn = ca.Function("j", [u, u_old], [J])
    build = _elapsed(start)
    return Built(build, lambda: fn(u0, old), lambda: fn(u0, old).sparse(), J.nnz(), "", "SX VM")


def jax_hessian(n: int, x0: np.ndarray) -> Built:
    import jax
    import jax.numpy as jnp

    fn = jax.jit(jax.hessian(lambda x: jnp.sum(rosenbrock_terms(x))))
    xj = jax.device_put(x0)
    start = time.perf_counter()
    jax.block_until_ready(fn(xj))
    build = _elapsed(start)
    return Built(build, lambda: jax.block_until_ready(fn(xj)), None, n * n, "", "dense")


def jax_jacobian(n: int, u0: np.ndarray, old: np.ndarray) -> Built:
    import jax
    import jax.numpy as jnp

    fn = jax.jit(jax.jacfwd(lambda u, v: heat_residual(u, v, jnp.exp)))
    uj, vj = jax.device_put(u0), jax.device_put(old)
    start = time.perf_counter()
    jax.block_until_ready(fn(uj, vj))
    build = _elapsed(start)
    return Built(build, lambda: jax.block_until_ready(fn(uj, vj)), None, (n - 2) * n, "", "dense")


# --- checks ---------------------------------------------------------------------------------------


def _relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_sparse(ours: sparse.csr_array, theirs, what: str) -> float:
    """CasADi's matrix against symgrad's: the same structure, values within RTOL."""
    theirs = sparse.csr_array(theirs)
    theirs.sort_indices()
    ours.sort_indices()
    same = np.array_equal(ours.indptr, theirs.indptr) and np.array_equal(
        ours.indices, theirs.indices
    )
    if not same:
        raise AssertionError(f"{what}: the sparsity pattern differs from symgrad's")
    gap = _relative_gap(theirs.data, ours.data)
    if gap > RTOL:
        raise AssertionError(f"{what}: relative gap {gap:.1e} to symgrad")
    return gap


def check_dense(ours: sparse.csr_array, dense: np.ndarray, what: str) -> float:
    """A dense matrix against symgrad's: equal on its entries, zero everywhere else."""
    rows = np.repeat(np.arange(ours.shape[0]), np.diff(ours.indptr))
    on = dense[rows, ours.indices]
    gap = _relative_gap(on, ours.data)
    off = float(np.abs(dense).sum() - np.abs(on).sum())
    if gap > RTOL or off > RTOL * float(np.abs(ours.data).max()):
        raise AssertionError(f"{what}: relative gap {gap:.1e}, {off:.1e} outside the pattern")
    return gap


# --- timing ---------------------------------------------------------------------------------------


def time_calls(built: Built, repeats: int, block_s: float) -> None:
    built.times["data"] = best_of(built.data, repeats, block_s)
    if built.matrix is not None:
        built.times["matrix"] = best_of(built.matrix, repeats, block_s)


# --- one problem at one size ----------------------------------------------------------------------


def fastest(make, builds: int) -> Built:
    """The fastest of ``builds`` builds (each from scratch); the others are dropped."""
    best = None
    for _ in range(builds):
        built = make()
        best = built if best is None or built.build < best.build else best
        gc.collect()
    return best


def run_case(what: str, makers: dict, nnz: int, n: int, settings: dict) -> dict:
    """Build every tool (JAX only up to ``jax_max``), check against symgrad, then time."""
    tools = {
        name: fastest(make, settings["builds"])
        for name, make in makers.items()
        if name != "JAX" or n <= settings["jax_max"]
    }
    ours = tools["symgrad"].matrix()
    if ours.nnz != nnz:
        raise AssertionError(f"{what} n={n}: symgrad has {ours.nnz} nonzeros, not {nnz}")
    gaps = {"CasADi": check_sparse(ours, tools["CasADi"].matrix(), f"{what} CasADi n={n}")}
    if "JAX" in tools:
        gaps["JAX"] = check_dense(ours, np.asarray(tools["JAX"].data()), f"{what} JAX n={n}")
    for built in tools.values():
        time_calls(built, settings["repeats"], settings["block_s"])
    _progress(
        f"{what} n={n}: "
        + ", ".join(f"{k} {v.build:.2f} s {v.times} {v.stages}" for k, v in tools.items())
    )
    return {"tools": tools, "gaps": gaps}


def hessian_case(n: int, settings: dict) -> dict:
    x0 = point(n)["x"]
    makers = {
        "symgrad": lambda: symgrad_hessian(n, x0),
        "CasADi": lambda: casadi_hessian(n, x0),
        "JAX": lambda: jax_hessian(n, x0),
    }
    return run_case("Rosenbrock Hessian", makers, 3 * n - 2, n, settings)


def jacobian_case(n: int, settings: dict) -> dict:
    p = point(n)
    u0, old = p["u"], p["u_old"]
    makers = {
        "symgrad": lambda: symgrad_jacobian(n, u0, old),
        "CasADi": lambda: casadi_jacobian(n, u0, old),
        "JAX": lambda: jax_jacobian(n, u0, old),
    }
    return run_case("heat Jacobian", makers, 3 * (n - 2), n, settings)


def warm_up() -> None:
    """A tiny build and call of every tool: imports and first-use costs out of the timings."""
    p = point(8)
    hessians = [make(8, p["x"]) for make in (symgrad_hessian, casadi_hessian, jax_hessian)]
    jacobians = [
        make(8, p["u"], p["u_old"]) for make in (symgrad_jacobian, casadi_jacobian, jax_jacobian)
    ]
    for built in hessians + jacobians:
        built.data()
        if built.matrix is not None:
            built.matrix()


# --- the report -----------------------------------------------------------------------------------


def table(title: str, cases: dict[int, dict], jax_max: int) -> list[str]:
    lines = [
        f"## {title}",
        "",
        "| n | tool | build s | call ms: data | call ms: scipy matrix | nnz | colours "
        "| gap to symgrad | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, case in cases.items():
        for name, b in case["tools"].items():
            gap = case["gaps"].get(name)
            lines.append(
                f"| {n:,} | {name} | {b.build:.3f} | {_ms(b.times['data'])} | "
                f"{_ms(b.times.get('matrix'))} | {b.nnz:,} | {b.colors or '—'} | "
                f"{'—' if gap is None else f'{gap:.1e}'} | {b.note} |"
            )
        if "JAX" not in case["tools"]:
            lines.append(
                f"| {n:,} | JAX | skipped | | | | | | dense {n:,}² float64 = "
                f"{n * n * 8 / 1e9:,.0f} GB (> --jax-max-n {jax_max:,}) |"
            )
    return lines


def stages_table(cases: dict[int, dict], note: str) -> list[str]:
    names = list(dict.fromkeys(STAGES.values()))
    lines = [
        "",
        f"symgrad's build (the fastest) by step, timed inside it ({note}):",
        "",
        "| n | build s | " + " | ".join(f"{k} s" for k in names) + " | rest s |",
        "|---:|---:|" + "---:|" * (len(names) + 1),
    ]
    for n, case in cases.items():
        built = case["tools"]["symgrad"]
        rest = built.build - sum(built.stages.values())
        cells = [f"{built.stages[k]:.3f}" for k in names]
        lines.append(f"| {n:,} | {built.build:.3f} | " + " | ".join(cells) + f" | {rest:.3f} |")
    n, built = max(cases.items())[0], max(cases.items())[1]["tools"]["symgrad"]
    share = built.stages["colouring"] / built.build
    lines += ["", f"At n = {n:,} the colouring is {share:.0%} of symgrad's build."]
    return lines


def header(settings: dict) -> list[str]:
    import casadi
    import jax

    return [
        "# Sparse derivatives: symgrad against CasADi and JAX",
        "",
        f"symgrad {sg.__version__}, CasADi {casadi.__version__}, JAX {jax.__version__} (CPU, "
        f"float64), numpy {np.__version__}, scipy {scipy.__version__}, Python "
        f"{platform.python_version()}; {os.cpu_count()} cores ({_cpu()}), shared with other "
        "jobs, so the times are indicative. Generated by `python -m benchmarks.sparse` at "
        f"symgrad commit {symgrad_commit()}.",
        "",
        "Build: symgrad, graph + `sg.sparse_hessian`/`sg.sparse_jacobian` (sparsity, colouring, "
        "sweeps, compile; object cache off, so a cold compile); CasADi, SX expression + "
        "`ca.hessian`/`ca.jacobian` + `ca.Function`; JAX, the first call of the `jit` (trace, "
        f"compile, run); each the fastest of {settings['builds']} build(s) from scratch. Calls: "
        f"per call, the best of {settings['repeats']} blocks of calls of at least "
        f"{settings['block_s'] * 1e3:.0f} ms each. *data*: symgrad `H.values(x)` "
        "(numpy array of the nonzeros), CasADi `fn(x)` (a `DM`, evaluated by the SX virtual "
        "machine, no code generation), JAX the dense matrix; *scipy matrix*: symgrad `H(x)` "
        "(`csr_array`), CasADi `fn(x).sparse()` (CSC). *gap to symgrad*: max |a − b| / max |b| "
        "at the same random point, checked ≤ 1e-8 before timing (and CasADi's sparsity pattern "
        "equal to symgrad's, JAX's dense matrix zero outside it).",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1,000 only, fewer repeats")
    parser.add_argument(
        "--jax-max-n", type=int, default=JAX_MAX_N, help="largest n for JAX's dense derivatives"
    )
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    sizes = SIZES[:1] if args.quick else SIZES
    settings = {
        "jax_max": args.jax_max_n,
        "builds": 1 if args.quick else 2,
        "repeats": 3 if args.quick else 7,
        "block_s": 0.02 if args.quick else 0.1,
    }
    warm_up()
    hessians, jacobians = {}, {}
    for n in sizes:
        hessians[n] = hessian_case(n, settings)
        jacobians[n] = jacobian_case(n, settings)
    lines = header(settings) + [""]
    lines += table(
        "1. Chained Rosenbrock, Hessian (one vector input, 3n − 2 nonzeros)",
        hessians,
        args.jax_max_n,
    )
    lines += stages_table(hessians, "colouring: star, distance-2 as fallback") + [""]
    lines += table(
        "2. Heat equation implicit step, Jacobian of the residual (3 (n − 2) nonzeros)",
        jacobians,
        args.jax_max_n,
    )
    lines += stages_table(jacobians, 'no gradient; mode="auto" colours the columns and the rows')
    lines += ["", *SKIPPED]
    report(lines, args.out)


if __name__ == "__main__":
    main()
