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
from pathlib import Path

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import Plan
from sandboxctl.supervise.processes import alive


class Placeholders:
    def __init__(self, state: Path, run_id: str):
        self.journal = state / "placeholders" / f"{os.getpid()}-{run_id}.json"
        self.created: list[str] = []  # in creation order: parents before children

    def create(self, plan: Plan) -> None:
        wanted = [m for m in plan.mounts if (m.source or "").startswith("placeholder:")]
        if not wanted:
            return
        self.journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for mount in sorted(wanted, key=lambda m: m.target.count("/")):
            kind = mount.source.split(":", 1)[1]
            try:
                if kind == "file":
                    os.close(os.open(mount.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
                else:
                    os.mkdir(mount.target, 0o755)
            except FileExistsError:
                continue  # appeared since planning: the bind covers whatever is there now
            except OSError as exc:
                self.remove()
                raise SandboxError(f"cannot hold the protected path {mount.target}: {exc.strerror}",
                                   "create it yourself, or make its parent writable") from None
            self.created.append(mount.target)
            self.journal.write_text(json.dumps(self.created))

    def remove(self) -> None:
        _remove_if_empty(self.created)
        with contextlib.suppress(FileNotFoundError):
            self.journal.unlink()
        self.created = []


def _remove_if_empty(paths: list[str]) -> None:
    for path in reversed(paths):  # children before parents
        with contextlib.suppress(OSError):
            st = os.lstat(path)
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

