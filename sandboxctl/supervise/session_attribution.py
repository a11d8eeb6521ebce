"""Which command of a session a process belongs to, for its records and its denials.

Each command leads a session of its own inside the sandbox (the server calls setsid before the
exec), so a host process's innermost NSsid names its command; a child that called setsid is
found through its parents. Attribution happens while the process is still stopped in its call
(the notification's record is written after the answer, when the process may be gone), and the
same call's later records reuse it. It is a record of fact, not a wall: a process that leaves
both its session and its ancestry (setsid after a double fork) is logged without a command.

A session id is a pid: once every process of a finished command's session is gone, the kernel
may give that number to another process, which may lead a session of its own. So a command's
session counts only while the command's first process lives (held by a pidfd: while it lives,
its pid, and so its session id, is no other's), and a command is dropped as it ends: what it
left running is logged without a command, never with a finished command's number, and the map
holds running commands only, however long the session lives.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from sandboxctl.supervise import notify, processes

ANCESTRY_DEPTH = 32


class Attribution:
    def __init__(self) -> None:
        # a running command's session id (its first pid, in the sandbox) -> (its number, a pidfd of that process)
        self.leaders: dict[int, tuple[int, int]] = {}
        self.lock = threading.Lock()  # the loop adds and drops; the listener's and the proxy's threads look up
        self.stop_at: tuple[int | None, ...] = ()  # the sandbox's init and bubblewrap: no command above
        self.level = -1  # which of /proc's NSsid values is the sandbox's (one nested inside has its own)
        self.current = threading.local()  # per thread: (pid, command) of the call being answered

    def started(self, sandbox_pid: int, number: int, leader_pidfd: int) -> None:
        """`leader_pidfd` holds the command's first process (proved to be `sandbox_pid`); it is ours."""
        with self.lock:
            replaced = self.leaders.pop(sandbox_pid, None)
            self.leaders[sandbox_pid] = (number, leader_pidfd)
        if replaced is not None:
            os.close(replaced[1])

    def finished(self, number: int) -> None:
        with self.lock:
            ended = [sid for sid, (owner, _) in self.leaders.items() if owner == number]
            pidfds = [self.leaders.pop(sid)[1] for sid in ended]
        for pidfd in pidfds:
            os.close(pidfd)

    def close(self) -> None:
        with self.lock:
            pidfds = [pidfd for _, pidfd in self.leaders.values()]
            self.leaders.clear()
        for pidfd in pidfds:
            os.close(pidfd)

    def begin(self, pid: Any) -> int | None:
        """A notification's process, looked up while it is stopped in its call (so /proc/PID is
        its own); the same call's later records, written on this thread, reuse the answer."""
        number = self._walk(pid) if isinstance(pid, int) and pid > 0 else None
        self.current.call = (pid, number)
        return number

    def command_of(self, pid: Any) -> int | None:
        """Which command a host pid belongs to; None for what no running command started."""
        if not isinstance(pid, int) or pid <= 0:
            return None
        call = getattr(self.current, "call", None)
        if call is not None and call[0] == pid:
            return call[1]  # the call being answered's later record: the process may have exited by now
        return self._walk(pid)

    def _command(self, sid: int) -> int | None:
        with self.lock:  # the pidfd is not closed while it is polled
            entry = self.leaders.get(sid)
            if entry is None or processes.exited(entry[1]):
                return None
            return entry[0]

    def _walk(self, pid: int) -> int | None:
        current = pid
        sid, parent = session_and_parent(current, self.level)
        for _ in range(ANCESTRY_DEPTH):
            if sid is None:
                return None
            number = self._command(sid)
            if number is not None:
                return number
            if parent is None or parent <= 1 or current in self.stop_at:
                return None
            sid, grandparent = session_and_parent(parent, self.level)
            if session_and_parent(current, self.level)[1] != parent:
                return None  # `current` was reparented meanwhile: what was read may be another process's
            current, parent = parent, grandparent
        return None


class SessionDispatcher(notify.Dispatcher):
    """Attributes each notification's process while it is still stopped in the call (always
    afresh: a host pid seen in an earlier call may be another process's by now)."""

    attribute: Any = None

    def _answer(self, notification: notify.Notification) -> bool:
        if self.attribute is not None:
            self.attribute(notification.pid)
        return super()._answer(notification)


def denial(event: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """The denial table's row for a record that refused something (as the run's own list has it)."""
    if fields.get("decision") != "deny":
        return None
    if event == "file":
        return {"kind": "file", "target": f"{fields.get('op')} {fields.get('path')}", "rule": fields.get("rule")}
    if event == "syscall":
        return {"kind": "syscall", "target": fields.get("name"), "rule": fields.get("rule")}
    if event == "net":
        from sandboxctl.network.sockaddr import destination

        target = destination(fields["host"], fields.get("port")) if fields.get("host") else "unparsable request"
        return {"kind": "net", "target": target, "rule": fields.get("rule")}
    return None


def session_and_parent(pid: int, level: int = -1) -> tuple[int | None, int | None]:
    """A host process's session id as the sandbox sees it (NSsid's value at `level`: the
    sandbox's PID namespace, also for a process in one nested inside) and its host parent."""
    try:
        with open(f"/proc/{pid}/status") as status:
            sid = parent = None
            for line in status:
                if line.startswith("NSsid:"):
                    sid = int(line.split()[1:][level])
                elif line.startswith("PPid:"):
                    parent = int(line.split()[1])
            return sid, parent
    except (OSError, ValueError, IndexError):
        return None, None


def namespace_level(pid: int) -> int:
    """Which NSsid value is the PID namespace of `pid`'s own (0: the host's)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return len(line.split()) - 2
    except OSError:
        pass
    return -1


def open_leader(server_pid: int, sandbox_pid: int, namespace: tuple[int, int] | None) -> int | None:
    """A pidfd of the command the server just forked (it waits for its go, so it lives unless a
    signal killed it), proved to be `sandbox_pid` of the sandbox's PID namespace after the open."""
    if namespace is None:
        return None
    for child in processes.command_pids(server_pid):
        try:
            pidfd = os.pidfd_open(child)
        except OSError:
            continue
        if processes.pid_namespace(child, pidfd) == namespace and own_pid(child) == sandbox_pid \
                and not processes.exited(pidfd):
            return pidfd
        os.close(pidfd)
    return None


def own_pid(pid: int) -> int | None:
    """A host process's pid in its own PID namespace (NSpid's last value)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        pass
    return None
