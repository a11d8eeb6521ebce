"""System calls the standard library does not wrap, made on descriptors (ctypes, built lazily).

openat2 (resolution limited to a root, no magic links), renameat2 (its flags), and the seccomp
ADDFD ioctl that installs a descriptor in a trapped caller (optionally answering its call).
"""

from __future__ import annotations

import fcntl
import functools
import os
import struct

NR_OPENAT2 = 437  # the same number on every architecture that has it
NR_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}
RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT = 1, 2, 4, 8, 16
NOTIF_ADDFD = 0x40182103  # _IOW('!', 3, struct seccomp_notif_addfd)
ADDFD_FLAG_SETFD, ADDFD_FLAG_SEND = 1, 2
_ADDFD = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
# the open(2) flags openat2 accepts (it refuses unknown bits, which open silently ignores)
VALID_OPEN_FLAGS = (os.O_ACCMODE | os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC | os.O_APPEND | os.O_NONBLOCK
                    | os.O_DSYNC | os.O_SYNC | os.O_DIRECT | os.O_LARGEFILE | os.O_DIRECTORY | os.O_NOFOLLOW
                    | os.O_NOATIME | os.O_CLOEXEC | getattr(os, "O_TMPFILE", 0) | getattr(os, "O_PATH", 0))


@functools.cache
def _libc():
    import ctypes

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return ctypes, libc, OpenHow


def _check(result: int) -> int:
    if result < 0:
        ctypes, _libc_handle, _ = _libc()
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


@functools.cache
def _openat2_call():
    """syscall(2) with openat2's argument types declared once: the per-call conversions of five
    ctypes objects were a third of the call (it runs for every mediated call and every exec)."""
    ctypes, libc, OpenHow = _libc()
    call = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p,
                            ctypes.c_size_t, use_errno=True)(("syscall", libc))
    return ctypes, call, OpenHow, ctypes.sizeof(OpenHow)


_HOWS: dict[tuple[int, int, int], int] = {}  # (flags, mode, resolve) -> address of a struct open_how made once
_HOW_KEEP: list = []  # the structs themselves (read-only once made; shared by every thread)
MAX_HOWS = 64


def openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    ctypes, call, OpenHow, size = _openat2_call()
    address = _HOWS.get((flags, mode, resolve))
    if address is None:  # the exec path asks the same few; a ctypes struct made per call was a third of it
        how = OpenHow(flags, mode, resolve)
        address = ctypes.addressof(how)
        if len(_HOWS) < MAX_HOWS:
            _HOW_KEEP.append(how)
            _HOWS[(flags, mode, resolve)] = address
    result = call(NR_OPENAT2, dirfd, os.fsencode(path), address, size)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def truncate_opened(fd: int) -> None:
    """O_TRUNC done on a descriptor once what it names is judged (the mediator, approved writes):
    a read-only one (O_RDONLY|O_TRUNC, which Linux truncates given write permission) through a
    write reopen of the file itself."""
    import fcntl

    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        os.ftruncate(fd, 0)
        return
    writer = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(writer, 0)
    finally:
        os.close(writer)


def renameat2(old_dirfd: int, old: str, new_dirfd: int, new: str, flags: int) -> None:
    if not flags:
        os.rename(old, new, src_dir_fd=old_dirfd, dst_dir_fd=new_dirfd)
        return
    ctypes, libc, _ = _libc()
    number = NR_RENAMEAT2.get(os.uname().machine, 316)
    _check(libc.syscall(ctypes.c_long(number), ctypes.c_long(old_dirfd), ctypes.c_char_p(os.fsencode(old)),
                        ctypes.c_long(new_dirfd), ctypes.c_char_p(os.fsencode(new)), ctypes.c_uint(flags)))


def add_fd(listener: int, notification_id: int, fd: int, cloexec: bool, *, send: bool = True,
           target: int | None = None) -> int:
    """Install fd in the caller (as `target` if given: SETFD replaces that descriptor) and, with
    send, answer its call with the new descriptor number. Returns that number."""
    flags = (ADDFD_FLAG_SEND if send else 0) | (ADDFD_FLAG_SETFD if target is not None else 0)
    buffer = bytearray(_ADDFD.pack(notification_id, flags, fd, target or 0, os.O_CLOEXEC if cloexec else 0))
    return fcntl.ioctl(listener, NOTIF_ADDFD, buffer, True)


# Capabilities that let root ignore file permissions. A supervisor running as root drops them from
# this thread's effective set while it acts for the sandbox, whose root has none of them: the
# kernel then applies the permission checks the sandboxed caller would meet (capabilities are
# per thread, so the rest of the supervisor keeps its own).
_FILE_CAPS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 27)  # CHOWN DAC_* FOWNER FSETID MKNOD
_CAP_VERSION_3 = 0x20080522


@functools.cache
def _cap_structs():
    ctypes, libc, _ = _libc()

    class Header(ctypes.Structure):
        _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

    class Data(ctypes.Structure):
        _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))

    return ctypes, libc, Header, Data


class CallerPermissions:
    """with CallerPermissions(): … — file operations as the sandboxed caller would be allowed them.

    Capabilities are per thread, and blocks may nest or run on several threads at once (the
    mediator's FIFO opens): each thread keeps its own stack of what it had before. The outermost
    entry of a thread is one capset: its sets are read (capget) at its first entry only and kept
    with the lowered copy, since nothing but this class changes the supervisor's capabilities and
    no other thread can change this thread's (capset acts on the calling thread alone). Leaving is
    one capset of the sets as they were at the entry (this runs around every change the mediator
    performs as root)."""

    def __init__(self) -> None:
        self.active = os.geteuid() == 0
        import threading

        self._local = threading.local()

    @staticmethod
    def _caps():
        return _cap_structs()

    def __enter__(self) -> CallerPermissions:
        if not self.active:
            return self
        ctypes, libc, Header, Data = self._caps()
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        known = getattr(self._local, "known", None) if not stack else None
        if known is not None:  # this thread's own sets, as its last outermost entry read them
            header, data, saved, lowered = known
            data[0].effective, data[1].effective = lowered
        else:
            header, data = Header(_CAP_VERSION_3, 0), (Data * 2)()
            if libc.capget(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capget")
            saved = (data[0].effective, data[1].effective)
            lowered = (data[0].effective & ~_FILE_CAPS & 0xFFFFFFFF,
                       data[1].effective & ~(_FILE_CAPS >> 32) & 0xFFFFFFFF)
            data[0].effective, data[1].effective = lowered
            if not stack:
                self._local.known = (header, data, saved, lowered)
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        stack.append((header, data, saved))
        return self

    def __exit__(self, *exc: object) -> None:
        stack = getattr(self._local, "stack", None) if self.active else None
        if not stack:
            return
        ctypes, libc, _Header, _Data = self._caps()
        header, data, saved = stack.pop()
        data[0].effective, data[1].effective = saved  # permitted and inheritable: as read at the entry
        if libc.capset(ctypes.byref(header), data) != 0:
            raise OSError(ctypes.get_errno(), "capset (restoring the supervisor's capabilities)")
