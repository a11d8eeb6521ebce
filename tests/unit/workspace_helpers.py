"""Build layers by hand (as overlayfs would leave them, or as an attacker might craft them) and
judge trees from outside: no mount, no sandbox, any user."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

from sandboxctl.workspace.layer import Layer, coarse_now_ns, write_json

RUN = "20260101T000000-abcdef"


def make_layer(state: Path, workspace: Path, run: str = RUN, started_ns: int | None = None) -> Layer:
    """A layer of a run that started now (or at started_ns) and whose supervisor is gone."""
    time.sleep(0.02)  # host files made by the test are older than the run (ctime ticks are coarse)
    path = state / "workspaces" / run
    (path / "upper").mkdir(parents=True)
    write_json(path / "meta.json", {
        "version": 1, "run": run, "workspace": str(workspace), "started": "2026-01-01T00:00:00Z",
        "started_ns": started_ns if started_ns is not None else coarse_now_ns(), "policy": "default",
        "command": ["agent"], "log": str(state / "actions.jsonl"), "state": "running"})
    return Layer(path)


def later() -> None:
    """Let the coarse clock move on, so that what happens next is after what happened before."""
    time.sleep(0.02)


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o600, 0)  # a 0/0 device: unprivileged since Linux 5.8


def opaque(path: Path, namespace: str = "user") -> None:
    path.mkdir(exist_ok=True)
    os.setxattr(path, f"{namespace}.overlay.opaque", b"y")


def write(path: Path, content: str | bytes = "x\n", mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    if mode is not None:
        path.chmod(mode)
    return path


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry beneath root: (kind, mode, content hash or link text). A tree 'hash' a test
    compares: what a human would call the same tree."""
    result: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            full = os.path.join(directory, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("symlink", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", mode)
            elif stat.S_ISREG(st.st_mode):
                result[rel] = ("file", mode, hashlib.sha256(Path(full).read_bytes()).hexdigest())
            else:
                result[rel] = ("special", stat.S_IFMT(st.st_mode))
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(directory, d))]
    return result
