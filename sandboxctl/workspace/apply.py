"""`sandboxctl apply`: write an overlay run's changes into its workspace.

Reviewed first (workspace/seal.py): a layer that differs from its seal is refused outright. Then
each change is applied on its own and atomically (fileops: staged under a temporary name,
checked, renamed into place), after its line in the journal, with whatever it replaces kept for
undo. Held back, and listed: conflicts (the host changed the path since the run started; `force`
takes the run's version), protected paths not named in `include_protected`, sockets/fifos/devices,
and what failed (a full disk: that path is untouched). Nothing else is skipped silently.
"""

from __future__ import annotations

import contextlib
import os
import time

from sandboxctl.errors import SandboxError
from sandboxctl.inert import inert
from sandboxctl.record import Record
from sandboxctl.workspace import fileops, journal, seal, tree
from sandboxctl.workspace.changes import Change
from sandboxctl.workspace.layer import Layer, coarse_now_ns

APPLICABLE_STATES = ("held", "partly applied", "undone")


class Outcome(Record):
    run: str
    applied: list[Change]
    conflicts: list[Change]
    protected: list[Change]
    skipped: list[Change]  # sockets, fifos, devices
    failed: list[tuple[Change, str]]
    state: str
    late_seal: bool

    def as_dict(self) -> dict:
        return {"run": self.run, "state": self.state, "applied": [c.as_dict() for c in self.applied],
                "conflicts": [c.as_dict() for c in self.conflicts],
                "protected": [c.as_dict() for c in self.protected],
                "skipped": [c.as_dict() for c in self.skipped],
                "failed": [{**c.as_dict(), "error": why} for c, why in self.failed]}


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def select(changes: list[Change], wanted: list[str]) -> list[Change]:
    """The changes at or beneath the wanted paths, with the new directories they need to exist."""
    if not wanted:
        return changes
    chosen: set[str] = set()
    for root in wanted:
        hits = [c.path for c in changes if _under(c.path, root)]
        if not hits:
            around = [c.path for c in changes if _under(root, c.path)]
            hint = f"it lies in {inert(around[0])}, which the run {_verb(changes, around[0])}: apply that" \
                if around else "see `sandboxctl changes`"
            raise SandboxError(f"the run changed nothing at {inert(root)}", hint)
        chosen.update(hits)
    by_path = {c.path: c for c in changes}
    for path in list(chosen):
        parent = os.path.dirname(path)
        while parent:
            change = by_path.get(parent)
            if change and change.new is not None and change.new.kind == "dir" and change.change != "mode-changed":
                chosen.add(parent)
            parent = os.path.dirname(parent)
    return [c for c in changes if c.path in chosen]


def _verb(changes: list[Change], path: str) -> str:
    change = next(c for c in changes if c.path == path)
    return {"deleted": "deleted", "type-changed": "replaced"}.get(change.change, change.change)


def apply(layer: Layer, paths: list[str] | None = None, *, force: bool = False,
          include_protected: list[str] | None = None) -> Outcome:
    seal.ensure_sealed(layer)
    with layer.locked():
        state = layer.state
        if state == "running":
            raise SandboxError(f"run {layer.run_id} is still running", "apply it once it has ended")
        if state not in APPLICABLE_STATES:
            raise SandboxError(f"run {layer.run_id} is {state}: nothing to apply",
                               "`sandboxctl undo` puts back an applied run" if state == "applied" else
                               "`sandboxctl log runs` shows each run's changes; name one: sandboxctl apply RUN")
        review = seal.review(layer)  # under the lock: nobody applies or undoes in between
        if review.tampered:  # the layer's names are the run's: shown inert
            shown = "; ".join(inert(t) for t in review.tampered[:5]) + (
                f"; and {len(review.tampered) - 5} more" if len(review.tampered) > 5 else "")
            raise SandboxError(f"run {layer.run_id}: its layer is not what the run left ({shown}); refusing to "
                               "apply it", f"review it with `sandboxctl changes {layer.run_id}`, or discard it")
        selected = select(review.changes, paths or [])
        included = include_protected or []
        outcome = Outcome(layer.run_id, [], [], [], [], [], state, review.late)
        todo: list[Change] = []
        held: dict[str, str] = {}  # a new directory held back -> why what goes in it is held back too
        for change in selected:
            parent = next((d for d in held if _under(change.path, d + "/")), None)
            if parent is not None and held[parent] == "protected":
                outcome.protected.append(change._replace(
                    protected=change.protected or f"in {parent}/, which is protected"))
                continue
            if parent is not None:
                outcome.conflicts.append(change._replace(
                    conflict=change.conflict or f"in {parent}/, which is not applied"))
                continue
            if change.protected and not any(_under(change.path, p) for p in included):
                outcome.protected.append(change)
                why = "protected"
            elif change.conflict and not force:
                outcome.conflicts.append(change)
                why = "conflict"
            elif not change.applicable:
                outcome.skipped.append(change)
                continue
            else:
                todo.append(change)
                continue
            if change.new is not None and change.new.kind == "dir":
                held[change.path] = why
        if todo:
            _Applier(layer).run(todo, outcome)
        unselected = len(review.changes) - len(selected)
        left = outcome.conflicts or outcome.failed or outcome.protected or unselected
        new_state = "partly applied" if left else "applied"
        if outcome.applied or new_state != state:
            layer.update(state=new_state)
        outcome = outcome._replace(state=new_state)
    layer.log("apply", state=new_state, applied=len(outcome.applied), forced=force or None,
              paths=[c.path for c in outcome.applied][:1000],
              conflicts=[c.path for c in outcome.conflicts] or None,
              protected=[c.path for c in outcome.protected] or None,
              failed=[{"path": c.path, "error": why} for c, why in outcome.failed] or None)
    return outcome


class _Applier:
    """One apply pass: the journal, the workspace and the layer open, the backup dir ready."""

    def __init__(self, layer: Layer):
        self.layer = layer
        self.tag = layer.run_id[-6:]
        self.dir_modes: list[tuple[str, str, int]] = []  # new/changed directory modes, set last

    def run(self, todo: list[Change], outcome: Outcome) -> None:
        layer = self.layer
        layer.backup.mkdir(mode=0o700, exist_ok=True)
        first = journal.read(layer.journal_path).next_index
        with contextlib.ExitStack() as stack:
            self.ws = tree.open_root(layer.workspace)
            stack.callback(os.close, self.ws)
            self.upper = tree.open_root(str(layer.upper))
            stack.callback(os.close, self.upper)
            self.keep = tree.open_root(str(layer.backup))
            stack.callback(os.close, self.keep)
            try:
                self.journal = journal.Writer(layer.journal_path)
                self.journal.write({"begin": coarse_now_ns()})
            except OSError as exc:
                raise SandboxError(f"cannot write the apply journal of run {layer.run_id}: {exc.strerror}; "
                                   "nothing was applied", "free some space in the state dir") from None
            stack.callback(self.journal.close)
            self.parents = _Parents(self.ws, self.upper)
            stack.callback(self.parents.close)
            blocked: dict[str, str] = {}  # a directory that was not applied: what is beneath it fails
            journal_broken: str | None = None
            for index, change in enumerate(todo, start=first):
                parent = next((p for p in blocked if _under(change.path, p)), None)
                if journal_broken or parent:
                    outcome.failed.append((change, journal_broken or f"{parent} was not applied"))
                    continue
                try:
                    self.one(index, change)
                except _JournalError as exc:
                    journal_broken = f"the journal could not be written ({exc}): not applied"
                    outcome.failed.append((change, journal_broken))
                except OSError as exc:
                    outcome.failed.append((change, _reason(exc)))
                    if change.new is not None and change.new.kind == "dir":
                        blocked[change.path] = ""
                else:
                    outcome.applied.append(change)
            for path, kind, mode in reversed(self.dir_modes):
                try:
                    fd, name = tree.open_parent(self.ws, path)
                    try:
                        fileops.set_mode(fd, name, kind, mode)
                    finally:
                        os.close(fd)
                except OSError as exc:
                    change = next(c for c in outcome.applied if c.path == path)
                    outcome.applied.remove(change)
                    outcome.failed.append((change, f"its mode could not be set: {_reason(exc)}"))
            with contextlib.suppress(OSError):
                # a fine clock: every ctime our own writes got is before it (a coarse one may lag)
                self.journal.write({"end": time.time_ns()})

    def one(self, index: int, change: Change) -> None:
        if change.change == "mode-changed":
            self.chmod(index, change)
        else:
            self.replace(index, change)

    def _record(self, entry: dict) -> None:
        try:
            self.journal.write(entry)
        except OSError as exc:
            raise _JournalError(_reason(exc)) from None

    def chmod(self, index: int, change: Change) -> None:
        fd, name = self.parents.workspace(change.path)
        if not fileops.same_entry(tree.node_at(fd, name), change.old):
            raise OSError(116, "changed on the host while applying")  # ESTALE
        self._record({"op": index, "how": "chmod", "path": change.path, "before": change.old.describe(),
                      "after": _after(change.new), "backup": None})
        if change.new.kind == "dir":
            self.dir_modes.append((change.path, "dir", change.new.mode))
        else:
            fileops.set_mode(fd, name, change.new.kind, change.new.mode)

    def replace(self, index: int, change: Change) -> None:
        """Put the run's entry (or nothing, for a deletion) where the host's is (or is not)."""
        old, new = change.old, change.new
        fd, name = self.parents.workspace(change.path)
        temp = f".sandboxctl-apply-{self.tag}-{index}"
        staged = False
        try:
            current = tree.node_at(fd, name)
            if not fileops.same_entry(current, old):
                raise OSError(116, "changed on the host while applying")  # ESTALE
            if new is not None:
                fileops.stage(fd, temp, new, *self.parents.layer(change.path))
                staged = True
            before = self._before(fd, name, old)
            self._record({"op": index, "how": "replace", "path": change.path, "before": before,
                          "after": _after(new), "backup": str(index) if old else None})
            still_there = old is not None and fileops.keep_aside(fd, name, old.kind, self.keep, str(index))
            if still_there and (new is None or new.kind == "dir" or old.kind == "dir"):
                os.unlink(name, dir_fd=fd)
                still_there = False
            if staged:
                os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)  # atomic when a file replaces a file
                staged = False
                if new.kind == "dir":
                    self.dir_modes.append((change.path, "dir", new.mode))
        finally:
            if staged:
                fileops.discard_staged(fd, temp)

    @staticmethod
    def _before(fd: int, name: str, old) -> dict | None:
        """What is there now, for undo to check and put back (a directory by its tree's hash)."""
        if old is None:
            return None
        described = old.describe()
        if old.kind == "file":
            described["sha256"] = tree.hash_file(fd, name)
        elif old.kind == "dir":
            with tree.opened_dir(fd, name) as sub:
                described["tree"], described["entries"] = tree.tree_digest(sub)
        return described


class _Parents:
    """The directory of the change at hand, open in the workspace and in the layer. Changes come
    sorted, siblings one after another, so each directory is opened once, not once per file (a
    change to a directory itself always comes before the changes beneath it)."""

    def __init__(self, ws: int, upper: int):
        self.roots = {"ws": ws, "upper": upper}
        self.key: str | None = None
        self.fds: dict[str, int] = {}

    def _get(self, root: str, path: str) -> tuple[int, str]:
        parent, _, name = path.rpartition("/")
        if parent != self.key:
            self.close()
            self.key = parent
        if root not in self.fds:
            fd, name = tree.open_parent(self.roots[root], path)
            self.fds[root] = fd
        return self.fds[root], name

    def workspace(self, path: str) -> tuple[int, str]:
        return self._get("ws", path)

    def layer(self, path: str) -> tuple[int, str]:
        return self._get("upper", path)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.key = None


class _JournalError(Exception):
    pass


def _after(new) -> dict | None:
    if new is None:
        return None
    described = new.describe()
    described["mode"] = new.mode & fileops.PERMISSIONS
    return described


def _reason(exc: OSError) -> str:
    if exc.errno == 28:
        return "no space left on the device"
    if exc.errno == 116:
        return "changed on the host while applying"
    if exc.errno in (40, 20):  # ELOOP, ENOTDIR
        return "the host has a symlink or a file where the run has a directory"
    return exc.strerror or str(exc)
