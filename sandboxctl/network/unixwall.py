"""Which UNIX sockets the command may connect to: the listed ones, and those bound inside.

Below Landlock ABI 9 the kernel cannot say, so the supervisor answers every connect() itself
(network/sockets.py) and asks this module. A pathname is resolved as the sandbox sees it, from
the caller's root (openat2 RESOLVE_IN_ROOT: `..` and absolute symlinks stay inside), to an
O_PATH descriptor of the socket file; the decision is about that file, and the connect made on
the caller's behalf goes to that very file (/proc/self/fd/N), so renaming, relinking or
rewriting the path afterwards changes nothing. The same rules as Landlock's RESOLVE_UNIX:

- a listed socket is the file found at launch, before the command ran (a rule on the file, not
  on its name); a listed directory covers the sockets beneath it when they are connected to;
- a socket bound by a sandboxed process is reachable (servers of a test suite): under network
  none/proxy, the kernel's socket list of the sandbox's own network namespace has it; under host,
  the namespace is the host's, so it must also be held open by a sandboxed process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable

from sandboxctl.network import sockdiag


class UnixWall:
    def __init__(self, listed: tuple[str, ...], *, private_netns: bool, diag_fd: int | None,
                 sandbox_pids: Callable[[], list[int]]):
        self.listed = listed
        self.private_netns = private_netns  # none/proxy: every socket the diag socket lists is the sandbox's
        self.diag_fd = diag_fd
        self.sandbox_pids = sandbox_pids
        self.files: dict[tuple[int, int, int], str] = {}  # identity of a listed socket -> its path
        self.dirs: dict[str, str] = {}  # canonical path of a listed directory -> as listed
        self.missing: list[str] = []

    # ------------------------------------------------------------------ launch
    def pin(self, root_pid: int) -> None:
        """Resolve the listed paths in the sandbox before the command runs (nothing inside can have
        moved anything yet): a listed socket is that file for the whole run, as with Landlock."""
        if not self.listed:
            return
        from sandboxctl.network import native

        root = os.open(f"/proc/{root_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for path in self.listed:
                try:
                    fd = native.open_in_root(root, os.fsencode(path))
                except OSError:
                    self.missing.append(path)
                    continue
                try:
                    st = os.fstat(fd)
                    if stat.S_ISDIR(st.st_mode):
                        self.dirs[os.readlink(f"/proc/self/fd/{fd}").rstrip("/") or "/"] = path
                    elif stat.S_ISSOCK(st.st_mode):
                        self.files[sockdiag.file_identity(st)] = path
                    else:
                        self.missing.append(path)
                finally:
                    os.close(fd)
        finally:
            os.close(root)

    # ------------------------------------------------------------------ per call
    @staticmethod
    def resolve(pid: int, path: bytes) -> int:
        """O_PATH descriptor of the caller's socket path, as the caller would have found it."""
        from sandboxctl.network import native

        if not path.startswith(b"/"):
            cwd = os.readlink(f"/proc/{pid}/cwd")
            if not cwd.startswith("/") or cwd.endswith(" (deleted)"):
                raise OSError(2, "the caller's working directory is gone")  # ENOENT
            path = os.fsencode(cwd.rstrip("/")) + b"/" + path
        root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return native.open_in_root(root, path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            return _walked(pid, root, os.fsdecode(path))
        finally:
            os.close(root)

    def pathname_verdict(self, fd: int) -> tuple[bool, str]:
        """Whether the socket file behind fd may be connected to, and the rule that says so."""
        identity = sockdiag.file_identity(os.fstat(fd))
        if identity in self.files:
            return True, f"network.unix {self.files[identity]}"
        if self.dirs:
            with contextlib.suppress(OSError):
                where = os.readlink(f"/proc/self/fd/{fd}")
                for directory, listed in self.dirs.items():
                    if where.startswith(directory.rstrip("/") + "/"):
                        return True, f"network.unix {listed}"
        if self._bound_inside(lambda entry: entry.vfs == identity):
            return True, "bound inside the sandbox"
        return False, "not listed in network.unix (a read or write grant never opens a socket)"

    def abstract_verdict(self, name: bytes) -> tuple[bool, str]:
        """Abstract names live in a network namespace: under none/proxy the sandbox has its own (the
        connect is made on the caller's socket, so in it); under host, the host's, where only a
        socket of the sandbox's may be reached (what Landlock's abstract-socket scope says)."""
        if self.private_netns:
            return True, "the sandbox's own network namespace"
        wanted = b"\0" + name
        if self._bound_inside(lambda entry: entry.name == wanted):
            return True, "bound inside the sandbox"
        return False, "an abstract socket outside the sandbox (Landlock's scope)"

    def _bound_inside(self, matches: Callable[[sockdiag.UnixSocket], bool]) -> bool:
        if self.diag_fd is None:
            return False
        found = [entry.inode for entry in sockdiag.unix_sockets(self.diag_fd) if matches(entry)]
        if not found or self.private_netns:
            return bool(found)
        return self._held_by_sandbox({f"socket:[{inode}]" for inode in found})

    def _held_by_sandbox(self, links: set[str]) -> bool:
        """Under host the namespace is shared: the socket counts as the sandbox's if a sandboxed
        process holds it open (a host process's socket can only get there through a listed one)."""
        for pid in self.sandbox_pids():
            try:
                names = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for name in names:
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{name}") in links:
                        return True
        return False


class Unsure(Exception):
    """Where a socket path leads in the caller's view could not be established: refused and logged."""


def _walked(pid: int, root: int, path: str) -> int:
    """openat2 failed in our view, which is not the caller's through /proc/self or a magic link (a
    symlink to /proc/self/root/run/... was "no such socket" and the connect was never logged): the
    path is resolved again as the caller's kernel does (supervise/mediate_walk). OSError only
    when its lookup certainly fails so; Unsure when that cannot be told."""
    from sandboxctl.supervise.mediate_calls import Entry
    from sandboxctl.supervise.mediate_resolve import Resolver

    resolver = Resolver(os.dup(root))
    opened: list[int] = []
    try:
        entry = resolver.entry(pid, path, opened, follow=True)
        if isinstance(entry, str):
            code = getattr(errno, entry, errno.ENOENT)
            raise OSError(code, os.strerror(code))
        if not isinstance(entry, Entry):
            raise Unsure(getattr(entry, "why", "the socket's path could not be resolved in the caller's view"))
        if entry.st is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        return os.open(entry.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=entry.parent)
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)
        resolver.close()
