"""A session's clients: who may connect, what they ask, and what they are told (part of session.py).

`sandboxctl exec` and friends connect over the session's socket and are peer-checked on accept
(like the approval socket); the library's connections arrive as descriptors over a socketpair.
Each connection runs at most one command at a time; a client that goes away takes its running
command with it (nobody is left to report it to). When the sandbox ends, every waiting client
hears why, then every connection closes.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from typing import Any

from sandboxctl.supervise import session_wire as wire

KILL_GRACE_S = 5.0  # after SIGKILL, a command the server does not report has a broken server
MAX_CLIENTS = 64
FORWARDABLE = frozenset(int(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                         signal.SIGUSR1, signal.SIGUSR2))


class SessionClients:
    """The clients' side of a SessionSupervisor (a mixin: the state is the supervisor's)."""

    def _on_source(self, key: selectors.SelectorKey, sel: selectors.BaseSelector) -> None:
        if key.data == "accept":
            self._accept(sel)
        elif key.data == "connect":
            self._connect(sel)
        else:
            self._on_client(key.fileobj, sel)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        from sandboxctl.approval.socket_server import peer_is_outside

        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        if not peer_is_outside(conn) or len(self.clients) >= MAX_CLIENTS:
            conn.close()
            return
        self._add_client(conn, sel)

    def _connect(self, sel: selectors.BaseSelector) -> None:
        message, fds = wire.receive(self.connector)
        if message is None:  # the library's Session is gone: so is the session
            sel.unregister(self.connector)
            self.connector = None
            self._end("the library's session object was closed")
            return
        for fd in fds:
            self._add_client(socket.socket(fileno=fd), sel)

    def _add_client(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        conn.setblocking(True)
        self.clients[conn] = None
        sel.register(conn, selectors.EVENT_READ, "client")

    def _on_client(self, conn: socket.socket, sel: selectors.BaseSelector) -> None:
        message, fds = wire.receive(conn)
        if message is None:
            self._drop(conn, sel)
            return
        self.last_activity = time.monotonic()
        if "exec" in message:
            self._exec(conn, message["exec"], fds)
            return
        wire.close_all(fds)
        if "signal" in message:  # the client's Ctrl-C or SIGTERM, for its running command
            number = self.clients.get(conn)
            if number is not None and message["signal"] in FORWARDABLE:
                self._signal(number, int(message["signal"]))
        elif "status" in message:
            self._reply(conn, {"session": self.status()})
        elif "stop" in message:
            self._end("stopped")
        else:
            self._reply(conn, {"error": "unknown request", "exit_code": 125})

    def _drop(self, conn: socket.socket, sel: selectors.BaseSelector | None) -> None:
        """A client went away: its running command goes too (nobody is left to report it to)."""
        number = self.clients.pop(conn, None)
        if sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(conn)
        conn.close()
        if number is not None and number in self.commands:
            command = self.commands[number]
            command.client = None
            self._signal(number, signal.SIGKILL)
            command.escalation = (time.monotonic() + KILL_GRACE_S, None)

    def _reply(self, conn: socket.socket | None, message: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
        if conn is None:
            return
        try:
            wire.send(conn, message, fds)
        except OSError:
            self._drop(conn, self.sel)

    def status(self) -> dict[str, Any]:
        return {"name": self.plan.session, "run": self.plan.run_id, "policy": self.plan.policy,
                "workspace": self.plan.workspace, "pid": os.getpid(), "commands": self.count,
                "running": len(self.commands), "idle_s": round(time.monotonic() - self.last_activity, 1),
                "log": self.plan.log_path}

    def _end_clients(self) -> None:
        """The sandbox is gone: every waiting client hears why, then every connection closes."""
        reason = self.end_reason or "the session's server inside the sandbox stopped"
        message = f"session {self.plan.session} ended: {reason}"
        for number in list(self.commands):
            command = self.commands.pop(number)
            self._reply(command.client, {"error": message, "exit_code": 125,
                                         "hint": f"its records: sandboxctl log --run {self.plan.run_id}"})
        for conn in list(self.clients):
            with contextlib.suppress(OSError):
                conn.close()
        self.clients.clear()
        if self.connector is not None:
            with contextlib.suppress(OSError):
                self.connector.close()
