"""The socket calls the supervisor answers (seccomp user notification; rules in plan/network.py).

connect() — every one reaches us, since BPF cannot read an address:
- under network none/proxy, a destination other than the sandbox's own loopback (the proxy is
  there) is denied with EACCES and logged as a `net` event with that destination, counted with
  the run's denials. The namespace has no route out anyway; we make the refusal seen.
- below Landlock ABI 9 nothing in the kernel checks a UNIX socket path, so we perform every
  connect ourselves on the caller's own socket (pidfd_getfd: same socket, same options, same
  network namespace) with the address we read and checked — the kernel is never told to
  "continue" and re-read a buffer a second thread may have rewritten, nor to look up a
  descriptor number the caller may have swapped meanwhile. A pathname goes to the very socket
  file unixwall.py judged (/proc/self/fd/N); the answer is the connect's own result.
  Consequence: the server sees the supervisor as its peer (SO_PEERCRED: same uid, pid 0 inside
  the sandbox's PID namespace).
- with Landlock ABI 9 (RESOLVE_UNIX) the kernel checks socket paths itself, so anything not denied
  above is continued: whatever a racing thread puts in the buffer, Landlock and the namespace
  decide it.

sendto() with an address (none/proxy): a datagram to a remote address is denied and logged; any
other is continued (a rewritten buffer can only reach an address with no route).

socket()/socketpair() of an AF_UNIX datagram socket, below ABI 9: refused. Its sendmsg() could
address any socket path, and sendmsg() keeps the address where BPF cannot see it.

A blocking connect is made non-blocking for the duration of our call (the flag lives on the open
file the caller shares); one still in progress is finished by a waiter thread (pending.py), so
neither a slow handshake nor a full listen backlog ever stalls the supervisor's loop.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from sandboxctl.network import native, sockaddr
from sandboxctl.network.pending import PendingConnects, connect_now
from sandboxctl.network.unixwall import UnixWall, Unsure
from sandboxctl.plan.network import AF_UNIX, SOCK_DGRAM, SOCK_RAW, SOCK_TYPE_MASK
from sandboxctl.record import Record
from sandboxctl.supervise import notify

LOW32 = 0xFFFFFFFF
DIRECT_RULE = "direct connection: only the proxy and the sandbox's own loopback are reachable"
DATAGRAM_RULE = ("AF_UNIX datagram sockets need Landlock ABI 9 here (one could send to any socket path, "
                 "and seccomp cannot read sendmsg's address)")


def _int(value: int) -> int:
    """An int argument: the kernel reads the low 32 bits, signed."""
    value &= LOW32
    return value - (1 << 32) if value & 0x80000000 else value


def _unix_sockaddr(fd: int) -> bytes:
    return struct.pack("<H", AF_UNIX) + f"/proc/self/fd/{fd}".encode() + b"\0"


class Decision(Record):
    allowed: bool
    rule: str
    errno: int = errno.EACCES
    log_allowed: bool = False  # a listed host socket is a boundary crossing worth a record


class SocketCalls:
    """Routes for the notification dispatcher: connect, sendto, socket, socketpair."""

    def __init__(self, listener: int, *, private_netns: bool, wall: UnixWall | None,
                 connect_ports: tuple[int, ...] | None, log: Callable[..., None], denied: list[dict[str, Any]]):
        self.listener = listener
        self.private_netns = private_netns  # none/proxy: the namespace is the wall, direct connections are denied
        self.wall = wall  # None: Landlock (ABI 9) checks UNIX socket paths in the kernel
        self.connect_ports = connect_ports  # Landlock's TCP connect rule, mirrored for connects we make ourselves
        self.log = log
        self.denied = denied
        self.waiter = PendingConnects(listener)
        self.reader = native.MemoryReader(sockaddr.MAX_SOCKADDR)  # the loop's own (one per thread)

    def route(self, notification: notify.Notification, name: str) -> bool:
        """Answer the call; False leaves it to the dispatcher (a socket() no rule here is for)."""
        if name == "connect":
            self._connect(notification)
        elif name == "sendto":
            self._sendto(notification)
        elif name in ("socket", "socketpair"):
            args = notification.args
            datagram = _int(args[0]) == AF_UNIX and args[1] & SOCK_TYPE_MASK in (SOCK_DGRAM, SOCK_RAW)
            if not datagram:
                return False
            self._datagram_socket(notification, name)
        else:
            return False
        return True

    def close(self) -> None:
        self.waiter.stop()

    # ------------------------------------------------------------------ connect
    def _connect(self, notification: notify.Notification) -> None:
        target_fd, pointer, length = _int(notification.args[0]), notification.args[1], _int(notification.args[2])
        if length < 0 or length > sockaddr.MAX_SOCKADDR:
            notify.respond(self.listener, notification.id, error=errno.EINVAL)
            return
        if self.wall is None:
            self._connect_checked_by_kernel(notification, pointer, length)
            return
        try:
            pidfd = native.pidfd_of_thread(notification.pid)
        except OSError as exc:  # the caller is gone, or this kernel cannot name a thread
            if notify.still_valid(self.listener, notification.id):
                notify.respond(self.listener, notification.id, error=errno.EPERM)
                self.log("syscall", pid=notification.pid, name="connect", decision="deny",
                         rule=f"sandboxctl could not reach the caller's descriptors ({exc.strerror})", errno="EPERM")
            return
        sock = -1
        try:
            raw = self.reader.read(notification.pid, pointer, length)
            sock = native.pidfd_getfd(pidfd, target_fd)
        except OSError as exc:
            if notify.still_valid(self.listener, notification.id):
                notify.respond(self.listener, notification.id, error=exc.errno or errno.EFAULT)
            if sock >= 0:
                os.close(sock)
            return
        finally:
            os.close(pidfd)
        handed_over = False
        try:
            if notify.still_valid(self.listener, notification.id):  # what we read is the caller's own
                if sockaddr.local_inet(raw) and self.connect_ports is None:
                    handed_over = self._perform(notification.id, sock, raw)  # the loopback: most calls
                else:
                    handed_over = self._connect_for(notification, sock, raw)
        finally:
            if not handed_over:
                os.close(sock)

    def _connect_for(self, notification: notify.Notification, sock: int, raw: bytes) -> bool:
        """Decide and connect on the caller's behalf; True when the waiter now owns sock."""
        address = sockaddr.parse(raw)
        target = -1
        try:
            if address.family == sockaddr.AF_UNIX and len(raw) > sockaddr.MAX_UNIX:
                notify.respond(self.listener, notification.id, error=errno.EINVAL)  # as the kernel would
                return False
            if address.path is not None:
                try:
                    target = self.wall.resolve(notification.pid, address.path)
                except OSError as exc:  # nothing there (ENOENT, ELOOP, ...): what the kernel would say
                    notify.respond(self.listener, notification.id, error=exc.errno or errno.ENOENT)
                    return False
                except Unsure as exc:  # where it leads is unknown: refused, and seen
                    if notify.respond(self.listener, notification.id, error=errno.EACCES):
                        self._record(notification.pid, address, Decision(False, str(exc)), "connect")
                    return False
                if not _is_socket(target):
                    notify.respond(self.listener, notification.id, error=errno.ECONNREFUSED)
                    return False
                if not notify.still_valid(self.listener, notification.id):  # cwd and root just read: the caller's
                    return False
                allowed, rule = self.wall.pathname_verdict(target)
                decision = Decision(allowed, rule, log_allowed=allowed and rule.startswith("network.unix"))
                raw = _unix_sockaddr(target)
            else:
                decision = self._decide(sock, address)
            if not decision.allowed:
                notify.respond(self.listener, notification.id, error=decision.errno)
                self._record(notification.pid, address, decision, "connect")
                return False
            if decision.log_allowed:
                self._record(notification.pid, address, decision, "connect")
            handed_over = self._perform(notification.id, sock, raw, keep=target)
            if handed_over:
                target = -1  # the waiter holds it: the address names it (/proc/self/fd/N)
            return handed_over
        finally:
            if target >= 0:
                os.close(target)

    def _decide(self, sock: int, address: sockaddr.Address) -> Decision:
        if address.abstract is not None:
            allowed, rule = self.wall.abstract_verdict(address.abstract)
            return Decision(allowed, rule, errno.EPERM)
        if not address.inet:
            return Decision(True, "")  # AF_UNSPEC, or a family the kernel will refuse for this socket
        if not sockaddr.is_local(address):
            return Decision(not self.private_netns, DIRECT_RULE)
        if self.connect_ports is not None and address.port not in self.connect_ports and _is_tcp(sock):
            return Decision(False, "network.listen: only ports "
                            f"{', '.join(map(str, self.connect_ports)) or '(none)'} may be dialled (Landlock's rule, "
                            "kept for the connects the supervisor makes)")
        return Decision(True, "")

    def _connect_checked_by_kernel(self, notification: notify.Notification, pointer: int, length: int) -> None:
        """Landlock ABI 9 checks socket paths: only a direct connection needs us (never continued)."""
        try:
            raw = self.reader.read(notification.pid, pointer, length)
        except OSError:
            raw = b""
        address = sockaddr.parse(raw)
        if not notify.still_valid(self.listener, notification.id):
            return
        if self.private_netns and address.inet and not sockaddr.is_local(address):
            notify.respond(self.listener, notification.id, error=errno.EACCES)
            self._record(notification.pid, address, Decision(False, DIRECT_RULE), "connect")
            return
        notify.respond(self.listener, notification.id, allow=True)

    def _perform(self, notification_id: int, sock: int, raw: bytes, keep: int = -1) -> bool:
        """connect(2) on the caller's socket with the checked address; answer with its result.
        keep: the socket file a UNIX address names (/proc/self/fd/N), held as long as the connect."""
        flags = fcntl.fcntl(sock, fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:  # the caller's own semantics: EINPROGRESS is its answer
            notify.respond(self.listener, notification_id, error=native.connect(sock, raw))
            return False
        result = connect_now(sock, raw, flags)
        if result in (errno.EINPROGRESS, errno.EALREADY):  # a handshake still on its way
            return self.waiter.add(notification_id, sock, raw, keep, retry=False)
        if result == errno.EAGAIN:  # a UNIX listener's backlog is full: tried again until it is not
            return self.waiter.add(notification_id, sock, raw, keep, retry=True)
        notify.respond(self.listener, notification_id, error=result)
        return False

    # ------------------------------------------------------------------ sendto, socket
    def _sendto(self, notification: notify.Notification) -> None:
        pointer, length = notification.args[4], _int(notification.args[5])
        if not pointer or length <= 0 or length > sockaddr.MAX_SOCKADDR:
            notify.respond(self.listener, notification.id, allow=True)  # the kernel ignores or refuses it
            return
        try:
            address = sockaddr.parse(self.reader.read(notification.pid, pointer, length))
        except OSError:
            address = sockaddr.Address(-1)
        if not notify.still_valid(self.listener, notification.id):
            return
        if self.private_netns and address.inet and not sockaddr.is_local(address):
            notify.respond(self.listener, notification.id, error=errno.EACCES)
            self._record(notification.pid, address, Decision(False, DIRECT_RULE), "sendto")
            return
        notify.respond(self.listener, notification.id, allow=True)

    def _datagram_socket(self, notification: notify.Notification, name: str) -> None:
        if self.wall is None:  # Landlock checks every path such a socket sends to
            notify.respond(self.listener, notification.id, allow=True)
            return
        if notify.respond(self.listener, notification.id, error=errno.EACCES):
            self.denied.append({"kind": "syscall", "target": f"{name}(AF_UNIX, SOCK_DGRAM)", "rule": DATAGRAM_RULE})
            self.log("syscall", pid=notification.pid, name=name, decision="deny", rule=DATAGRAM_RULE, errno="EACCES")

    # ------------------------------------------------------------------ records
    def _record(self, pid: int, address: sockaddr.Address, decision: Decision, via: str) -> None:
        """A `net` event with the destination; a denial also joins the run's denials."""
        if address.inet:
            host, port = address.host, address.port
        else:
            host, port = sockaddr.describe(address), None
        outcome = "allow" if decision.allowed else "deny"
        if not decision.allowed:
            self.denied.append({"kind": "net", "target": sockaddr.describe(address), "rule": decision.rule})
        self.log("net", host=host, port=port, decision=outcome, rule=decision.rule, pid=pid, via=via,
                 errno=None if decision.allowed else errno.errorcode.get(decision.errno, str(decision.errno)))


def _is_socket(fd: int) -> bool:
    import stat

    return stat.S_ISSOCK(os.fstat(fd).st_mode)


def _is_tcp(fd: int) -> bool:
    """Landlock's TCP rules are for stream sockets of IPPROTO_TCP only (UDP connects are not theirs)."""
    try:
        kind = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return kind.type == socket.SOCK_STREAM and kind.proto in (0, socket.IPPROTO_TCP)
    finally:
        kind.close()
