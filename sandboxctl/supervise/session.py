"""A session: one sandbox that stays up, and commands started in it one by one.

The run's supervisor (runner.Supervisor: log, proxy, approvals, notifications, limits) with a
session's own work on top: clients connect (the library over a socketpair, `sandboxctl exec`
over the session's socket, peer-checked like the approval socket), each request becomes a
command started by the server inside the sandbox (launch/session_server.py), and each command
gets its own exit code, stdio, timeout and records: `command.start`, `exec`, the denials it
caused (a `command` field: its number), `command.end`.

The session ends on stop, on its own timeout (the plan's limits.timeout), after idle_timeout
without a command, when the server inside dies, or when this process dies (bubblewrap's
--die-with-parent); whichever way, the whole sandbox goes with it. The clients' side —
accepting, requests, replies — is session_clients.py; which command a process belongs to,
session_attribution.py.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from typing import Any

from sandboxctl.supervise import processes
from sandboxctl.supervise import session_wire as wire
from sandboxctl.supervise.runner import TERM_GRACE_S, Supervisor
from sandboxctl.supervise.session_attribution import (
    Attribution,
    SessionDispatcher,
    denial,
    namespace_level,
    open_leader,
)
from sandboxctl.supervise.session_clients import KILL_GRACE_S, SessionClients

SERVER_CHECK_S = 1.0  # while commands run: a server stopped by one of them is continued


class Command:
    def __init__(self, number: int, client: socket.socket, argv: list[str], timeout: float | None):
        self.number = number
        self.client = client
        self.argv = argv
        self.started = time.monotonic()
        self.deadline = self.started + timeout if timeout else None
        self.timeout = timeout
        self.timed_out = False
        self.escalation: tuple[float, int | None] | None = None  # (when, next signal; None: give up)
        self.denials: list[dict[str, Any]] = []


class SessionSupervisor(SessionClients, Supervisor):
    dispatcher_class = SessionDispatcher

    def __init__(self, *args: Any, listener: socket.socket | None = None, connector: socket.socket | None = None,
                 idle_timeout: float | None = None, on_ready: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.listener = listener  # `sandboxctl exec` and friends: peer-checked on accept
        self.connector = connector  # the library: connections arrive as descriptors
        self.idle_timeout = idle_timeout
        self.ready_callback = on_ready
        self.control: socket.socket | None = None
        self.commands: dict[int, Command] = {}
        self.clients: dict[socket.socket, int | None] = {}  # connection -> its running command
        self.attribution = Attribution()
        self.count = 0
        self.last_activity = time.monotonic()
        self.end_reason: str | None = None
        self.sel: selectors.BaseSelector | None = None
        self.server_pid: int | None = None  # the server's host pid (the shim's process)
        self.server_pidfd: int | None = None  # held from "ready": signals go through it, never the pid
        self.next_server_check = 0.0

    # ------------------------------------------------------------------ set-up
    def _extra_config(self) -> dict[str, Any]:
        return {"session": self.plan.session}

    def _start_notify(self, fd: int, sel: selectors.BaseSelector, landlock: dict) -> None:
        super()._start_notify(fd, sel, landlock)
        self.dispatcher.attribute = self.attribution.begin

    def _register_sources(self, sel: selectors.BaseSelector) -> None:
        self.sel = sel
        if self.listener is not None:
            self.listener.setblocking(False)
            sel.register(self.listener, selectors.EVENT_READ, "accept")
        if self.connector is not None:
            sel.register(self.connector, selectors.EVENT_READ, "connect")

    def _on_ready(self) -> None:
        self.last_activity = time.monotonic()
        init = self._init_pid()
        children = processes.command_pids(init) if init else []
        self.server_pid = children[0] if children else None  # nothing else runs yet
        if self.server_pid is not None:
            self.server_pidfd = processes.open_member(self.server_pid, self.sandbox_pidns) \
                if self.sandbox_pidns else None
            self.attribution.level = namespace_level(self.server_pid)
        self.attribution.stop_at = (init, self.bwrap_pid)
        if self.ready_callback is not None:
            self.ready_callback(self)

    def _layers(self, landlock: dict[str, Any]) -> dict[str, Any]:
        layers = super()._layers(landlock)
        layers["session"] = {
            "name": self.plan.session,
            "commands": "started by a server inside the sandbox, after every layer above: they share the sandbox",
        }
        return layers

    def start_fields(self) -> dict[str, Any]:
        return {"session": self.plan.session}

    def release(self) -> None:
        super().release()
        self._close_pidfd("server_pidfd")
        self.attribution.close()

    def end_fields(self) -> dict[str, Any]:
        return {"session": self.plan.session, "commands": self.count, "reason": self.end_reason or "server stopped"}

    def launch(self):
        try:
            return super().launch()
        finally:
            self._end_clients()

    # ------------------------------------------------------------------ commands
    def _exec(self, conn: socket.socket, request: Any, fds: list[int]) -> None:
        problem = self._bad_request(request, fds)
        if problem or self.end_reason or self.control is None or self.clients.get(conn) is not None:
            wire.close_all(fds)
            why = problem or f"session {self.plan.session} is ending: {self.end_reason or 'its server stopped'}"
            self._reply(conn, {"error": why, "exit_code": 125})
            return
        self.count += 1
        number = self.count
        argv = [str(a) for a in request["argv"]]
        timeout = request.get("timeout")
        command = Command(number, conn, argv, float(timeout) if timeout else None)
        self.commands[number] = command
        self.clients[conn] = number
        self._wake_server()
        self._write_log("command.start", session=self.plan.session, command_id=number, argv=argv,
                        cwd=request.get("cwd") or self.plan.cwd, timeout_s=command.timeout)
        try:
            wire.send(self.control, {"start": number, "argv": argv, "env": request.get("env") or {},
                                     "cwd": request.get("cwd"), "tty": request.get("tty")}, fds)
        except OSError:
            self._finish(number, {"code": 125, "error": f"session {self.plan.session}: its server inside the "
                                                        "sandbox is gone"})
        finally:
            wire.close_all(fds)

    @staticmethod
    def _bad_request(request: Any, fds: list[int]) -> str | None:
        if not isinstance(request, dict) or not isinstance(request.get("argv"), list) or not request["argv"]:
            return "no command given"
        if not all(isinstance(a, str) and "\0" not in a for a in request["argv"]):
            return "the command must be a list of strings"
        env = request.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            return "env must map names to strings"
        if request.get("tty") is None and len(fds) != 3:
            return "a command needs its stdin, stdout and stderr"
        timeout = request.get("timeout")
        if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
            return "timeout must be a number of seconds"
        return None

    def _wake_server(self) -> None:
        """A command may have stopped the server (SIGSTOP: it shares the sandbox); continue it."""
        if self.server_pid is None or self.server_pidfd is None:
            return
        try:
            with open(f"/proc/{self.server_pid}/stat", "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in (b"T", b"t") and not processes.exited(self.server_pidfd):  # that stat was the server's
            processes.send(self.server_pidfd, signal.SIGCONT)

    def _signal(self, number: int, signum: int) -> None:
        if self.control is not None:
            with contextlib.suppress(OSError):
                wire.send(self.control, {"kill": number, "signal": int(signum)})

    def _finish(self, number: int, report: dict[str, Any]) -> None:
        if self.dispatcher is not None:  # its last calls' records and denials first
            self.dispatcher.settled()
        self.attribution.finished(number)  # its session id may be another process's from now on
        command = self.commands.pop(number, None)
        if command is None:
            return
        self.last_activity = time.monotonic()
        code = 124 if command.timed_out else int(report.get("code", 125))
        duration = round(time.monotonic() - command.started, 6)
        self._write_log("command.end", session=self.plan.session, command_id=number, exit_code=code,
                        duration_s=duration, timed_out=command.timed_out,
                        denied=len(command.denials), error=report.get("error"))
        if command.client is not None:
            self.clients[command.client] = None
            reply: dict[str, Any] = {"exited": number, "exit_code": code, "timed_out": command.timed_out,
                                     "denials": command.denials, "duration_s": duration}
            if report.get("error") and not command.timed_out:
                reply.update(error=report["error"], hint=report.get("hint"))
            self._reply(command.client, reply)

    # ------------------------------------------------------------------ the server inside
    def _on_control(self, control: socket.socket, sel: selectors.BaseSelector) -> None:
        if not self.ready:
            super()._on_control(control, sel)
            if self.ready:
                self.control = control
            return
        message, fds = wire.receive(control)
        if message is None:
            sel.unregister(control)
            self.control = None
            return
        self._on_server(message, fds)

    def _on_server(self, message: dict[str, Any], fds: list[int]) -> None:
        if "started" in message:
            number = message["started"]
            command = self.commands.get(number)
            pid = message.get("pid")
            leader = open_leader(self.server_pid, pid, self.sandbox_pidns) \
                if isinstance(pid, int) and command is not None and self.server_pid is not None else None
            if leader is not None:
                self.attribution.started(pid, number, leader)
            if self.control is not None:  # the command waits for this: its pid is known before its exec
                with contextlib.suppress(OSError):
                    wire.send(self.control, {"go": number})
            if command is not None:
                self._reply(command.client, {"started": number}, fds)
            wire.close_all(fds)
        elif "exited" in message:
            wire.close_all(fds)
            self._finish(message["exited"], message)
        else:
            wire.close_all(fds)

    def _drain(self, control: socket.socket, err_r: int) -> None:
        """The sandbox ended: what the server said last, then bubblewrap's words."""
        if self.ready:
            control.setblocking(False)
            while True:
                message, fds = wire.receive(control)  # None also when nothing is left
                if message is None:
                    break
                self._on_server(message, fds)
            control.setblocking(True)
        else:
            super()._drain(control, err_r)
            return
        os.set_blocking(err_r, False)
        with contextlib.suppress(BlockingIOError):
            while data := os.read(err_r, 65536):
                self._take_stderr(data)

    # ------------------------------------------------------------------ attribution
    def _annotate(self, event: str, fields: dict[str, Any]) -> None:
        # a connection's records come with their command (_connection_fields), found as it began
        if self.ready and (event == "net" or "command_id" not in fields) and event not in (
                "run.start", "run.end", "limit", "secret"):
            number = fields.get("command_id") if event == "net" else self.attribution.command_of(fields.get("pid"))
            if number is not None:
                fields["command_id"] = number
                row = denial(event, fields)
                command = self.commands.get(number)
                if row is not None and command is not None:
                    command.denials.append(row)

    def _connection_fields(self) -> Any:
        def command_of_client(client_port: int | None) -> dict[str, Any]:
            init = self._init_pid()
            pid = processes.socket_owner(init, client_port) if client_port and init else None
            number = self.attribution.command_of(pid) if pid else None
            return {} if number is None else {"command_id": number}

        return command_of_client

    # ------------------------------------------------------------------ timers and the end
    def _until_next_timer(self, deadline: float | None) -> float | None:
        wakeups = [w for w in (super()._until_next_timer(deadline),) if w is not None]
        now = time.monotonic()
        for command in self.commands.values():
            when = command.escalation[0] if command.escalation else command.deadline
            if when is not None:
                wakeups.append(max(0.0, when - now))
        if self.idle_timeout and self.ready and not self.commands:
            wakeups.append(max(0.0, self.last_activity + self.idle_timeout - now))
        if self.commands:
            wakeups.append(max(0.0, self.next_server_check - now))
        return min(wakeups) if wakeups else None

    def _on_timers(self, deadline: float | None) -> None:
        super()._on_timers(deadline)
        now = time.monotonic()
        if self.commands and now >= self.next_server_check:
            self.next_server_check = now + SERVER_CHECK_S
            self._wake_server()
        for number, command in list(self.commands.items()):
            if command.escalation and now >= command.escalation[0]:
                next_signal = command.escalation[1]
                if next_signal is None:
                    self._end(f"the server inside did not report command {number} after it was killed")
                    return
                self._signal(number, next_signal)
                command.escalation = (now + KILL_GRACE_S, None)
            elif command.deadline and not command.timed_out and now >= command.deadline:
                command.timed_out = True
                self._write_log("limit", kind="timeout", action="kill", limit_s=command.timeout, command_id=number)
                self._signal(number, signal.SIGTERM)
                command.escalation = (now + TERM_GRACE_S, signal.SIGKILL)
        if (self.idle_timeout and self.ready and not self.commands and not self.end_reason
                and now >= self.last_activity + self.idle_timeout):
            self._write_log("limit", kind="idle", action="stop", limit_s=self.idle_timeout)
            self._end("idle")

    def _on_timeout(self) -> None:
        self.end_reason = self.end_reason or "timeout"
        super()._on_timeout()

    def _on_signals(self) -> None:
        """SIGTERM, SIGHUP, SIGINT to the session's own process (`kill`, a logout) end the session."""
        pending, self.pending_signals = self.pending_signals, []
        if any(s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT) for s in pending):
            self._end("signal")

    def _end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason
        self._kill()
