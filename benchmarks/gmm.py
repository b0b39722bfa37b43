"""ADBench GMM: the objective's value and gradient in natural tensor form, symgrad vs JAX.

    python -m benchmarks.gmm                                  # the grid below (~8 min)
    python -m benchmarks.gmm --quick                          # a smoke run: two small sizes
    python -m benchmarks.gmm --out benchmarks/RESULTS_gmm.md

Measures, in one process on the same random data of ADBench's shapes (float64 everywhere), the
value and the gradient with respect to (alphas, means, icf) of ADBench's GMM objective: the
log-likelihood of n points x (n, d) under a mixture of K Gaussians with weights softmax(alphas),
means (K, d) and inverse covariance factors icf (K, d(d+1)/2) (the log-diagonal, then the
strictly lower triangle, row by row), plus a Wishart prior (gamma = 1, m = 0). Written as
tensors: x (n, 1, d) - means (1, K, d) is (n, K, d), each point times each of the K triangular
factors is ``einsum("kij,nkj->nki", Ls, xcentered)``, then a logsumexp over K and sums.
ADBench's d in {2, 10, 20, 32, 64}, K in {5, 10, 25, 50, 100, 200} and n in {1,000, 10,000};
a size whose (n, K, d) intermediates have more than ``CAP`` elements is skipped (memory and the
run's time; the report lists them).

Tools: JAX, ``jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))``; symgrad, the same
formula as a graph (``sg.fill_tril``, ``sg.einsum``, ``sg.logsumexp``, ``sg.multigammaln``), its
gradient by ``sg.build_grad`` and value + gradient compiled by ``sg.compile``. Build: symgrad,
graph + gradient + compile (object cache off: cold compiles), split by step; JAX, the first call
(trace + compile + run). Each tool builds a tiny problem first, so no build pays for imports.
Calls: best of ``k`` blocks of calls, each block at least ``block_s``, taken twice with the
tools in turn (the better counts); *cores* is the process's CPU time over the wall time of those
blocks; system time and page faults per call come from ``getrusage`` over one more block. The
value alone (no gradient) is also timed at the largest measured size of each d.
Every value and gradient is checked against JAX's before anything is timed: max |a - b| /
max |b| <= 1e-8 per output; JAX's objective against a numpy transcription (ADBench's loops, one
component at a time) at one small size, and its gradient against central differences of that
transcription along a random direction. The report (markdown) goes to stdout and to ``--out``.
"""

from __future__ import annotations

import os

os.environ["SYMGRAD_CACHE_DIR"] = "off"  # every symgrad build is a cold compile

import gc
import math
import resource
import time
from dataclasses import dataclass, field

import numpy as np

import symgrad as sg
from benchmarks.common import arguments, report, round_robin, software, timing_words
from benchmarks.common import elapsed as _elapsed
from benchmarks.common import ms as _ms
from benchmarks.common import progress as _progress
from benchmarks.common import settings as timing

DS = (2, 10, 20, 32, 64)
KS = (5, 10, 25, 50, 100, 200)
NS = (1_000, 10_000)
QUICK_SIZES = ((1_000, 5, 2), (1_000, 25, 10))  # (n, K, d)
CAP = 20_000_000  # most elements of an (n, K, d) intermediate measured: 160 MB of float64
GAMMA, M = 1.0, 0  # the Wishart prior's constants, as ADBench's
RTOL = 1e-8  # max |a - b| / max |b| allowed between symgrad's outputs and JAX's
CHECK_SIZE = (50, 4, 3)  # (n, K, d) of the check of JAX against the numpy transcription
OUTPUTS = ("value", "alphas", "means", "icf")


def grid() -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """The (n, K, d) sizes measured and those skipped (n * K * d over CAP)."""
    sizes = [(n, k, d) for n in NS for d in DS for k in KS]
    return [s for s in sizes if math.prod(s) <= CAP], [s for s in sizes if math.prod(s) > CAP]


def gmm_data(n: int, k: int, d: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([n, k, d])
    return {
        "x": rng.normal(size=(n, d)),
        "alphas": rng.normal(size=k),
        "means": rng.normal(size=(k, d)),
        "icf": rng.normal(scale=0.1, size=(k, d * (d + 1) // 2)),
    }


def args_of(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return data["alphas"], data["means"], data["icf"]


def wishart_constant(d: int) -> float:
    """ADBench's C: n_ d (log gamma - log(2) / 2) - log Γ_d(n_ / 2), with n_ = d + m + 1,
    written out (lgamma sums) for the numpy transcription."""
    n_ = d + M + 1
    multigammaln = d * (d - 1) / 4 * math.log(math.pi)
    multigammaln += sum(math.lgamma(0.5 * n_ + (1 - j) / 2) for j in range(1, d + 1))
    return n_ * d * (math.log(GAMMA) - 0.5 * math.log(2)) - multigammaln


# --- the model in numpy (the transcription JAX is checked against) -------------------------------


def numpy_objective(x, alphas, means, icf) -> float:
    """ADBench's reference, one component and one point at a time."""
    n, d = x.shape
    k = len(alphas)
    rows, cols = np.tril_indices(d, -1)

    def lse(v):
        top = np.max(v)
        return top + np.log(np.sum(np.exp(v - top)))

    qs, sqnorms, inner = icf[:, :d], [], np.zeros((n, k))
    for j in range(k):
        q = np.exp(qs[j])
        lower = np.zeros((d, d))
        lower[rows, cols] = icf[j, d:]
        sqnorms.append(np.sum(q**2) + np.sum(icf[j, d:] ** 2))
        for i in range(n):
            centered = x[i] - means[j]
            lx = q * centered + lower @ centered
            inner[i, j] = alphas[j] + np.sum(qs[j]) - 0.5 * np.sum(lx**2)
    slse = sum(lse(inner[i]) for i in range(n))
    prior = sum(0.5 * GAMMA**2 * s - M * np.sum(qs[j]) for j, s in enumerate(sqnorms))
    prior -= k * wishart_constant(d)
    return -n * d * 0.5 * math.log(2 * math.pi) + slse - n * lse(alphas) + prior


# --- the model in symgrad ------------------------------------------------------------------------


def symgrad_model(x: np.ndarray, k: int):
    """The inputs (alphas, means, icf) and the objective, a scalar."""
    n, d = x.shape
    g = sg.Graph()
    alphas = g.input("alphas", shape=(k,))
    means = g.input("means", shape=(k, d))
    icf = g.input("icf", shape=(k, d * (d + 1) // 2))
    qs, lower = icf[:, :d], icf[:, d:]
    qdiags = sg.exp(qs)
    sum_qs = sg.sum(qs, axis=1)
    ls = sg.fill_tril(lower, k=-1)  # (K, d, d), strictly lower, row by row
    xcentered = g.const(x).reshape(n, 1, d) - means.reshape(1, k, d)  # (n, K, d)
    lxcentered = qdiags.reshape(1, k, d) * xcentered + sg.einsum("kij,nkj->nki", ls, xcentered)
    sqsum = sg.sum(lxcentered**2, axis=2)  # (n, K)
    inner = alphas + sum_qs - 0.5 * sqsum
    slse = sg.sum(sg.logsumexp(inner, axis=1))
    n_ = d + M + 1
    c = n_ * d * (math.log(GAMMA) - 0.5 * math.log(2)) - sg.multigammaln(g.const(0.5 * n_), d)
    sqnorms = sg.sum(qdiags**2, axis=1) + sg.sum(lower**2, axis=1)
    prior = sg.sum(0.5 * GAMMA**2 * sqnorms - M * sum_qs) - k * c
    objective = -n * d * 0.5 * math.log(2 * math.pi) + slse - n * sg.logsumexp(alphas) + prior
    return (alphas, means, icf), objective


# --- the model in JAX ----------------------------------------------------------------------------


def jax_objective(x: np.ndarray, k: int):
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp, multigammaln

    n, d = x.shape
    x = jnp.asarray(x)
    rows, cols = np.tril_indices(d, -1)  # row by row, as sg.fill_tril

    def objective(alphas, means, icf):
        qs, lower = icf[:, :d], icf[:, d:]
        qdiags = jnp.exp(qs)
        sum_qs = jnp.sum(qs, axis=1)
        ls = jnp.zeros((k, d, d)).at[:, rows, cols].set(lower)
        xcentered = x[:, None, :] - means[None, :, :]
        lxcentered = qdiags[None] * xcentered + jnp.einsum("kij,nkj->nki", ls, xcentered)
        sqsum = jnp.sum(lxcentered**2, axis=2)
        inner = alphas + sum_qs - 0.5 * sqsum
        slse = jnp.sum(logsumexp(inner, axis=1))
        n_ = d + M + 1
        c = n_ * d * (math.log(GAMMA) - 0.5 * math.log(2)) - multigammaln(0.5 * n_, d)
        sqnorms = jnp.sum(qdiags**2, axis=1) + jnp.sum(lower**2, axis=1)
        prior = jnp.sum(0.5 * GAMMA**2 * sqnorms - M * sum_qs) - k * c
        return -n * d * 0.5 * math.log(2 * math.pi) + slse - n * logsumexp(alphas) + prior

    return objective


# --- building ------------------------------------------------------------------------------------


@dataclass
class Built:
    build: float  # seconds
    call: object  # () -> anything: the timed call
    outputs: object  # () -> [value, d alphas, d means, d icf] as numpy
    stages: dict[str, float] = field(default_factory=dict)
    note: str = ""
    time: float | None = None
    cores: float | None = None
    usage: dict[str, float] = field(default_factory=dict)  # per call: user s, sys s, faults
    gaps: dict[str, float] = field(default_factory=dict)
    failed: str = ""
    nodes: int | None = None  # symgrad: nodes of the compiled graph

    @property
    def gap(self) -> float | None:
        return max(self.gaps.values()) if self.gaps else None


def symgrad_build(data: dict, gradient: bool = True) -> Built:
    args, k = args_of(data), len(data["alphas"])
    start = time.perf_counter()
    inputs, objective = symgrad_model(data["x"], k)
    graph = _elapsed(start)
    outputs = [objective, *sg.build_grad(objective, list(inputs))] if gradient else [objective]
    derivative = _elapsed(start) - graph
    fn = sg.compile(outputs, inputs=list(inputs))
    build = _elapsed(start)
    stages = {"graph": graph, "gradient": derivative, "compile": build - graph - derivative}
    built = Built(build, lambda: fn(*args), lambda: list(fn(*args)), stages)
    built.nodes = len(fn.graph.nx)
    return built


def jax_build(data: dict, gradient: bool = True) -> Built:
    import jax

    objective = jax_objective(data["x"], len(data["alphas"]))
    fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)) if gradient else objective)
    args = [jax.device_put(a) for a in args_of(data)]
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    build = _elapsed(start)

    def outputs():
        if not gradient:
            return [np.asarray(fn(*args))]
        value, grads = fn(*args)
        return [np.asarray(value), *(np.asarray(g) for g in grads)]

    return Built(build, lambda: jax.block_until_ready(fn(*args)), outputs)


# --- checks and timing ---------------------------------------------------------------------------


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_jax() -> dict[str, float]:
    """JAX's objective against the numpy transcription at CHECK_SIZE, and its gradient along a
    random direction against central differences of that transcription."""
    import jax

    n, k, d = CHECK_SIZE
    data = gmm_data(n, k, d)
    args = args_of(data)
    value, grads = jax.jit(jax.value_and_grad(jax_objective(data["x"], k), argnums=(0, 1, 2)))(
        *args
    )
    value_gap = relative_gap(value, numpy_objective(data["x"], *args))
    rng = np.random.default_rng(1)
    direction = [rng.normal(size=a.shape) for a in args]
    h = 1e-5
    up = numpy_objective(data["x"], *(a + h * v for a, v in zip(args, direction, strict=True)))
    down = numpy_objective(data["x"], *(a - h * v for a, v in zip(args, direction, strict=True)))
    slope = sum(float(np.sum(np.asarray(g) * v)) for g, v in zip(grads, direction, strict=True))
    fd_gap = relative_gap(slope, (up - down) / (2 * h))
    if value_gap > 1e-12 or fd_gap > 1e-6:
        raise AssertionError(f"JAX's model: value gap {value_gap:.1e}, FD gap {fd_gap:.1e}")
    return {"value": value_gap, "central differences": fd_gap}


def timed(tools: dict[str, Built], settings: dict) -> None:
    """The tools timed round-robin (``common.round_robin``), then each one's system time and
    page faults over a further block of calls."""
    round_robin(tools, settings)
    for built in tools.values():
        if built.time is not None:
            built.usage = usage(built.call, max(1, round(settings["block_s"] / built.time)))


def usage(call, number: int) -> dict[str, float]:
    """User and system CPU seconds and minor page faults per call, over ``number`` calls: of the
    process (every thread: XLA runs JAX's calls on its own threads), and of the calling thread
    (where symgrad's compiled code runs)."""
    who = {"": resource.RUSAGE_SELF, "thread ": resource.RUSAGE_THREAD}
    before = {k: resource.getrusage(w) for k, w in who.items()}
    for _ in range(number):
        call()
    after = {k: resource.getrusage(w) for k, w in who.items()}
    out = {}
    for k in who:
        a, b = after[k], before[k]
        out[k + "user"] = (a.ru_utime - b.ru_utime) / number
        out[k + "sys"] = (a.ru_stime - b.ru_stime) / number
        out[k + "faults"] = (a.ru_minflt - b.ru_minflt) / number
    return out


# --- one size ------------------------------------------------------------------------------------


def run_size(size: tuple[int, int, int], settings: dict, value_alone: bool) -> dict:
    import jax

    n, k, d = size
    label = f"n={n:,} K={k} d={d}"
    data = gmm_data(n, k, d)
    tools = {"JAX": jax_build(data), "symgrad": symgrad_build(data)}
    _progress(
        f"{label}: JAX build {tools['JAX'].build:.2f} s, symgrad {tools['symgrad'].build:.2f} s "
        f"{ {s: round(t, 3) for s, t in tools['symgrad'].stages.items()} }"
    )
    # Every output checked before anything is timed.
    reference = tools["JAX"].outputs()
    built = tools["symgrad"]
    built.gaps = {
        name: relative_gap(a, b)
        for name, a, b in zip(OUTPUTS, built.outputs(), reference, strict=True)
    }
    if not built.gap <= RTOL:
        built.failed = f"outputs differ from JAX's: gap {built.gap:.1e}; not timed"
        _progress(f"{label}: symgrad CHECK FAILED, gaps {built.gaps}")
    if value_alone:
        tools["JAX value"] = jax_build(data, gradient=False)
        tools["symgrad value"] = symgrad_build(data, gradient=False)
        gap = relative_gap(tools["symgrad value"].outputs()[0], reference[0])
        tools["symgrad value"].gaps = {"value": gap}
        if not gap <= RTOL:
            tools["symgrad value"].failed = f"value differs from JAX's: gap {gap:.1e}"
    timed(tools, settings)
    _progress(f"{label}: " + ", ".join(f"{t} {_ms(b.time)} ms" for t, b in tools.items()))
    del data, reference
    jax.clear_caches()
    gc.collect()
    return tools


def warm_up() -> None:
    """A tiny build and call of each tool: imports and first-use costs out of the timings."""
    data = gmm_data(10, 2, 2)
    for make in (jax_build, symgrad_build):
        make(data).outputs()


# --- the report ----------------------------------------------------------------------------------


def _ratio(b: Built | None, ref: Built | None) -> float | None:
    if b is None or ref is None or b.time is None or ref.time is None:
        return None
    return b.time / ref.time


def summary(results: dict[tuple, dict]) -> list[str]:
    lines = [
        "| n | K | d | n·K·d | JAX call ms | symgrad call ms | symgrad ÷ JAX | gap to JAX "
        "| target (≤ JAX) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (n, k, d), tools in results.items():
        s, j = tools["symgrad"], tools["JAX"]
        ratio = _ratio(s, j)
        target = "not timed" if ratio is None else ("met" if ratio <= 1 else "**missed**")
        gap = "—" if s.gap is None else f"{s.gap:.1e}"
        lines.append(
            f"| {n:,} | {k} | {d} | {n * k * d:,} | {_ms(j.time)} | {_ms(s.time)} | "
            f"{'' if ratio is None else f'{ratio:.2f}'} | {gap} | {target} |"
        )
    return lines


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f}"


def table(results: dict[tuple, dict]) -> list[str]:
    lines = [
        "| n | K | d | JAX first call s | symgrad build s | graph s | gradient s | compile s "
        "| JAX call ms | symgrad call ms | ÷ JAX | cores JAX / symgrad | process system ms per "
        "call JAX / symgrad | process page faults per call JAX / symgrad "
        "| gap: value, alphas, means, icf | notes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for (n, k, d), tools in results.items():
        s, j = tools["symgrad"], tools["JAX"]
        ratio = _ratio(s, j)
        gaps = ", ".join(f"{s.gaps[o]:.0e}" for o in OUTPUTS)
        cores = f"{j.cores:.2f} / {s.cores:.2f}" if None not in (j.cores, s.cores) else ""
        system = faults = ""
        if j.usage and s.usage:
            system = f"{j.usage['sys'] * 1e3:.1f} / {s.usage['sys'] * 1e3:.1f}"
            faults = f"{j.usage['faults']:,.0f} / {s.usage['faults']:,.0f}"
        note = "; ".join(x for x in (f"{s.nodes} nodes compiled", s.failed) if x)
        lines.append(
            f"| {n:,} | {k} | {d} | {j.build:.2f} | {s.build:.2f} | {_s(s.stages['graph'])} | "
            f"{_s(s.stages['gradient'])} | {_s(s.stages['compile'])} | {_ms(j.time)} | "
            f"{_ms(s.time)} | {'' if ratio is None else f'{ratio:.2f}'} | {cores} | {system} | "
            f"{faults} | {gaps} | {note} |"
        )
    return lines


def time_split(tools: dict) -> dict[str, float] | None:
    """Value alone against value + gradient: each tool's ratio, and symgrad ÷ JAX for the value
    and for the gradient part (value + gradient − value)."""
    times = [tools[t].time for t in ("JAX value", "JAX", "symgrad value", "symgrad")]
    if None in times:
        return None
    jv, j, sv, s = times
    gradient = (s - sv) / (j - jv)
    return {"jax vg/v": j / jv, "sg vg/v": s / sv, "value": sv / jv, "gradient": gradient}


def value_table(results: dict[tuple, dict]) -> list[str]:
    lines = [
        "| n | K | d | JAX value ms | JAX value + gradient ms | ÷ value | symgrad value ms "
        "| symgrad value + gradient ms | ÷ value | value: symgrad ÷ JAX "
        "| gradient part: symgrad ÷ JAX |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (n, k, d), tools in results.items():
        if "JAX value" not in tools:
            continue
        jv, j, sv, s = tools["JAX value"], tools["JAX"], tools["symgrad value"], tools["symgrad"]
        x = time_split(tools) or {}
        r = [f"{x[c]:.2f}" if c in x else "" for c in ("jax vg/v", "sg vg/v", "value", "gradient")]
        lines.append(
            f"| {n:,} | {k} | {d} | {_ms(jv.time)} | {_ms(j.time)} | {r[0]} | {_ms(sv.time)} | "
            f"{_ms(s.time)} | {r[1]} | {r[2]} | {r[3]} |"
        )
    return lines


def _size(size: tuple[int, int, int]) -> str:
    n, k, d = size
    return f"(n={n:,}, K={k}, d={d})"


VARIATION_NOTE = (
    "Run to run: an earlier full run of this script (symgrad at commit b8e1ec0 with uncommitted "
    "changes of other work in symgrad/) measured (n=10,000, K=5, d=10) at 8.66 against 7.69 "
    "ms, 1.13× (missed; every other size met, 0.14-0.97×). Timed again right after, in two "
    "processes of three rounds each (one pinned to one core) and in one process running sizes "
    "in the full run's order, that size gave symgrad 5.0-6.6 ms against JAX 7.1-10.4 ms "
    "(0.53-0.77×). On this shared machine a single size's ratio moves by that much between runs."
)


def notes(results: dict[tuple, dict], skipped: list[tuple]) -> list[str]:
    """What the numbers say, computed from them."""
    lines = ["## Notes", ""]
    ratios = {
        size: _ratio(t["symgrad"], t["JAX"])
        for size, t in results.items()
        if _ratio(t["symgrad"], t["JAX"]) is not None
    }
    slower = {s: r for s, r in ratios.items() if r > 1}
    untimed = [s for s in results if s not in ratios]
    if ratios:
        best, worst = min(ratios, key=ratios.get), max(ratios, key=ratios.get)
        geo = math.exp(sum(math.log(r) for r in ratios.values()) / len(ratios))
        lines.append(
            f"- Target (symgrad's value + gradient at least as fast as JAX's): met at "
            f"{len(ratios) - len(slower)} of {len(results)} sizes measured"
            + (f", missed at {len(slower)}" if slower else "")
            + (f", not timed at {len(untimed)}" if untimed else "")
            + f". symgrad ÷ JAX ranges from {ratios[best]:.2f} at {_size(best)} to "
            f"{ratios[worst]:.2f} at {_size(worst)} (geometric mean {geo:.2f})."
        )
    if slower:
        lines.append(
            "- symgrad is **slower** than JAX at: "
            + ", ".join(f"{_size(s)} ({r:.2f}×)" for s, r in sorted(slower.items()))
            + "."
        )
    by_d = {}
    for (_, _, d), r in ratios.items():
        by_d.setdefault(d, []).append(r)
    if by_d:
        lines.append(
            "- By d, symgrad ÷ JAX (min-max over n and K): "
            + "; ".join(f"d = {d}: {min(r):.2f}-{max(r):.2f}" for d, r in sorted(by_d.items()))
            + ". The work per call is n·K·d² for the einsum and its adjoint, n·K·d for the rest."
        )
    small = sorted((s for s in ratios if math.prod(s) <= 100_000), key=math.prod)
    if small:
        lines.append(
            "- At the smallest sizes (n·K·d ≤ 100,000): "
            + ", ".join(
                f"{_size(s)} {_ms(results[s]['symgrad'].time)} against "
                f"{_ms(results[s]['JAX'].time)} ms ({ratios[s]:.2f}×)"
                for s in small[:3]
            )
            + " (symgrad against JAX)."
        )
    values = {size: t for size, t in results.items() if "JAX value" in t}
    split = {size: time_split(t) for size, t in values.items()}
    split = {size: x for size, x in split.items() if x is not None}
    if split:
        lines.append(
            "- Where the time goes (the value alone timed at the largest measured size of "
            "each d; *gradient part* = value + gradient − value): "
            + "; ".join(
                f"{_size(size)}: value {x['value']:.2f}× JAX's, gradient part "
                f"{x['gradient']:.2f}× JAX's, value + gradient {x['sg vg/v']:.1f}× the value "
                f"in symgrad and {x['jax vg/v']:.1f}× in JAX"
                for size, x in split.items()
            )
            + "."
        )
    cores = {
        tool: [t[tool].cores for t in results.values() if t[tool].cores is not None]
        for tool in ("JAX", "symgrad")
    }
    busy = {size: t["JAX"].usage for size, t in results.items() if t["JAX"].usage}
    busy = {size: u for size, u in busy.items() if math.prod(size) >= 1_000_000}
    if busy:
        shares = [u["sys"] / (u["user"] + u["sys"]) for u in busy.values() if u["user"] + u["sys"]]
        faults = [u["faults"] for u in busy.values()]
        mine = [t["symgrad"].usage for t in results.values() if t["symgrad"].usage]
        lines.append(
            f"- System time: at the {len(busy)} sizes with n·K·d ≥ 1,000,000, "
            f"{min(shares):.0%}-{max(shares):.0%} of JAX's CPU time per call is spent in the "
            f"kernel, with {min(faults):,.0f}-{max(faults):,.0f} minor page faults per call "
            f"({min(faults) * 4096 / 1e6:,.0f}-{max(faults) * 4096 / 1e6:,.0f} MB of 4 KiB "
            "pages touched for the first time: XLA's buffers for the (n, K, d) intermediates "
            "are freshly mapped memory at every call). symgrad's calls, on the calling thread "
            f"where its compiled code runs: at most {max(u['thread sys'] for u in mine) * 1e3:.1f}"
            f" ms of system time and {max(u['thread faults'] for u in mine):,.0f} page faults "
            "per call at any size (its buffers are reused); the process's system time during "
            f"its calls (up to {max(u['sys'] for u in mine) * 1e3:.0f} ms per call, with "
            f"{max(u['faults'] for u in mine):,.0f} faults) is other threads', JAX's runtime "
            "living in the same process."
        )
    if cores["JAX"] and cores["symgrad"]:
        lines.append(
            "- Cores used (CPU time ÷ wall time over the timed blocks of value + gradient): "
            + "; ".join(f"{tool} {min(c):.2f}-{max(c):.2f}" for tool, c in cores.items())
            + (
                ": neither used more than one core (symgrad's compiled call runs on one "
                "thread here; XLA's CPU code for this graph did not use a second core); below "
                "1 where other jobs took the CPU."
                if max(max(c) for c in cores.values()) < 1.2
                else (
                    ". Over 1.2: "
                    + ", ".join(
                        f"{tool} at {sum(c > 1.2 for c in cs)} sizes" for tool, cs in cores.items()
                    )
                    + "; XLA's thread pool took the second core when the other jobs on "
                    "the machine left it free; symgrad's compiled call runs on one thread "
                    "(below 1: other jobs took the CPU). The ratios above are wall times."
                )
            )
        )
    builds_s = [t["symgrad"].build for t in results.values()]
    builds_j = [t["JAX"].build for t in results.values()]
    compiles = [t["symgrad"].stages["compile"] for t in results.values()]
    graphs = [
        t["symgrad"].stages["graph"] + t["symgrad"].stages["gradient"] for t in results.values()
    ]
    nodes = [t["symgrad"].nodes for t in results.values()]
    lines.append(
        f"- Build: symgrad {min(builds_s):.2f}-{max(builds_s):.2f} s (of which the compile "
        f"{min(compiles):.2f}-{max(compiles):.2f} s; graph and gradient at most "
        f"{max(graphs) * 1e3:.0f} ms: {min(nodes)}-{max(nodes)} nodes compiled at every "
        "size, the shapes change, not the graph); JAX's first call "
        f"{min(builds_j):.2f}-{max(builds_j):.2f} s (trace, XLA compile, one run)."
    )
    if skipped:
        lines.append(
            f"- Skipped ({len(skipped)} sizes, n·K·d > {CAP:,}: each (n, K, d) intermediate "
            f"over {CAP * 8 / 1e6:.0f} MB of float64, several alive at once in both tools' "
            "value + gradient, and over ~1 s per call of JAX's: kept out to bound memory and "
            "the run's time): " + ", ".join(_size(s) for s in skipped) + "."
        )
    lines.append(
        "- The strictly lower triangle of each L is filled row by row from icf[:, d:] "
        "(`sg.fill_tril(icf[:, d:], k=-1)`; in JAX `.at[:, rows, cols].set` with "
        "`numpy.tril_indices(d, -1)`), where ADBench fills it column by column. With random "
        "icf this is the same function in both tools (and in the numpy check), not ADBench's "
        "parametrisation of a given icf."
    )
    return lines


def header(settings: dict) -> list[str]:

    return [
        "# ADBench GMM: value + gradient in natural tensor form, symgrad against JAX",
        "",
        f"{software()}, shared with other jobs, so the times are indicative; both tools ran in "
        "one process on the same data, so the ratios are the measure. Generated by "
        f"`python -m benchmarks.gmm{' --quick' if settings['quick'] else ''}`.",
        "",
        "Model: ADBench's GMM objective (log-likelihood of n points under K Gaussians, with "
        "a Wishart prior, gamma = 1, m = 0), on random data of ADBench's shapes (x, means, "
        "alphas ~ N(0, 1), icf ~ N(0, 0.1²)); the gradient is with respect to alphas (K), "
        "means (K, d) and icf (K, d(d+1)/2). Both tools write it as tensors: xcentered = "
        'x[:, None] − means[None] (n, K, d), `einsum("kij,nkj->nki", Ls, xcentered)`, '
        "logsumexp over K. JAX: `jax.jit(jax.value_and_grad(objective, argnums=(0, 1, 2)))`; "
        "symgrad: `sg.build_grad` and `sg.compile` of value and gradients. Build: symgrad, "
        "graph + gradient + compile (object cache off: a cold compile); JAX, the first call "
        f"(trace, compile, run). {timing_words(settings)}; *gap* is the largest of the four. "
        "*cores*: CPU time ÷ wall time of the "
        "timed blocks; *process system ms* and *page faults* per call from `getrusage` "
        "(every thread of the process) over a further block of calls.",
    ]


def main(argv=None) -> None:
    args = arguments(__doc__, "two small sizes, fewer repeats", argv)
    settings = timing(args.quick, 2)
    sizes, skipped = (list(QUICK_SIZES), []) if args.quick else grid()
    largest = {}  # d -> the largest measured size of that d: the value alone is timed there
    for size in sizes:
        if math.prod(size) >= math.prod(largest.get(size[2], (0,))):
            largest[size[2]] = size
    warm_up()
    start = time.perf_counter()
    checks = check_jax()
    results = {}
    for size in sizes:
        results[size] = run_size(size, settings, value_alone=size in largest.values())
    lines = header(settings) + ["", "## Summary", "", *summary(results)]
    lines += ["", "## Every size", "", *table(results), ""]
    lines.append(
        f"JAX's objective checked at (n, K, d) = {CHECK_SIZE} against a numpy transcription "
        f"(ADBench's loops): value gap {checks['value']:.1e}; its gradient along a random "
        f"direction against central differences (h = 1e-5): {checks['central differences']:.1e}."
        f" Whole run: {_elapsed(start):.0f} s."
    )
    lines += ["", "## The value alone", "", *value_table(results)]
    lines += ["", *notes(results, skipped), "", VARIATION_NOTE]
    report(lines, args.out)


if __name__ == "__main__":
    main()
