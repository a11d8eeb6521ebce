"""exec.allow: writable mounts become noexec, from outside, before the command starts.

Landlock's execute right is checked when a file is executed (execve), never when it is mapped
with PROT_EXEC: an allowed program's loader maps an LD_PRELOAD library, an allowed interpreter
dlopen()s one, and the ELF loader run as a command maps any file as a program — all on a read
right alone. A noexec mount refuses both (execve, and mmap with PROT_EXEC: "failed to map
segment"), and it is the kernel that refuses, so nothing can be raced.

bubblewrap cannot mount noexec, and the sandboxed process must never hold the capability to.
So the supervisor, once bubblewrap has built the mount tree and before the command runs, forks
a child that joins the user namespace owning the sandbox's mount namespace (ours: we created it,
so we hold every capability in it) and that mount namespace, and remounts each listed mount with
MS_NOEXEC added to its existing flags. The sandboxed processes live in a user namespace nested in
that one, with no capabilities and no mount(2) (seccomp): they cannot undo it.
"""

from __future__ import annotations

import errno
import fcntl
import os

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1)
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs f_flag bit -> mount(2) flag, so a remount keeps what the mount already had (flags locked
# by a more privileged namespace may not be cleared, only added to)
_KEEP = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
         (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))


def remount_noexec(pid: int, targets: tuple[str, ...]) -> None:
    """Make each target (a mount point in pid's mount namespace) noexec; OSError names the one
    that failed. Blocks until done (a fork and a few system calls)."""
    if not targets:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(mnt, NS_GET_USERNS)
    except OSError:
        os.close(mnt)
        raise
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # single-threaded from here: setns(CLONE_NEWUSER) needs that
        code = 0
        try:
            os.close(read_end)
            if libc.setns(owner, CLONE_NEWUSER) != 0 or libc.setns(mnt, CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            for target in targets:
                flags = MS_REMOUNT | MS_BIND | MS_NOEXEC
                current = os.statvfs(target).f_flag
                for have, keep in _KEEP:
                    if current & have:
                        flags |= keep
                if libc.mount(None, os.fsencode(target), None, flags, None) != 0:
                    raise OSError(ctypes.get_errno(), target)
        except OSError as exc:
            os.write(write_end, f"{exc.errno or errno.EIO}:{exc.strerror or exc}".encode()[:512])
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        message = os.read(read_end, 512).decode(errors="replace")
        _, status = os.waitpid(child, 0)
    finally:
        for fd in (read_end, owner, mnt):
            os.close(fd)
    if status != 0 or message:
        number, _, text = message.partition(":")
        raise OSError(int(number) if number.isdigit() else errno.EIO, text or "the remount helper failed")
