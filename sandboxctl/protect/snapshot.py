"""The end-of-run check: what each protected path held at launch, compared when the run ends.

At launch every existing protected entry is recorded (kind, mode, identity, and for files the
SHA-256 of the content, whose bytes are kept in a content-addressed store in the private state
dir so they can be put back); absent protected names are recorded as absent. When the run ends
— after every sandboxed process is gone — each one is compared. A change is put back and the
changed content is kept aside (`<state>/protect/kept/<run>/…`), each reported as a `protect`
event. The record is a journal in the state dir: if the supervisor is killed, the next run (or
`sandboxctl doctor`) finishes the check for it.

Hashes are cached by (device, inode, size, mtime, ctime), so a warm launch only stats.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

from sandboxctl.digest import sha256
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

MAX_BLOB = 4 << 20  # larger protected files are compared by hash but cannot be put back
MAX_ENTRIES = 20_000  # a protected directory larger than this is recorded down to this many entries
MAX_CACHED = 8192  # hashes kept for the next runs (oldest first out): every run loads them all
BLOB_GRACE_S = 24 * 3600  # a blob used or made this recently is never collected (a launch in flight)


class Change(Record):
    path: str
    change: str  # created | modified | removed | replaced
    action: str  # restored | kept aside | removed | reported
    kept: str | None = None  # where the changed content was kept
    run: str = ""  # the run whose launch record this compares against


def _pending(state: Path) -> Path:
    return state / "protect" / "pending"


class Store:
    """Blobs by SHA-256 and the hash cache, in the private state dir."""

    def __init__(self, state: Path):
        self.root = state / "protect"
        self.blobs = self.root / "blobs"
        self.cache_path = self.root / "hashes.marshal"
        try:
            self.cache: dict[tuple, str] = marshal.loads(self.cache_path.read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            self.cache = {}
        self.dirty = len(self.cache) > MAX_CACHED  # a cache of an older version, unbounded: trim it
        self.used: set[tuple] = set()

    def digest(self, path: str, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        self.used.add(key)
        known = self.cache.get(key)
        if known and (st.st_size > MAX_BLOB or self._fresh(known)):
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
        target = self.blobs / digest
        if self._fresh(digest):
            return
        self.blobs.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{digest}.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def blob(self, digest: str) -> bytes | None:
        try:
            return (self.blobs / digest).read_bytes()
        except OSError:
            return None

    def _fresh(self, digest: str) -> bool:
        """The blob is there, and marked as used lately (collect() leaves it alone)."""
        try:
            mtime = os.stat(self.blobs / digest).st_mtime
        except OSError:
            return False
        if mtime < time.time() - BLOB_GRACE_S / 2:
            with contextlib.suppress(OSError):
                os.utime(self.blobs / digest)
        return True

    def save(self) -> None:
        """Write the cache back. Past MAX_CACHED hashes it is cut to three quarters of that, the
        oldest first and never one this run used (it stays cheap to load; a dropped hash is only
        computed again), and the blobs nothing names any more are collected."""
        if not self.dirty:
            return
        trimmed = len(self.cache) > MAX_CACHED
        if trimmed:
            spare = max(0, MAX_CACHED * 3 // 4 - len(self.used))
            others = [key for key in self.cache if key not in self.used]
            keep = set(others[len(others) - spare:] if spare else ()) | self.used
            self.cache = {key: value for key, value in self.cache.items() if key in keep}
        with contextlib.suppress(OSError):
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self.cache_path.with_name(f".hashes.{os.getpid()}.{os.urandom(4).hex()}")
            tmp.write_bytes(marshal.dumps(self.cache))
            os.replace(tmp, self.cache_path)
        self.dirty = False
        if trimmed:
            self.collect()

    def collect(self) -> None:
        """Remove the blobs that neither the cache nor a pending journal (a run still going, or a
        killed one's) names and nobody used for BLOB_GRACE_S: contents of protected files as they
        were long ago. The grace covers a launch between writing its blobs and its journal."""
        needed = set(self.cache.values())
        with contextlib.suppress(OSError):
            for journal in (self.root / "pending").glob("*.json"):
                with contextlib.suppress(OSError, ValueError):
                    needed |= _digests(json.loads(journal.read_text()).get("entries") or {})
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


def _record(path: str, store: Store, budget: list[int]) -> dict[str, Any]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return {"kind": "missing"}
    except OSError:
        return {"kind": "unreadable"}
    entry: dict[str, Any] = {"mode": stat.S_IMODE(st.st_mode), "dev": st.st_dev, "ino": st.st_ino}
    if stat.S_ISLNK(st.st_mode):
        entry.update(kind="symlink", target=os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        children: dict[str, Any] = {}
        complete = True
        with contextlib.suppress(OSError), os.scandir(path) as listing:
            for child in sorted(listing, key=lambda e: e.name):
                if budget[0] <= 0:
                    complete = False  # what was not recorded is neither compared nor removed
                    break
                budget[0] -= 1
                children[child.name] = _record(child.path, store, budget)
        entry.update(kind="dir", children=children, complete=complete)
    elif stat.S_ISREG(st.st_mode):
        try:
            entry.update(kind="file", size=st.st_size, sha256=store.digest(path, st))
        except OSError:
            entry.update(kind="unreadable")
    else:
        entry.update(kind="other")
    return entry


class Snapshot:
    """One run's launch record of its protected paths, and the check at its end."""

    def __init__(self, state: Path, run_id: str):
        self.state = state
        self.run_id = run_id
        self.journal = _pending(state) / f"{os.getpid()}-{run_id}.json"
        self.entries: dict[str, dict[str, Any]] = {}
        self.wall_whole = False  # until the supervisor knows the layers: assume the sandbox could write
        self.json_patterns: dict[str, list[str]] = {}
        self.json_values: dict[str, dict[str, Any]] = {}
        self.store: Store | None = None

    def take(self, existing: tuple[str, ...], absent: tuple[str, ...],
             json_keys: tuple[tuple[str, str], ...] = ()) -> None:
        from sandboxctl.protect import jsonkeys

        store = self.store = Store(self.state)
        budget = [MAX_ENTRIES]
        self.entries = {path: _record(path, store, budget) for path in existing}
        self.entries.update({path: {"kind": "missing"} for path in absent if path not in self.entries})
        self.json_patterns = {}
        for path, keys in json_keys:
            self.json_patterns.setdefault(path, []).append(keys)
        self.json_values = jsonkeys.record(json_keys)
        for path, entry in self.entries.items():
            entry["parent"] = os.path.realpath(os.path.dirname(path))  # checked again at the end
        store.save()
        self._write()

    def _write(self) -> None:
        self.journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.journal.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as handle:  # json.dumps: C's encoder (json.dump is Python's, ~1 ms here)
            handle.write(json.dumps({"run": self.run_id, "entries": self.entries, "wall_whole": self.wall_whole,
                                     "json_patterns": self.json_patterns, "json_values": self.json_values}))
        os.replace(tmp, self.journal)

    def inodes(self) -> dict[tuple[int, int], str]:
        """(device, inode) of every protected file at launch: another name for one (a hardlink
        made before the run) is just as protected."""
        found: dict[tuple[int, int], str] = {}

        def walk(path: str, entry: dict[str, Any]) -> None:
            if entry.get("kind") in ("file", "dir") and "ino" in entry:
                found[(entry["dev"], entry["ino"])] = f"protected: {path}"
            for name, child in (entry.get("children") or {}).items():
                walk(f"{path}/{name}", child)

        for path, entry in self.entries.items():
            walk(path, entry)
        return found

    @property
    def active(self) -> bool:
        return bool(self.entries or self.json_patterns)

    def mark(self, wall_whole: bool) -> None:
        """Once the layers are known: whether the sandbox could write protected paths at all
        (read by the next run if this supervisor is killed)."""
        self.wall_whole = wall_whole
        self._write()

    def beat(self) -> None:
        """The supervisor is alive (the journal's mtime): a change newer than the last beat of a
        killed run is not the sandbox's, which died with it."""
        with contextlib.suppress(OSError):
            os.utime(self.journal)

    def check(self) -> list[Change]:
        """Compare; where the sandbox could have made a change (the kernel wall was not whole:
        gVisor, no Landlock), put it back and keep it aside; else report it and leave it (an IDE's
        or the user's own work while the run went on). Then forget the journal."""
        whole = self.wall_whole
        changes = compare_and_restore(self.state, self.run_id, self.entries, lambda path: not whole, self.store)
        changes += restore_json_keys(self.state, self.run_id, self.json_patterns, self.json_values)
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
        return changes


def compare_and_restore(state: Path, run_id: str, entries: dict[str, dict[str, Any]],
                        restore: Callable[[str], bool] = lambda path: True,
                        store: Store | None = None) -> list[Change]:
    """restore(path): whether a change found at path is put back (else only reported): a change
    the sandbox could not have made (the kernel wall was whole; it came later than the run) is
    somebody else's work — an IDE's, the user's own git — and is left as it is. store: the
    launch's own, when there is one (the hash cache is loaded once a run)."""
    store = store or Store(state)
    changes: list[Change] = []
    for path, before in entries.items():
        if "parent" in before and os.path.realpath(os.path.dirname(path)) != before["parent"]:
            # a parent was replaced (by a symlink, say .config -> ~/.config): comparing and restoring
            # through it would write where the path now leads, outside the grant
            changes.append(Change(path, "replaced", "reported", None, run_id))
            continue
        _compare(path, before, store, state, run_id, changes, restore)
    store.save()
    return changes


def _same(before: dict[str, Any], now: dict[str, Any]) -> bool:
    if before.get("kind") != now.get("kind"):
        return False
    kind = before.get("kind")
    if kind == "file":
        return before.get("sha256") == now.get("sha256") and before.get("mode") == now.get("mode")
    if kind == "symlink":
        return before.get("target") == now.get("target")
    if kind == "dir":
        return before.get("mode") == now.get("mode")
    return True


def _compare(path: str, before: dict[str, Any], store: Store, state: Path, run_id: str,
             changes: list[Change], restore: Callable[[str], bool]) -> None:
    now = _record(path, store, [0])  # children are compared one by one below
    if before.get("kind") in ("unreadable", "other"):
        return
    if before.get("kind") == "dir" and now.get("kind") == "dir":
        if before.get("mode") != now.get("mode"):
            act = restore(path)
            if act:
                with contextlib.suppress(OSError):
                    os.chmod(path, before["mode"])
            changes.append(Change(path, "modified", "restored" if act else "reported", None, run_id))
        old = before.get("children") or {}
        try:
            current = set(os.listdir(path))
        except OSError:
            current = set()
        for name, child in old.items():
            _compare(f"{path}/{name}", child, store, state, run_id, changes, restore)
        for name in sorted(current - set(old)) if before.get("complete", True) else ():
            added = f"{path}/{name}"
            kept = _keep_aside(added, state, run_id) if restore(added) else None
            changes.append(Change(added, "created", "removed" if kept else "reported", kept, run_id))
        return
    if _same(before, now):
        return
    if now.get("kind") == "missing":
        change = "removed"
    elif before.get("kind") == "missing":
        change = "created"
    elif before.get("kind") != now.get("kind"):
        change = "replaced"
    else:
        change = "modified"
    if not restore(path):
        changes.append(Change(path, change, "reported", None, run_id))
        return
    kept = _keep_aside(path, state, run_id) if now.get("kind") != "missing" else None
    if now.get("kind") != "missing" and kept is None:
        changes.append(Change(path, change, "reported", None, run_id))
        return
    restored = _restore(path, before, store)
    action = "removed" if before.get("kind") == "missing" else "restored" if restored else "kept aside"
    changes.append(Change(path, change, action, kept, run_id))


def _keep_aside(path: str, state: Path, run_id: str) -> str | None:
    """Move what a run left at a protected path into <state>/protect/kept/<run>/ (a copy when the
    state dir is on another file system); None if it could not be moved."""
    target = state / "protect" / "kept" / run_id / path.lstrip("/")
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        n = 1
        while os.path.lexists(target):
            target = target.with_name(f"{target.name}.{n}")
            n += 1
        try:
            os.rename(path, target)
        except OSError:
            import shutil  # rarely needed (another file system): not imported by every run

            if os.path.isdir(path) and not os.path.islink(path):
                shutil.copytree(path, target, symlinks=True)
                shutil.rmtree(path)
            else:
                shutil.copy2(path, target, follow_symlinks=False)
                os.unlink(path)
    except OSError:
        return None
    return str(target)


def _restore(path: str, before: dict[str, Any], store: Store) -> bool:
    kind = before.get("kind")
    try:
        if kind == "missing":
            return True
        if kind == "symlink":
            os.symlink(before["target"], path)
            return True
        if kind == "dir":
            os.mkdir(path, before.get("mode", 0o755))
            for name, child in (before.get("children") or {}).items():
                _restore(f"{path}/{name}", child, store)
            return True
        if kind == "file":
            data = store.blob(before.get("sha256", ""))
            if data is None:
                return False
            tmp = f"{path}.sandboxctl-restore.{os.getpid()}.{os.urandom(4).hex()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, before.get("mode", 0o644))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, before.get("mode", 0o644))
            os.replace(tmp, path)
            return True
    except OSError:
        return False
    return False


HEARTBEAT_S = 2.0


def _changed_before(path: str, last_beat: int) -> bool:
    try:
        return os.lstat(path).st_ctime_ns <= last_beat
    except OSError:
        return True


def restore_json_keys(state: Path, run_id: str, patterns: dict[str, list[str]], before: dict[str, dict[str, Any]],
                      restore: Callable[[str], bool] = lambda path: True) -> list[Change]:
    """Keys of writable JSON files (filesystem.protect_json) the sandbox could change: put back,
    with the changed file kept aside (its other contents, the agent's state, stay)."""
    from sandboxctl.protect import jsonkeys

    changes: list[Change] = []
    for path, keys in patterns.items():
        differ = jsonkeys.changed(path, before.get(path, {}), keys)
        if not differ:
            continue
        label = f"{path}#{','.join(differ)}"
        if not restore(path):
            changes.append(Change(label, "modified", "reported", None, run_id))
            continue
        kept = state / "protect" / "kept" / run_id / path.lstrip("/")
        try:
            import shutil  # only when a protected JSON file changed: not imported by every run

            kept.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.copy2(path, kept)
            kept_path: str | None = str(kept)
        except OSError:
            kept_path = None
        done = jsonkeys.put_back(path, before.get(path, {}), differ)
        changes.append(Change(label, "modified", "restored" if done else "reported", kept_path, run_id))
    return changes


def recover(state: Path, alive) -> list[Change]:
    """Finish the end-of-run check of supervisors that were killed (their journal remains). Only
    a change the sandbox could have made is put back: none where its kernel wall was whole, and
    none newer than the supervisor's last heartbeat (the sandbox died with it; what changed since
    is the user's own work). The rest is reported."""
    changes: list[Change] = []
    with contextlib.suppress(OSError):
        for journal in sorted(_pending(state).glob("*.json")):
            owner = journal.name.split("-", 1)[0]
            if not owner.isdigit() or alive(int(owner)):
                continue
            try:
                data = json.loads(journal.read_text())
                last_beat = journal.stat().st_mtime_ns + int(HEARTBEAT_S * 1.5 * 1e9)
            except (OSError, ValueError):
                journal.unlink(missing_ok=True)
                continue
            whole = bool(data.get("wall_whole"))

            def before_death(path: str, last_beat: int = last_beat, whole: bool = whole) -> bool:
                if whole:
                    return False
                try:
                    return os.lstat(path).st_ctime_ns <= last_beat
                except OSError:
                    return True  # removed: when is not known; the sandbox could have done it

            run = str(data.get("run", ""))
            changes += compare_and_restore(state, run, data.get("entries") or {}, before_death)
            changes += restore_json_keys(state, run, data.get("json_patterns") or {}, data.get("json_values") or {},
                                         lambda path, last_beat=last_beat: _changed_before(path, last_beat))
            journal.unlink(missing_ok=True)
    return changes


def new_repositories(roots: tuple[str, ...], known: tuple[str, ...], workspace: str | None, state: Path,
                     run_id: str) -> list[Change]:
    """Where nothing stopped a repository being made during the run (gVisor has no mediation):
    find the ones that were not there at launch and keep aside what of them runs code or looks
    elsewhere (config, hooks, commondir, info, alternates, or a `gitdir:` file itself). What is
    left (objects, refs, HEAD) is still a repository, one that runs nothing of its own."""
    from sandboxctl.protect import names
    from sandboxctl.protect.index import scan

    changes: list[Change] = []
    seen = set(known)
    for root in roots:
        index = scan(root, (), state / "cache", deep=root == workspace)
        for repository in index.repositories:
            if repository in seen:
                continue
            gitdir = repository
            if os.path.islink(repository) or os.path.isfile(repository):
                kept = _keep_aside(repository, state, run_id)
                changes.append(Change(repository, "created", "removed" if kept else "reported", kept, run_id))
                continue
            for name in (*names.GITDIR_NAMES, "objects/info/alternates", "objects/info/http-alternates"):
                if name in ("modules", "worktrees", "config.lock", "config.worktree.lock"):
                    continue
                path = f"{gitdir}/{name}"
                if os.path.lexists(path):
                    kept = _keep_aside(path, state, run_id)
                    changes.append(Change(path, "created", "removed" if kept else "reported", kept, run_id))
    return changes
