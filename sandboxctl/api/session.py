"""The library's session: one sandbox kept up on a thread of its own, commands run in it.

    with box.session() as s:
        s.run(["pip", "install", "-e", "."])
        s.run(["pytest"])

The sandbox's supervisor (supervise/session.py) runs on a dedicated thread for the session's
whole life (bubblewrap dies with the thread that started it, so never a pool thread). Each
run() opens a connection of its own to it (a socketpair, handed over a private channel: nothing
outside this process can reach the session), so commands may run from several threads at once.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sandboxctl.api import checks
from sandboxctl.errors import SandboxError
from sandboxctl.supervise import session_wire as wire

if TYPE_CHECKING:
    from sandboxctl.api.sandbox import Output, Result, Sandbox

READ_AFTER_EXIT_S = 0.05  # output already in the pipes when a command exits is read, not more


class Session:
    """A running sandbox for many commands; see Sandbox.session()."""

    def __init__(self, box: Sandbox, *, name: str | None = None, timeout: str | float | None = None,
                 idle_timeout: str | float | None = None):
        from sandboxctl import units
        from sandboxctl.api.options import parse_option

        self.box = box
        self.name = checks.text(name, "name") or f"lib-{os.getpid()}-{os.urandom(2).hex()}"
        self.timeout = checks.duration(timeout, "timeout")
        self.idle_timeout = parse_option(units.parse_duration, checks.duration(idle_timeout, "idle_timeout"),
                                         "--idle-timeout", "30m")
        self.plan = None
        self.supervisor = None
        self.connector: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.outcome = None
        self.lock = threading.Lock()
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ life
    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Session:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    @property
    def run_id(self) -> str | None:
        return self.plan.run_id if self.plan is not None else None

    def start(self) -> Session:
        """Start the sandbox; returns once its server is ready (or raises why it could not start)."""
        if self.thread is not None:
            raise SandboxError("this session was already started", "make a new one with Sandbox.session()")
        self.plan = self.box.plan([], session=self.name, timeout=self.timeout, interactive=False)
        self.box.check_confirmations(self.plan)
        self.warnings = list(self.box.notes) + list(self.plan.warnings)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.connector = mine
        self.thread = threading.Thread(target=self._supervise, args=(theirs,), name=f"sandboxctl-session-{self.name}",
                                       daemon=True)
        self.thread.start()
        while not self.ready.wait(0.2):
            if not self.thread.is_alive():
                break
        if self.failure is not None or not self.ready.is_set():
            self.thread.join()
            self.connector.close()
            raise self.failure or SandboxError("the session could not start")
        return self

    def _supervise(self, theirs: socket.socket) -> None:
        from sandboxctl.supervise.session import SessionSupervisor
        from sandboxctl.supervise.stdio import CommandIO

        def keep(supervisor: Any) -> None:
            self.supervisor = supervisor

        try:
            self.outcome = self.box.execute(
                self.plan, supervisor_class=SessionSupervisor, io=CommandIO(capture=False),
                forward_signals=False, approver=self.box.approver(), notice=self.warnings.append, started=keep,
                connector=theirs, idle_timeout=self.idle_timeout, on_ready=lambda _s: self.ready.set())
            if self.outcome.error is not None and not self.ready.is_set():
                self.failure = self.outcome.error
        except BaseException as exc:
            self.failure = exc
        finally:
            theirs.close()

    def stop(self) -> None:
        """End the session: every process of the sandbox goes, and the run's run.end is written."""
        if self.thread is None:
            return
        if self.supervisor is not None:
            self.supervisor.cancel()
        if self.connector is not None:
            self.connector.close()
            self.connector = None
        self.thread.join()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.ready.is_set()

    def _ended(self) -> SandboxError:
        supervisor = self.supervisor
        reason = (supervisor.end_reason if supervisor is not None else None) or "its server inside the sandbox stopped"
        return SandboxError(f"session {self.name} ended: {reason}",
                            f"its records: sandboxctl log --run {self.run_id}; start a new session")

    # ------------------------------------------------------------------ commands
    def run(self, argv: Iterable[str | os.PathLike[str]], *, input: str | bytes | None = None,
            env: Mapping[str, str] | Iterable[str] = (), timeout: str | float | None = None,
            cwd: str | os.PathLike[str] | None = None, on_stdout: Output | None = None,
            on_stderr: Output | None = None, capture: bool = True, text: bool = True) -> Result:
        """Run one command in the session's sandbox (the arguments are Sandbox.run's). Its exit
        code, output, timeout and denials are its own; files and processes it leaves in the
        sandbox stay for the next command."""
        return self._run(argv, input=input, env=env, timeout=timeout, cwd=cwd, on_stdout=on_stdout,
                         on_stderr=on_stderr, capture=capture, text=text)

    def _run(self, argv: Any, *, input: Any = None, env: Any = (), timeout: Any = None, cwd: Any = None,
             on_stdout: Any = None, on_stderr: Any = None, capture: bool = True, text: bool = True,
             keep: Any = None) -> Result:
        from sandboxctl import units
        from sandboxctl.api.options import check_env_items, parse_option
        from sandboxctl.api.sandbox import Result
        from sandboxctl.supervise.stdio import CommandIO

        command = checks.argv(argv)
        data = checks.input_bytes(input)
        checks.callback(on_stdout, "on_stdout")
        checks.callback(on_stderr, "on_stderr")
        items = checks.env_items(env, "env")
        check_env_items(items)
        seconds = parse_option(units.parse_duration, checks.duration(timeout, "timeout"), "--timeout", "30m")
        directory = checks.cwd(cwd, self.plan.cwd if self.plan is not None else "/")
        if not self.running:
            raise self._ended() if self.thread is not None else SandboxError(
                "the session is not started", "use it as a context manager: with box.session() as s: ...")
        decoders = checks.Decoders(text)
        io = CommandIO(input=data, capture=capture, on_stdout=decoders.sink(1, on_stdout),
                       on_stderr=decoders.sink(2, on_stderr))
        reply = self._exchange({"argv": command, "cwd": directory, "env": _resolve_env(items), "timeout": seconds,
                                "tty": None}, io, keep)
        if "error" in reply and "exited" not in reply:
            raise SandboxError(str(reply["error"]), reply.get("hint"), int(reply.get("exit_code", 125)))
        if reply.get("error"):
            code = int(reply.get("exit_code", 125))
            raise SandboxError(str(reply["error"]), reply.get("hint") or self._exec_hint(code, command[0]), code)
        return Result(int(reply["exit_code"]), decoders.whole(io.output(1)), decoders.whole(io.output(2)),
                      list(reply.get("denials") or []), self.run_id or "", round(reply.get("duration_s", 0.0), 6),
                      bool(reply.get("timed_out")), tuple(self.warnings), self.plan.log_path, reply.get("exited"))

    def _exec_hint(self, code: int, name: str) -> str:
        """Where the command is on the host and which grant would show it, as `run` says."""
        from sandboxctl.plan.locate import hint_for_exec_error, session_exec_hint

        if self.plan is None or code not in (126, 127):
            return session_exec_hint(code)
        return hint_for_exec_error(self.plan, code, name, os.environ.get("PATH", ""))

    async def arun(self, argv: Iterable[str | os.PathLike[str]], **options: Any) -> Result:
        """run() for asyncio: waits on a thread; callbacks are called on the event loop;
        cancelling the task kills the command (its connection closes)."""
        import asyncio

        from sandboxctl.api.sandbox import in_thread

        loop = asyncio.get_running_loop()
        for stream in ("on_stdout", "on_stderr"):
            callback = options.get(stream)
            if callback is not None:
                options[stream] = lambda chunk, callback=callback: loop.call_soon_threadsafe(callback, chunk)
        holder: list[socket.socket] = []
        return await in_thread(lambda: self._run(argv, keep=holder.append, **options),
                               cancel=lambda: holder and _shut(holder[0]))

    def _exchange(self, request: dict[str, Any], io: Any, keep: Any = None) -> dict[str, Any]:
        """One connection: the request with the command's descriptors, then its replies."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                with self.lock:
                    connector = self.connector
                    if connector is None:
                        raise self._ended()
                    wire.send(connector, {"connection": True}, [theirs.fileno()])
            except OSError:
                raise self._ended() from None
            finally:
                theirs.close()
            if keep is not None:
                keep(mine)
            try:
                wire.send(mine, {"exec": request}, io.child_fds())
            except OSError:
                raise self._ended() from None
            finally:
                io.close_child_ends()
            return self._wait(mine, io)
        finally:
            io.close()
            mine.close()

    def _wait(self, conn: socket.socket, io: Any) -> dict[str, Any]:
        sel = selectors.DefaultSelector()
        try:
            sel.register(conn, selectors.EVENT_READ, "conn")
            io.register(sel)
            while True:
                for key, _ in sel.select():
                    if key.data == "io":
                        io.handle(key.fd, sel)
                        continue
                    message, fds = wire.receive(conn)
                    wire.close_all(fds)
                    if message is None:
                        raise self._ended()
                    if "exited" in message or "error" in message:
                        io.drain(READ_AFTER_EXIT_S, wait_for_eof=False)
                        return message
        finally:
            sel.close()


def _shut(conn: socket.socket) -> None:
    import contextlib

    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def _resolve_env(items: list[str]) -> dict[str, str]:
    """NAME=VALUE sets; a bare NAME is taken from this process (and skipped when unset)."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env
