"""The end-of-run check: what each protected path held at launch, compared when the run ends.

At launch every existing protected entry is recorded (kind, mode, identity, and for files the
SHA-256 of the content, whose bytes are kept in a content-addressed store in the private state
dir so they can be put back); absent protected names are recorded as absent. When the run ends
— after every sandboxed process is gone — each one is compared. A change is put back and the
changed content is kept aside (`<state>/protect/kept/<run>/…`), each reported as a `protect`
event. The record is a journal in the state dir: if the supervisor is killed, the next run (or
`sandboxctl doctor`) finishes the check for it.

Hashes are cached by (device, inode, size, mtime, ctime), so a warm launch only stats; the cache
is read only once a file must be hashed (a workspace whose protected names are all absent reads
nothing). The last launch record of the same paths is reused entry by entry where those are
unchanged (a venv inside the workspace: one stat per entry at launch, one at the end). The
journal is marshal, its entries encoded once (version 2; a version-1 JSON journal is still read).

  snapshot.py  the run's journal (Snapshot: take, mark, beat, check) and a killed run's recovery
  store.py     one entry's record; the blobs by SHA-256, the hash cache and the kept records
  restore.py   the comparison at the end, putting back and keeping aside; JSON keys; repositories
               made where nothing mediated (gVisor)
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat

from sandboxctl.paths import join, make_dirs, parent, suffix
from sandboxctl.paths import name as file_name
from sandboxctl.protect.restore import (  # noqa: F401 - imported from here
    Change,
    _RealParents,
    compare_and_restore,
    new_glob_names,
    new_repositories,
    restore_json_keys,
)
from sandboxctl.protect.store import (  # noqa: F401 - imported from here
    BLOB_GRACE_S,
    MAX_BLOB,
    MAX_CACHED,
    Store,
    _record,
    load_kept,
    save_kept,
)

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

MAX_ENTRIES = 20_000  # a protected directory larger than this is recorded down to this many entries
JOURNAL_VERSION = 2  # 2: marshal, entries encoded apart (1: JSON, `<pid>-<run>.json`, still read)
JOURNAL_SUFFIXES = (".journal", ".json")


def _pending(state: str | PathLike[str]) -> str:
    return join(state, "protect", "pending")


def read_journal(path: str | PathLike[str]) -> dict[str, Any]:
    """A journal of either version, entries decoded (ValueError if it is not one)."""
    with open(path, "rb") as handle:
        raw = handle.read()
    if suffix(path) == ".json":  # the first version's (json is imported only for one: ~2 ms of every run)
        import json

        data = json.loads(raw)
    else:
        try:
            data = marshal.loads(raw)
            if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
                raise ValueError("not a journal of this version")
            data["entries"] = marshal.loads(data.get("entries") or marshal.dumps({}))
        except (EOFError, TypeError) as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise ValueError("not a journal")
    return data


def owner_alive(journal: str | PathLike[str], data: dict[str, Any] | None, alive) -> bool:
    """Whether the supervisor that wrote this journal still runs: its pid is alive and, where
    the journal says when it started, that pid is still the same process (a killed supervisor's
    pid reused — by a host process, by a sandbox's — made its journal look live for as long as
    that process ran: never recovered, and taken as an earlier run's record by every launch).
    Alive when it cannot be told (the start cannot be read): a live run's journal is never recovered."""
    owner = file_name(journal).split("-", 1)[0]
    if not owner.isdigit() or not alive(int(owner)):
        return False
    started = (data or {}).get("owner_start")
    if not isinstance(started, int):
        return True
    from sandboxctl.supervise.processes import start_time

    now = start_time(int(owner))
    return now is None or now == started


def journals(state: str | PathLike[str]) -> list[str]:
    pending = _pending(state)
    with contextlib.suppress(OSError):
        return sorted(path for path in (join(pending, entry) for entry in os.listdir(pending))
                      if suffix(path) in JOURNAL_SUFFIXES)
    return []


class Snapshot:
    """One run's launch record of its protected paths, and the check at its end."""

    def __init__(self, state: str | PathLike[str], run_id: str):
        self.state = state
        self.run_id = run_id
        self.journal = join(_pending(state), f"{os.getpid()}-{run_id}.journal")
        self.entries: dict[str, dict[str, Any]] = {}  # what this launch found (identities: inodes())
        self.targets: dict[str, dict[str, Any]] = {}  # what the check puts back: earlier live runs' parts taken
        self.wall_whole = False  # until the supervisor knows the layers: assume the sandbox could write
        self.json_patterns: dict[str, list[str]] = {}
        self.json_values: dict[str, dict[str, Any]] = {}
        self.store: Store | None = None
        self._entries_encoded: bytes | None = None  # the entries as the journal holds them (encoded once)
        self._claimed = False
        self.contested: set[str] = set()  # recorded otherwise by an earlier live run: its record taken
        self.taken_ns = 0
        self._owner_start: int | None = None

    def take(self, existing: tuple[str, ...], absent: tuple[str, ...],
             json_keys: tuple[tuple[str, str], ...] = ()) -> None:
        from sandboxctl.protect import jsonkeys

        store = self.store = Store(self.state, self._claim)
        self._entries_encoded = None
        budget = [MAX_ENTRIES]
        paths = tuple(existing)
        previous = load_kept(store.root, paths) if paths else {}
        if previous:
            self._claim()  # its hashes name blobs, as the cache's do
        self.entries = {path: _record(path, store, budget, previous.get(path)) for path in paths}
        reused = all(self.entries[path] is previous.get(path) for path in paths)
        self.entries.update({path: {"kind": "missing"} for path in absent if path not in self.entries})
        self.json_patterns = {}
        for path, keys in json_keys:
            self.json_patterns.setdefault(path, []).append(keys)
        self.json_values = jsonkeys.record(json_keys)
        real_parent = _RealParents()
        for path, entry in self.entries.items():
            parent = real_parent(path)  # checked again at the end
            reused = reused and (path not in previous or entry.get("parent") == parent)
            entry["parent"] = parent
        if paths and not reused:
            save_kept(store.root, paths, {path: self.entries[path] for path in paths})
        store.save()
        import time

        self.taken_ns = time.time_ns()
        self.targets = dict(self.entries)
        self.contested = self._adopt_earlier()
        self._write()

    def _adopt_earlier(self) -> set[str]:
        """Take from every other live run's journal (its supervisor alive) the parts it recorded
        otherwise — the oldest run's win — as what this run's check puts back (protect/contest.py:
        what another sandbox may have written is never planted again, nor left in place)."""
        from sandboxctl.supervise.processes import alive

        others = []
        for journal in journals(self.state):
            if file_name(journal) == file_name(self.journal):
                continue
            with contextlib.suppress(OSError, ValueError):
                data = read_journal(journal)
                if not data.get("taking") and owner_alive(journal, data, alive):
                    others.append(data)
        taken: set[str] = set()
        if not others:
            return taken  # a run alone: contest.py is not even imported
        from sandboxctl.protect import contest

        for data in sorted(others, key=lambda d: d.get("taken_ns") or 0, reverse=True):  # the oldest last
            theirs = data.get("entries") or {}
            if not data.get("wall_whole"):  # a whole wall: what differs was changed outside it, not taken
                for path, target in self.targets.items():
                    if path in theirs and isinstance(theirs[path], dict):
                        self.targets[path] = contest.adopt(path, target, theirs[path], taken)
            values, patterns = data.get("json_values") or {}, data.get("json_patterns") or {}
            if isinstance(values, dict) and values:
                same = {path for path, keys in self.json_patterns.items() if patterns.get(path) == keys}
                self.json_values = contest.adopt_keys(self.json_values, values, same, taken)
        return taken

    def _claim(self) -> None:
        """Before the hash cache or a kept record is read: a journal that says this launch is taking
        its record, so that no other run collects a blob this one found there (store.collect)."""
        if self._claimed:
            return
        self._claimed = True
        self._write_journal({"version": JOURNAL_VERSION, "run": self.run_id, "taking": True,
                             "entries": marshal.dumps({})})

    def _write(self) -> None:
        """The journal: the entries are encoded once a run (a venv's record is a megabyte) and
        the same bytes go into each version of it (take, then mark). Once written it names every
        blob this run needs: no claim may replace it (the check may read the cache too)."""
        self._claimed = True
        if self._entries_encoded is None:
            self._entries_encoded = marshal.dumps(self.targets)
        self._write_journal({"version": JOURNAL_VERSION, "run": self.run_id, "wall_whole": self.wall_whole,
                             "taken_ns": self.taken_ns,
                             "json_patterns": self.json_patterns, "json_values": self.json_values,
                             "entries": self._entries_encoded, "contested": sorted(self.contested)})

    def _write_journal(self, data: dict[str, Any]) -> None:
        if self._owner_start is None:
            from sandboxctl.supervise.processes import start_time

            self._owner_start = start_time(os.getpid()) or -1  # -1: unknown (a live owner is never judged dead)
        if self._owner_start >= 0:
            data["owner_start"] = self._owner_start  # with the pid in its name, which process wrote it
        make_dirs(parent(self.journal), 0o700)
        tmp = self.journal[:len(self.journal) - len(suffix(self.journal))] + ".tmp"  # Path.with_suffix
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(marshal.dumps(data))
        os.replace(tmp, self.journal)

    def incomplete(self) -> bool:
        """Whether a protected directory was recorded only in part (past MAX_ENTRIES): what was
        left out has no identity in inodes(), so another name for it cannot be told apart."""
        return self.cut_short() is not None

    def cut_short(self) -> str | None:
        """The first protected directory recorded only in part (what the user is told), if any."""
        def cut(path: str, entry: dict[str, Any]) -> str | None:
            if entry.get("complete") is False:
                return path
            for name, child in (entry.get("children") or {}).items():
                found = cut(f"{path}/{name}", child)
                if found:
                    return found
            return None

        return next((found for path, entry in self.entries.items() if (found := cut(path, entry))), None)

    def left_out_linked(self) -> str | None:
        """A regular file left out of a record cut short (past MAX_ENTRIES) that has another name
        (a hardlink: uv links venvs to its cache), if there is one. Where nothing mediates the
        sandbox's writes (gVisor) the read-only binds hold the protected names only, so such a
        file could be rewritten through its other name, and the end-of-run check, which never
        recorded it, would not see it (red team rt5). Walks only what the record left out (lstat,
        no hashing) and stops at the first one found."""
        def walk(path: str, entry: dict[str, Any]) -> str | None:
            children = entry.get("children") or {}
            for name, child in children.items():
                if child.get("kind") == "dir":
                    found = walk(f"{path}/{name}", child)
                    if found:
                        return found
            if entry.get("complete") is not False:
                return None
            with contextlib.suppress(OSError), os.scandir(path) as listing:
                for item in listing:
                    if item.name in children:
                        continue
                    try:
                        st = item.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                        return item.path
                    if stat.S_ISDIR(st.st_mode):
                        found = walk(item.path, {"complete": False})
                        if found:
                            return found
            return None

        for path, entry in self.entries.items():
            if entry.get("kind") == "dir":
                found = walk(path, entry)
                if found:
                    return found
        return None

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
        changes = compare_and_restore(self.state, self.run_id, self.targets or self.entries,
                                      lambda path: not whole, self.store)
        changes += restore_json_keys(self.state, self.run_id, self.json_patterns, self.json_values)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal)
        return changes


HEARTBEAT_S = 2.0


def _changed_before(path: str, last_beat: int) -> bool:
    try:
        return os.lstat(path).st_ctime_ns <= last_beat
    except OSError:
        return True  # removed: when is not known; the sandbox could have done it


def recover(state: str | PathLike[str], alive) -> list[Change]:
    """Finish the end-of-run check of supervisors that were killed (their journal remains). Only
    a change the sandbox could have made is put back: none where its kernel wall was whole, and
    none newer than the supervisor's last heartbeat (the sandbox died with it; what changed since
    is the user's own work). The rest is reported."""
    changes: list[Change] = []
    with contextlib.suppress(OSError):
        for journal in journals(state):
            owner = file_name(journal).split("-", 1)[0]
            if not owner.isdigit():
                continue
            try:
                data = read_journal(journal)
            except (OSError, ValueError):
                if not alive(int(owner)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(journal)
                continue
            if owner_alive(journal, data, alive):
                continue
            try:
                last_beat = os.stat(journal).st_mtime_ns + int(HEARTBEAT_S * 1.5 * 1e9)
            except OSError:
                continue
            whole = bool(data.get("wall_whole"))

            def before_death(path: str, last_beat: int = last_beat, whole: bool = whole) -> bool:
                # a protected entry changed where the kernel wall was whole was not the sandbox's doing;
                # JSON keys (below) have no kernel wall: only the heartbeat decides for them
                return not whole and _changed_before(path, last_beat)

            run = str(data.get("run", ""))
            changes += compare_and_restore(state, run, data.get("entries") or {}, before_death)
            changes += restore_json_keys(state, run, data.get("json_patterns") or {}, data.get("json_values") or {},
                                         lambda path, last_beat=last_beat: _changed_before(path, last_beat))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(journal)
    return changes
