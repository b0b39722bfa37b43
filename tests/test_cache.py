"""The on-disk object cache (symgrad/llvm/cache.py) and the attacks on it.

The cache loads native code and runs it, so whoever can put an accepted entry in it runs code as
the user. Checked here, each ending in a compile that does not hit the cache, correct results,
and (for planted code) a marker file that the planted code would have created never appearing:

- entries planted with a real attack payload (an object file whose kernels call
  ``system("touch MARKER")``, under the victim's key) in the old sha256 format, in the new
  format with a plain sha256, or under another secret;
- a second user (uid 65534, run by ``subprocess`` as root) who made the folder first in a shared
  sticky folder, with its own secret and a valid-looking entry; a folder writable by others; a
  symbolic link at the folder's path or at an entry's; an entry or a secret of another uid;
- entries that must be refused without blocking or reading them: a FIFO, a directory, a link to
  /dev/zero, sparse files of 64 MiB + 1 byte and 64 GiB;
- a folder that cannot be written, a full disk, a path through a file, unreadable and corrupt
  entries: only caching is lost;
- folders made 0700 under umask 000, the size cap and its eviction (least recently used first),
  stale temporary files, and a bad ``SYMGRAD_CACHE_MAX_BYTES``.

Root can read and write whatever the permission bits say, so where a test needs a failure root
would not meet (a read-only folder, an unreadable entry) it makes the system call fail as it
would for another user. Tests that need a second user skip when not run as root.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import symgrad as sg
from symgrad.llvm import cache, jit
from tests.toolbox import (
    EXACT,
    FORMULA,
    ROOT,
    big_matmul,
    compare,
    compile_formula,
    run_python,
    values_for,
)

POINTS = [(np.linspace(-2, 2, 7), 0.75), (0.3, -1.2)]  # a batch (the loop and its tail), a point
OLD_MAGIC = b"SYMGRAD-OBJ-2\n"  # the format before 3: a plain sha256 anyone can compute
NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: to act as a second user (uid 65534) or chown to it"
)


# No test touches the user's cache: each sets a folder of its own.
pytestmark = pytest.mark.usefixtures("no_cache")  # tests/conftest.py


@pytest.fixture
def folder(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(path))
    return path


def assert_correct(fn, text: str = FORMULA) -> None:
    f = sg.parse(text)
    xs = list(f.graph.inputs.values())
    oracle = sg.compile([f, sg.build_grad(f, xs)], inputs=xs, backend="numpy")
    for point in POINTS:
        for got, want in zip(fn(*point), oracle(*point)):
            np.testing.assert_allclose(got, want, rtol=1e-13)


def compiled_without_hit(text: str = FORMULA):
    fn = compile_formula(text)
    assert not fn._native.cache_hit
    assert_correct(fn, text)
    return fn


def key_of(fn) -> str:
    """The entry's key, from public facts only (the program, the versions, the CPU, symgrad's
    source, the options): anyone can compute it, which is why entries carry an HMAC."""
    return fn._native.cache_key


def victim_key(text: str = FORMULA) -> str:
    """The key an attacker computes for the victim's graph (compiled here with the cache off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SYMGRAD_CACHE_DIR", "off")
        return key_of(compile_formula(text))


def contents(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def entries(path: Path) -> list[Path]:
    return sorted(path.glob("*.o"))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def cache_warnings(action) -> list[str]:
    """The CacheWarning messages ``action()`` raises."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in seen if issubclass(w.category, cache.CacheWarning)]


def sealed(secret: bytes, key: str, payload: bytes) -> bytes:
    """An entry in the current format under ``secret``."""
    return (
        cache.MAGIC
        + hmac.new(secret, key.encode() + b"\0" + payload, "sha256").digest()
        + (payload)
    )


def old_style(key: str, payload: bytes) -> bytes:
    """An entry in the old format: magic 2, sha256(key, payload), payload."""
    return OLD_MAGIC + hashlib.sha256(key.encode() + b"\0" + payload).digest() + payload


def plain_sha256(key: str, payload: bytes) -> bytes:
    """The current magic with the old, forgeable checksum."""
    return cache.MAGIC + hashlib.sha256(key.encode() + b"\0" + payload).digest() + payload


# --- a real attack payload -------------------------------------------------------------------


def attack_object(marker: Path) -> bytes:
    """Object code for this host whose three kernels run ``touch MARKER`` through ``system``
    (and whose point kernel writes 42.0): what an attacker would plant under a victim's key."""
    command = f"touch {shlex.quote(str(marker))}".encode() + b"\0"
    text = "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\{b:02X}" for b in command)
    ir = f"""
        @cmd = private constant [{len(command)} x i8] c"{text}"
        declare i32 @system(ptr)
        define void @sg_point(ptr %in, ptr %out) {{
          %r = call i32 @system(ptr @cmd)
          store double 42.0, ptr %out
          ret void
        }}
        define void @sg_batch(ptr %ins, ptr %strides, ptr %outs, i64 %n) {{
          %r = call i32 @system(ptr @cmd)
          ret void
        }}
        define ptr @sg_fast(ptr %self, ptr %args, i64 %nargs) {{
          %r = call i32 @system(ptr @cmd)
          ret ptr %self
        }}
    """
    llvm = jit._llvm()
    module = llvm.parse_assembly(textwrap.dedent(ir))
    tm = jit._target()[0]
    module.triple = tm.triple
    return tm.emit_object(module)


@pytest.fixture
def attack(tmp_path):
    """(payload, marker): the planted code, and the file it creates when it runs."""
    marker = tmp_path / "PLANTED-CODE-RAN"
    return attack_object(marker), marker


def test_the_attack_payload_runs_when_loaded(attack):
    # The control: loaded as the old cache loaded any entry whose checksum matched, the planted
    # object runs its command at the first call.
    payload, marker = attack
    engine = jit._load_engine(payload)
    point = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(
        engine.get_function_address("sg_point")
    )
    out = (ctypes.c_double * 4)()
    point(None, out)
    assert marker.exists() and out[0] == 42.0


# --- the ordinary life of the cache ------------------------------------------------------------


def test_first_compile_writes_a_private_entry_the_second_hits_it(folder):
    first = compiled_without_hit()
    [entry] = entries(folder)
    assert entry.name == key_of(first) + ".o"
    assert re.fullmatch(r"[0-9a-f]{64}\.o", entry.name)
    assert contents(folder) == sorted([entry.name, cache.SECRET])  # no temporary file left
    assert (mode(folder), mode(entry), mode(folder / cache.SECRET)) == (0o700, 0o600, 0o600)
    assert (folder / cache.SECRET).stat().st_size == cache.SECRET_BYTES
    second = compile_formula()  # an equal graph, built anew
    assert second._native.cache_hit
    assert second.llvm_ir == first.llvm_ir
    assert_correct(second)


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # where the default folder would be
    monkeypatch.setenv("HOME", str(tmp_path))
    for _ in range(2):
        compiled_without_hit()
    assert list(tmp_path.iterdir()) == []


def test_object_cache_hit_on_second_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(tmp_path))
    outputs = big_matmul()
    first = sg.compile(outputs)
    second = sg.compile(outputs)
    assert not first._native.cache_hit
    assert second._native.cache_hit
    assert list(tmp_path.glob("*.o"))
    vals = values_for(first)
    compare(second(**vals), first(**vals), EXACT)


def test_second_process_loads_from_the_cache(folder):
    fn = compiled_without_hit()
    code = """
        import json
        from tests.toolbox import compile_formula
        fn = compile_formula()
        value = [r.tolist() for r in fn(0.3, -1.2)]
        print(json.dumps({"hit": fn._native.cache_hit, "value": value, "ir": fn.llvm_ir}))
    """
    done = run_python(code, SYMGRAD_CACHE_DIR=str(folder))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    value = [r.tolist() for r in fn(0.3, -1.2)]
    assert report == {"hit": True, "value": value, "ir": fn.llvm_ir}  # the same IR, too


def _corruptions():
    head = len(cache.MAGIC) + cache.MAC_BYTES

    def flip(blob: bytes, at: int) -> bytes:
        return blob[:at] + bytes([blob[at] ^ 0x40]) + blob[at + 1 :]

    return {
        "empty": lambda b: b"",
        "magic only": lambda b: b[: len(cache.MAGIC)],
        "header only": lambda b: b[:head],
        "half": lambda b: b[: len(b) // 2],
        "last byte dropped": lambda b: b[:-1],
        "byte appended": lambda b: b + b"\0",
        "wrong magic": lambda b: flip(b, 0),
        "mac flipped": lambda b: flip(b, len(cache.MAGIC) + 5),
        "payload byte flipped": lambda b: flip(b, head + (len(b) - head) // 2),
        "payload zeroed": lambda b: b[:head] + bytes(len(b) - head),
        "random bytes": lambda b: np.random.default_rng(0).bytes(len(b)),
    }


@pytest.mark.parametrize("how", list(_corruptions()))
def test_corrupt_or_truncated_entry_is_rebuilt(folder, how):
    compiled_without_hit()
    [entry] = entries(folder)
    good = entry.read_bytes()
    entry.write_bytes(_corruptions()[how](good))
    compiled_without_hit()
    assert entry.read_bytes() == good  # rewritten
    assert compile_formula()._native.cache_hit


def test_entry_under_a_wrong_key_is_not_loaded(folder):
    compiled_without_hit()
    [wanted] = entries(folder)
    compiled_without_hit("x * y + 100")
    [other] = [e for e in entries(folder) if e != wanted]
    wanted.write_bytes(other.read_bytes())  # a valid entry, of another key
    compiled_without_hit()


def test_sealed_entry_that_is_not_an_object_file_is_rebuilt(folder):
    fn = compiled_without_hit()
    [entry] = entries(folder)
    junk = b"this is not an object file" * 10
    entry.write_bytes(sealed((folder / cache.SECRET).read_bytes(), key_of(fn), junk))
    compiled_without_hit()  # the mac is right, the ELF magic is not: never handed to LLVM
    assert compile_formula()._native.cache_hit


# --- planted code ------------------------------------------------------------------------------


@pytest.mark.parametrize("forge", ["old format", "new magic, plain sha256", "another secret"])
def test_planted_entry_with_a_valid_checksum_is_refused(folder, attack, forge):
    payload, marker = attack
    victim = compiled_without_hit()
    [entry] = entries(folder)
    planted = {
        "old format": lambda: old_style(key_of(victim), payload),
        "new magic, plain sha256": lambda: plain_sha256(key_of(victim), payload),
        "another secret": lambda: sealed(os.urandom(32), key_of(victim), payload),
    }[forge]()
    entry.write_bytes(planted)
    compiled_without_hit()
    assert not marker.exists()
    assert compile_formula()._native.cache_hit  # the rebuilt entry replaced the planted one
    assert not marker.exists()


def test_planted_entry_in_a_fresh_folder_without_secret_is_refused(folder, attack, tmp_path):
    # The old cache trusted any folder: an entry planted before the first compile was loaded.
    payload, marker = attack
    key = victim_key()
    folder.mkdir(mode=0o700)
    (folder / f"{key}.o").write_bytes(old_style(key, payload))
    compiled_without_hit()
    assert not marker.exists()


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/null", "a planted file", "the good entry"])
def test_symlink_at_an_entry_is_not_followed(folder, attack, tmp_path, target):
    payload, marker = attack
    victim = compiled_without_hit()
    [entry] = entries(folder)
    if target == "a planted file":
        elsewhere = tmp_path / "planted.o"
        elsewhere.write_bytes(old_style(key_of(victim), payload))
    elif target == "the good entry":
        elsewhere = tmp_path / "good.o"
        shutil.copy(entry, elsewhere)
    else:
        elsewhere = Path(target)
    before = None if target.startswith("/dev/") else elsewhere.read_bytes()
    entry.unlink()
    entry.symlink_to(elsewhere)
    compiled_without_hit()
    assert not marker.exists()
    assert not entry.is_symlink() and entry.is_file()  # the link itself was replaced
    if before is not None:
        assert elsewhere.read_bytes() == before  # what it pointed at is untouched
    assert compile_formula()._native.cache_hit


def test_fifo_at_an_entry_is_refused_without_blocking(folder):
    compiled_without_hit()
    [entry] = entries(folder)
    entry.unlink()
    os.mkfifo(entry, 0o600)
    done = []
    worker = threading.Thread(target=lambda: done.append(compiled_without_hit()), daemon=True)
    worker.start()
    worker.join(120)  # a guard against a hang, not a measurement: an open FIFO waits forever
    assert done, "compiling blocked on a FIFO at an entry's path"
    assert stat.S_ISREG(os.lstat(entry).st_mode)  # replaced by a real entry
    assert compile_formula()._native.cache_hit


def test_directory_at_an_entry_is_left_alone(folder):
    compiled_without_hit()
    [entry] = entries(folder)
    entry.unlink()
    entry.mkdir()
    compiled_without_hit()  # cannot be replaced by a file: left alone, nothing else left behind
    assert entry.is_dir() and contents(folder) == sorted([entry.name, cache.SECRET])


@pytest.mark.parametrize("size", [cache.MAX_ENTRY_BYTES + 1, 64 << 30], ids=["64MiB+1", "64GiB"])
def test_huge_entry_is_refused_unread(folder, monkeypatch, size):
    compiled_without_hit()
    [entry] = entries(folder)
    with open(entry, "r+b") as fh:
        try:
            fh.truncate(size)  # sparse: no disk is used
        except OSError as err:
            pytest.skip(f"this file system makes no {size}-byte sparse file: {err}")
    read = []
    real_read = os.read
    with monkeypatch.context() as patch:
        patch.setattr(os, "read", lambda fd, n: read.append(n) or real_read(fd, n))
        compiled_without_hit()
    assert all(n <= cache.MAX_ENTRY_BYTES for n in read)  # sized before a byte was read
    assert entry.stat().st_size < cache.MAX_ENTRY_BYTES  # rewritten
    assert compile_formula()._native.cache_hit


@pytest.mark.parametrize("how", ["writable by others", "owned by another user"])
def test_entry_of_another_user_or_writable_by_others_is_refused(folder, attack, how):
    if how == "owned by another user" and os.geteuid() != 0:
        pytest.skip("needs root to chown an entry to uid 65534")
    victim = compiled_without_hit()
    [entry] = entries(folder)
    # Even sealed with the folder's own secret: who wrote it counts too.
    entry.write_bytes(sealed((folder / cache.SECRET).read_bytes(), key_of(victim), attack[0]))
    if how == "writable by others":
        entry.chmod(0o666)
    else:
        os.chown(entry, NOBODY, NOBODY)
    compiled_without_hit()
    assert not attack[1].exists()
    assert compile_formula()._native.cache_hit


@pytest.mark.parametrize(
    "how", ["short", "readable by others", "a symbolic link", "a directory", "another user's"]
)
def test_bad_secret_disables_the_cache_with_one_warning(folder, tmp_path, attack, how):
    if how == "another user's" and os.geteuid() != 0:
        pytest.skip("needs root to chown the secret to uid 65534")
    victim = compiled_without_hit()
    secret = folder / cache.SECRET
    good = secret.read_bytes()
    [entry] = entries(folder)
    if how == "short":
        secret.write_bytes(good[:16])
    elif how == "readable by others":
        secret.chmod(0o644)  # others could forge entries
    elif how == "a symbolic link":
        (tmp_path / "known-secret").write_bytes(b"k" * 32)
        secret.unlink()
        secret.symlink_to(tmp_path / "known-secret")
        entry.write_bytes(sealed(b"k" * 32, key_of(victim), attack[0]))
    elif how == "a directory":
        secret.unlink()
        secret.mkdir()
    else:
        os.chown(secret, NOBODY, NOBODY)
    said = cache_warnings(lambda: [compiled_without_hit() for _ in range(2)])
    assert len(said) == 1 and repr(cache.SECRET) in said[0] and str(folder) in said[0]
    assert not attack[1].exists()


# --- folders not to trust ----------------------------------------------------------------------


def plant_forged_folder(path: Path, key: str, payload: bytes) -> None:
    """A folder with its own secret and an entry sealed under it: valid, for its owner."""
    path.mkdir(mode=0o700)
    secret = os.urandom(32)
    (path / cache.SECRET).write_bytes(secret)
    (path / cache.SECRET).chmod(0o600)
    (path / f"{key}.o").write_bytes(sealed(secret, key, payload))


@pytest.mark.parametrize("folder_mode", [0o777, 0o1777, 0o775, 0o720])
def test_folder_writable_by_others_is_refused_with_one_warning(folder, attack, folder_mode):
    payload, marker = attack
    plant_forged_folder(folder, victim_key(), payload)
    folder.chmod(folder_mode)
    before = contents(folder)
    said = cache_warnings(lambda: [compiled_without_hit() for _ in range(3)])
    assert len(said) == 1 and "can write to it" in said[0] and str(folder) in said[0]
    assert not marker.exists()
    assert contents(folder) == before  # nothing written to a folder it does not trust


def test_folder_that_is_a_symlink_is_refused_with_one_warning(folder, tmp_path, attack):
    payload, marker = attack
    real = tmp_path / "elsewhere"
    plant_forged_folder(real, victim_key(), payload)
    folder.symlink_to(real)
    said = cache_warnings(lambda: [compiled_without_hit() for _ in range(2)])
    assert len(said) == 1 and "symbolic link" in said[0]
    assert not marker.exists()


@ROOT_ONLY
def test_folder_of_another_user_is_refused_with_one_warning(folder, attack):
    payload, marker = attack
    plant_forged_folder(folder, victim_key(), payload)
    for path in [folder, *folder.iterdir()]:
        os.chown(path, NOBODY, NOBODY)
    said = cache_warnings(lambda: [compiled_without_hit() for _ in range(2)])
    assert len(said) == 1 and f"uid {NOBODY}" in said[0]
    assert not marker.exists()


@pytest.mark.parametrize("what", ["a file", "a file as its parent", "a FIFO"])
def test_cache_path_that_is_not_a_folder_only_loses_caching(folder, monkeypatch, what):
    if what == "a FIFO":
        os.mkfifo(folder, 0o600)  # opening it to read would wait for a writer forever
    else:
        folder.write_text("not a directory")  # fails for root too, unlike permissions
    if what == "a file as its parent":
        monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(folder / "sub"))
    said = cache_warnings(lambda: [compiled_without_hit() for _ in range(2)])
    assert said == []
    assert stat.S_ISFIFO(os.lstat(folder).st_mode) or folder.read_text() == "not a directory"


# --- a second user in a shared folder ----------------------------------------------------------


def as_nobody(script: str) -> subprocess.CompletedProcess:
    """``script`` run by /bin/sh as uid and gid 65534 (no symgrad: plain file operations)."""
    return subprocess.run(
        ["/bin/sh", "-euc", script], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def shared():
    """A shared sticky folder (mode 1777, like /tmp) that uid 65534 can reach."""
    if os.geteuid() != 0:
        pytest.skip("needs root: to act as a second user (uid 65534)")
    # Not under tmp_path: pytest's folders are 0700, so the second user could not reach it.
    path = Path(tempfile.mkdtemp(prefix="symgrad-shared-"))
    try:
        path.chmod(0o1777)
        probe = as_nobody(f"touch {path}/probe && rm {path}/probe")
        if probe.returncode != 0:
            pytest.skip(f"uid 65534 cannot write to {path}: {probe.stderr.strip()}")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(
    "setup", ["SYMGRAD_CACHE_DIR 0700", "SYMGRAD_CACHE_DIR 0755", "SYMGRAD_CACHE_DIR 0777",
              "XDG_CACHE_HOME 0755", "symlink to the attacker's folder"],
)  # fmt: skip
def test_second_user_who_made_the_folder_first_is_refused(shared, attack, monkeypatch, setup):
    payload, marker = attack
    key = victim_key()
    stage = shared / "stage"  # the attacker's files, staged by the test for uid 65534 to copy
    stage.mkdir(mode=0o755)
    secret = os.urandom(32)
    (stage / "secret").write_bytes(secret)
    (stage / "entry").write_bytes(sealed(secret, key, payload))
    for path in stage.iterdir():
        path.chmod(0o644)
    if setup.startswith("XDG"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(shared / "xdg"))
        monkeypatch.delenv("SYMGRAD_CACHE_DIR")
        made, victims = shared / "xdg" / "symgrad", shared / "xdg" / "symgrad"
        prefix = f"mkdir -m 755 {shared}/xdg && "
    else:
        victims = shared / "cache"
        monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(victims))
        made, prefix = victims, ""
        if setup.startswith("symlink"):
            made, prefix = shared / "evil", f"ln -s {shared}/evil {victims} && "
    folder_mode = re.search(r"0\d{3}$", setup)
    script = (
        f"{prefix}mkdir -m {folder_mode[0] if folder_mode else '755'} {made} && "
        f"cp {stage}/secret {made}/secret && chmod 600 {made}/secret && "
        f"cp {stage}/entry {made}/{key}.o"
    )
    done = as_nobody(script)
    assert done.returncode == 0, done.stderr
    assert os.lstat(victims).st_uid == NOBODY
    before = contents(made)
    said = cache_warnings(lambda: [compiled_without_hit() for _ in range(3)])
    assert len(said) == 1 and str(victims) in said[0], said
    assert not marker.exists()
    assert contents(made) == before  # the victim wrote nothing into the attacker's folder


@ROOT_ONLY
def test_second_user_cannot_plant_in_the_victims_own_folder(shared, monkeypatch, attack):
    # The victim's folder, created by symgrad in the shared folder: 0700, so uid 65534 can
    # neither add an entry nor replace one nor read the secret.
    payload, marker = attack
    victims = shared / "cache"
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(victims))
    victim = compiled_without_hit()
    key = key_of(victim)
    attempts = [
        f"cat {victims}/{cache.SECRET}",
        f"touch {victims}/{key}.o",
        f"ln -s /dev/zero {victims}/x.o",
        f"mv {victims} {shared}/moved",  # sticky: only the owner renames it
    ]
    for script in attempts:
        assert as_nobody(script).returncode != 0, script
    assert compile_formula()._native.cache_hit and not marker.exists()


# --- how folders are made --------------------------------------------------------------------


UMASK_ZERO = """
    import json, os
    os.umask(0)
    from tests.toolbox import compile_formula
    hits = [compile_formula()._native.cache_hit for _ in range(2)]
    print(json.dumps(hits))
"""


@pytest.mark.parametrize("variable", ["XDG_CACHE_HOME", "HOME"])
def test_folders_are_made_0700_under_umask_000(tmp_path, variable):
    base = tmp_path / "missing" / "base"  # two missing parents
    env = {k: v for k, v in os.environ.items() if k not in ("SYMGRAD_CACHE_DIR", "XDG_CACHE_HOME")}
    env[variable] = str(base)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(UMASK_ZERO)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == [False, True]
    made = [tmp_path / "missing", base]
    made += (
        [base / "symgrad"]
        if variable == "XDG_CACHE_HOME"
        else [base / ".cache", base / ".cache" / "symgrad"]
    )
    assert {str(p): oct(mode(p)) for p in made} == {str(p): "0o700" for p in made}
    files = list(made[-1].iterdir())
    assert len(files) == 2 and all(mode(p) == 0o600 for p in files)


# --- failures that only lose caching -------------------------------------------------------------


def _fail(err: int):
    raise OSError(err, os.strerror(err))


def test_read_only_folder_only_loses_caching(folder, monkeypatch):
    folder.mkdir(mode=0o700)
    folder.chmod(0o500)
    real_open = os.open
    if os.access(folder, os.W_OK):  # root writes anyway: fail creating files as it would
        monkeypatch.setattr(
            os, "open", lambda p, f, *a, **k: _fail(errno.EACCES) if f & os.O_CREAT
            else real_open(p, f, *a, **k),
        )  # fmt: skip
    for _ in range(2):
        compiled_without_hit()
    assert contents(folder) == []


def test_full_disk_only_loses_caching(folder, monkeypatch):
    real_write = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            real_write(fd, bytes(data[:10]))
            _fail(errno.ENOSPC)
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", write)
        for _ in range(2):
            compiled_without_hit()
        assert contents(folder) == []  # the partly written temporary files are gone
    compiled_without_hit()  # space again: the secret and the entry are written
    assert compile_formula()._native.cache_hit


def test_unreadable_entry_is_rebuilt(folder, monkeypatch):
    compiled_without_hit()
    [entry] = entries(folder)
    entry.chmod(0)
    real_open = os.open
    with monkeypatch.context() as patch:
        if os.access(entry, os.R_OK):  # root reads anyway: fail the read as it would
            patch.setattr(
                os, "open", lambda p, f, *a, **k: _fail(errno.EACCES) if str(p).endswith(".o")
                and not f & os.O_CREAT else real_open(p, f, *a, **k),
            )  # fmt: skip
        compiled_without_hit()
    assert compile_formula()._native.cache_hit  # the rebuilt entry replaced it


# --- size cap, eviction and stale temporary files ----------------------------------------------


def formulas(n: int) -> list[str]:
    """``n`` graphs whose entries are about the same size."""
    return [f"{FORMULA} + {k + 1}" for k in range(n)]


def sizes(folder: Path) -> dict[str, int]:
    return {e.name: e.stat().st_size for e in entries(folder)}


def test_total_size_stays_under_the_cap_newest_entry_kept(folder, monkeypatch):
    texts = formulas(6)
    compiled_without_hit(texts[0])
    [size] = sizes(folder).values()
    cap = size * 5 // 2  # room for two entries and a half
    monkeypatch.setenv("SYMGRAD_CACHE_MAX_BYTES", str(cap))
    for text in texts[1:]:
        fn = compiled_without_hit(text)
        now = sizes(folder)
        assert sum(now.values()) <= cap
        assert f"{key_of(fn)}.o" in now  # the newest entry survives
    assert compile_formula(texts[-1])._native.cache_hit


PAST = 1_000_000_000  # a file time in 2001, as seconds since the epoch


def test_eviction_removes_the_least_recently_used_first(folder, monkeypatch):
    texts = formulas(4)
    keys = [key_of(compiled_without_hit(text)) for text in texts[:3]]
    [size, *_] = sizes(folder).values()
    monkeypatch.setenv("SYMGRAD_CACHE_MAX_BYTES", str(size * 7 // 2))
    # Written in order, long ago: fixed times in 2001 (no clock read; anything written or used
    # during the test is newer).
    for when, key in zip([PAST, PAST + 100, PAST + 200], keys):
        os.utime(folder / f"{key}.o", (when, when))
    assert compile_formula(texts[0])._native.cache_hit  # the oldest is used again
    newest = key_of(compiled_without_hit(texts[3]))  # four entries: over the cap of 3.5
    assert set(sizes(folder)) == {f"{keys[0]}.o", f"{newest}.o"}  # down to 3/4 of the cap


@pytest.mark.parametrize("setting", ["lots", "-5", "1e9", "12 parsecs"])
def test_bad_size_cap_setting_warns_once_and_uses_the_default(folder, monkeypatch, setting):
    monkeypatch.setenv("SYMGRAD_CACHE_MAX_BYTES", setting)
    said = cache_warnings(lambda: [compiled_without_hit(t) for t in formulas(2)])
    assert len(said) == 1 and "SYMGRAD_CACHE_MAX_BYTES" in said[0]
    assert len(entries(folder)) == 2  # cached as usual, under the default cap


@pytest.mark.parametrize("setting,cap", [("1000", 1000), ("2K", 2048), ("3MiB", 3 << 20)])
def test_size_cap_setting(monkeypatch, setting, cap):
    monkeypatch.setenv("SYMGRAD_CACHE_MAX_BYTES", setting)
    assert cache.max_bytes() == cap


def test_cap_below_one_entry_stores_nothing(folder, monkeypatch):
    monkeypatch.setenv("SYMGRAD_CACHE_MAX_BYTES", "100")
    for _ in range(2):
        compiled_without_hit()
    assert entries(folder) == []


def test_stale_temporary_files_are_removed(folder):
    folder.mkdir(mode=0o700)
    stale, fresh = folder / ".tmp-stale", folder / ".tmp-fresh"  # a killed writer's, a live one's
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    os.utime(stale, (PAST, PAST))  # far more than cache.STALE_SECONDS ago
    compiled_without_hit()
    assert not stale.exists() and fresh.exists()


# --- the key comes before lowering (issue 12 item 4) -------------------------------------------


def _refuse(*args, **kwargs):
    raise AssertionError("a cache hit lowered or planned")


def test_a_scalar_hit_does_not_lower(folder, monkeypatch):
    from symgrad.llvm import kernels

    first = compiled_without_hit()
    monkeypatch.setattr(kernels, "lower", _refuse)
    second = compile_formula()
    assert second._native.cache_hit
    assert_correct(second)
    monkeypatch.undo()
    assert second.llvm_ir == first.llvm_ir  # written on demand, the same text


def test_a_tensor_hit_neither_plans_nor_lowers(folder, monkeypatch):
    from symgrad.llvm import kernels, loops

    g = sg.Graph()
    x = g.input("x", (20, 30))
    big = np.random.default_rng(5).standard_normal((20, 30))  # a constant passed by pointer
    e = sg.sum(sg.tanh(x * big) * big)
    outputs = [e, *sg.build_grad(e, [x])]
    first = sg.compile(outputs, optimize=False)
    for name in ("lower_tensor",):
        monkeypatch.setattr(kernels, name, _refuse)
    monkeypatch.setattr(loops, "plan", _refuse)
    second = sg.compile(outputs, optimize=False)
    assert second._native.cache_hit
    # The scratch size and the constants passed come from the object code, as planned.
    assert (second._native.scratch, second._native.passed) == (
        first._native.plan.scratch,
        first._native.plan.passed,
    )
    value = np.random.default_rng(6).standard_normal((20, 30))
    compare(second(value), first(value), EXACT)


def _key(text: str, opt: int = 1, extra: str | None = None, inputs=None) -> str:
    f = sg.parse(text)
    if extra is not None:
        sg.parse(extra, graph=f.graph)  # unrelated nodes, made first: other ids
        f = sg.parse(text, graph=f.graph)
    return sg.compile(f, inputs=inputs, optimize=False, opt=opt)._native.cache_key


def test_the_key_names_what_decides_the_code():
    base = _key("sin(x) * y + 2.5")
    assert _key("sin(x) * y + 2.5") == base
    assert _key("sin(x) * y + 2.5", extra="exp(a) + b * c") == base  # ids do not matter
    assert _key("sin(x) * y + 2.5000000000000004") != base  # a constant's last bit does
    assert _key("sin(x) * y + -2.5") != base
    assert _key("cos(x) * y + 2.5") != base
    assert _key("sin(y) * x + 2.5") != base
    assert _key("sin(x) * y + 2.5", opt=0) != base
    assert _key("sin(x) * y + 2.5", inputs=["y", "x"]) != base  # the arguments' order


def test_the_key_of_a_tensor_kernel_covers_arrays_and_scan_bodies():
    def key(value: float, scale: float) -> str:
        g = sg.Graph()
        x = g.input("x", (3,))
        c = np.arange(3.0) * value

        def step(carry, _):
            return carry * scale + c, None

        carry, _ = sg.scan(step, x, length=4)
        return sg.compile(carry, optimize=False)._native.cache_key

    assert key(1.0, 0.5) == key(1.0, 0.5)
    assert key(1.0, 0.5) != key(1.0 + 2**-52, 0.5)  # an array constant's bits
    assert key(1.0, 0.5) != key(1.0, 0.25)  # a node inside the body


def test_a_program_the_key_cannot_spell_is_keyed_by_its_ir(folder, monkeypatch):
    from symgrad.llvm import kernels

    monkeypatch.setattr(kernels, "program_key", lambda *args: None)
    first = compiled_without_hit()
    [entry] = entries(folder)
    assert entry.name == jit._cache_key(first.llvm_ir, "opt=1") + ".o"
    assert compile_formula()._native.cache_hit
