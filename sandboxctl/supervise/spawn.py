"""Starting bubblewrap: the descriptors it gets, the process itself, the shim's configuration.

Everything here happens once per run, before the sandbox exists; the supervisor's loop
(runner.py) takes over from the spawned pid.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import Plan

TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if not path:
        raise SandboxError("bubblewrap (bwrap) is not installed",
                           "Debian/Ubuntu: sudo apt-get install bubblewrap; then run sandboxctl doctor")
    return path


def empty_file(state: Path) -> str:
    """An empty read-only file that masks denied files; it lives where no sandbox can reach."""
    path = state / "empty"
    try:
        st = path.lstat()
        if st.st_size == 0 and st.st_uid == os.getuid() and path.is_file() and not path.is_symlink():
            return str(path)
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    os.close(fd)
    return str(path)


def memfd(data: bytes, name: str) -> int:
    fd = os.memfd_create(name, 0)  # inheritable on purpose: bubblewrap reads it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def spawn(argv: list[str], *, stderr: int, pass_fds: tuple[int, ...], stdin: int = 0, stdout: int = 1) -> int:
    """posix_spawn bubblewrap with exactly stdin, stdout, our stderr pipe and pass_fds.

    Every other descriptor this process holds is closed in the child, including ones inherited
    from whoever started sandboxctl, so nothing of the caller leaks into the sandbox. (This is
    subprocess.Popen(close_fds=True, pass_fds=...) without importing subprocess on the hot path.)
    """
    keep = {0, 1, 2, *pass_fds}
    actions: list[tuple] = [(os.POSIX_SPAWN_DUP2, fd, target)
                            for fd, target in ((stdin, 0), (stdout, 1)) if fd != target]
    actions.append((os.POSIX_SPAWN_DUP2, stderr, 2))
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd not in (stderr, stdin, stdout):
            try:
                if os.get_inheritable(fd):
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:
                continue  # the directory listing's own descriptor, closed by now
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        # Python ignores SIGPIPE and SIGXFSZ for itself; the sandbox gets the defaults back (as
        # Popen's restore_signals does), or `yes | head` and the file-size limit behave oddly
        return os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        for fd in pass_fds:
            os.set_inheritable(fd, False)


def shim_config(plan: Plan, caller_dispositions: dict[int, Any]) -> dict[str, Any]:
    limits = plan.limits
    return {
        "argv": list(plan.command),
        # the command gets the caller's own SIGINT/SIGQUIT disposition back (ignored stays ignored)
        "default_signals": [int(s) for s in TERMINAL_SIGNALS if caller_dispositions.get(s) is not signal.SIG_IGN],
        "env": dict(plan.env),
        "landlock": {
            "required": plan.landlock.required,
            "minimum_abi": plan.landlock.minimum_abi,
            "paths": [[rule.path, list(rule.access)] for rule in plan.landlock.paths],
            "restrict_tcp": plan.landlock.restrict_tcp,
            "connect_tcp_ports": list(plan.landlock.connect_tcp_ports),
            "bind_tcp_ports": list(plan.landlock.bind_tcp_ports),
            "scopes": list(plan.landlock.scopes),
        },
        "limits": {
            "pids": limits.pids if limits.pids_method == "rlimit" else None,
            "file_size": limits.file_size,
            "open_files": limits.open_files,
            "memory": limits.memory if limits.memory_method == "rlimit-as" else None,
        },
    }
