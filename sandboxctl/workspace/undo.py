"""`sandboxctl undo`: put back what `apply` changed, exactly, or refuse and say why.

Every line of the apply journal is checked first: its path must hold what apply wrote there
(by content hash), and what apply kept aside must still be what it replaced. A path the host
changed again since — or a new directory the host put files in — makes undo refuse, listing each,
before anything is touched (`force` puts back the rest and leaves those as they are). Then the
lines are reversed, last first, each atomically like apply's. A line whose path still holds what
was there before apply was never carried out (a full disk, a killed apply) and is skipped.
"""

from __future__ import annotations

import contextlib
import os
import time

from sandboxctl.errors import SandboxError
from sandboxctl.record import Record
from sandboxctl.workspace import fileops, journal, tree
from sandboxctl.workspace.journal import Op
from sandboxctl.workspace.layer import Layer, remove_tree


class UndoOutcome(Record):
    run: str
    restored: list[str]
    refused: list[tuple[str, str]]  # path, why (the host changed it again since apply)
    failed: list[tuple[str, str]]
    state: str

    def as_dict(self) -> dict:
        return {"run": self.run, "state": self.state, "restored": self.restored,
                "refused": [{"path": p, "why": w} for p, w in self.refused],
                "failed": [{"path": p, "error": w} for p, w in self.failed]}


def _matches(fd: int, name: str, wanted: dict | None) -> bool:
    current = tree.node_at(fd, name)
    if wanted is None or current is None:
        return wanted is None and current is None
    if current.kind != wanted.get("kind") or current.mode != wanted.get("mode"):
        return False
    if current.kind == "file":
        return current.size == wanted.get("size") and tree.hash_file(fd, name) == wanted.get("sha256")
    if current.kind == "symlink":
        return current.target == wanted.get("target")
    if current.kind == "dir" and "tree" in wanted:
        with tree.opened_dir(fd, name) as sub:
            return tree.tree_digest(sub)[0] == wanted["tree"]
    return True


class _Check(Record):
    todo: list[Op]
    refused: list[tuple[str, str]]


def _check(ws: int, keep: int, ops: list[Op], tag: str) -> _Check:
    """Which lines to reverse, and which cannot be (the host changed them, or a kept copy is gone)."""
    written = {op.path for op in ops if op.after is not None}
    todo, refused = [], []
    for op in ops:
        try:
            fd, name = tree.open_parent(ws, op.path)
        except OSError:
            if op.before is None:
                continue  # its directory is gone with it: nothing to put back (checked with the directory)
            refused.append((op.path, "its directory is no longer there"))
            continue
        try:
            with contextlib.suppress(OSError):  # what a killed apply staged and never renamed
                fileops.remove_at(fd, f".sandboxctl-apply-{tag}-{op.index}")
            if _interrupted(fd, name, op):
                if _matches(keep, str(op.backup), op.before):
                    todo.append(op)
                else:
                    refused.append((op.path, "what apply kept of it is gone or changed"))
            elif _matches(fd, name, op.after):
                why = _foreign(fd, name, op, written)
                if why is None and op.backup is not None and not _matches(keep, op.backup, op.before):
                    why = "what apply kept of it is gone or changed"
                if why:
                    refused.append((op.path, why))
                else:
                    todo.append(op)
            elif not _matches(fd, name, op.before):
                refused.append((op.path, "changed on the host since apply"))
        finally:
            os.close(fd)
    return _Check(todo, refused)


def _interrupted(fd: int, name: str, op: Op) -> bool:
    """A change of kind (file <-> directory) has an instant with nothing at its path, after the old
    entry was kept aside: a killed apply leaves it so, and undo puts the kept entry back."""
    kinds = ((op.before or {}).get("kind"), (op.after or {}).get("kind"))
    return (op.backup is not None and None not in kinds and "dir" in kinds and kinds[0] != kinds[1]
            and tree.lstat_at(fd, name) is None)


def _foreign(fd: int, name: str, op: Op, written: set[str]) -> str | None:
    """A directory apply created: anything in it that apply did not put there."""
    if not op.after or op.after.get("kind") != "dir" or (op.before and op.before.get("kind") == "dir"):
        return None
    with tree.opened_dir(fd, name) as sub:
        for child in tree.names(sub):
            if f"{op.path}/{child}" not in written:
                return f"the host put {op.path}/{child} in it since apply"
    return None


def undo(layer: Layer, *, force: bool = False) -> UndoOutcome:
    with layer.locked():
        state = layer.state
        if state not in ("applied", "partly applied"):
            raise SandboxError(f"run {layer.run_id} is {state}: there is nothing to undo",
                               "undo puts back what `sandboxctl apply` wrote")
        ops = journal.read(layer.journal_path).ops
        with contextlib.ExitStack() as stack:
            ws = tree.open_root(layer.workspace)
            stack.callback(os.close, ws)
            layer.backup.mkdir(mode=0o700, exist_ok=True)
            keep = tree.open_root(str(layer.backup))
            stack.callback(os.close, keep)
            check = _check(ws, keep, ops, layer.run_id[-6:])
            if check.refused and not force:
                return UndoOutcome(layer.run_id, [], check.refused, [], state)
            blocked = {path for path, _ in check.refused}
            restored, failed = [], []
            # directories apply made read-only are opened up first, and get their old modes last
            dir_modes = [op for op in check.todo if _is_dir_mode(op)]
            for op in check.todo:
                if op.after and op.after.get("kind") == "dir" and not int(op.after["mode"]) & 0o200:
                    with contextlib.suppress(OSError):
                        _chmod(ws, op.path, int(op.after["mode"]) | 0o700)
            for op in reversed(check.todo):
                if any(path.startswith(op.path + "/") for path in blocked):
                    failed.append((op.path, "something in it was left as the host has it"))
                    blocked.add(op.path)
                    continue
                try:
                    if not _is_dir_mode(op):
                        _reverse(ws, keep, op, layer.run_id[-6:])
                except OSError as exc:
                    failed.append((op.path, exc.strerror or str(exc)))
                    blocked.add(op.path)
                else:
                    restored.append(op.path)
            for op in reversed(dir_modes):
                try:
                    _chmod(ws, op.path, int(op.before["mode"]))
                except OSError as exc:
                    restored.remove(op.path)
                    failed.append((op.path, exc.strerror or str(exc)))
        new_state = "undone" if not failed and not check.refused else "partly applied"
        if new_state == "undone":
            writer = journal.Writer(layer.journal_path)
            try:
                writer.write({"undone": time.time_ns()})  # a later apply starts afresh (fine clock: see apply)
            finally:
                writer.close()
            remove_tree(layer.backup)
        layer.update(state=new_state)
    layer.log("undo", state=new_state, restored=len(restored), paths=restored[:1000],
              refused=[p for p, _ in check.refused] or None,
              failed=[{"path": p, "error": w} for p, w in failed] or None)
    return UndoOutcome(layer.run_id, restored, check.refused, failed, new_state)


def _is_dir_mode(op: Op) -> bool:
    return op.backup is None and op.before is not None and op.after is not None and op.before.get("kind") == "dir"


def _chmod(ws: int, path: str, mode: int) -> None:
    fd, name = tree.open_parent(ws, path)
    try:
        fileops.set_mode(fd, name, "dir", mode)
    finally:
        os.close(fd)


def _reverse(ws: int, keep: int, op: Op, tag: str) -> None:
    fd, name = tree.open_parent(ws, op.path)
    try:
        before, after = op.before, op.after
        if op.backup is None and before is not None and after is not None:  # a mode change
            fileops.set_mode(fd, name, str(before["kind"]), int(before["mode"]))
            return
        temp = f".sandboxctl-undo-{tag}-{op.index}"
        if before is not None:
            _stage_kept(keep, str(op.backup), fd, temp)
        try:
            current = tree.node_at(fd, name)
            same_kind_file = current is not None and before is not None and current.kind != "dir" \
                and before.get("kind") != "dir"
            if current is not None and not same_kind_file:
                if current.kind == "dir":
                    os.rmdir(name, dir_fd=fd)  # emptied by the lines reversed before this one
                else:
                    os.unlink(name, dir_fd=fd)
            if before is not None:
                os.rename(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            if before is not None and before.get("kind") == "dir":
                with contextlib.suppress(OSError):
                    if tree.lstat_at(keep, str(op.backup)) is None:  # moved: it goes back where it was kept
                        os.rename(temp, str(op.backup), src_dir_fd=fd, dst_dir_fd=keep)
                    else:  # a copy: the kept one is still there
                        fileops.remove_at(fd, temp)
            elif before is not None:
                fileops.discard_staged(fd, temp)
            raise
        if before is not None:
            with contextlib.suppress(OSError):
                fileops.remove_at(keep, str(op.backup))
    finally:
        os.close(fd)


def _stage_kept(keep: int, kept: str, fd: int, temp: str) -> None:
    """What apply kept, under a temporary name next to its old place: linked or moved back when on
    the same file system (the very inode: content, mode and times as they were), else copied."""
    st = tree.lstat_at(keep, kept)
    if st is None:
        raise OSError(2, "what apply kept is gone")
    try:
        if tree.kind_of(st.st_mode) == "dir":
            os.rename(kept, temp, src_dir_fd=keep, dst_dir_fd=fd)
        else:
            os.link(kept, temp, src_dir_fd=keep, dst_dir_fd=fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in fileops.CROSS_DEVICE:
            raise
        fileops.copy_tree(keep, kept, fd, temp)
