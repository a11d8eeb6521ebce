"""gVisor's runsc on this machine: where it is, which platform works, and one run's private directory.

Everything a gvisor run leaves on disk lives in one private directory (bundle, launcher
configuration, file secrets, the proxy's socket, runsc's own state), preferably on a tmpfs (the
user's runtime dir, else /dev/shm). It is removed when the run ends; if the supervisor is killed,
a watchdog process removes it (and kills what is left of the sandbox), and the next run sweeps
what a killed watchdog could not.

Which platform runs use, and runsc's version, are runsc_probe.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from sandboxctl.errors import SandboxError
from sandboxctl.launch import oci
from sandboxctl.plan.model import Plan
from sandboxctl.watchdog import Watchdog

RUN_DIR_PREFIX = "g-"
UNIX_PATH_MAX = 107


def find() -> str | None:
    """runsc on PATH (shutil.which, without importing shutil: it loads bz2 and lzma, ~5 ms a run)."""
    for directory in os.get_exec_path():
        if not os.path.isabs(directory):  # the current directory: a workspace (supervise/spawn.which)
            continue
        path = os.path.join(directory, "runsc")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def require() -> str:
    path = find()
    if not path:
        raise SandboxError("the gvisor backend needs runsc (gVisor), which is not installed",
                           "Debian/Ubuntu: sudo apt-get install runsc; then run sandboxctl doctor")
    return path


# ------------------------------------------------------------------ the run's private directory
def _private_dir(path: Path) -> Path | None:
    """A 0700 directory of ours, never a symlink or another user's (it may be in a shared /dev/shm)."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    import stat

    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return None
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def runtime_base() -> Path:
    """Where run directories go: the user's runtime dir (a tmpfs), else /dev/shm, else the temp dir."""
    uid = os.getuid()

    def candidates():
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
            yield Path(xdg) / "sandboxctl"
        yield Path("/dev/shm") / f"sandboxctl-{uid}"
        import tempfile  # only when needed: gettempdir() imports a lot and writes a probe file

        yield Path(tempfile.gettempdir()) / f"sandboxctl-{uid}"

    for candidate in candidates():
        if candidate.parent.is_dir() and _private_dir(candidate):
            return candidate
    raise SandboxError("no private runtime directory for the gvisor backend",
                       "set XDG_RUNTIME_DIR to a directory of yours (a tmpfs, e.g. /run/user/UID)")


KILL_DEADLINE_S = 2.0  # SIGKILLed processes are gone in milliseconds; one stuck in the kernel is left


def _names(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return needle in handle.read()
    except OSError:
        return False


def pids_using(path: str) -> list[int]:
    """Processes whose command line names this directory: runsc, its gofer and its sandbox."""
    needle = path.encode()
    return [int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and int(entry) != os.getpid() and _names(int(entry), needle)]


def destroy(path: Path) -> None:
    """Kill every process of the run (by the directory on its command line), wait until each is
    gone (on pidfds: no polling), look again (one may have started another meanwhile), then
    remove it all."""
    deadline = time.monotonic() + KILL_DEADLINE_S
    while time.monotonic() < deadline:
        pidfds = _kill_naming(str(path))
        if not pidfds:
            break
        _wait_gone(pidfds, deadline)
    remove_tree(path)


def _kill_naming(path: str) -> list[int]:
    """SIGKILL through a pidfd each process naming path: the pidfd is opened first and the name
    checked after, so a pid reused since the listing is never signalled."""
    needle, pidfds = path.encode(), []
    for pid in pids_using(path):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if not _names(pid, needle):
                raise ProcessLookupError
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:  # gone already, or not ours to kill
            os.close(pidfd)
            continue
        pidfds.append(pidfd)
    return pidfds


def _wait_gone(pidfds: list[int], deadline: float) -> None:
    """Until every process is gone (its pidfd becomes readable when it exits) or the deadline."""
    import select

    poller = select.poll()
    for pidfd in pidfds:
        poller.register(pidfd, select.POLLIN)
    waiting = set(pidfds)
    try:
        while waiting and (left := deadline - time.monotonic()) > 0:
            for pidfd, _ in poller.poll(left * 1000):
                poller.unregister(pidfd)
                waiting.discard(pidfd)
    finally:
        for pidfd in pidfds:
            os.close(pidfd)


def remove_tree(path: Path) -> None:
    """shutil.rmtree(path, ignore_errors=True) without shutil (see find): through directory
    descriptors, never following a symbolic link (one is removed, not what it points at)."""
    with contextlib.suppress(OSError):
        for _root, dirs, files, root_fd in os.fwalk(path, topdown=False):
            for name in files:
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=root_fd)
            for name in dirs:  # a symbolic link to a directory is listed here, and never entered
                try:
                    os.rmdir(name, dir_fd=root_fd)
                except NotADirectoryError:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=root_fd)
                except OSError:
                    continue
    with contextlib.suppress(OSError):
        os.rmdir(path)


def sweep(base: Path) -> None:
    """Remove run directories whose supervisor is gone (killed, and its watchdog too)."""
    from sandboxctl.supervise.processes import alive

    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            owner = entry.name.removeprefix(RUN_DIR_PREFIX).split("-", 1)[0]
            if entry.name.startswith(RUN_DIR_PREFIX) and owner.isdigit() and not alive(int(owner)):
                destroy(entry)


def unmaskable(plan: Plan) -> frozenset[str]:
    """Denied paths runsc cannot mask for this user, which need no mask: left out of the bundle.

    Rootless runsc opens a mount's destination before mounting over it, so a mask over a path the
    caller may not open (/etc/shadow, /etc/ssl/private for a normal user) stops the whole sandbox.
    Such a path needs no mask when nothing in it is reachable: a file the caller can neither read
    nor write, a directory it cannot enter. gVisor reaches host files only through its file proxy,
    running as the caller, and its own kernel sees them as owned by nobody, so they stay closed
    inside too. A directory the caller may enter but not list can be neither masked nor left
    open: the run is refused.
    """
    skipped = []
    for mount in plan.mounts:
        if mount.kind not in ("mask-file", "mask-dir") or os.access(mount.target, os.R_OK):
            continue
        closed = os.W_OK if mount.kind == "mask-file" else os.X_OK  # nothing to write / nothing to enter
        if not os.access(mount.target, closed):
            skipped.append(mount.target)
        elif os.path.lexists(mount.target):
            raise SandboxError(f"cannot mask {mount.target} under gVisor as this user: runsc must open it to "
                               "mount over it, and it is not readable (yet reachable)",
                               "use the bubblewrap backend (--backend bwrap), or run as its owner")
    return frozenset(skipped)


class RunDir:
    """One run's private directory; create() lays out the bundle, destroy() removes every trace."""

    def __init__(self, base: Path, run_id: str):
        self.path = base / f"{RUN_DIR_PREFIX}{os.getpid()}-{run_id}"
        self.paths: oci.BundlePaths | None = None
        self.skipped_masks: frozenset[str] = frozenset()

    def create(self, plan: Plan, launch: dict[str, Any], file_secrets: dict[str, str], terminal: bool = False,
               data_files: dict[str, bytes] | None = None) -> oci.BundlePaths:
        root = self.path
        paths = oci.dry_paths(plan, str(root))
        self.skipped_masks = unmaskable(plan)
        if paths.proxy and len(f"{paths.proxy}/{oci.PROXY_SOCKET_NAME}") > UNIX_PATH_MAX:
            raise SandboxError(f"the run directory {root} is too deep for a UNIX socket path",
                               "set XDG_RUNTIME_DIR to a shorter directory")
        root.mkdir(mode=0o700)
        for directory in (paths.rootfs, paths.state, paths.secrets, paths.proxy, paths.data):
            if directory:
                os.mkdir(directory, 0o700)
        if paths.proxy:  # the forwarder inside is another user: it must walk from / to the sockets in
            os.chmod(paths.rootfs, 0o755)  # here (the run directory itself stays 0700 on the host)
            os.chmod(paths.proxy, 0o711)
        os.mkdir(paths.empty_dir, 0o555)
        os.close(os.open(paths.empty_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
        for target, text in oci.rootfs_symlinks(plan):
            os.symlink(text, paths.rootfs + target)
        if paths.secrets:
            for name, value in file_secrets.items():
                fd = os.open(os.path.join(paths.secrets, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
                try:
                    os.write(fd, value.encode())
                finally:
                    os.close(fd)
        for target, content in (data_files or {}).items() if paths.data else ():
            _write_private(os.path.join(paths.data, oci.data_file_name(target)), content)
        content = oci.launch_file(plan, launch)
        _write_private(paths.launch, content, 0o500 if content.startswith(b"\x7fELF") else 0o600)
        _write_private(os.path.join(paths.bundle, "config.json"),
                       json.dumps(oci.config(plan, paths, self.skipped_masks, terminal), indent=1).encode())
        self.paths = paths
        return paths

    def runsc_error(self) -> str | None:
        """runsc's own complaint from its log (it exits 128 when it cannot start the sandbox)."""
        if not self.paths:
            return None
        try:
            text = Path(self.paths.log).read_text(errors="replace")
        except OSError:
            return None
        return first_error(text)

    def destroy(self) -> None:
        destroy(self.path)


def first_error(text: str) -> str | None:
    """The first error in a runsc log: the cause (the gofer's or the sandbox's), not the generic
    "cannot create sandbox" that `runsc run` adds last. The log is JSON objects, not always one
    per line."""
    decoder = json.JSONDecoder()
    position = 0
    while position < len(text):
        start = text.find("{", position)
        if start < 0:
            break
        try:
            record, position = decoder.raw_decode(text, start)
        except ValueError:
            position = start + 1
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "fatal") and record.get("msg"):
            return " ".join(str(record["msg"]).split())
    return None


def _write_private(path: str, data: bytes, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def one_terminal() -> bool:
    """stdin, stdout and stderr are the same terminal (an interactive run)."""
    try:
        devices = {os.fstat(fd).st_rdev for fd in (0, 1, 2) if os.isatty(fd)}
    except OSError:
        return False
    return len(devices) == 1 and all(os.isatty(fd) for fd in (0, 1, 2))


# ------------------------------------------------------------------ processes
_PR_SET_PDEATHSIG = 1


def spawn(argv: list[str], stdio: dict[int, int] | None = None) -> int:
    """Start runsc in its own process group, killed if the supervisor dies (PR_SET_PDEATHSIG), with
    the terminal's SIGINT/SIGQUIT ignored (the supervisor forwards them) and stdio passed through
    (stdio: replacements, e.g. {1: pipe} for a relayed stdout).

    `runsc run` keeps the sandbox attached to itself, so its death takes the sandbox down too.
    (posix_spawn cannot set a parent-death signal, hence fork + exec.)
    """
    import ctypes

    from sandboxctl.launch.gvisor_init import inert  # imported here: the child makes only system calls

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: nothing but system calls until exec
        try:
            os.setpgid(0, 0)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(125)
            for signum in (signal.SIGINT, signal.SIGQUIT):
                signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            for target, source in (stdio or {}).items():
                os.dup2(source, target)
            os.closerange(3, 65536)
            os.execv(argv[0], argv)
        except BaseException as exc:  # one line and a hint on the run's stderr, and 125: never the command's 127
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            with contextlib.suppress(BaseException):
                os.write(2, f"sandboxctl: error: cannot start runsc ({inert(argv[0])}): {inert(why)}\n"
                            "  hint: run `sandboxctl doctor` to see whether the gvisor backend works here\n"
                            .encode(errors="replace"))
        os._exit(125)
    return pid


def watchdog(run_dir: Path) -> Watchdog:
    """Kills the sandbox and removes the run directory if the supervisor dies. Forked before any
    thread exists, before anything is on disk."""
    return Watchdog(lambda: destroy(run_dir))
