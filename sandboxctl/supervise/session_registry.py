"""Where the CLI's sessions are found: a private directory in the user's runtime dir.

    <runtime>/sessions/NAME.sock   the session's socket (SOCK_SEQPACKET, 0600), peer-checked on accept
    <runtime>/sessions/NAME.json   what `session list` shows (run, pid, policy, workspace, started, log)
    <runtime>/sessions/NAME.ended  why a session ended by itself (idle, timeout, a dead server),
                                   reported once by the next command that names it, then removed

The runtime dir (paths.runtime_dir) is masked inside every sandbox and never writable by an
approval, so no sandbox can reach a session's socket or forge its files. A session's process
removes its files when it ends; if it is killed, its watchdog does; `list` sweeps what is left
of a session whose process is gone. No pathlib here (sandboxctl.paths does without it):
`sandboxctl exec` imports this module on its fast path (pathlib alone costs more than the whole
request).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket

from sandboxctl import paths, unixpath
from sandboxctl.errors import SandboxError
from sandboxctl.supervise.processes import alive
from sandboxctl.watchdog import Watchdog

ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
NAME_CHARS = ALNUM | frozenset("._-")


def runtime_dir() -> str:
    """paths.runtime_dir(): the one the planner masks (a unit test holds the two equal)."""
    return paths.runtime_dir()


def sessions_dir(create: bool = False) -> str:
    path = os.path.join(runtime_dir(), "sessions")
    if create:
        paths.ensure_private_dir(runtime_dir())
        paths.ensure_private_dir(path)
    return path


def check_name(name: str) -> str:
    if (not isinstance(name, str) or not 0 < len(name) <= 64 or name[0] not in ALNUM
            or not set(name) <= NAME_CHARS):
        raise SandboxError(f"session name {str(name)[:80]!r}: use letters, digits, '.', '_' and '-' (at most 64, "
                           "starting with a letter or digit)", "for example --name build")
    return name


def path_of(name: str, suffix: str) -> str:
    return os.path.join(sessions_dir(), f"{name}.{suffix}")


def _connectable(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        unixpath.connect(probe, path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def claim(name: str) -> socket.socket:
    """Bind the session's socket (atomic: a second start with the same name fails here)."""
    sessions_dir(create=True)
    path = path_of(name, "sock")
    for _ in range(2):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            unixpath.bind(listener, path)
            listener.listen(16)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path_of(name, "ended"))
            return listener
        except OSError as exc:
            listener.close()
            if exc.errno != 98:  # EADDRINUSE
                raise SandboxError(f"cannot create the session's socket {path}: {exc.strerror or exc}",
                                   "check XDG_RUNTIME_DIR") from None
            if _connectable(path):
                raise SandboxError(f"a session named {name!r} is already running",
                                   f"use it (sandboxctl exec {name} -- CMD), stop it (sandboxctl session stop "
                                   f"{name}) or pick another --name") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a killed session's socket, left behind
        finally:
            os.umask(old)
    raise SandboxError(f"cannot claim the session name {name!r}", "try again")


def _write_private(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"  # created afresh, never through a link
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def write_info(name: str, info: dict) -> None:
    _write_private(path_of(name, "json"), info)


def read_info(name: str) -> dict | None:
    try:
        with open(path_of(name, "json")) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove(name: str, run_id: str, ended: dict | None = None) -> None:
    """Remove a session's files, if they are still this run's (a new session may have the name)."""
    info = read_info(name)
    if info is not None and info.get("run") not in (run_id, None):
        return
    for suffix in ("sock", "json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path_of(name, suffix))
    if ended is not None:
        with contextlib.suppress(OSError):
            _write_private(path_of(name, "ended"), ended)


def take_ended(name: str) -> dict | None:
    """The record of a session that ended by itself, removed as it is read (reported once)."""
    path = path_of(name, "ended")
    try:
        with open(path) as handle:
            data = json.load(handle)
        os.unlink(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _ours(path: str) -> bool:
    """A real directory of ours that no one else may write."""
    import stat

    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _alive(pid: object) -> bool:
    return isinstance(pid, int) and pid > 0 and alive(pid)


def running() -> list[dict]:
    """Every live session's info; files of a session whose process is gone are swept."""
    found = []
    if not (_ours(runtime_dir()) and _ours(sessions_dir())):
        return []  # another user's directory (a squatted /tmp/sandboxctl-UID): nothing in it is ours
    try:
        names = sorted(os.listdir(sessions_dir()))
    except OSError:
        return []
    for entry in names:
        if not entry.endswith(".json") or entry.startswith("."):
            continue
        name = entry[: -len(".json")]
        info = read_info(name)
        if info is None:
            continue
        if _alive(info.get("pid")):
            found.append(info)
        else:
            remove(name, str(info.get("run")))
    return found


class SessionEnded(SandboxError):
    """A session that ended by itself, with its record (`session stop` says its findings whole)."""

    def __init__(self, message: str, hint: str, *, ended: dict):
        super().__init__(message, hint)
        self.ended = ended


def connect(name: str) -> socket.socket:
    """A connection to a running session (SandboxError naming why when there is none)."""
    check_name(name)
    path = path_of(name, "sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        unixpath.connect_own(sock, path)
        return sock
    except PermissionError as exc:
        sock.close()
        if exc.errno == errno.EPERM:  # served by another user: never send it the command or our stdio
            raise SandboxError(f"session {name}: {exc.strerror}; refusing to send it anything",
                               f"another user made {runtime_dir()} first: remove it, or set XDG_RUNTIME_DIR to "
                               "a directory of your own") from None
    except OSError:
        sock.close()
    ended = take_ended(name)
    if ended is not None:
        protected = ended.get("protected")
        said = (f"; {len(protected)} protected path(s) changed or brought in by its git history: "
                f"sandboxctl log --run {ended.get('run')} --event protect") if isinstance(protected, list) else ""
        raise SessionEnded(f"session {name} ended: {ended.get('reason', 'unknown')}{said}",
                           f"its records: sandboxctl log --run {ended.get('run')}; start a new one with "
                           f"sandboxctl session start --name {name}", ended=ended)
    raise SandboxError(f"no session named {name!r} is running",
                       "start one with sandboxctl session start --name NAME; see sandboxctl session list")


def watchdog(name: str, run_id: str) -> Watchdog:
    """Removes the session's files if the session's process is killed (bubblewrap's
    --die-with-parent takes the sandbox down). Forked before any thread exists."""
    return Watchdog(lambda: remove(name, run_id))
