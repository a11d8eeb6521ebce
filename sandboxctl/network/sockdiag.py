"""Which UNIX sockets exist in a network namespace, from the kernel (NETLINK_SOCK_DIAG, unix_diag).

Under network none/proxy the shim opens the netlink socket inside the sandbox's own network
namespace, so every UNIX socket it lists was made by a sandboxed process: a pathname socket whose
file is one of them was bound inside, and may be connected to without being listed (what Landlock
ABI 9 allows too: sockets of the same domain). The kernel reports the bound file as (device,
inode), which cannot be faked by renaming or linking.
"""

from __future__ import annotations

import _socket  # socket.py's enums cost ~2 ms of a run's start-up; the C socket does all we need
import os
import struct

from sandboxctl.record import Record

SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS = 0x1, 0x2
UNIX_DIAG_NAME, UNIX_DIAG_VFS = 0, 1
_HEADER = struct.Struct("<IHHII")  # nlmsghdr: len, type, flags, seq, pid
_REQUEST = struct.Struct("<BBHIII8x")  # unix_diag_req: family, protocol, pad, states, ino, show, cookie
_MESSAGE = struct.Struct("<BBBBI8x")  # unix_diag_msg: family, type, state, pad, ino, cookie
_ATTR = struct.Struct("<HH")
MAX_REPLY = 1 << 20  # a namespace with more sockets than fit here is answered in several datagrams


class UnixSocket(Record):
    inode: int  # the socket's own inode (socket:[N] in /proc/PID/fd)
    name: bytes | None  # the bound name (a leading NUL: abstract), None if unbound
    vfs: tuple[int, int, int] | None  # (major, minor, inode) of the bound file, pathname sockets only


def _kernel_dev(value: int) -> tuple[int, int]:
    """The kernel's internal dev_t (MAJOR << 20 | MINOR) as (major, minor)."""
    return value >> 20, value & 0xFFFFF


def unix_sockets(diag_fd: int) -> list[UnixSocket]:
    """Every UNIX socket of the namespace the netlink socket lives in, with its name and file."""
    sock = _socket.socket(fileno=os.dup(diag_fd))
    try:
        request = _REQUEST.pack(_socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_VFS)
        sequence = int.from_bytes(os.urandom(4), "little")
        sock.send(_HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP,
                               sequence, 0) + request)
        found: list[UnixSocket] = []
        while True:
            data = sock.recv(MAX_REPLY)
            if not data:
                raise OSError("sock_diag: the kernel closed the dump")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, seq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise OSError("sock_diag: malformed reply")
                if seq == sequence:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("<i", data, offset + _HEADER.size)[0]
                        raise OSError(code, f"sock_diag: {os.strerror(code)}")
                    if kind == SOCK_DIAG_BY_FAMILY:
                        found.append(_entry(data[offset + _HEADER.size:offset + length]))
                offset += (length + 3) & ~3
    finally:
        sock.close()


def _entry(body: bytes) -> UnixSocket:
    _family, _type, _state, _pad, inode = _MESSAGE.unpack_from(body)
    name = vfs = None
    offset = _MESSAGE.size
    while offset + _ATTR.size <= len(body):
        length, kind = _ATTR.unpack_from(body, offset)
        if length < _ATTR.size:
            break
        value = body[offset + _ATTR.size:offset + length]
        if kind == UNIX_DIAG_NAME:
            name = value
        elif kind == UNIX_DIAG_VFS and len(value) >= 8:
            vfs_inode, vfs_dev = struct.unpack_from("<II", value)
            vfs = (*_kernel_dev(vfs_dev), vfs_inode)
        offset += (length + 3) & ~3
    return UnixSocket(inode, name, vfs)


def file_identity(st: os.stat_result) -> tuple[int, int, int]:
    """(major, minor, inode) of a stat result, comparable with UnixSocket.vfs."""
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino
