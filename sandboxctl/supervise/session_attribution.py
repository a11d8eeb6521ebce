"""Which command of a session a process belongs to, for its records and its denials.

Each command leads a session of its own inside the sandbox (the server calls setsid before the
exec), so a host process's innermost NSsid names its command; a child that called setsid is
found through its parents. Attribution happens while the process is still stopped in its call
(the notification's record is written after the answer, when the process may be gone), and the
same call's later records reuse it. It is a record of fact, not a wall: a process that leaves
both its session and its ancestry (setsid after a double fork) is logged without a command.
"""

from __future__ import annotations

import threading
from typing import Any

from sandboxctl.supervise import notify

ANCESTRY_DEPTH = 32


class Attribution:
    def __init__(self) -> None:
        self.sids: dict[int, int] = {}  # the sandbox's session id of a command -> its number
        self.stop_at: tuple[int | None, ...] = ()  # the sandbox's init and bubblewrap: no command above
        self.recent = threading.local()  # per thread: (pid, command) of the call being handled

    def started(self, sandbox_pid: int, number: int) -> None:
        self.sids[sandbox_pid] = number

    def command_of(self, pid: Any) -> int | None:
        """Which command a host pid belongs to; None for what no command started."""
        if not isinstance(pid, int) or pid <= 0:
            return None
        recent = getattr(self.recent, "last", None)
        if recent is not None and recent[0] == pid:
            return recent[1]  # the same call's later record: the process may have exited by now
        number = self._walk(pid)
        self.recent.last = (pid, number)
        return number

    def _walk(self, pid: int) -> int | None:
        current = pid
        for _ in range(ANCESTRY_DEPTH):
            sid, parent = session_and_parent(current)
            if sid is None:
                return None
            if sid in self.sids:
                return self.sids[sid]
            if parent is None or parent <= 1 or current in self.stop_at:
                return None
            current = parent
        return None


class SessionDispatcher(notify.Dispatcher):
    """Attributes each notification's process while it is still stopped in the call."""

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


def session_and_parent(pid: int) -> tuple[int | None, int | None]:
    """A host process's session id as the sandbox sees it (the last NSsid) and its host parent."""
    try:
        with open(f"/proc/{pid}/status") as status:
            sid = parent = None
            for line in status:
                if line.startswith("NSsid:"):
                    sid = int(line.split()[-1])
                elif line.startswith("PPid:"):
                    parent = int(line.split()[1])
            return sid, parent
    except (OSError, ValueError):
        return None, None
