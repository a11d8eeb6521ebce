"""What a launch record is made of: one entry's record, the store of contents and hashes, and
the last launch record of each set of paths.

Part of the end-of-run check (snapshot.py). An entry is recorded as its kind, mode and identity,
and for a file the SHA-256 of its content, whose bytes are kept in a content-addressed store in
the private state dir (so a change can be put back). Hashes are cached by (device, inode, size,
mtime, ctime), so a warm launch only stats; the cache is read only once a file must be hashed.

A venv inside the workspace is thousands of entries; a launch that built each one's record anew
(listing, sorting, a dict per entry, a hash-cache lookup per file) spent ~20 ms on it. So the
record of a set of paths is kept (`protect/records/`), and the next launch of the same paths
reuses it entry by entry where identity and times are unchanged (_reuse: one stat per entry, no
listing), sound for the reason the hash cache is: no unprivileged process sets a ctime back.
Blobs a kept record names are never collected; a kept record nobody used for a month is removed
when another is written.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat
import time
from collections.abc import Callable

from sandboxctl import cachedir
from sandboxctl.digest import sha256
from sandboxctl.paths import join, make_dirs, parent

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

MAX_BLOB = 4 << 20  # larger protected files are compared by hash but cannot be put back
MAX_CACHED = 8192  # hashes kept for the next runs (oldest first out): every run loads them all

BLOB_GRACE_S = 24 * 3600  # a blob made this recently is never collected (a launch in flight)
TAKING_S = 3600  # a launch's claim older than this is a stale one (its pid reused): collection goes on


class Store:
    """Blobs by SHA-256 and the hash cache, in the private state dir."""

    def __init__(self, state: str | PathLike[str], claim: Callable[[], None] | None = None):
        self.root = join(state, "protect")
        self.blobs = join(self.root, "blobs")
        self.cache_path = join(self.root, "hashes.marshal")
        self._cache: dict[tuple, str] | None = None  # read at the first file to hash (none: no read)
        self.dirty = False
        self.used: set[tuple] = set()
        self.claim = claim  # called before the cache is read: says "a launch takes hashes from it"

    @property
    def cache(self) -> dict[tuple, str]:
        if self._cache is None:
            if self.claim is not None:
                self.claim()
            try:
                with open(self.cache_path, "rb") as handle:
                    loaded = marshal.loads(handle.read())
            except (OSError, ValueError, EOFError, TypeError):
                loaded = {}
            self._cache = loaded if isinstance(loaded, dict) else {}
        return self._cache

    @cache.setter
    def cache(self, value: dict[tuple, str]) -> None:
        self._cache = value

    def digest(self, path: str, st: os.stat_result) -> str:
        """The file's SHA-256, from the cache when its identity and times are the ones hashed (a
        hit stats nothing more: the blob of a cached hash is never collected, see collect)."""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self.used.add(key)
        known = self.cache.get(key)
        if known:
            return known
        digest = sha256()
        keep = st.st_size <= MAX_BLOB
        chunks: list[bytes] = []
        with open(path, "rb", buffering=0) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
                if keep:
                    chunks.append(chunk)
        value = digest.hexdigest()
        if keep:
            self._put(value, b"".join(chunks))
        self.cache[key] = value
        self.dirty = True
        return value

    def _put(self, digest: str, data: bytes) -> None:
        target = join(self.blobs, digest)
        if self._fresh(digest):
            return
        make_dirs(self.blobs, 0o700)
        tmp = join(parent(target), f".{digest}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def blob(self, digest: str) -> bytes | None:
        try:
            with open(join(self.blobs, digest), "rb") as handle:
                return handle.read()
        except OSError:
            return None

    def _fresh(self, digest: str) -> bool:
        """The blob is there, and marked as used lately (collect() leaves it alone)."""
        try:
            mtime = os.stat(join(self.blobs, digest)).st_mtime
        except OSError:
            return False
        if mtime < time.time() - BLOB_GRACE_S / 2:
            with contextlib.suppress(OSError):
                os.utime(join(self.blobs, digest))
        return True

    def bound(self) -> int:
        """How many hashes the cache keeps: MAX_CACHED, or twice what this run used when that is
        more (a venv of 10 000 files inside the workspace must fit whole, with room for the other
        workspaces of this user, or every run hashes it again)."""
        return max(MAX_CACHED, 2 * len(self.used))

    def save(self) -> None:
        """Write the cache back. Past its bound it is cut to three quarters of that, the oldest
        first and never one this run used (it stays cheap to load; a dropped hash is only
        computed again), and the blobs nothing names any more are collected."""
        if not self.dirty and len(self.cache if self._cache is not None else ()) <= self.bound():
            return
        bound = self.bound()
        trimmed = len(self.cache) > bound
        if trimmed:
            spare = max(0, bound * 3 // 4 - len(self.used))
            others = [key for key in self.cache if key not in self.used]
            keep = set(others[len(others) - spare:] if spare else ()) | self.used
            self.cache = {key: value for key, value in self.cache.items() if key in keep}
        with contextlib.suppress(OSError):
            make_dirs(self.root, 0o700)
            tmp = join(self.root, f".hashes.{os.getpid()}.{os.urandom(4).hex()}")
            with open(tmp, "wb") as handle:
                handle.write(marshal.dumps(self.cache))
            os.replace(tmp, self.cache_path)
        self.dirty = False
        if trimmed:
            self.collect()

    def collect(self) -> None:
        """Remove the blobs that neither the cache, a kept record (load_kept) nor a pending
        journal (a run still going, or a killed one's) names and nobody used for BLOB_GRACE_S:
        contents of protected files as they were long ago. The grace covers a launch between
        writing its blobs and its journal; a launch reading hashes from the cache or a kept record
        has claimed a journal (`taking`) before it read them, and while one has, nothing is
        collected (its hits name blobs no journal names yet)."""
        from sandboxctl.protect.snapshot import journals, read_journal

        needed = set(self.cache.values())
        for journal in journals(parent(self.root)):
            with contextlib.suppress(OSError, ValueError):
                data = read_journal(journal)
                if data.get("taking") and os.stat(journal).st_mtime > time.time() - TAKING_S:
                    return
                needed |= _digests(data.get("entries") or {})
        for kept in all_kept(self.root):  # the next launch reuses their hashes
            needed |= _digests(kept)
        cutoff = time.time() - BLOB_GRACE_S
        with contextlib.suppress(OSError), os.scandir(self.blobs) as listing:
            for entry in listing:
                if entry.name in needed:
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)


def _digests(entries: dict[str, Any]) -> set[str]:
    """Every sha256 a journal's entries name, nested directories included."""
    found: set[str] = set()
    stack = list(entries.values())
    while stack:
        entry = stack.pop()
        if isinstance(entry, dict):
            if isinstance(entry.get("sha256"), str):
                found.add(entry["sha256"])
            stack += (entry.get("children") or {}).values()
    return found


def _record(path: str, store: Store, budget: list[int], previous: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"kind": "missing"}
    except OSError:
        return {"kind": "unreadable"}
    return _entry(path, st, store, budget, previous)


def _entry(path: str, st: os.stat_result, store: Store, budget: list[int],
           previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """An entry's record from its lstat. ctime (ns) is kept for the end-of-run check: an entry
    whose identity, size, mtime and ctime are unchanged was not changed (no unprivileged process
    sets a ctime; a write, chmod, link, rename or utimensat makes it now), so neither its hash nor
    a directory's listing is needed again. A directory's children are statted through its listing
    (fstatat: no path walk from / for each of a venv's 10 000 files). previous: the last launch's
    record of this entry (load_kept), reused wherever it is unchanged."""
    if previous is not None and unchanged(previous, st):
        reused = _reuse(path, st, store, budget, previous)
        if reused is not None:
            return reused
    mode = st.st_mode
    entry: dict[str, Any] = {"mode": stat.S_IMODE(mode), "dev": st.st_dev, "ino": st.st_ino, "ctime": st.st_ctime_ns}
    if stat.S_ISLNK(mode):
        try:
            entry.update(kind="symlink", target=os.readlink(path))
        except OSError:
            return {"kind": "unreadable"}
    elif stat.S_ISDIR(mode):
        children: dict[str, Any] = {}
        complete = True
        with contextlib.suppress(OSError), os.scandir(path) as listing:
            for child in sorted(listing, key=lambda e: e.name):
                if budget[0] <= 0:
                    complete = False  # what was not recorded is neither compared nor removed
                    break
                budget[0] -= 1
                try:
                    child_st = child.stat(follow_symlinks=False)
                except FileNotFoundError:
                    children[child.name] = {"kind": "missing"}
                    continue
                except OSError:
                    children[child.name] = {"kind": "unreadable"}
                    continue
                children[child.name] = _entry(child.path, child_st, store, budget)
        entry.update(kind="dir", children=children, complete=complete)
    elif stat.S_ISREG(mode):
        try:
            entry.update(kind="file", size=st.st_size, mtime=st.st_mtime_ns, sha256=store.digest(path, st))
        except OSError:
            entry.update(kind="unreadable")
    else:
        entry.update(kind="other")
    return entry


def _reuse(path: str, st: os.stat_result, store: Store, budget: list[int],
           previous: dict[str, Any]) -> dict[str, Any] | None:
    """The previous record of an unchanged entry, refreshed: a file's is itself (its hash holds);
    a directory's names are the same (its ctime would have moved), so its children are statted by
    name and each refreshed in turn. None: record it afresh (a listing that cannot be read, or
    the budget would cut it)."""
    kind = previous.get("kind")
    if kind == "file":
        store.used.add((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return previous
    if kind == "symlink":
        return previous
    children = previous.get("children")
    if not isinstance(children, dict) or not previous.get("complete", True) or budget[0] < len(children):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    fresh: dict[str, Any] = {}
    same = True
    start = budget[0]
    try:
        budget[0] -= len(children)
        used = store.used
        for name, before in children.items():
            try:
                child_st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                budget[0] = start  # it was there (the directory is unchanged): a race, record it afresh
                return None
            if (before.get("kind") == "file" and before.get("ctime") == child_st.st_ctime_ns  # unchanged(), inlined:
                    and before.get("mtime") == child_st.st_mtime_ns and before.get("ino") == child_st.st_ino
                    and before.get("size") == child_st.st_size and before.get("dev") == child_st.st_dev
                    and before.get("mode") == child_st.st_mode & 0o7777 and stat.S_ISREG(child_st.st_mode)):
                used.add((child_st.st_dev, child_st.st_ino, child_st.st_size, child_st.st_mtime_ns,
                          child_st.st_ctime_ns))
                fresh[name] = before  # most of a venv's entries: one stat and this
                continue
            now = _entry(f"{path}/{name}", child_st, store, budget, before)
            same = same and now is before
            fresh[name] = now
    finally:
        os.close(fd)
    return previous if same else {**previous, "children": fresh}


def unchanged(before: dict[str, Any], st: os.stat_result) -> bool:
    """The entry is the one recorded, by identity and times alone (see _entry): for a file,
    same inode, mode, size, mtime and ctime; for a directory, same inode, mode and ctime (no name
    in it was added, removed or renamed). A record without ctime (a journal of an older
    version) never is."""
    ctime = before.get("ctime")
    if ctime is None or ctime != st.st_ctime_ns or before.get("ino") != st.st_ino or before.get("dev") != st.st_dev:
        return False
    if before.get("mode") != stat.S_IMODE(st.st_mode):
        return False
    kind = before.get("kind")
    if kind == "file":
        return stat.S_ISREG(st.st_mode) and before.get("size") == st.st_size and before.get("mtime") == st.st_mtime_ns
    if kind == "dir":
        return stat.S_ISDIR(st.st_mode)
    if kind == "symlink":  # a symlink's target is never changed in place: only replaced (a new inode)
        return stat.S_ISLNK(st.st_mode)
    return False


RECORD_VERSION = 1  # the format of an entry's record (store._entry): bumped, older records are not read


def _record_file(root: str | PathLike[str], paths: tuple[str, ...]) -> str:
    key = sha256("\0".join((str(RECORD_VERSION), *paths)).encode()).hexdigest()[:24]
    return join(root, "records", f"{key}.marshal")


def load_kept(root: str | PathLike[str], paths: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The kept record of exactly these paths, or {} (none, another version, not ours)."""
    path = _record_file(root, paths)
    try:
        st = os.lstat(path)
        if st.st_uid != os.getuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            return {}
        with open(path, "rb") as handle:
            version, kept_paths, entries = marshal.loads(handle.read())
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if version != RECORD_VERSION or kept_paths != paths or not isinstance(entries, dict):
        return {}
    cachedir.mark_used(path, st.st_mtime)
    return entries


def save_kept(root: str | PathLike[str], paths: tuple[str, ...], entries: dict[str, dict[str, Any]]) -> None:
    path = _record_file(root, paths)
    directory = parent(path)
    with contextlib.suppress(OSError):
        make_dirs(directory, 0o700)
        tmp = join(directory, f".{path.rpartition('/')[2]}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(marshal.dumps((RECORD_VERSION, paths, entries)))
        os.replace(tmp, path)
        _prune_kept(directory)


def _prune_kept(directory: str) -> None:
    cutoff = time.time() - cachedir.UNUSED_S
    with contextlib.suppress(OSError), os.scandir(directory) as listing:
        for entry in listing:
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)


def all_kept(root: str | PathLike[str]) -> list[dict[str, dict[str, Any]]]:
    """Every kept record's entries (what store.collect must not take the blobs of)."""
    found = []
    with contextlib.suppress(OSError), os.scandir(join(root, "records")) as listing:
        for entry in listing:
            if entry.name.startswith("."):
                continue
            with contextlib.suppress(OSError, ValueError, EOFError, TypeError):
                with open(entry.path, "rb") as handle:
                    _version, _paths, entries = marshal.loads(handle.read())
                if isinstance(entries, dict):
                    found.append(entries)
    return found
