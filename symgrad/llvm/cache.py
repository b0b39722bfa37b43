"""The on-disk cache of object code: where it lives, what it trusts, how entries are read,
written and evicted.

``load(key)`` returns the object code stored under ``key`` or None; ``store(key, payload)``
stores it. Neither ever raises, blocks or hands back code it has not verified: whatever goes
wrong (a read-only or full disk, a file where the folder should be, an entry that is a FIFO, a
directory, a symbolic link, a huge file, an entry planted by someone else) only loses caching.

Trust model. Loading object code means running it as the current user, so the cache trusts one
thing: a folder that this user owns (``os.geteuid()``), that is a real directory (not a
symbolic link) and that no one else can write (no group or other write bit), and the secret in
it. The secret is 32 random bytes in the file ``secret`` (mode 0600, created with ``O_EXCL``);
every entry carries an HMAC-SHA256 of its key and payload under that secret, so an entry is
accepted only if it was written by someone who could read the secret. A folder that fails the
checks is not used at all: one ``CacheWarning`` per folder and process, and compiling goes on
without the cache. Entries are opened without following links and without blocking, and must
be regular files owned by this user, not writable by others, and at most ``MAX_ENTRY_BYTES``
long, checked before a byte is read. Anyone running as this same user can of course plant code
in the folder: the cache protects a user from others, not from themselves.

The folder is ``$SYMGRAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/symgrad``, else
``~/.cache/symgrad``; ``SYMGRAD_CACHE_DIR=off`` disables the cache. Folders symgrad creates
(and their missing parents) are made 0700 whatever the umask. The entries' total size is capped
(``SYMGRAD_CACHE_MAX_BYTES``, default 512 MiB): after a write that may have reached the cap, the
oldest entries (by modification time; a hit touches its entry) are removed, and temporary files
left by killed writers are removed after an hour.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import threading
import time
import warnings
from pathlib import Path

MAGIC = b"SYMGRAD-OBJ-3\n"  # 3: the HMAC under the folder's secret replaced a plain sha256
ELF = b"\x7fELF"
MAC_BYTES = 32
SECRET = "secret"
SECRET_BYTES = 32
TMP_PREFIX = ".tmp-"
ENTRY_RE = re.compile(r"[0-9a-f]{64}")
ENTRY_SUFFIX = ".o"
# Object files here are kilobytes to a few megabytes; anything larger is refused unread.
MAX_ENTRY_BYTES = 64 << 20
DEFAULT_MAX_BYTES = 512 << 20
LOW_WATER = 0.75  # an eviction removes entries down to this share of the cap
STALE_SECONDS = 3600  # a temporary file this old belongs to a writer that was killed
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}

_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_lock = threading.Lock()
_warned: set[str] = set()
_known_totals: dict[tuple, int] = {}  # folder -> entry bytes at the last scan, plus our writes


class CacheWarning(UserWarning):
    """The cache folder (or its secret, or a setting) is not trusted: compiling goes on
    without the cache."""


def folder() -> Path | None:
    """The cache folder the environment asks for, or None when the cache is off."""
    setting = os.environ.get("SYMGRAD_CACHE_DIR")
    if setting is not None:
        if setting.strip().lower() in ("off", "0", "none", ""):
            return None
        return Path(os.path.abspath(setting))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.abspath(base)) / "symgrad"


def max_bytes() -> int:
    """The cap on the entries' total size: ``SYMGRAD_CACHE_MAX_BYTES`` (bytes, or with a K, M or
    G suffix), the default with a warning if it cannot be read."""
    setting = os.environ.get("SYMGRAD_CACHE_MAX_BYTES", "").strip()
    if not setting:
        return DEFAULT_MAX_BYTES
    found = re.fullmatch(r"(\d{1,20})\s*([kmg]?)(?:i?b)?", setting.lower())
    if found is None:
        _warn_once(
            f"setting:{setting}",
            f"SYMGRAD_CACHE_MAX_BYTES={setting!r} is not a size in bytes (e.g. 536870912 or "
            f"512M); using {DEFAULT_MAX_BYTES >> 20} MiB",
        )
        return DEFAULT_MAX_BYTES
    return int(found[1]) * _UNITS[found[2]]


def load(key: str) -> bytes | None:
    """The verified object code stored under ``key``, or None (absent, refused or corrupt)."""
    try:
        opened = _open_folder(create=False)
        if opened is None:
            return None
        path, dir_fd = opened
        try:
            return _load(path, dir_fd, key)
        finally:
            os.close(dir_fd)
    except (OSError, ValueError):
        return None


def store(key: str, payload: bytes) -> None:
    """Store ``payload`` under ``key``, if the cache is on and trusted; failures lose caching."""
    limit = max_bytes()
    size = len(MAGIC) + MAC_BYTES + len(payload)
    if not ENTRY_RE.fullmatch(key) or size > min(limit, MAX_ENTRY_BYTES):
        return
    try:
        opened = _open_folder(create=True)
        if opened is None:
            return
        path, dir_fd = opened
        try:
            if _store(path, dir_fd, key, payload):
                _after_write(dir_fd, key + ENTRY_SUFFIX, size, limit)
        finally:
            os.close(dir_fd)
    except (OSError, ValueError):
        pass  # read-only, full, or replaced under us: we only lose caching


# --- the folder ----------------------------------------------------------------------------


def _open_folder(create: bool) -> tuple[Path, int] | None:
    """The trusted cache folder and a descriptor on it (every later step goes through the
    descriptor, so the folder cannot be swapped after its check), or None."""
    path = folder()
    if path is None:
        return None
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return None
        _make_folders(path)
        before = os.lstat(path)
    if _refuse_folder(path, before):
        return None
    dir_fd = os.open(path, _OPEN_DIR)  # a file there fails here: no cache, no warning
    after = os.fstat(dir_fd)
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or _refuse_folder(
        path, after
    ):
        os.close(dir_fd)
        return None
    return path, dir_fd


def _refuse_folder(path: Path, st: os.stat_result) -> bool:
    """Warn (once) and say True if the folder ``st`` describes is not one to trust."""
    if stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        return False  # not a folder at all: opening it fails, which only loses caching
    elif st.st_uid != os.geteuid():
        problem = f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif st.st_mode & 0o022:
        problem = f"group or others can write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    else:
        return False
    _warn_once(str(path), f"not using the cache folder {path}: {problem}; compiling without it")
    return True


def _make_folders(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for made in reversed(missing):
        try:
            os.mkdir(made, 0o700)
        except FileExistsError:
            continue  # made by another process meanwhile: the final folder is checked anyway
        fd = os.open(made, _OPEN_DIR)
        try:
            os.fchmod(fd, 0o700)  # the umask may have narrowed it; never widened
        finally:
            os.close(fd)


def _warn_once(what: str, message: str) -> None:
    with _lock:
        if what in _warned:
            return
        _warned.add(what)
    warnings.warn(message, CacheWarning, stacklevel=4)


# --- entries -------------------------------------------------------------------------------


def _load(path: Path, dir_fd: int, key: str) -> bytes | None:
    if not ENTRY_RE.fullmatch(key):
        return None
    secret = _secret(path, dir_fd, create=False)
    if secret is None:
        return None
    blob = _read_trusted(dir_fd, key + ENTRY_SUFFIX, MAX_ENTRY_BYTES, touch=True)
    head = len(MAGIC) + MAC_BYTES
    if blob is None or len(blob) < head or not blob.startswith(MAGIC):
        return None
    mac, payload = blob[len(MAGIC) : head], blob[head:]
    if not hmac.compare_digest(mac, _mac(secret, key, payload)) or not payload.startswith(ELF):
        return None  # corrupt, truncated, another key's, or not written by this user: rebuilt
    return payload


def _store(path: Path, dir_fd: int, key: str, payload: bytes) -> bool:
    secret = _secret(path, dir_fd, create=True)
    if secret is None:
        return False
    tmp = _write_new(dir_fd, MAGIC + _mac(secret, key, payload) + payload)
    try:
        os.replace(tmp, key + ENTRY_SUFFIX, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        _unlink(dir_fd, tmp)  # e.g. a directory at the entry's path: left alone
        raise
    return True


def _mac(secret: bytes, key: str, payload: bytes) -> bytes:
    # The key is covered too, so an entry renamed to another key fails its check.
    return hmac.new(secret, key.encode() + b"\0" + payload, hashlib.sha256).digest()


def _read_trusted(
    dir_fd: int, name: str, limit: int, touch: bool = False, private: bool = False
) -> bytes | None:
    """The bytes of ``name`` if it is a regular file of this user's that no one else can write
    (nor read, if ``private``), at most ``limit`` bytes long; None otherwise. Never follows a
    link, never blocks (a FIFO is opened without waiting for a writer, then refused), never
    reads more than ``limit``; FileNotFoundError if there is no such file."""
    forbidden = 0o077 if private else 0o022
    try:
        fd = os.open(name, _OPEN_READ, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError:
        return None  # a link (ELOOP), unreadable, ...
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_mode & forbidden
            or st.st_size > limit
        ):
            return None
        blob = _read_exactly(fd, st.st_size)
        if blob is not None and touch:
            with contextlib.suppress(OSError):
                os.utime(fd)  # a hit makes the entry young again: eviction is least recently used
        return blob
    finally:
        os.close(fd)


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts, left = [], size
    while left:
        part = os.read(fd, left)
        if not part:
            return None  # shrank while we read: another writer's business, not ours
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _write_new(dir_fd: int, data: bytes) -> str:
    """A new temporary file in the folder holding ``data`` (0600 whatever the umask); its name."""
    name = TMP_PREFIX + secrets.token_hex(8)
    fd = os.open(name, _OPEN_NEW, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        _unlink(dir_fd, name)
        raise
    os.close(fd)
    return name


def _unlink(dir_fd: int, name: str) -> bool:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True


# --- the secret ----------------------------------------------------------------------------


def _secret(path: Path, dir_fd: int, create: bool) -> bytes | None:
    """The folder's 32-byte secret; made if absent and ``create``; None (with a warning if the
    file is bad) when there is none to use."""
    try:
        secret = _read_trusted(dir_fd, SECRET, SECRET_BYTES, private=True)
    except FileNotFoundError:
        return _new_secret(path, dir_fd) if create else None
    if secret is None or len(secret) != SECRET_BYTES:
        _warn_once(
            f"{path}/{SECRET}",
            f"not using the cache folder {path}: its file {SECRET!r} is not a "
            f"{SECRET_BYTES}-byte regular file of this user's that only this user can read "
            "(delete it to start afresh)",
        )
        return None
    return secret


def _new_secret(path: Path, dir_fd: int) -> bytes | None:
    """Write a fresh secret to a temporary file, then link it into place: the link fails if
    another process got there first (whose secret is then read), and a reader never sees a
    half-written secret."""
    secret = secrets.token_bytes(SECRET_BYTES)
    tmp = _write_new(dir_fd, secret)
    try:
        os.link(tmp, SECRET, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return _secret(path, dir_fd, create=False)
    finally:
        _unlink(dir_fd, tmp)
    return secret


# --- the size cap and stale temporary files --------------------------------------------------


def _after_write(dir_fd: int, written: str, size: int, limit: int) -> None:
    """Scan the folder (stale temporary files, total size, eviction) on this process's first
    write to it, and later only when its writes may have taken the total past the cap: a scan
    costs one stat per file, an ordinary write nothing."""
    st = os.fstat(dir_fd)
    ident = (st.st_dev, st.st_ino)
    with _lock:
        known = _known_totals.get(ident)
        if known is not None and known + size <= limit:
            _known_totals[ident] = known + size
            return
    total = _scan(dir_fd, written, limit)
    with _lock:
        _known_totals[ident] = total


def _scan(dir_fd: int, keep: str, limit: int) -> int:
    """Remove stale temporary files, and the oldest entries (never ``keep``) if the total is over
    ``limit``; the entries' total size afterwards."""
    now, uid = time.time(), os.geteuid()
    entries, total = [], 0
    with os.scandir(dir_fd) as found:
        for item in found:
            with contextlib.suppress(OSError):
                st = item.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                    continue
                if item.name.startswith(TMP_PREFIX):
                    if now - st.st_mtime > STALE_SECONDS:
                        _unlink(dir_fd, item.name)
                elif item.name.endswith(ENTRY_SUFFIX) and ENTRY_RE.fullmatch(item.name[:-2]):
                    entries.append((st.st_mtime_ns, item.name, st.st_size))
                    total += st.st_size
    if total > limit:
        for _, name, size in sorted(entries):
            if total <= limit * LOW_WATER:
                break
            if name != keep and _unlink(dir_fd, name):
                total -= size
    return total
