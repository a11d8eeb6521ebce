"""Mount an overlay over the workspace in a private mount namespace, then become bubblewrap.

bubblewrap 0.8 (Debian 12) has no overlay options (they came with 0.9), so the supervisor makes
the namespace itself: a child forks, enters a new mount namespace (and, unless it is root, a new
user namespace mapping only the caller's own uid and gid: unprivileged overlayfs, Linux >= 5.11),
mounts overlayfs on the workspace's own path — lower: the workspace, upper and work: the run's
layer in the state dir — and execs bubblewrap there. Every bind of a workspace path in the plan
then resolves to the overlay, and the host's workspace is never written. The namespace, and the
mount with it, is gone when the last process of the sandbox exits.

The same options are used as root and as a user (`userxattr`: opaque directories are marked with
`user.overlay.opaque`; deletions are whiteouts, character devices 0/0), so a layer reads the same
whoever made it, and redirects and metacopy stay off (a renamed directory is copied, not
redirected). Layer paths reach the kernel as /proc/self/fd/N: no path can inject a mount option.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

from sandboxctl.record import Record

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_REC, MS_SLAVE = 0x2, 0x4, 0x4000, 1 << 19
OVERLAYFS_MAGIC = 0x794C7630


class OverlayLayers(Record):
    lower: str  # the workspace
    upper: str
    work: str


class MountFailure(Record):
    step: str
    errno: int

    def describe(self) -> str:
        return f"{self.step}: {os.strerror(self.errno)}"


class _Prepared(Record):
    """Everything the child needs, built before fork: after it, only system calls."""

    libc: ctypes.CDLL
    unshare_flags: int
    maps: tuple[tuple[str, bytes], ...]
    layers: OverlayLayers


def _prepare(layers: OverlayLayers) -> _Prepared:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    libc.unshare.argtypes = (ctypes.c_int,)
    uid, gid = os.getuid(), os.getgid()
    maps: tuple[tuple[str, bytes], ...] = ()
    flags = CLONE_NEWNS
    if uid != 0:
        flags |= CLONE_NEWUSER
        maps = (("/proc/self/setgroups", b"deny"), ("/proc/self/uid_map", f"{uid} {uid} 1".encode()),
                ("/proc/self/gid_map", f"{gid} {gid} 1".encode()))
    return _Prepared(libc, flags, maps, layers)


def _enter_and_mount(prepared: _Prepared) -> MountFailure | None:
    """In the child: the namespaces, then the overlay on the workspace path."""
    libc = prepared.libc
    if libc.unshare(prepared.unshare_flags) != 0:
        return MountFailure("unshare", ctypes.get_errno())
    for path, data in prepared.maps:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            return MountFailure(f"write {path}", exc.errno or errno.EPERM)
    # nothing mounted here may propagate back to the host's namespace (root shares / by default)
    if libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None) != 0:
        return MountFailure("make / a slave mount", ctypes.get_errno())
    # the layers are opened in the new namespace (overlayfs clones their mounts: they must be ours)
    # and named by descriptor, so that no character of a path can be read as a mount option
    fds = []
    try:
        for path in prepared.layers:
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    except OSError as exc:
        return MountFailure(f"open {path}", exc.errno or errno.ENOENT)
    lower, upper, work = (f"/proc/self/fd/{fd}" for fd in fds)
    options = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr".encode()
    target = os.fsencode(prepared.layers.lower)
    if libc.mount(b"overlay", target, b"overlay", MS_NOSUID | MS_NODEV, options) != 0:
        return MountFailure("mount overlayfs", ctypes.get_errno())
    for fd in fds:
        os.close(fd)
    return None


def spawn(argv: list[str], layers: OverlayLayers, *, stderr: int, pass_fds: tuple[int, ...], stdin: int = 0,
          stdout: int = 1) -> int:
    """Start bubblewrap (argv) with the overlay mounted in its mount namespace; its pid.

    Descriptors as spawn.spawn: `stdin`, `stdout` and `stderr` as 0, 1, 2, and pass_fds; the rest
    closed. A failure before exec raises OverlayError naming the step (the child reports it on a pipe)."""
    keep = {0, 1, 2, *pass_fds}
    inherited = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep and fd not in (stderr, stdin, stdout):
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    inherited.append(fd)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    env = dict(os.environ)
    prepared = _prepare(layers)
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child execs or exits
            _child(prepared, argv, env, (stdin, stdout, stderr), inherited, report_w)
    finally:
        for fd in pass_fds:
            os.set_inheritable(fd, False)
    os.close(report_w)
    try:
        report = b""
        while chunk := os.read(report_r, 512):
            report += chunk
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        step, _, code = report.decode(errors="replace").rpartition(":")
        raise OverlayError(MountFailure(step, int(code) if code.isdigit() else errno.EPERM))
    return pid


def _child(prepared: _Prepared, argv: list[str], env: dict[str, str], stdio: tuple[int, int, int],
           inherited: list[int], report: int) -> None:  # pragma: no cover - runs between fork and exec
    try:
        failure = _enter_and_mount(prepared)
        if failure is None:
            for target, fd in enumerate(stdio):
                if fd != target:
                    os.dup2(fd, target)
            for fd in inherited:
                with contextlib.suppress(OSError):
                    os.close(fd)
            # Python ignores SIGPIPE and SIGXFSZ for itself; the sandbox gets the defaults back
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
            try:
                os.execve(argv[0], argv, env)
            except OSError as exc:
                failure = MountFailure(f"exec {argv[0]}", exc.errno or errno.ENOENT)
        os.write(report, f"{failure.step}:{failure.errno}".encode())
    finally:
        os._exit(127)


class OverlayError(Exception):
    def __init__(self, failure: MountFailure):
        super().__init__(failure.describe())
        self.failure = failure


def remedy(failure: MountFailure, upper_fs: str | None) -> tuple[str, str]:
    """One sentence on why the overlay could not be mounted, and what to do about it."""
    where = f" (the state dir is on {upper_fs})" if upper_fs else ""
    if failure.step == "unshare":
        return (f"cannot make the overlay's namespaces: {os.strerror(failure.errno)}",
                "unprivileged user namespaces are needed (see `sandboxctl doctor`), or use workspace: rw")
    if failure.step == "mount overlayfs" and failure.errno in (errno.EPERM, errno.EACCES):
        return (f"the kernel refused an unprivileged overlayfs mount: {os.strerror(failure.errno)}",
                "unprivileged overlayfs needs Linux 5.11 or later; or use workspace: rw")
    if failure.step == "mount overlayfs" and failure.errno == errno.ENODEV:
        return ("this kernel has no overlayfs", "load it (modprobe overlay) or use workspace: rw")
    if failure.step == "mount overlayfs":
        return (f"overlayfs refused the run's layer{where}: {os.strerror(failure.errno)}",
                "the layer needs a local file system with user extended attributes (ext4, xfs, btrfs, "
                "tmpfs on Linux 6.6+); set XDG_STATE_HOME to one, or use workspace: rw")
    return (f"cannot mount the overlay workspace: {failure.describe()}", "run `sandboxctl doctor`")


def filesystem_type(path: str) -> str | None:
    """The file-system type holding path, from /proc/self/mountinfo (the longest mount prefix)."""
    best, kind = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split(" - ", 1)
                left = fields[0].split()
                if len(left) < 5 or len(fields) < 2:
                    continue
                point = left[4].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, fields[1].split()[0]
    except OSError:
        return None
    return kind


def probe(scratch: str) -> tuple[str | None, str | None]:
    """Mount an overlay exactly as a run would, on a scratch tree under `scratch` (on the state
    dir's file system), and do what a run does in it: write, delete (a whiteout) and replace a
    directory (opaque). (None, fs type) when the layer then reads as it must; else (why, fs type)."""
    import shutil
    import tempfile

    from sandboxctl.workspace import tree

    base = tempfile.mkdtemp(prefix=".overlay-probe-", dir=scratch)
    fs = filesystem_type(base)
    try:
        layers = OverlayLayers(*(os.path.join(base, d) for d in ("lower", "upper", "work")))
        for path in layers:
            os.mkdir(path, 0o700)
        os.mkdir(os.path.join(layers.lower, "dir"))
        for name in ("gone", "dir/old"):
            with open(os.path.join(layers.lower, name), "w") as handle:
                handle.write("lower\n")
        prepared = _prepare(layers)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child exits
            code = 1
            try:
                failure = _enter_and_mount(prepared)
                if failure is not None:
                    os.write(report_w, f"{failure.step}:{failure.errno}".encode())
                else:
                    top = layers.lower
                    with open(os.path.join(top, "new"), "w") as handle:
                        handle.write("upper\n")
                    os.unlink(os.path.join(top, "gone"))
                    shutil.rmtree(os.path.join(top, "dir"))
                    os.mkdir(os.path.join(top, "dir"))
                    code = 0
            except OSError as exc:
                os.write(report_w, f"use the overlay:{exc.errno or 0}".encode())
            finally:
                os._exit(code)
        os.close(report_w)
        report = os.read(report_r, 512).decode(errors="replace")
        os.close(report_r)
        os.waitpid(pid, 0)
        if report:
            step, _, code = report.rpartition(":")
            return remedy(MountFailure(step, int(code) if code.isdigit() else errno.EPERM), fs)[0], fs
        upper = tree.open_root(layers.upper)
        try:
            found = {name: tree.layer_node(upper, name) for name in tree.names(upper)}
        finally:
            os.close(upper)
        if (found.get("gone") or tree.Node("?", 0)).kind != "whiteout":
            return "a deletion left no whiteout in the layer", fs
        if not (found.get("dir") or tree.Node("?", 0)).opaque:
            return "a replaced directory was not marked opaque (no user.overlay.opaque xattr)", fs
        if (found.get("new") or tree.Node("?", 0)).kind != "file":
            return "a new file did not land in the layer", fs
        return None, fs
    finally:
        from sandboxctl.workspace.layer import remove_tree

        with contextlib.suppress(OSError):
            from pathlib import Path

            remove_tree(Path(base))
