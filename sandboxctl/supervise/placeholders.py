"""Empty stand-ins for protected paths that do not exist yet, so a mount can hold them read-only.

A bind mount needs something to mount on: an absent `.envrc` or `.git` would otherwise be free
to create inside the sandbox and run later outside it. The supervisor creates an empty file or
directory before launch, the plan binds it read-only, and it is removed after the run if it is
still empty. A journal in the private state dir lets the next run remove what a killed
supervisor left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import Plan
from sandboxctl.supervise.processes import alive

# the kernel stamps ctime from a coarse clock, up to a tick behind time.time_ns(): allow for it
CLOCK_SLACK_NS = 50_000_000


class Placeholders:
    def __init__(self, state: Path, run_id: str):
        self.journal = state / "placeholders" / f"{os.getpid()}-{run_id}.json"
        self.created: list[dict] = []  # in creation order: parents before children

    def create(self, plan: Plan) -> None:
        """The journal names every placeholder *before* it is created (a supervisor killed in
        between leaves nothing unknown); an entry not yet confirmed with its inode is removed by a
        later sweep only if it was made after the journal was written."""
        wanted = sorted((m for m in plan.mounts if (m.source or "").startswith("placeholder:")),
                        key=lambda m: m.target.count("/"))
        if not wanted:
            return
        self.journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        after = time.time_ns() - CLOCK_SLACK_NS
        self._write([{"path": m.target, "after": after} for m in wanted])
        for mount in wanted:
            kind = mount.source.split(":", 1)[1]
            try:
                if kind == "file":
                    os.close(os.open(mount.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
                else:
                    os.mkdir(mount.target, 0o755)
            except FileExistsError:
                continue  # appeared since planning: the bind covers whatever is there now
            except OSError as exc:
                self._write(self.created)
                self.remove()
                raise SandboxError(f"cannot hold the protected path {mount.target}: {exc.strerror}",
                                   "create it yourself, or make its parent writable") from None
            self.created.append({"path": mount.target, "ino": os.lstat(mount.target).st_ino})
        self._write(self.created)

    def _write(self, entries: list[dict]) -> None:
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, self.journal)

    def remove(self) -> None:
        _remove_if_empty(self.created)
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
        self.created = []


def _ours(entry: dict | str, st: os.stat_result) -> bool:
    """Made by the supervisor that wrote the journal: the inode it recorded, or (killed before it
    could record one) changed after the journal was written."""
    if isinstance(entry, str):  # a journal of an earlier version
        return True
    if "ino" in entry:
        return st.st_ino == entry["ino"]
    return st.st_ctime_ns >= int(entry.get("after", 1 << 62))


def _remove_if_empty(entries: list) -> None:
    for entry in reversed(entries):  # children before parents
        path = entry if isinstance(entry, str) else str(entry.get("path", ""))
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if not _ours(entry, st):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)  # fails if anything was put in it: then it is the user's now
            elif st.st_size == 0 and os.path.isfile(path):
                os.unlink(path)


def sweep(directory: Path) -> None:
    """Remove placeholders left by supervisors that no longer run (before planning: the plan
    must see the workspace as it really is)."""
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            owner = entry.name.split("-", 1)[0]
            if not owner.isdigit() or alive(int(owner)):
                continue
            with contextlib.suppress(OSError, ValueError):
                _remove_if_empty(json.loads(entry.read_text()))
                entry.unlink()

