"""ADBench hand tracking ("simple"): the dense 3N x 26 Jacobian by forward mode, symgrad vs JAX.

    python -m benchmarks.hand                                  # N = 100 to 10,000 (~5 min)
    python -m benchmarks.hand --quick                          # a smoke run: N = 100 only
    python -m benchmarks.hand --out benchmarks/RESULTS_hand.md

Measures, in one process on the same random data of ADBench's shapes (ADBench's model files are
not on this machine; float64 everywhere), the Jacobian of the hand-tracking residual
err = points - positions[:, correspondences] (3 x N) with respect to the 26 pose parameters theta,
for N = 100, 400, 1,600, 3,200 and 10,000 correspondences: 22 bones, 544 vertices, pose
parameters from theta as ADBench's ``to_pose_params``, per bone relative = base_relative @
euler(pose), absolutes down the bone tree, transforms = absolutes @ inverse_base_absolutes, linear
blend skinning with 22 x 544 weights, then the global Rodrigues rotation (the plain formula: no
small-angle fallback, the random angle is far from 0), scale and translation.

Tools: JAX, ``jax.jit(jax.jacfwd(objective))`` (positions of the 544 vertices, then an index
gather of the N corresponded ones); symgrad, with theta one input of shape (26,), in two forms of
the selection of corresponded columns: *take* (``positions[:, correspondences]``, a ``take`` op:
the gather JAX does) and *pre-gathered* (the constant data, base positions and weights, indexed
by the correspondences in numpy before the graph is built, so the skinning runs on the N
corresponded vertices: the same function, the form used before symgrad had ``take``), and three
ways to get the Jacobian: (a) ``sg.jacobian([err], [theta], mode="forward")`` (one entry
of shape (3, N, 26), compiled with ``sg.compile``), (b) ``sg.sparse_jacobian(...,
mode="forward")`` and ``.values(theta)`` (the pattern is dense but for the translation columns,
which reach only their coordinate's rows: 24 colours), (d) the 26 tangents ``sg.jvp(err, theta,
e_k)`` compiled as one list output, the Jacobian as a (26, 3, N) array (column-major, no
assembly). (c) reverse mode (``mode="reverse"``, one gradient per output element: 3N of them)
is built at N = 100 only.
Build: symgrad, graph + derivative + compile (object cache off: cold compiles), split by step;
JAX, the first call (trace + compile + run). Each tool builds a tiny problem first, so no build
pays for imports. Calls: best of ``k`` blocks of calls, each block at least ``block_s``. Every
Jacobian is checked against JAX's before anything is timed: max |a - b| / max |b| <= 1e-8
(JAX's own against central differences of a numpy transcription of the model, and its residual
against that transcription's). A symgrad build over ~2 minutes stops that form at larger N. The
report (markdown) goes to stdout and to ``--out``.
"""

from __future__ import annotations

import os

os.environ["SYMGRAD_CACHE_DIR"] = "off"  # every symgrad build is a cold compile

import argparse
import gc
import time
from dataclasses import dataclass, field

import numpy as np

import symgrad as sg
import symgrad.sparse as sg_sparse
from benchmarks.common import best_of, report, software, timed_stages
from benchmarks.common import elapsed as _elapsed
from benchmarks.common import ms as _ms
from benchmarks.common import progress as _progress

SIZES = (100, 400, 1_600, 3_200, 10_000)
N_BONES, N_VERTS, N_THETA = 22, 544, 26
# A wrist (bone 1 under the root 0), then 5 fingers of 4 bones each, parents before children.
PARENTS = (-1, 0, *(p for f in range(5) for p in (1, 2 + 4 * f, 3 + 4 * f, 4 + 4 * f)))
RTOL = 1e-8  # max |a - b| / max |b| allowed between symgrad's Jacobian and JAX's
BUILD_LIMIT_S = 120.0  # a symgrad build slower than this stops its form at larger N
REVERSE_MAX_N = 100


# --- the data, shared by every tool --------------------------------------------------------------


def _rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _rigid(rng, translation: float) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = _rotation(rng), rng.normal(scale=translation, size=3)
    return m


def hand_data(n: int) -> dict[str, np.ndarray]:
    """One random hand (the same at every N) and N random correspondences, points and a theta."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(size=(N_BONES, N_VERTS)) ** 4
    data = {
        "base_relatives": np.array([_rigid(rng, 0.1) for _ in range(N_BONES)]),
        "inverse_base_absolutes": np.array([_rigid(rng, 0.1) for _ in range(N_BONES)]),
        "base_positions": np.vstack(
            [rng.normal(scale=0.1, size=(3, N_VERTS)), np.ones((1, N_VERTS))]
        ),
        "weights": weights / weights.sum(axis=0),
    }
    rng = np.random.default_rng(n)
    data["correspondences"] = rng.integers(0, N_VERTS, n)
    data["points"] = rng.normal(scale=0.1, size=(3, n))
    data["theta"] = rng.normal(scale=0.3, size=N_THETA)
    assert np.linalg.norm(data["theta"][:3]) > 1e-2  # Rodrigues without its small-angle branch
    return data


def pose_slots() -> list[list[int | None]]:
    """ADBench's ``to_pose_params``: which theta fills each of the (n_bones + 3) x 3 pose
    entries (None: zero; row 1, the scale, is ones)."""
    slots: list[list[int | None]] = [[None] * 3 for _ in range(N_BONES + 3)]
    slots[0], slots[2] = [0, 1, 2], [3, 4, 5]
    i_theta, i_pose = 6, 5
    for _finger in range(5):
        for joint in (2, 3, 4):
            slots[i_pose][0] = i_theta
            i_theta += 1
            if joint == 2:
                slots[i_pose][1] = i_theta
                i_theta += 1
            i_pose += 1
        i_pose += 1
    assert i_theta == N_THETA
    return slots


def rodrigues_rows(x, y, z, angle, sin, cos):
    """The rotation by ``angle`` about the unit axis (x, y, z), as rows of entries."""
    s, c = sin(angle), cos(angle)
    return [
        [x * x + (1 - x * x) * c, x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
        [x * y * (1 - c) + z * s, y * y + (1 - y * y) * c, y * z * (1 - c) - x * s],
        [x * z * (1 - c) - y * s, z * y * (1 - c) + x * s, z * z + (1 - z * z) * c],
    ]


# --- the model in numpy (the transcription JAX is checked against) -------------------------------


def numpy_residual(d: dict, theta: np.ndarray) -> np.ndarray:
    pose = np.zeros((N_BONES + 3, 3))
    for i, row in enumerate(pose_slots()):
        for j, k in enumerate(row):
            if k is not None:
                pose[i, j] = theta[k]
    pose[1] = 1.0

    def euler(t):
        (cx, cy, cz), (sx, sy, sz) = np.cos(t), np.sin(t)
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        m = np.eye(4)
        m[:3, :3] = rz @ ry @ rx
        return m

    absolutes = []
    for i in range(N_BONES):
        relative = d["base_relatives"][i] @ euler(pose[i + 3])
        absolutes.append(relative if PARENTS[i] < 0 else absolutes[PARENTS[i]] @ relative)
    positions = sum(
        d["weights"][i] * ((a @ d["inverse_base_absolutes"][i])[:3] @ d["base_positions"])
        for i, a in enumerate(absolutes)
    )
    angle = np.sqrt(pose[0] @ pose[0])
    rotation = np.array(rodrigues_rows(*(pose[0] / angle), angle, np.sin, np.cos)) * pose[1]
    positions = rotation @ positions + pose[2][:, None]
    return d["points"] - positions[:, d["correspondences"]]


# --- the model in symgrad ------------------------------------------------------------------------


def symgrad_model(d: dict, select: str):
    """theta (input (26,)) and the residual err (3 x N). ``select``: "take" (the 3 x 544
    positions indexed by the correspondences: a take) or "pre-gathered" (the constants indexed
    by the correspondences first)."""
    g = sg.Graph()
    theta = g.input("theta", shape=(N_THETA,))

    def const(array):
        # C order on purpose: g.const keeps a Fortran-ordered array's layout, and the LLVM
        # backend reads constants of more than 64 elements as C order (wrong values otherwise;
        # reported with this benchmark). d["base_positions"][:, idx] is Fortran-ordered.
        return g.const(np.ascontiguousarray(array))

    zero, one = g.const(0.0), g.const(1.0)
    pose = [[zero if k is None else theta[k] for k in row] for row in pose_slots()]
    pose[1] = [one, one, one]

    def matrix(rows):
        return sg.stack([sg.stack(row) for row in rows])

    def euler(t):
        (cx, cy, cz), (sx, sy, sz) = [sg.cos(a) for a in t], [sg.sin(a) for a in t]
        rx = matrix([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
        ry = matrix([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
        rz = matrix([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
        r = rz @ ry @ rx
        return matrix([[r[0, 0], r[0, 1], r[0, 2], zero], [r[1, 0], r[1, 1], r[1, 2], zero],
                       [r[2, 0], r[2, 1], r[2, 2], zero], [zero, zero, zero, one]])  # fmt: skip

    absolutes = []
    for i in range(N_BONES):
        relative = const(d["base_relatives"][i]) @ euler(pose[i + 3])
        absolutes.append(relative if PARENTS[i] < 0 else absolutes[PARENTS[i]] @ relative)
    transforms = [a @ const(d["inverse_base_absolutes"][i]) for i, a in enumerate(absolutes)]
    base, weights = d["base_positions"], d["weights"]
    if select == "pre-gathered":
        base, weights = base[:, d["correspondences"]], weights[:, d["correspondences"]]
    base = const(base)
    positions = None
    for i, t in enumerate(transforms):
        term = const(weights[i]) * (t[:3, :] @ base)
        positions = term if positions is None else positions + term
    x, y, z = pose[0]
    angle = sg.sqrt(x * x + y * y + z * z)
    rotation = matrix(rodrigues_rows(x / angle, y / angle, z / angle, angle, sg.sin, sg.cos))
    rotation = rotation * sg.stack(pose[1])  # the scale, column by column
    positions = rotation @ positions + sg.stack(pose[2]).reshape(3, 1)
    if select == "take":
        positions = positions[:, d["correspondences"]]  # a take (gather) along axis 1
    return theta, const(d["points"]) - positions


# --- the model in JAX ----------------------------------------------------------------------------


def jax_objective(d: dict):
    import jax.numpy as jnp

    base_relatives = jnp.asarray(d["base_relatives"])
    inverse_base_absolutes = jnp.asarray(d["inverse_base_absolutes"])
    base, weights = jnp.asarray(d["base_positions"]), jnp.asarray(d["weights"])
    correspondences, points = jnp.asarray(d["correspondences"]), jnp.asarray(d["points"])
    slots = pose_slots()

    def euler(t):
        (cx, cy, cz), (sx, sy, sz) = jnp.cos(t), jnp.sin(t)
        o, z = jnp.ones(()), jnp.zeros(())
        rx = jnp.array([[o, z, z], [z, cx, -sx], [z, sx, cx]])
        ry = jnp.array([[cy, z, sy], [z, o, z], [-sy, z, cy]])
        rz = jnp.array([[cz, -sz, z], [sz, cz, z], [z, z, o]])
        return jnp.eye(4).at[:3, :3].set(rz @ ry @ rx)

    def objective(theta):
        pose = jnp.zeros((N_BONES + 3, 3))
        for i, row in enumerate(slots):
            for j, k in enumerate(row):
                if k is not None:
                    pose = pose.at[i, j].set(theta[k])
        pose = pose.at[1].set(1.0)
        absolutes = []
        for i in range(N_BONES):
            relative = base_relatives[i] @ euler(pose[i + 3])
            absolutes.append(relative if PARENTS[i] < 0 else absolutes[PARENTS[i]] @ relative)
        transforms = jnp.stack([a @ inverse_base_absolutes[i] for i, a in enumerate(absolutes)])
        positions = jnp.einsum("bv,bij,jv->iv", weights, transforms[:, :3, :], base)
        angle = jnp.sqrt(pose[0] @ pose[0])
        rows = rodrigues_rows(*(pose[0] / angle), angle, jnp.sin, jnp.cos)
        rotation = jnp.array(rows) * pose[1]
        positions = rotation @ positions + pose[2][:, None]
        return points - positions[:, correspondences]

    return objective


# --- one build -----------------------------------------------------------------------------------


@dataclass
class Built:
    """One tool's Jacobian at one N: build seconds (and by step), the call to time, the check."""

    build: float
    call: object  # () -> the tool's result as it comes (timed)
    dense: object  # () -> the Jacobian as a (3, N, 26) array (checked)
    stages: dict = field(default_factory=dict)
    note: str = ""
    gap: float | None = None
    time: float | None = None
    failed: str = ""


# The steps of a sparse_jacobian build, timed inside it by wrapping what symgrad.sparse calls.
SPARSE_STAGES = {
    "dependencies": "sparsity",
    "color_columns": "sparsity",
    "jvp": "derivative",
    "compile_outputs": "compile",
}


def symgrad_dense(d: dict, select: str, mode: str = "forward") -> Built:
    """(a), (c): ``sg.jacobian`` (one entry, (3, N, 26)) compiled with ``sg.compile``."""
    theta0 = d["theta"]
    start = time.perf_counter()
    theta, err = symgrad_model(d, select)
    graph = _elapsed(start)
    [[jac]] = sg.jacobian([err], [theta], mode=mode)
    derivative = _elapsed(start) - graph
    fn = sg.compile(jac)
    build = _elapsed(start)
    stages = {"graph": graph, "derivative": derivative, "compile": build - graph - derivative}
    note = f"{len(fn.graph.nx):,} nodes compiled"
    return Built(build, lambda: fn(theta0), lambda: fn(theta0)[0], stages, note)


def symgrad_sparse(d: dict, select: str) -> Built:
    """(b): ``sg.sparse_jacobian(mode="forward")``; the call is ``.values(theta)``."""
    theta0, n = d["theta"], len(d["correspondences"])
    with timed_stages(sg_sparse, SPARSE_STAGES) as spent:
        start = time.perf_counter()
        theta, err = symgrad_model(d, select)
        graph = _elapsed(start)
        jac = sg.sparse_jacobian([err], [theta], mode="forward")
        build = _elapsed(start)

    def dense():
        out = np.zeros((3 * n, N_THETA))
        out[jac.rows, jac.cols] = jac.values(theta0)
        return out.reshape(3, n, N_THETA)

    stages = {"graph": graph, **spent}
    note = f"{jac.colors} colours, nnz {jac.nnz:,}"
    return Built(build, lambda: jac.values(theta0), dense, stages, note)


def symgrad_sweeps(d: dict, select: str) -> Built:
    """(d): the 26 tangents ``sg.jvp(err, theta, e_k)``, one compiled list: (26, 3, N)."""
    theta0 = d["theta"]
    start = time.perf_counter()
    theta, err = symgrad_model(d, select)
    graph = _elapsed(start)
    tangents = [sg.jvp(err, theta, e)[0] for e in np.eye(N_THETA)]
    derivative = _elapsed(start) - graph
    fn = sg.compile([tangents])  # a list in a list: one (26, 3, N) array
    build = _elapsed(start)
    stages = {"graph": graph, "derivative": derivative, "compile": build - graph - derivative}
    return Built(
        build,
        lambda: fn(theta0),
        lambda: np.moveaxis(fn(theta0)[0], 0, -1),
        stages,
        f"layout (26, 3, N); {len(fn.graph.nx):,} nodes compiled",
    )


def jax_jacobian(d: dict) -> Built:
    import jax

    fn = jax.jit(jax.jacfwd(jax_objective(d)))
    theta = jax.device_put(d["theta"])
    start = time.perf_counter()
    jax.block_until_ready(fn(theta))
    build = _elapsed(start)
    return Built(build, lambda: jax.block_until_ready(fn(theta)), lambda: np.asarray(fn(theta)))


# --- checks and timing ---------------------------------------------------------------------------


def relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def check_jax(d: dict, jac: np.ndarray) -> dict[str, float]:
    """JAX's residual against the numpy transcription's, its Jacobian against central
    differences of that transcription."""
    import jax

    residual = np.asarray(jax.jit(jax_objective(d))(d["theta"]))
    value_gap = relative_gap(residual, numpy_residual(d, d["theta"]))
    h, columns = 1e-6, []
    for k in range(N_THETA):
        step = np.zeros(N_THETA)
        step[k] = h
        up, down = numpy_residual(d, d["theta"] + step), numpy_residual(d, d["theta"] - step)
        columns.append((up - down) / (2 * h))
    fd_gap = relative_gap(jac, np.stack(columns, axis=-1))
    if value_gap > 1e-12 or fd_gap > 1e-6:
        raise AssertionError(f"JAX's model: residual gap {value_gap:.1e}, FD gap {fd_gap:.1e}")
    return {"residual": value_gap, "central differences": fd_gap}


# --- one N ---------------------------------------------------------------------------------------

FORMS = {  # key -> (form, selection)
    "a-take": ("(a) sg.jacobian", "take"),
    "b-take": ("(b) sg.sparse_jacobian .values", "take"),
    "d-take": ("(d) 26 sg.jvp, one list", "take"),
    "d-gathered": ("(d) 26 sg.jvp, one list", "pre-gathered"),
    "c-take": ('(c) sg.jacobian mode="reverse"', "take"),
}


def make(key: str, d: dict) -> Built:
    select = FORMS[key][1]
    if key.startswith("a-"):
        return symgrad_dense(d, select)
    if key.startswith("b-"):
        return symgrad_sparse(d, select)
    if key.startswith("c-"):
        return symgrad_dense(d, select, mode="reverse")
    return symgrad_sweeps(d, select)


def run_size(n: int, settings: dict, stopped: dict[str, str]) -> dict:
    d = hand_data(n)
    tools = {"JAX": jax_jacobian(d)}
    _progress(f"N={n:,}: JAX build {tools['JAX'].build:.2f} s")
    skipped = {}
    for key in FORMS:
        if key.startswith("c-") and (not settings["reverse"] or n > REVERSE_MAX_N):
            why = "--no-reverse" if settings["reverse"] is False else f"N > {REVERSE_MAX_N}"
            skipped[key] = f"not built ({why}: 3N gradients)"
            continue
        if key in stopped:
            skipped[key] = stopped[key]
            continue
        tools[key] = make(key, d)
        gc.collect()
        _progress(f"N={n:,}: {key} build {tools[key].build:.2f} s {tools[key].stages}")
        if tools[key].build > BUILD_LIMIT_S:
            stopped[key] = f"stopped: build {tools[key].build:.0f} s at N = {n:,}"
    # Every result checked before anything is timed.
    reference = tools["JAX"].dense()
    checks = check_jax(d, reference)
    for key, built in tools.items():
        if key == "JAX":
            continue
        built.gap = relative_gap(built.dense(), reference)
        if not built.gap <= RTOL:
            built.failed = f"values differ from JAX's: gap {built.gap:.1e}; not timed"
            _progress(f"N={n:,}: {key} CHECK FAILED, gap {built.gap:.1e}")
    for built in tools.values():
        if not built.failed:
            built.time = best_of(built.call, settings["repeats"], settings["block_s"])
    _progress(f"N={n:,}: " + ", ".join(f"{k} {b.time}" for k, b in tools.items()))
    return {"tools": tools, "skipped": skipped, "checks": checks}


def warm_up() -> None:
    """A tiny build and call of each kind: imports and first-use costs out of the timings."""
    import jax
    import jax.numpy as jnp

    fn = jax.jit(jax.jacfwd(lambda t: jnp.sin(t) @ jnp.ones((3, 4)) * t[0]))
    jax.block_until_ready(fn(jnp.ones(3)))
    g = sg.Graph()
    x = g.input("x", shape=(3,))
    y = sg.sin(x).reshape(3, 1) @ g.const(np.ones((1, 4))) * x[0]
    sg.compile(sg.jacobian([y], [x], mode="forward")[0][0])(np.ones(3))
    sg.sparse_jacobian([y], [x], mode="forward").values(np.ones(3))


# --- the report ----------------------------------------------------------------------------------


def _s(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.2f}"


def table(results: dict[int, dict]) -> list[str]:
    lines = [
        "| N | tool / form | selection | build s | graph s | derivative s | sparsity s "
        "| compile s | call ms | call ÷ JAX | gap to JAX | notes |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, result in results.items():
        tools = result["tools"]
        jax_time = tools["JAX"].time
        for key, b in tools.items():
            label, select = ("JAX jit(jacfwd)", "index gather") if key == "JAX" else FORMS[key]
            s = b.stages
            ratio = "" if b.time is None else f"{b.time / jax_time:.2f}"
            gap = "—" if b.gap is None else f"{b.gap:.1e}"
            note = "; ".join(x for x in (b.note, b.failed) if x)
            lines.append(
                f"| {n:,} | {label} | {select} | {b.build:.2f} | {_s(s.get('graph'))} | "
                f"{_s(s.get('derivative'))} | {_s(s.get('sparsity'))} | "
                f"{_s(s.get('compile'))} | {_ms(b.time)} | {ratio} | {gap} | {note} |"
            )
        for key, why in result["skipped"].items():
            label, select = FORMS[key]
            lines.append(f"| {n:,} | {label} | {select} | | | | | | | | | {why} |")
    return lines


SYMGRAD_ONLY = tuple(FORMS)


def summary(results: dict[int, dict]) -> list[str]:
    lines = [
        "| N | JAX call ms | fastest symgrad Jacobian of err | its call ms | ÷ JAX "
        "| target (≤ JAX) |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for n, result in results.items():
        tools = result["tools"]
        timed = {k: b for k, b in tools.items() if k in SYMGRAD_ONLY and b.time is not None}
        jax_time = tools["JAX"].time
        if not timed:
            lines.append(f"| {n:,} | {_ms(jax_time)} | none timed | | | |")
            continue
        key = min(timed, key=lambda k: timed[k].time)
        ratio = timed[key].time / jax_time
        target = ("met" if ratio <= 1 else "missed") if n in (3_200, 10_000) else "(not a target N)"
        label, select = FORMS[key]
        lines.append(
            f"| {n:,} | {_ms(jax_time)} | {label}, {select} | {_ms(timed[key].time)} | "
            f"{ratio:.2f} | {target} |"
        )
    return lines


PREVIOUS_NOTE = (
    "Before `take` (commit 07ebefd, the same benchmark): symgrad's fastest form was (d) on "
    "pre-gathered constants, 3.47 ms at N = 3,200 (1.98× JAX) and 11.7 ms at N = 10,000 "
    "(4.9× JAX); `sg.jacobian`'s assembly (26 zero-filled placements of the whole array, "
    "summed) added 22.8 ms at N = 10,000, and selecting by a one-hot matmul took 151 ms."
)


def notes(results: dict[int, dict]) -> list[str]:
    """What the numbers say, computed from them."""
    n = max(results)
    tools = results[n]["tools"]

    def t(key):
        b = tools.get(key)
        return None if b is None or b.time is None else b.time

    lines = ["## Notes", ""]
    a, b, d, gathered = t("a-take"), t("b-take"), t("d-take"), t("d-gathered")
    if None not in (a, b, d):
        lines.append(
            f"- Where a call's time goes at N = {n:,} (take): the 26 forward sweeps themselves, "
            f"(d), {_ms(d)} ms; `sg.jacobian`'s (3, N, 26) entry, (a), adds {_ms(a - d)} ms "
            "of assembly (one `concatenate` node copying the 26 columns into the "
            f"{3 * n * N_THETA:,}-element array in one pass); `sparse_jacobian(...).values`, "
            f"(b), adds {_ms(b - d)} ms (numpy concatenating the sweeps and indexing out the "
            "nonzeros)."
        )
    if None not in (d, gathered):
        lines.append(
            f"- Take against pre-gathered constants at N = {n:,}: {_ms(d)} against "
            f"{_ms(gathered)} ms. Pre-gathered, every sweep redoes the skinning of the bones "
            "its parameter moves on all N points (work of N × bones); with the take, the "
            "skinning runs on the 544 vertices and each sweep copies 3N numbers."
        )
    forward = [b.build for r in results.values() for k, b in r["tools"].items() if k[0] in "abd"]
    jax_builds = [r["tools"]["JAX"].build for r in results.values()]
    if forward:
        lines.append(
            f"- Build: the forward forms built in {min(forward):.1f}-{max(forward):.1f} s at "
            "every N (graph, derivative and compile, see the table); JAX's first call took "
            f"{min(jax_builds):.1f}-{max(jax_builds):.1f} s."
        )
    reverse = [r["tools"]["c-take"] for r in results.values() if "c-take" in r["tools"]]
    if reverse:
        c, m = reverse[0], min(results)
        lines.append(
            f"- (c) reverse mode at N = {m:,}: {3 * m} gradients, build {c.build:.0f} s "
            f"({c.stages['derivative']:.0f} s `sg.jacobian`, {c.stages['compile']:.0f} s "
            f"compile; {c.note}); " + (c.failed or f"call {_ms(c.time)} ms") + ". Not built "
            "at larger N."
        )
    lines += ["", PREVIOUS_NOTE]
    return lines


def header(settings: dict) -> list[str]:

    return [
        "# ADBench hand tracking (simple): the 3N × 26 Jacobian, symgrad against JAX",
        "",
        f"{software()}, shared with other jobs, so the times are indicative (OpenBLAS and XLA "
        "both use threads). Generated by `python -m benchmarks.hand"
        f"{' --quick' if settings['quick'] else ''}`.",
        "",
        "Model: ADBench's hand objective, *simple* variant, with random data of ADBench's "
        f"shapes ({N_BONES} bones, {N_VERTS} vertices; the model files are not on this "
        "machine): see the module docstring. Rodrigues is the plain formula (no small-angle "
        "fallback; the random angle is far from it). Build: symgrad, graph + derivative + "
        "compile (object cache off: a cold compile), one build each; JAX, the first call of "
        "the `jit` (trace, compile, run). Calls: the best of "
        f"{settings['repeats']} blocks of calls of at least {settings['block_s'] * 1e3:.0f} "
        "ms each, after every Jacobian was checked against JAX's (max |a − b| / max |b| ≤ "
        "1e-8). *sparsity s*: `sparse_jacobian`'s structure and colouring; its *derivative* "
        "is its sweeps (`jvp`), its *compile* the compile of the sweeps. (b)'s call is "
        "`.values(theta)` (the nonzeros in CSR order), (d)'s a (26, 3, N) array; the others "
        "give (3, N, 26).",
        "",
        "Selections in symgrad: *take*, `positions[:, correspondences]` (a `take` op, the "
        "gather JAX does, of the 3 × 544 positions); *pre-gathered*, the constant base "
        "positions and weights indexed by the correspondences in numpy before the graph is "
        "built, so the skinning runs on the N corresponded vertices (the same function; per "
        "tangent the work of the bones the parameter moves, on N points).",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 100 only, fewer repeats")
    parser.add_argument(
        "--no-reverse", action="store_true", help="skip (c), reverse mode at N = 100 (~2 min)"
    )
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    settings = {
        "quick": args.quick,
        "reverse": not (args.no_reverse or args.quick),
        "repeats": 3 if args.quick else 5,
        "block_s": 0.02 if args.quick else 0.1,
    }
    sizes = SIZES[:1] if args.quick else SIZES
    warm_up()
    start = time.perf_counter()
    results, stopped = {}, {}
    for n in sizes:
        results[n] = run_size(n, settings, stopped)
    lines = header(settings) + ["", "## Summary", "", *summary(results)]
    lines += ["", "## Every form", "", *table(results), ""]
    checks = {n: r["checks"] for n, r in results.items()}
    lines.append(
        "JAX's model checked at every N against a numpy transcription: residual gap ≤ "
        f"{max(c['residual'] for c in checks.values()):.1e}, Jacobian against central "
        f"differences (h = 1e-6) ≤ {max(c['central differences'] for c in checks.values()):.1e}."
        f" Whole run: {_elapsed(start):.0f} s."
    )
    lines += ["", *notes(results)]
    report(lines, args.out)


if __name__ == "__main__":
    main()
