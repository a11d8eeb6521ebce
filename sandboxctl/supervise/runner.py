"""Run one Plan: launch bubblewrap, hand the shim its configuration, supervise until the end.

One event loop (selectors) watches the bwrap process (pidfd), the shim's control socket,
bubblewrap's own stderr, seccomp notifications and signals; only the network proxy has threads
of its own, and it is stopped before the run ends.

The Supervisor is one object with one state (its __init__, here). Its work is in one module
per step of the run's data flow, each a mixin class of it — mixins rather than helper objects
because a session (session.py) and the gVisor backend (gvisor.py) override steps of each:
  startup.py    bubblewrap spawned (or the head start adopted), the shim sent its configuration
  handshake.py  the control socket: the shim's "ready", the checks before the go, run.start
  loop.py       the event loop: timers, signals, the timeout, the secrets' expiry, the kill
  listener.py   seccomp notifications, answered on a thread of their own
  escapes.py    approvals (the broker) and the network proxy, with TLS inspection
  run_log.py    the run's records: one lock, the throttle, the flood guard
  result.py     what the run reports: its layers, RunResult
Here: the state, the outline (launch), the tear-down, and the hooks a subclass fills.
"""

from __future__ import annotations

import _signal  # signal.py's enums cost ~0.8 ms of every start-up; the numbers and calls are the same
import contextlib
import os
import sys
import threading
import time

from sandboxctl.errors import SandboxError
from sandboxctl.launch import seccomp, shim_code
from sandboxctl.log.writer import ActionLog
from sandboxctl.paths import join
from sandboxctl.plan.model import Plan
from sandboxctl.supervise import fd_budget, flood, notify, spawn
from sandboxctl.supervise.cgroups import RunCgroup
from sandboxctl.supervise.denials import DenialList, LogThrottle
from sandboxctl.supervise.escapes import Escapes
from sandboxctl.supervise.handshake import Handshake
from sandboxctl.supervise.listener import Listener
from sandboxctl.supervise.loop import FORWARDED, TERM_GRACE_S, Loop, terminal_delivered  # noqa: F401 - imported from here (gvisor, session)
from sandboxctl.supervise.result import Outcome, RunResult
from sandboxctl.supervise.run_log import RunLog
from sandboxctl.supervise.startup import Startup
from sandboxctl.supervise.stdio import CommandIO

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import selectors
    import socket
    from typing import Any


class Supervisor(Startup, Handshake, Loop, Listener, Escapes, RunLog, Outcome):
    """One sandbox from launch to its end.

    The CLI runs it in its main thread with its own stdio and signal handlers (forwarded to the
    command); the library runs it in any thread (forward_signals=False: no handler is touched),
    with pipes for stdio (io) and its own approval front end (approver)."""

    def __init__(self, plan: Plan, state: str, log: ActionLog, argv_for_log: list[str],
                 cgroup: RunCgroup | None = None, secret_values: dict[str, str] | None = None, *,
                 io: CommandIO | None = None, forward_signals: bool = True, approver: Any = None,
                 notice: Any = None, cwd: str | None = None, head_start: Any = None, head_start_key: str = "",
                 on_go: Any = None):
        self.plan = plan
        self.on_go = on_go  # called once, as the command is let go (the CLI turns its garbage collector back on)
        self.head_start = head_start  # launch.headstart.HeadStart: a bubblewrap the CLI started early
        self.head_start_key = head_start_key  # where this run's launch is remembered for the next one
        self.head_started = False
        self.io = io or CommandIO(inherit=True)
        self.forward_signals = forward_signals
        self.approver = approver  # an approval front end of the caller's (the library's callback)
        self.notice = notice or (lambda message: print(message, file=sys.stderr))
        self.cancel_r, self.cancel_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.cancelled = False
        self.command_cwd = cwd  # inside the sandbox; None: the plan's (the workspace)
        self.init_pidfd: int | None = None  # the namespace init's, from when it was found (loop._init_pid)
        self.bwrap_pidfd: int | None = None  # bubblewrap's, from its spawn: signals go through these two
        self.pidfds_lock = threading.Lock()  # the notification thread may kill while the run closes them
        self.sandbox_pidns: tuple[int, int] | None = None  # the init's PID namespace (loop.signal_members)
        self.secret_values = secret_values or {}
        self.secrets_dir_fd: int | None = None
        self.proxy = None
        self.notify_fd: int | None = None
        self.dispatcher: notify.Dispatcher | None = None
        self.file_escapes = None  # supervise.file_escape.FileEscapes: approvals of writes, on workers
        self.notify_thread: threading.Thread | None = None  # blocked in NOTIF_RECV (_serve_notifications)
        self.notify_error: BaseException | None = None  # why that thread stopped answering
        self.notify_abandoned = False  # it outlived the run: its listener was taken away (listener.py)
        self.socket_checks = None  # network.checks.SocketChecks: connect/sendto answered here
        self.sock_diag_fd: int | None = None  # the sandbox's own netlink socket (none/proxy)
        self.log_lock = threading.Lock()
        self.log_failed = False
        self.log_guarded = flood.guarded(log)
        self.log_rotations = 0  # the log's rotations we have looked at
        self.log_flooded: int | None = None  # stopped: its first record was this many rotations back (-1: gone)
        log.on_error = lambda exc: self._log_failed()  # the log's thread, writing queued exec records
        log.after_queued = self._after_queued
        self.setup_error: SandboxError | None = None
        self.denials: list[dict[str, Any]] = DenialList()  # bounded: identical ones past a few are counted
        self.throttle = LogThrottle()  # and so are their log records
        self.tampered: list[dict[str, Any]] = DenialList()  # exec records contradicted by what ran: bounded too
        self.expiries: list[tuple[float, str]] = []
        self.cgroup = cgroup
        self.bwrap_pid: int | None = None
        self.state = state
        self.log = log
        self.argv_for_log = argv_for_log
        self.init_pid: int | None = None
        self.ready = False
        self.exec_error: dict[str, Any] | None = None
        self.shim_error: dict[str, Any] | None = None
        self.bwrap_stderr = b""
        self.layers: dict[str, Any] = {}
        self.pending_signals: list[int] = []
        self.terminal_interrupted = False  # the terminal's Ctrl-C came while the command ran (interrupted)
        self.defer_signals = False  # lifecycle: the handlers stay until run.end (restore_signals)
        self.signal_originals: dict[int, Any] | None = None  # the caller's, while deferred
        self.kill_at: float | None = None
        self.timed_out = False
        self.broker = None
        self.tty_front_end = None  # approval/tty.py's, when the terminal asks (escapes._arm_freeze)
        self.notify_killable = False  # the shim's notify filter waits killable-only (launch/shim.py)
        self.inspection = None  # network/inspection.py, when the proxy reads some hosts request by request
        self.nofile = fd_budget.raise_nofile()  # before anything is opened: see fd_budget
        self.mediator = None
        self.protected_inodes: dict[tuple[int, int], str] = {}  # from the launch record (lifecycle)
        self.protected_incomplete: str | None = None  # where the launch record was cut short (lifecycle)
        self._proxy_listener: int | None = None  # the proxy's port until its first connection
        self.snapshot = None  # protect.snapshot.Snapshot of this run (lifecycle): marked, and beaten
        self.next_beat: float | None = None

    def launch(self) -> RunResult:
        plan = self.plan
        bwrap_path = spawn.find_bwrap()
        cache = join(self.state, "cache")
        program = seccomp.load_or_compile(plan.seccomp, cache)
        notify_program, self.syscall_names = seccomp.load_or_compile_notify(plan.seccomp, cache)
        empty = spawn.empty_file(self.state)
        shim_code.ensure_for(plan)
        launched = self._head_start(plan, bwrap_path, empty, program, notify_program) \
            or self._spawn_fresh(plan, bwrap_path, empty, program, notify_program)
        control, err_r, started, originals = launched
        try:
            self._prepare_while_it_starts()
            returncode = self._loop(self.bwrap_pid, control, err_r, started)
            self._await_namespace_end()
        except BaseException:
            # the library's caller goes on living: nothing of the sandbox may outlive this frame
            if self.bwrap_pid:
                self._end_sandbox()
            raise
        finally:
            self._tear_down(control, err_r, originals)
        return self._result(returncode, time.monotonic() - started)

    def _tear_down(self, control: socket.socket, err_r: int, originals: dict[int, Any]) -> None:
        """However the run ended: the caller's signal handlers back, and everything the run held
        closed or stopped, in an order where nothing still running needs what was closed."""
        if self.forward_signals:
            self.signal_originals = originals
            if not self.defer_signals:
                self.restore_signals()
        with contextlib.suppress(SandboxError):  # a launch that ended before "ready"
            self._cgroup_joined()
        control.close()
        self.broker.stop()  # waiting requests are denied, so proxy threads can finish
        if self.file_escapes is not None:
            self.file_escapes.close()  # and so can the file escapes' workers: their records come before run.end
        if self.secrets_dir_fd is not None:
            os.close(self.secrets_dir_fd)
        if self.proxy is not None:
            self.proxy.stop()
        if self._proxy_listener is not None:  # nobody connected: the proxy never had to start
            os.close(self._proxy_listener)
            self._proxy_listener = None
        answered = self._stop_notify_thread()  # nothing of the sandbox is left to call
        if self.mediator is not None and answered:
            self.mediator.close()
        if self.dispatcher is not None and answered:
            self.dispatcher.execs.close()
            if self.dispatcher.exec_guard is not None:
                self.dispatcher.exec_guard.close()
        if self.socket_checks is not None:
            self.socket_checks.close()  # its waiter answers through the listener: stop it first
        if self.notify_fd is not None and answered:
            os.close(self.notify_fd)
        if self.sock_diag_fd is not None:
            os.close(self.sock_diag_fd)
        os.close(err_r)
        self.io.close()

    def interrupted(self, code: int) -> bool:
        """The command died of the terminal's Ctrl-C (128 + SIGINT, and the supervisor had its
        copy: it is in the terminal's foreground group; a copy the loop had no time for counts).
        The CLI then dies of SIGINT too, once its summary is out, so a calling shell stops as it
        would for the command itself (wait-and-cooperative-exit); a command that caught it and
        exited otherwise leaves the shell going on."""
        if code != 128 + _signal.SIGINT:
            return False
        return self.terminal_interrupted or (_signal.SIGINT in self.pending_signals and terminal_delivered())

    def restore_signals(self) -> None:
        """The caller's signal handlers back, once the run's end is written (lifecycle: after
        run.end and the log's close, so a SIGTERM as the run ends cannot kill the supervisor between
        the command's end and run.end); a SIGTERM, SIGHUP or SIGINT that came meanwhile is then
        raised again, as if it had come now. A terminal's Ctrl-C is not: the kernel gave it to the
        command too, and the command's own exit status (which may be that it caught it) stands."""
        originals, self.signal_originals = self.signal_originals, None
        if originals is None:
            return
        for signum, handler in originals.items():
            if handler is None:  # set outside Python: there is nothing to give back
                continue
            # signal.getsignal's Handlers members (gvisor.py) are not the C module's SIG_DFL/SIG_IGN
            _signal.signal(signum, int(handler) if isinstance(handler, int) else handler)
        deferred, self.pending_signals = self.pending_signals, []
        for signum in dict.fromkeys(deferred):
            if signum == _signal.SIGINT and terminal_delivered():
                continue
            if signum in (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT):
                _signal.raise_signal(signum)

    def _await_namespace_end(self, limit: float = 5.0) -> None:
        """bubblewrap is reaped at once, but the kernel empties the PID namespace as its init
        exits (after a kill, or when the command's own exit ends the init): wait for that (the
        init's pidfd turns readable only once every process in the namespace is gone), so that
        nothing of the sandbox is left when the run returns."""
        if self.init_pidfd is None:
            return
        import select

        try:
            select.select([self.init_pidfd], [], [], limit)
        finally:
            self._close_pidfd("init_pidfd")

    def release(self) -> None:
        """Close what the supervisor holds beyond launch (called once the run is over)."""
        self.io.close()
        self._close_pidfd("init_pidfd")
        self._close_pidfd("bwrap_pidfd")
        for fd in (self.cancel_r, self.cancel_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.cancel_r = self.cancel_w = -1

    def cancel(self) -> None:
        """Stop the sandbox now, from any thread (the library's asyncio cancellation)."""
        self.cancelled = True
        if self.cancel_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self.cancel_w, b"x")

    def unfinished(self) -> dict[str, int]:
        """What still runs after the tear-down and could still record: run.end names it, and the
        sealed log refuses what it writes after (log/late.py)."""
        found = {}
        if self.notify_thread is not None and self.notify_thread.is_alive():
            found["notification_thread"] = 1
        if self.proxy is not None and (count := self.proxy.unfinished()):
            found["proxy_connections"] = count
        if self.file_escapes is not None and (count := self.file_escapes.unfinished()):
            found["approval_workers"] = count
        return found

    # ------------------------------------------------------------------ what a subclass fills in
    def start_fields(self) -> dict[str, Any]:
        """More for run.start (a session's name)."""
        return {}

    def end_fields(self) -> dict[str, Any]:
        """More for run.end (a session's command count and why it ended)."""
        return {}

    def _extra_config(self) -> dict[str, Any]:
        """More for the shim's configuration (a session's server)."""
        return {}

    def _on_ready(self) -> None:
        """The command may run now (a session's server is up)."""

    def _register_sources(self, sel: selectors.BaseSelector) -> None:
        """More descriptors for the loop (a session's clients); their events go to _on_source."""

    def _on_source(self, key: selectors.SelectorKey, sel: selectors.BaseSelector) -> None:
        raise AssertionError(f"unexpected loop event {key.data!r}")
