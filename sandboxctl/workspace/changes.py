"""What an overlay run changed: its layer compared with the workspace as the host has it now.

Only the layer is walked (a workspace of a million files costs what the run touched): every name
in upper/ is compared with the same name on the host; a whiteout is a deletion, and an opaque
directory also deletes every host entry it does not hold. A deleted directory is one change.

Each change carries two verdicts that `apply` honours:
- conflict: the host changed that path since the run started — its inode change time (ctime,
  which every write, chmod, rename or link updates and nobody can set back) is at or after the
  instant the run's layer was made; for a directory the run deletes or replaces, anything in it.
- protected: the path (or, for a deleted directory, something in it) is a protected path
  (SPEC principle 3) — or a symlink where a directory would bring one in (`.config` of
  `.config/git`) — applied only when named with `--include-protected`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from sandboxctl.protect.names import GITDIR_MARKERS, gitdir_marker, is_git_name
from sandboxctl.protect.rules import protected_link_reason, protected_reason
from sandboxctl.record import Record
from sandboxctl.workspace import tree
from sandboxctl.workspace.tree import Node

KINDS = ("added", "modified", "deleted", "type-changed", "mode-changed")
SETID = 0o6000


class Change(Record):
    path: str  # relative to the workspace, '/'-separated
    change: str  # one of KINDS
    old: Node | None  # on the host now (None: absent)
    new: Node | None  # in the run's layer (None: deleted)
    entries: int = 0  # a deleted or replaced host directory: how many entries it held
    conflict: str | None = None
    protected: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def applicable(self) -> bool:
        """Something apply can write (not a socket, a fifo or a device node)."""
        return self.new is None or not self.new.special

    def as_dict(self) -> dict:
        return {"path": self.path, "change": self.change,
                "old": self.old.describe() if self.old else None,
                "new": self.new.describe() if self.new else None,
                "entries": self.entries or None, "conflict": self.conflict, "protected": self.protected,
                "notes": list(self.notes) or None}


class Thresholds:
    """The instant after which a host change is a conflict: the run's start, or — for paths that
    sandboxctl itself wrote since (an apply or an undo of this run) and their directories — the
    end of that write: its own writes are not conflicts."""

    def __init__(self, started_ns: int, own_writes: dict[str, int] | None = None):
        self.started_ns = started_ns
        self.own_writes = own_writes or {}

    def changed(self, path: str, node: Node) -> bool:
        return node.ctime_ns >= max(self.started_ns, self.own_writes.get(path, 0))


def compare(upper: str, workspace: str, thresholds: Thresholds,
            seen: dict[str, Node] | None = None) -> list[Change]:
    """Every change of the layer at `upper` against the host's `workspace`, parents first.
    `seen` receives every entry of the layer as read (hashes included), for the seal's check."""
    changes: list[Change] = []
    seen = {} if seen is None else seen
    upper_fd = tree.open_root(upper)
    try:
        host_fd = tree.open_root(workspace)
        try:
            _compare_dir(upper_fd, host_fd, "", False, thresholds, changes, seen)
        finally:
            os.close(host_fd)
    finally:
        os.close(upper_fd)
    changes.sort(key=lambda change: change.path.split("/"))
    held = config_targets(workspace) if changes else {}
    return _repositories([_annotate(change, workspace, held) for change in changes], workspace)


def config_targets(workspace: str) -> dict[str, str]:
    """What the host's git config names now inside the workspace (core.hooksPath, included files),
    relative to it -> why. The run held these as they were at its launch; the host may have set one
    since (its `npm install` running husky), and a change the layer holds there would then run at
    the host's next commit once applied (red team rt14): protected, as a name is."""
    from sandboxctl.paths import home_dir
    from sandboxctl.protect.gitconfig import held_targets, references
    from sandboxctl.protect.names import GLOBAL_GIT_CONFIGS

    home = os.path.realpath(home_dir())
    gitdir = os.path.join(workspace, ".git")
    configs = [os.path.join(gitdir, "config"), os.path.join(gitdir, "config.worktree"),
               *(template.replace("{home}", home) for template in GLOBAL_GIT_CONFIGS)]
    out: dict[str, str] = {}
    for config in configs if os.path.isdir(gitdir) else []:
        hooks, includes = references(config, home, workspace)
        for target, why in held_targets(config, hooks, includes, [workspace]):
            relative = os.path.relpath(target, workspace)
            if relative != "." and not relative.startswith("../"):
                out.setdefault(relative, why)
    return out


MAKES_REPOSITORY = ("protected: with it the directory would be a git repository (HEAD with objects/ and refs/): "
                    "its config would run on the host's next git command there")


def _repositories(changes: list[Change], workspace: str) -> list[Change]:
    """Added HEAD, objects/, refs/ or commondir that would make their directory a repository once
    applied (the entries have ordinary names, so the name rules cannot see it; the supervisor
    refuses the same during the run): protected."""
    by_path = {c.path: c for c in changes}
    added: dict[str, dict[str, Change]] = {}  # parent -> marker -> the change adding it (names folded)
    for c in changes:
        parent, _, name = c.path.rpartition("/")
        marker = gitdir_marker(name)
        if marker is not None and c.old is None and c.new is not None:
            added.setdefault(parent, {})[marker] = c
    flagged: set[str] = set()
    for parent, markers in added.items():
        if any(is_git_name(part) for part in parent.split("/")):
            continue  # inside a git directory: git's own work (and protected by name where it matters)
        after = set(markers)
        for marker in GITDIR_MARKERS:
            if marker in after:
                continue
            path = f"{parent}/{marker}" if parent else marker
            change = by_path.get(path)  # changed by the run, or as the host has it
            if change.new is not None if change is not None else os.path.lexists(os.path.join(workspace, path)):
                after.add(marker)
        if "HEAD" in after and ({"objects", "refs"} <= after or "commondir" in after):
            flagged.update(c.path for c in markers.values())
    if not flagged:
        return changes
    return [c._replace(protected=c.protected or MAKES_REPOSITORY)
            if c.path in flagged and c.old is None and c.new is not None else c for c in changes]


def _compare_dir(upper_fd: int, host_fd: int | None, prefix: str, opaque: bool, thresholds: Thresholds,
                 out: list[Change], seen: dict[str, Node]) -> None:
    present = tree.names(upper_fd)
    for name in present:
        new = tree.layer_node(upper_fd, name)
        if new is None:
            continue
        path = f"{prefix}{name}"
        seen[path] = new
        old = tree.node_at(host_fd, name) if host_fd is not None else None
        if new.kind == "whiteout":
            if old is not None:
                out.append(_removal(host_fd, name, path, old, None, thresholds))
            continue
        if old is None:
            out.append(Change(path, "added", None, new))
            if new.kind == "dir":
                with tree.opened_dir(upper_fd, name) as child:
                    _compare_dir(child, None, f"{path}/", True, thresholds, out, seen)
            continue
        if old.kind != new.kind:
            out.append(_removal(host_fd, name, path, old, new, thresholds))
            if new.kind == "dir":
                with tree.opened_dir(upper_fd, name) as child:
                    _compare_dir(child, None, f"{path}/", True, thresholds, out, seen)
            continue
        conflict = _conflict(thresholds, path, old)
        if new.kind == "dir":
            if old.mode != new.mode:
                out.append(Change(path, "mode-changed", old, new, conflict=conflict))
            with tree.opened_dir(upper_fd, name) as upper_child, tree.opened_dir(host_fd, name) as host_child:
                _compare_dir(upper_child, host_child, f"{path}/", new.opaque, thresholds, out, seen)
            continue
        if new.kind == "file" and (old.size != new.size or tree.hash_file(host_fd, name) != new.digest):
            mode = (f"mode {old.mode:04o} -> {new.mode:04o}",) if old.mode != new.mode else ()
            out.append(Change(path, "modified", old, new, conflict=conflict, notes=mode))
        elif new.kind == "symlink" and old.target != new.target:
            out.append(Change(path, "modified", old, new, conflict=conflict))
        elif old.mode != new.mode:
            out.append(Change(path, "mode-changed", old, new, conflict=conflict))
    if opaque and host_fd is not None:
        hidden = set(present)
        for name in tree.names(host_fd):
            if name not in hidden:
                old = tree.node_at(host_fd, name)
                if old is not None:
                    out.append(_removal(host_fd, name, f"{prefix}{name}", old, None, thresholds))


def _conflict(thresholds: Thresholds, path: str, old: Node) -> str | None:
    if thresholds.changed(path, old):
        return "changed on the host since the run started"
    return None


def _removal(host_fd: int, name: str, path: str, old: Node, new: Node | None, thresholds: Thresholds) -> Change:
    """A host entry the run deleted or replaced by one of another kind; for a directory, what it
    holds decides the conflict and the protection too."""
    kind = "deleted" if new is None else "type-changed"
    conflict = _conflict(thresholds, path, old)
    if old.kind != "dir":
        return Change(path, kind, old, new, conflict=conflict)
    entries, changed, protected = 0, None, None
    with tree.opened_dir(host_fd, name) as fd:
        for sub, node in tree.walk(fd, f"{path}/", digest=False):
            entries += 1
            if changed is None and thresholds.changed(sub, node):
                changed = sub
            if protected is None and protected_reason(sub):
                protected = f"holds {sub}: {protected_reason(sub)}"
    if conflict is None and changed is not None:
        conflict = f"{changed} changed on the host since the run started"
    return Change(path, kind, old, new, entries, conflict, protected)


def _annotate(change: Change, workspace: str, held: dict[str, str]) -> Change:
    notes = list(change.notes)
    new = change.new
    protected = change.protected or (protected_link_reason(change.path) if new is not None and new.kind == "symlink"
                                     else protected_reason(change.path))
    for target, why in held.items() if not protected else ():
        if change.path == target or change.path.startswith(target + "/"):
            protected = why
        elif target.startswith(change.path + "/"):
            protected = f"holds {target}: {why}"
        if protected:
            break
    if new is not None and new.special:
        notes.append(f"a {new.kind}: never applied")
    if new is not None and new.kind in ("file", "dir") and new.mode & SETID:
        notes.append("setuid/setgid bits are not applied")
    if new is not None and new.kind == "symlink" and points_outside(change.path, new.target or ""):
        notes.append("the link points outside the workspace")
    return change._replace(protected=protected, notes=tuple(notes))


def points_outside(path: str, target: str) -> bool:
    if target.startswith("/"):
        return True
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return resolved == ".." or resolved.startswith("../")


def counts(changes: list[Change]) -> dict[str, int]:
    result = {kind: 0 for kind in KINDS}
    for change in changes:
        result[change.change] += 1
    return {kind: n for kind, n in result.items() if n}


# ---------------------------------------------------------------------- -p: unified diffs
DIFF_LIMIT = 1 << 20


def _text(fd: int, name: str) -> list[str] | None:
    """A file's lines if it reads as text (no NUL, UTF-8, at most DIFF_LIMIT bytes), else None."""
    handle = os.open(name, tree.READ_FLAGS, dir_fd=fd)
    try:
        data = os.read(handle, DIFF_LIMIT + 1)
    finally:
        os.close(handle)
    if len(data) > DIFF_LIMIT or b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def diff(change: Change, upper: str, workspace: str) -> Iterator[str]:
    """Unified diff lines (raw text: the caller makes them inert) for one change."""
    import difflib

    old = change.old if change.old and change.old.kind == "file" else None
    new = change.new if change.new and change.new.kind == "file" else None
    for side, node in (("old", change.old), ("new", change.new)):
        if node is not None and node.kind == "symlink":
            yield f"{side} symlink {change.path} -> {node.target}"
    if old is None and new is None:
        return
    old_lines, new_lines = ([], [])
    with contextlib.ExitStack() as stack:
        if old is not None:
            fd, name = tree.open_parent(stack.enter_context(_root(workspace)), change.path)
            stack.callback(os.close, fd)
            old_lines = _text(fd, name)
        if new is not None:
            fd, name = tree.open_parent(stack.enter_context(_root(upper)), change.path)
            stack.callback(os.close, fd)
            new_lines = _text(fd, name)
    if old_lines is None or new_lines is None:
        yield f"Binary files a/{change.path} and b/{change.path} differ"
        return
    yield from (line.rstrip("\n") for line in difflib.unified_diff(
        old_lines, new_lines, f"a/{change.path}" if old else "/dev/null",
        f"b/{change.path}" if new else "/dev/null"))


@contextlib.contextmanager
def _root(path: str) -> Iterator[int]:
    fd = tree.open_root(path)
    try:
        yield fd
    finally:
        os.close(fd)
