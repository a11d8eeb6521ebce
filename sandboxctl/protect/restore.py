"""The comparison at the end of a run, and the putting back of what changed.

Part of the end-of-run check (snapshot.py). Each protected entry is compared with its launch
record (store.py); a change the sandbox could have made is put back and what it left is kept
aside (`<state>/protect/kept/<run>/…`), anything else is only reported. Also: protected keys of
writable JSON files, and repositories made during a run nothing mediated (gVisor).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from sandboxctl.paths import join, make_dirs, parent
from sandboxctl.protect.store import Store, _entry, _record, unchanged
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any


class Change(Record):
    path: str
    change: str  # created | modified | removed | replaced
    action: str  # restored | kept aside | removed | reported
    kept: str | None = None  # where the changed content was kept
    run: str = ""  # the run whose launch record this compares against


def compare_and_restore(state: str | PathLike[str], run_id: str, entries: dict[str, dict[str, Any]],
                        restore: Callable[[str], bool] = lambda path: True,
                        store: Store | None = None) -> list[Change]:
    """restore(path): whether a change found at path is put back (else only reported): a change
    the sandbox could not have made (the kernel wall was whole; it came later than the run) is
    somebody else's work — an IDE's, the user's own git — and is left as it is. store: the
    launch's own, when there is one (the hash cache is loaded once a run)."""
    store = store or Store(state)
    changes: list[Change] = []
    real_parent = _RealParents()
    for path, before in entries.items():
        if "parent" in before and real_parent(path) != before["parent"]:
            # a parent was replaced (by a symlink, say .config -> ~/.config): comparing and restoring
            # through it would write where the path now leads, outside the grant
            changes.append(Change(path, "replaced", "reported", None, run_id))
            continue
        found = len(changes)
        _compare(path, before, store, state, run_id, changes, restore)
        if len(changes) != found:  # something was put back or moved aside: directories may differ now
            real_parent.resolved.clear()
    store.save()
    return changes


class _RealParents:
    """os.path.realpath of a path's directory, resolved once per directory: the protected names
    of a workspace mostly share a few (52 absent names in one workspace: one resolution, not 52)."""

    def __init__(self) -> None:
        self.resolved: dict[str, str] = {}

    def __call__(self, path: str) -> str:
        directory = os.path.dirname(path)
        real = self.resolved.get(directory)
        if real is None:
            real = self.resolved[directory] = os.path.realpath(directory)
        return real


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


def _compare(path: str, before: dict[str, Any], store: Store, state: str | PathLike[str], run_id: str,
             changes: list[Change], restore: Callable[[str], bool]) -> None:
    if before.get("kind") in ("unreadable", "other"):
        return
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and unchanged(before, st):
        if before.get("kind") != "dir" or _entry(path, st, store, [1 << 20], before) is before:
            return  # the whole tree is as recorded: one stat per entry (store._reuse)
        for name, child in (before.get("children") or {}).items():  # no name added or removed here
            _compare(f"{path}/{name}", child, store, state, run_id, changes, restore)
        return
    now = _record(path, store, [0])  # children are compared one by one below
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


def _keep_aside(path: str, state: str | PathLike[str], run_id: str) -> str | None:
    """Move what a run left at a protected path into <state>/protect/kept/<run>/ (a copy when the
    state dir is on another file system); None if it could not be moved."""
    target = join(state, "protect", "kept", run_id, path.lstrip("/"))
    try:
        make_dirs(parent(target), 0o700)
        n = 1
        while os.path.lexists(target):
            target = f"{target}.{n}"  # Path.with_name(name + ".n"): target is pure, its name not empty
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
    return target


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


def restore_json_keys(state: str | PathLike[str], run_id: str, patterns: dict[str, list[str]],
                      before: dict[str, dict[str, Any]],
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
        kept = join(state, "protect", "kept", run_id, path.lstrip("/"))
        try:
            import shutil  # only when a protected JSON file changed: not imported by every run

            make_dirs(parent(kept), 0o700)
            shutil.copy2(path, kept)
            kept_path: str | None = kept
        except OSError:
            kept_path = None
        done = jsonkeys.put_back(path, before.get(path, {}), differ)
        changes.append(Change(label, "modified", "restored" if done else "reported", kept_path, run_id))
    return changes


def new_repositories(roots: tuple[str, ...], known: tuple[str, ...], workspace: str | None, state: str | PathLike[str],
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
        index = scan(root, (), join(state, "cache"), deep=root == workspace)
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


def new_glob_names(roots: tuple[str, ...], known: tuple[str, ...], state: str | PathLike[str],
                   run_id: str) -> list[Change]:
    """Where nothing refused them during the run (gVisor has no mediation): the names held by a
    pattern (names.ROOT_GLOBS: `team.code-workspace`, `mise.dev.toml`), which no launch record can
    list before they exist, that were not there at launch: kept aside and reported, as a
    protected name that appeared is (red team rt14: they stayed on the host, unsaid)."""
    from sandboxctl.protect.index import glob_matches, listdir

    seen = set(known)
    changes: list[Change] = []
    for root in roots:
        for path in glob_matches(root, listdir):
            if path not in seen and not any(path.startswith(k + "/") for k in seen):
                kept = _keep_aside(path, state, run_id)
                changes.append(Change(path, "created", "removed" if kept else "reported", kept, run_id))
    return changes


LATE = ("left as it is: it became protected while the run went on (the host's git config came to name it), "
        "and it changed during the run — review it before the host's next git command there")
MAX_LATE = 100  # entries said per target; past that, one line says how many more


def changed_during(paths: list[str], since_ns: int, run_id: str) -> list[Change]:
    """What beneath each path held late (mediate_judge.LiveGitRefs) changed during the run: the
    sandbox may have written it before the host's config named it, or through a descriptor opened before (a write
    on an open descriptor is no call the supervisor sees). Said, never put back (no launch record
    of it exists). A change's ctime cannot be set back, so ctime since launch is a change since."""
    changes: list[Change] = []
    for top in paths:
        found = []
        for path in _entries(top, MAX_LATE * 100):
            try:
                if os.lstat(path).st_ctime_ns >= since_ns:
                    found.append(path)
            except OSError:
                continue
        changes += [Change(path, "modified", LATE, None, run_id) for path in found[:MAX_LATE]]
        if len(found) > MAX_LATE:
            changes.append(Change(f"{top} ({len(found) - MAX_LATE} more entries)", "modified", LATE, None, run_id))
    return changes


def _entries(top: str, limit: int) -> list[str]:
    """top and what lies beneath it, never through a symlink, at most limit entries."""
    out, queue = [top], [top]
    while queue and len(out) < limit:
        directory = queue.pop()
        fd = None
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            names = os.listdir(fd)
        except OSError:
            continue
        finally:
            if fd is not None:
                os.close(fd)
        for name in names[:max(0, limit - len(out))]:
            path = f"{directory}/{name}"
            out.append(path)
            queue.append(path)  # a file fails the directory open above, and is left
    return out
