"""Where sandboxctl keeps its own files, and how policy paths expand.

The state directory holds what the sandbox must never touch (trust store, action log, caches,
remembered approvals); the planner masks it inside every sandbox.
"""

from __future__ import annotations

import os
from pathlib import Path


def home_dir() -> Path:
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        return Path(home)
    import pwd

    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME")
    root = Path(base) if base and os.path.isabs(base) else home_dir() / ".local" / "state"
    return root / "sandboxctl"


def runtime_dir() -> Path:
    """Approval sockets: the user's runtime dir when it is really theirs, else a per-user dir in /tmp."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        try:
            st = os.stat(base)
            if st.st_uid == os.getuid() and not st.st_mode & 0o077:
                return Path(base) / "sandboxctl"
        except OSError:
            pass
    return Path(os.environ.get("TMPDIR") or "/tmp") / f"sandboxctl-{os.getuid()}"


def ensure_private_dir(path: Path) -> Path:
    """Create a 0700 directory we own, refusing one another user could tamper with."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    # in a directory anyone may write (/tmp), a symlink is someone else's choice of where we go
    planted = path.is_symlink() and path.parent.stat().st_mode & 0o002
    # one others could write may already hold what they put there (a symlink at the name of our
    # next temporary file, a forged record): chmod would close it and keep all of that
    shared = st.st_mode & 0o022
    if st.st_uid != os.getuid() or planted or shared:
        from sandboxctl.errors import SandboxError

        whose = ("is a symlink in a directory anyone may write" if planted
                 else "belongs to another user" if st.st_uid != os.getuid()
                 else "is writable by others (what they left in it stays)")
        raise SandboxError(f"{path} {whose}", "remove it, or set XDG_RUNTIME_DIR / XDG_STATE_HOME to a "
                           "directory of your own")
    if st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def expand(path: str, *, workspace: str, home: str, state: str | None = None) -> str:
    """Expand ~, {home}, {workspace} (and {state} for built-in defaults) into a normalised path."""
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    path = path.replace("{workspace}", workspace).replace("{home}", home)
    if state is not None:
        path = path.replace("{state}", state)
    return os.path.normpath(path) if path.startswith("/") else path


def within(path: str, root: str) -> bool:
    """path is root or lies beneath it, compared by components (/a/bc is not within /a/b): the
    one test of containment the planner, the protections, the mediator and the exports share."""
    return path == root or path.startswith(root.rstrip("/") + "/")
