"""exec.allow beyond what Landlock sees: memory files, and the ELF loader run as a command.

Landlock checks the path of every file the kernel executes (execve, execveat with AT_EMPTY_PATH,
/proc/self/fd/N), but a memory file (memfd_create) lives on an internal mount that Landlock does
not restrict, so `memfd_create` + write + exec ran any binary. Under exec.allow the filter traps
memfd_create and the supervisor makes the file itself with MFD_NOEXEC_SEAL (Linux 6.3): the
kernel then refuses to execute it, and the seal cannot be lifted. A caller asking for MFD_EXEC is
refused. (On an older kernel memfd_create is refused outright under exec.allow.)

The ELF loader (ld.so) must stay executable for every dynamic program (the kernel opens it with
exec rights as the interpreter), and run as a command it maps any readable file as a program.
So an exec whose target is the loader itself is refused (`loader`, by device and inode, in the
sandbox's own view).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from typing import Any

from sandboxctl.supervise import fdops
from sandboxctl.supervise.notify import Notification, ProcessMemory, respond

MFD_CLOEXEC, MFD_ALLOW_SEALING, MFD_HUGETLB, MFD_NOEXEC_SEAL, MFD_EXEC = 0x1, 0x2, 0x4, 0x8, 0x10
NAME_MAX = 249  # memfd names are at most 249 bytes (the kernel adds "memfd:")
# /proc/self/fd/N, /proc/self/exe and /dev/fd/N: magic links that name one file directly
_DIRECT_MAGIC = re.compile(r"^/(?:proc/(self|thread-self|\d+)|dev)/(exe|fd/\d+)$")


class ExecGuard:
    def __init__(self, listener: int, log: Callable[..., None], denied: list[dict[str, Any]],
                 loaders: tuple[str, ...] = (), root: int | None = None):
        self.listener = listener
        self.log = log
        self.denied = denied
        self.loaders: set[tuple[int, int]] = set()
        for path in loaders:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self.loaders.add((st.st_dev, st.st_ino))
        self.root = root  # the sandbox's (owned), opened from its init: never cached from a caller's pid

    def runs_the_loader(self, pid: int, path: str) -> bool:
        """Is path (absolute, as the caller sees it) the ELF loader? Resolved in the sandbox's view."""
        if not self.loaders or not path.startswith("/"):
            return False
        own = -1
        try:
            if self.root is None:  # this lookup only: the exec's answer proves the pid was the caller's
                own = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            base = self.root if self.root is not None else own
            fd = fdops.openat2(base, path, os.O_PATH | os.O_CLOEXEC, 0,
                               fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_MAGICLINKS)
        except OSError as exc:
            # /proc/self means nothing from out here (ENOENT), a magic link is refused (ELOOP)
            if exc.errno == errno.ELOOP or path.startswith(("/proc/", "/dev/")):
                return self._through_magic_link(pid, path)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return self._through_symlinks(pid, path, base)
            return False  # EACCES…: the kernel fails this exec too
        finally:
            if own >= 0:
                os.close(own)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return (st.st_dev, st.st_ino) in self.loaders

    def _through_symlinks(self, pid: int, path: str, base: int) -> bool:
        """Not found in our view: the caller's own only when no symlink lies on the way. One may
        lead through /proc/self, which names nobody from out here: ws/l -> /proc/self/root/lib64
        made l/ld-linux-x86-64.so.2 "no such file", and the loader ran a program from outside
        exec.allow. Then the path is resolved as the caller's kernel resolves it (the mediator's
        walk); what cannot be told counts as the loader (refused and logged)."""
        from sandboxctl.supervise.mediate_calls import Entry
        from sandboxctl.supervise.mediate_resolve import Resolver

        try:
            fd = fdops.openat2(base, path, os.O_PATH | os.O_CLOEXEC, 0,
                               fdops.RESOLVE_IN_ROOT | fdops.RESOLVE_NO_SYMLINKS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False  # no symlink on the way: the kernel fails this exec too
        else:
            os.close(fd)
        resolver = Resolver(os.dup(base))
        opened: list[int] = []
        try:
            entry = resolver.entry(pid, path, opened, follow=True)
        finally:
            for fd in opened:
                os.close(fd)
            resolver.close()
        if isinstance(entry, str):
            return False  # the caller's lookup certainly fails: so does its exec
        if not isinstance(entry, Entry):
            return True
        return entry.st is not None and (entry.st.st_dev, entry.st.st_ino) in self.loaders

    def _through_magic_link(self, pid: int, path: str) -> bool:
        """A path through a /proc magic link, which the kernel follows: /proc/self/fd/N and
        /proc/self/exe name the file itself (fstat it through the caller's own entry); any other
        (/proc/self/root/…, /proc/self/cwd/…, another pid) cannot be resolved here as the kernel
        will, so it counts as the loader: refused, never let through unexamined."""
        match = _DIRECT_MAGIC.match(path)
        if match is None or (match.group(1) not in ("self", "thread-self", None)
                             and match.group(1) != _own_pid(pid)):
            return True
        try:
            st = os.stat(f"/proc/{pid}/{match.group(2)}")
        except OSError:
            return False  # the descriptor is not open: the kernel fails the exec too
        return (st.st_dev, st.st_ino) in self.loaders

    def refuse_loader(self, n: Notification, path: str) -> None:
        why = ("exec.allow: the ELF loader run as a command would map any file as a program "
               "(it stays allowed as every dynamic program's interpreter)")
        if not respond(self.listener, n.id, error=errno.EACCES):
            return  # the caller is gone: what was read may be its pid's next owner's, no denial of the run's
        self.denied.append({"kind": "exec", "target": path, "rule": why})
        self.log("exec", pid=n.pid, path=path, decision="deny", rule=why)

    def close(self) -> None:
        if self.root is not None:
            os.close(self.root)
            self.root = None

    def memfd_create(self, n: Notification) -> None:
        flags = n.args[1] & 0xFFFFFFFF
        try:
            memory = ProcessMemory(n.pid)
            try:
                name = memory.string(n.args[0])[:NAME_MAX]
            finally:
                memory.close()
        except OSError:
            name = "sandbox"
        if flags & MFD_EXEC:
            self._deny(n, name, "exec.allow: an executable memory file would run code from outside the list")
            return
        try:
            fd = os.memfd_create(name or "sandbox", (flags & ~MFD_CLOEXEC) | MFD_NOEXEC_SEAL | MFD_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EINVAL and _kernel() < (6, 3):
                self._deny(n, name, "exec.allow: this kernel cannot make memory files non-executable "
                                    "(MFD_NOEXEC_SEAL needs Linux 6.3)", errno.EPERM)
            else:
                respond(self.listener, n.id, error=exc.errno or errno.EINVAL)
            return
        try:
            fdops.add_fd(self.listener, n.id, fd, bool(flags & MFD_CLOEXEC))
        except OSError:
            respond(self.listener, n.id, error=errno.EMFILE)
        finally:
            os.close(fd)

    def _deny(self, n: Notification, name: str, why: str, error: int = errno.EACCES) -> None:
        if not respond(self.listener, n.id, error=error):
            return
        self.denied.append({"kind": "syscall", "target": f"memfd_create {name}", "rule": why})
        self.log("syscall", pid=n.pid, name="memfd_create", decision="deny", rule=why,
                 errno=errno.errorcode.get(error, str(error)))


def _own_pid(pid: int) -> str | None:
    """The caller's pid in its own PID namespace (the last NSpid field), as a string."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return line.split()[-1]
    except OSError:
        pass
    return None


def _kernel() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
    except ValueError:
        return (0, 0)
