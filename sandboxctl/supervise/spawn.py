"""Starting bubblewrap: the descriptors it gets, the process itself, the shim's configuration.

Everything here happens once per run, before the sandbox exists; the supervisor's loop
(runner.py) takes over from the spawned pid.
"""

from __future__ import annotations

import _signal  # signal's enum layer costs start-up time; the numbers are the same
import os

from sandboxctl.errors import SandboxError

TERMINAL_SIGNALS = (_signal.SIGINT, _signal.SIGQUIT)

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

    from sandboxctl.plan.model import Plan


def which(name: str, search: str | None = None) -> str | None:
    """shutil.which for the one lookup of every run (shutil imports bz2, lzma and fnmatch); only
    absolute PATH entries: an empty or relative one names the current directory, usually the
    workspace, where a sandbox may have left a `bwrap` (plan/protections.py holds the absolute
    ones that lie under writable grants)."""
    for directory in (os.environ.get("PATH", os.defpath) if search is None else search).split(os.pathsep):
        if not os.path.isabs(directory):
            continue
        path = os.path.join(directory, name)
        if os.path.exists(path) and os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def find_bwrap() -> str:
    path = which("bwrap")
    if not path:
        raise SandboxError("bubblewrap (bwrap) is not installed",
                           "Debian/Ubuntu: sudo apt-get install bubblewrap; then run sandboxctl doctor")
    return path


def empty_file(state: str | PathLike[str]) -> str:
    """An empty read-only file that masks denied files; it lives where no sandbox can reach."""
    import stat

    path = os.path.join(os.fspath(state), "empty")
    for _attempt in range(3):  # runs starting at once (library threads, parallel CLIs) may race to make it
        try:
            st = os.lstat(path)
            if st.st_size == 0 and st.st_uid == os.getuid() and stat.S_ISREG(st.st_mode):
                return path
            os.unlink(path)
        except FileNotFoundError:
            pass
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400))
            return path
        except FileExistsError:
            continue  # another run made it meanwhile: judge that one
    raise FileExistsError(17, "the mask file keeps being replaced", path)


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
                              setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
    finally:
        for fd in pass_fds:
            os.set_inheritable(fd, False)


def shim_config(plan: Plan, caller_dispositions: dict[int, Any]) -> dict[str, Any]:
    from sandboxctl.launch import landlock_rights  # not on the head start's path: its config is remembered

    limits = plan.limits
    return {
        "argv": list(plan.command),
        # the command gets the caller's own SIGINT/SIGQUIT disposition back (ignored stays ignored);
        # `!=`, not `is not`: signal.getsignal's answer is a Handlers member, _signal's a plain int
        "default_signals": [int(s) for s in TERMINAL_SIGNALS if caller_dispositions.get(s) != _signal.SIG_IGN],
        "env": dict(plan.env),
        "landlock": landlock_rights.shim_config(plan.landlock),
        "limits": {
            "pids": limits.pids if limits.pids_method == "rlimit" else None,
            "file_size": limits.file_size,
            "open_files": limits.open_files,
            "memory": limits.memory if limits.memory_method == "rlimit-as" else None,
        },
    }
