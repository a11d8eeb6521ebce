"""Run one Plan: launch bubblewrap, hand the shim its configuration, supervise until the end.

One event loop (selectors) watches the bwrap process (pidfd), the shim's control socket,
bubblewrap's own stderr, seccomp notifications and signals; only the network proxy has threads
of its own, and it is stopped before the run ends.
"""

from __future__ import annotations

import _signal  # signal.py's enums cost ~0.8 ms of every start-up; the numbers and calls are the same
import _socket  # the control socket needs none of socket.py, whose enums cost ~2 ms of every start-up
import array
import contextlib
import errno
import fcntl
import marshal
import os
import selectors
import sys
import threading
import time
from pathlib import Path

from sandboxctl.errors import EXIT_SANDBOX_FAILED, EXIT_TIMEOUT, SandboxError
from sandboxctl.launch import bwrap, headstart, landlock_rights, seccomp, shim_code
from sandboxctl.launch.config_frames import send_config
from sandboxctl.log.writer import ActionLog, LogWriteError
from sandboxctl.plan.build import PROXY_PORT
from sandboxctl.plan.model import Plan
from sandboxctl.protect.snapshot import HEARTBEAT_S
from sandboxctl.record import Record
from sandboxctl.supervise import fd_budget, fdops, flood, notify, processes, spawn
from sandboxctl.supervise import secrets as secret_store
from sandboxctl.supervise.cgroups import RunCgroup
from sandboxctl.supervise.denials import DenialList, LogThrottle
from sandboxctl.supervise.stdio import CommandIO

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import socket
    from typing import Any

TERM_GRACE_S = 2.0
NOTIFY_JOIN_S = 5.0  # the notification thread, once the sandbox is gone (its listener hangs up at once)
FORWARDED = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)


class RunResult(Record):
    exit_code: int
    duration_s: float
    timed_out: bool = False
    error: SandboxError | None = None
    layers: dict[str, Any] | None = None
    denials: tuple[dict[str, Any], ...] | list[dict[str, Any]] = ()
    protected: tuple[dict[str, Any], ...] = ()  # protect.snapshot.Change records: put back at the end
    tampered: tuple[dict[str, Any], ...] | list[dict[str, Any]] = ()  # exec records contradicted by what ran
    command_exit_code: int | None = None  # set when exit_code is not the command's own (the denial gate: 123)
    held: dict[str, Any] | None = None  # workspace: overlay — what the run's layer holds (lifecycle)


class Supervisor:
    """One sandbox from launch to its end.

    The CLI runs it in its main thread with its own stdio and signal handlers (forwarded to the
    command); the library runs it in any thread (forward_signals=False: no handler is touched),
    with pipes for stdio (io) and its own approval front end (approver)."""

    dispatcher_class = notify.Dispatcher

    def __init__(self, plan: Plan, state: Path, log: ActionLog, argv_for_log: list[str],
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
        self.init_pidfd: int | None = None  # opened when the sandbox is killed, to see it empty
        self.secret_values = secret_values or {}
        self.secrets_dir_fd: int | None = None
        self.proxy = None
        self.notify_fd: int | None = None
        self.dispatcher: notify.Dispatcher | None = None
        self.notify_thread: threading.Thread | None = None  # blocked in NOTIF_RECV (_serve_notifications)
        self.notify_error: BaseException | None = None  # why that thread stopped answering
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
        self.tampered: list[dict[str, Any]] = []  # exec records contradicted by what ran
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
        self.kill_at: float | None = None
        self.timed_out = False
        self.broker = None
        self.inspection = None  # network/inspection.py, when the proxy reads some hosts request by request
        self.nofile = fd_budget.raise_nofile()  # before anything is opened: see fd_budget
        self.mediator = None
        self.protected_inodes: dict[tuple[int, int], str] = {}  # from the launch record (lifecycle)
        self._proxy_listener: int | None = None  # the proxy's port until its first connection
        self.snapshot = None  # protect.snapshot.Snapshot of this run (lifecycle): marked, and beaten
        self.next_beat: float | None = None

    # ------------------------------------------------------------------ approvals
    def _start_broker(self) -> None:
        """One broker for every escape; its front end starts before anything runs (a prompt that
        cannot work is a failed launch, not a silent deny)."""
        from sandboxctl.approval.broker import Broker
        from sandboxctl.approval.grants import GrantStore, Scope

        plan = self.plan
        self.broker = Broker(
            plan.approval_mode, plan.approval_timeout, self._write_log, run_id=plan.run_id,
            scope=Scope(plan.policy, plan.policy_sha256, plan.workspace or ""), store=GrantStore(self.state),
            describe={"run": plan.run_id, "policy": plan.policy, "command": list(plan.command),
                      "workspace": plan.workspace, "supervisor_pid": os.getpid()},
            scrub=self.log.scrubber.text if getattr(self.log, "scrubber", None) is not None else None)
        if plan.approval_mode != "ask":
            return
        if self.approver is not None:
            self.broker.attach(self.approver)
        elif plan.approval_via == "socket":
            from sandboxctl.approval.socket_server import SocketFrontEnd

            front_end = SocketFrontEnd(plan.run_id)
            self.broker.attach(front_end)
            self.notice(f"sandboxctl: approvals for run {plan.run_id}: answer with `sandboxctl approve` "
                        "in another terminal")
        else:
            from sandboxctl.approval.tty import TtyFrontEnd

            self.broker.attach(TtyFrontEnd())

    def _ask_network(self, host: str, port: int, peer: int | None) -> bool:
        from sandboxctl.supervise.file_escape import command_line

        pid = None
        init = self._init_pid()
        if peer and init and self.broker.asks_human:
            pid = processes.socket_owner(init, peer)
        request = self.broker.decide("network", f"{host}:{port}", "not in network.allow", pid,
                                     command_line(pid) if pid else "")
        return request.approved

    def _ask_request(self, method: str, host: str, port: int, path: str, peer: int | None) -> bool:
        """An inspected request its host's rules do not list: asked like a destination (kind http)."""
        from sandboxctl.network.addresses import format_destination
        from sandboxctl.supervise.file_escape import command_line

        pid = None
        init = self._init_pid()
        if peer and init and self.broker.asks_human:
            pid = processes.socket_owner(init, peer)
        target = f"{method} {format_destination(host, None if port in (80, 443) else port)}{path}"
        request = self.broker.decide("http", target, "not in network.inspect allow rules", pid,
                                     command_line(pid) if pid else "")
        return request.approved

    def _prepare_inspection(self) -> dict[str, bytes]:
        """The run's CA and phantom secrets (network.inspect, as: proxy): made before the sandbox exists,
        because the sandbox starts out trusting the CA. Returns the content of each data-file mount."""
        plan = self.plan
        if not plan.inspecting:
            return {}
        import ssl

        from sandboxctl.network.certs import combined_bundle, system_bundle
        from sandboxctl.network.inspection import Inspection, PhantomSpec

        specs = [PhantomSpec(s.name, self.secret_values[s.name], s.hosts, s.ttl)
                 for s in plan.secrets if s.deliver_as == "proxy"]
        try:
            inspection = Inspection(dict(plan.network.inspect), specs, plan.network.upstream_ca,
                                    label=f"sandboxctl {plan.run_id}")
            inspection.check()
        except (OSError, ssl.SSLError) as exc:
            raise SandboxError(f"network.upstream_ca: cannot load the CA certificates: {exc}",
                               "name PEM files of CA certificates the proxy should trust upstream") from None
        except ValueError as exc:  # a proxy secret's value that cannot go into a header
            raise SandboxError(str(exc), "a proxy secret is one line of text (a token)") from None
        self.inspection = inspection
        ca = inspection.ca_pem
        bundle = combined_bundle(ca, system_bundle())
        return {m.target: ca if m.source == "tls:ca" else bundle for m in plan.mounts if m.kind == "data-file"}

    # ------------------------------------------------------------------ launch
    def launch(self) -> RunResult:
        plan = self.plan
        bwrap_path = spawn.find_bwrap()
        program = seccomp.load_or_compile(plan.seccomp, self.state / "cache")
        notify_program, self.syscall_names = seccomp.load_or_compile_notify(plan.seccomp, self.state / "cache")
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
                self._kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.bwrap_pid, 0)
                self._await_namespace_end()
            raise
        finally:
            if self.forward_signals:
                for signum, handler in originals.items():
                    _signal.signal(signum, handler)
            with contextlib.suppress(SandboxError):  # a launch that ended before "ready"
                self._cgroup_joined()
            control.close()
            self.broker.stop()  # waiting requests are denied, so proxy threads can finish
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
        return self._result(returncode, time.monotonic() - started)

    def _config(self, plan: Plan, originals: dict[int, Any], notify_program: bytes) -> dict[str, Any]:
        """What the shim is sent: everything it applies inside, from the plan."""
        config = spawn.shim_config(plan, originals)
        config["env"].update({s.name: self.secret_values[s.name] for s in plan.secrets
                              if s.deliver_as == "env"})
        if self.inspection is not None:
            config["env"].update(self.inspection.placeholders)  # never the values
        config["secrets_dir"] = any(s.ttl and s.deliver_as == "file" for s in plan.secrets)
        config["proxy_port"] = PROXY_PORT if plan.network.mode == "proxy" else None
        config["notify_program"] = notify_program
        # the sandbox's own network namespace lists the UNIX sockets bound inside (network/unixwall.py)
        config["sock_diag"] = bool(plan.seccomp.net_rules) and plan.network.mode != "host"
        config["seccomp_nr"] = seccomp.SECCOMP_SYSCALL.get(os.uname().machine, 317)
        config["cwd"] = self.command_cwd
        config.update(self._extra_config())
        return config

    def _spawn_fresh(self, plan: Plan, bwrap_path: str, empty: str, program: bytes,
                     notify_program: bytes) -> tuple[socket.socket, int, float, dict[int, Any]]:
        """Start bubblewrap from this plan and send the shim its configuration."""
        control, shim_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        err_r, err_w = os.pipe()
        seccomp_fd = spawn.memfd(program, "sandboxctl-seccomp")
        stdin, stdout, stderr = self.io.child_fds()
        stderr_copy = os.dup(stderr)
        secret_fds = {s.name: secret_store.memfd_with(self.secret_values[s.name], s.name)
                      for s in plan.secrets if s.deliver_as == "file"}
        data_fds: dict[str, int] = {}
        try:
            data_fds = {target: spawn.memfd(content, "sandboxctl-tls")
                        for target, content in self._prepare_inspection().items()}
        except SandboxError:
            for fd in (seccomp_fd, err_w, err_r, stderr_copy, *secret_fds.values(), *data_fds.values()):
                os.close(fd)
            control.close()
            shim_end.close()
            self.io.close()
            raise
        fds = bwrap.LaunchFds(seccomp=seccomp_fd, control=shim_end.fileno(),
                              stderr=stderr_copy, empty_file=empty, secrets=secret_fds, data=data_fds)
        numbers = (seccomp_fd, shim_end.fileno(), stderr_copy)
        argv = bwrap.render(plan, fds, bwrap_path)
        passed = (seccomp_fd, shim_end.fileno(), stderr_copy, *secret_fds.values(), *data_fds.values())
        started = time.monotonic()
        # bubblewrap is started with the terminal's SIGINT/SIGQUIT ignored: Ctrl-C must reach the
        # command (the shim restores its dispositions), not kill bwrap and the sandbox under it.
        originals = {s: _signal.getsignal(s) for s in FORWARDED}
        if self.forward_signals:
            for signum in spawn.TERMINAL_SIGNALS:
                _signal.signal(signum, _signal.SIG_IGN)
        try:
            try:
                self.bwrap_pid = self._spawn(argv, stderr=err_w, stdin=stdin, stdout=stdout, pass_fds=passed)
            except OSError as exc:
                raise SandboxError(f"cannot start bubblewrap: {exc.strerror}", "run sandboxctl doctor") from None
            finally:
                for fd in (seccomp_fd, err_w, stderr_copy, *secret_fds.values(), *data_fds.values()):
                    os.close(fd)
                shim_end.close()
                self.io.close_child_ends()
            self._move_into_cgroup_soon()  # the kernel's slow first move overlaps all that follows
            if self.forward_signals:
                self._install_signal_handlers()
            config = self._config(plan, originals, notify_program)
            send_config(control, config)
            # while the sandbox builds itself (as for a head start): the shim runs nothing before
            # the go, and a front end that cannot serve fails the launch here (bubblewrap killed)
            self._start_broker()
        except BaseException:
            self._abandon(control, err_r, originals)
            if self.broker is not None:
                self.broker.stop()
            self.io.close()
            raise
        if self.head_start_key and not data_fds and headstart.eligible(
                plan, inherited_stdio=self.io.inherit, forwards_signals=self.forward_signals):
            headstart.remember(self.head_start_key, plan, argv, numbers, config, program)
        return control, err_r, started, originals

    def _head_start(self, plan: Plan, bwrap_path: str, empty: str, program: bytes,
                    notify_program: bytes) -> tuple[socket.socket, int, float, dict[int, Any]] | None:
        """Adopt the bubblewrap the CLI started early (launch/headstart.py) if, and only if, this
        plan is one whose launch could have been remembered and it gives exactly the argv, the
        seccomp program and the shim configuration the sandbox was started with; else kill it."""
        early = self.head_start
        if early is None:
            return None
        self.head_start = None
        originals = {s: _signal.getsignal(s) for s in FORWARDED}
        originals.update(early.originals)  # what the caller had, before the head start ignored them
        fds = bwrap.LaunchFds(seccomp=early.fds[0], control=early.fds[1], stderr=early.fds[2], empty_file=empty,
                              secrets={})
        try:
            argv, config = bwrap.render(plan, fds, bwrap_path), self._config(plan, originals, notify_program)
            same = (headstart.eligible(plan, inherited_stdio=self.io.inherit, forwards_signals=self.forward_signals)
                    and early.matches(argv, config, program)
                    and os.waitpid(early.pid, os.WNOHANG) == (0, 0))
        except ChildProcessError:
            same = False
        if not same:
            early.abort()
            return None
        early.adopt()
        self.bwrap_pid = early.pid
        self.head_started = True
        try:
            self._start_broker()
        except SandboxError:
            self._abandon(early.control, early.err_r, originals)
            self.io.close()
            raise
        if self.forward_signals:
            self._install_signal_handlers()
        return early.control, early.err_r, early.started, originals

    def _abandon(self, control: socket.socket, err_r: int, originals: dict[int, Any]) -> None:
        """A launch that failed after bubblewrap started: nothing of it may outlive this frame."""
        if self.bwrap_pid:
            self._kill()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.bwrap_pid, 0)
            self._await_namespace_end()
            self.bwrap_pid = None
        if self.forward_signals:
            for signum, handler in originals.items():
                _signal.signal(signum, handler)
        control.close()
        os.close(err_r)

    def _spawn(self, argv: list[str], *, stderr: int, stdin: int, stdout: int, pass_fds: tuple[int, ...]) -> int:
        """bubblewrap, in a mount namespace of its own holding the overlay for workspace: overlay."""
        overlay = self.plan.overlay
        if overlay is None:
            return spawn.spawn(argv, stderr=stderr, stdin=stdin, stdout=stdout, pass_fds=pass_fds)
        from sandboxctl.workspace import mount

        try:
            return mount.spawn(argv, mount.OverlayLayers(overlay.lower, overlay.upper, overlay.work),
                               stderr=stderr, stdin=stdin, stdout=stdout, pass_fds=pass_fds)
        except mount.OverlayError as exc:
            message, hint = mount.remedy(exc.failure, mount.filesystem_type(overlay.upper))
            raise SandboxError(message, hint) from None

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
            os.close(self.init_pidfd)
            self.init_pidfd = None

    def release(self) -> None:
        """Close what the supervisor holds beyond launch (called once the run is over)."""
        self.io.close()
        if self.init_pidfd is not None:
            os.close(self.init_pidfd)
            self.init_pidfd = None
        for fd in (self.cancel_r, self.cancel_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.cancel_r = self.cancel_w = -1

    def start_fields(self) -> dict[str, Any]:
        """More for run.start (a session's name)."""
        return {}

    def end_fields(self) -> dict[str, Any]:
        """More for run.end (a session's command count and why it ended)."""
        return {}

    def _extra_config(self) -> dict[str, Any]:
        """More for the shim's configuration (a session's server)."""
        return {}

    def cancel(self) -> None:
        """Stop the sandbox now, from any thread (the library's asyncio cancellation)."""
        self.cancelled = True
        if self.cancel_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self.cancel_w, b"x")

    # ------------------------------------------------------------------ loop
    def _loop(self, pid: int, control: socket.socket, err_r: int, started: float) -> int:
        """Run until bubblewrap exits; returns its exit code as a shell reports it."""
        sel = selectors.DefaultSelector()
        pidfd = os.pidfd_open(pid)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = _signal.set_wakeup_fd(wake_w) if self.forward_signals else None
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(control, selectors.EVENT_READ, "control")
        sel.register(err_r, selectors.EVENT_READ, "stderr")
        sel.register(wake_r, selectors.EVENT_READ, "signal")
        sel.register(self.cancel_r, selectors.EVENT_READ, "cancel")
        self.io.register(sel)
        self._register_sources(sel)
        deadline = started + self.plan.limits.timeout if self.plan.limits.timeout else None
        try:
            while True:
                for key, _ in sel.select(self._until_next_timer(deadline)):
                    what = key.data
                    if what == "exit":
                        _, status = os.waitpid(pid, 0)
                        self._drain(control, err_r)
                        self.io.drain()
                        code = os.waitstatus_to_exitcode(status)
                        return 128 - code if code < 0 else code
                    if what == "io":
                        self.io.handle(key.fd, sel)
                    elif what == "cancel":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.cancel_r, 512)
                        self._kill()
                    elif what == "control":
                        self._on_control(control, sel)
                        if self.dispatcher is not None and self.notify_thread is None:
                            self._start_notify_thread()
                    elif what == "stderr":
                        self._on_stderr(err_r, sel)
                    elif what == "proxy":
                        self._first_connection(sel)
                    elif what == "signal":
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_r, 512)
                        self._on_signals()
                    else:
                        self._on_source(key, sel)
                self._on_timers(deadline)
        finally:
            if old_wakeup is not None:
                _signal.set_wakeup_fd(old_wakeup)
            sel.close()
            for fd in (pidfd, wake_r, wake_w):
                os.close(fd)

    def _on_ready(self) -> None:
        """The command may run now (a session's server is up)."""

    def _went(self) -> None:
        """The command was let go: tell the caller (once)."""
        on_go, self.on_go = self.on_go, None
        if on_go is not None:
            on_go()

    def _prepare_while_it_starts(self) -> None:
        """What needs no descriptor of the sandbox's, done while bubblewrap and the shim start (on
        another core): the modules the handshake uses, and the first move into the run's cgroup.

        The first move into the cgroup waits for the kernel (RunCgroup.move_soon): it is under
        way already (_move_into_cgroup_soon), and the move of everything alive at "ready"
        (which stays the rule) finds the lock warm."""
        self._move_into_cgroup_soon()
        # for _start_notify, at "ready" (there is always a listener), and the first call it answers
        from sandboxctl.supervise import exec_events, file_escape, mediate  # noqa: F401
        fdops._libc()

    def _move_into_cgroup_soon(self) -> None:
        """Start bubblewrap's first move into the run's cgroup, unless one is under way (a head
        start's: launch/headstart.py and lifecycle start it as soon as bubblewrap runs)."""
        if self.cgroup is not None and self.bwrap_pid and not self.cgroup.moving:
            self.cgroup.move_soon(self.bwrap_pid)

    def _cgroup_joined(self) -> None:
        if self.cgroup is not None:
            self.cgroup.moved()

    def _register_sources(self, sel: selectors.BaseSelector) -> None:
        """More descriptors for the loop (a session's clients); their events go to _on_source."""

    def _on_source(self, key: selectors.SelectorKey, sel: selectors.BaseSelector) -> None:
        raise AssertionError(f"unexpected loop event {key.data!r}")

    def _until_next_timer(self, deadline: float | None) -> float | None:
        """Seconds the loop may sleep: until the run's timeout, the kill after the grace, or the
        next secret's expiry (None: nothing is due)."""
        wakeups = [t for t in (deadline if not self.timed_out else None, self.kill_at, self.next_beat) if t]
        wakeups += [t for t, _ in self.expiries]
        return max(0.0, min(wakeups) - time.monotonic()) if wakeups else None

    def _on_timers(self, deadline: float | None) -> None:
        now = time.monotonic()
        if deadline and not self.timed_out and now >= deadline:
            self._on_timeout()
        while self.expiries and now >= self.expiries[0][0]:
            self._expire(self.expiries.pop(0)[1])
        if self.kill_at and now >= self.kill_at:
            self._kill()
            self.kill_at = None
        if self.next_beat and now >= self.next_beat and self.snapshot is not None:
            self.snapshot.beat()  # a killed supervisor's last beat bounds what its sandbox could change
            self.next_beat = now + HEARTBEAT_S

    def _on_control(self, control: socket.socket, sel: selectors.BaseSelector) -> None:
        try:
            data, fds = _recv_fds(control, 1 << 20, 4)
        except ConnectionError:
            data, fds = b"", []
        if not data:
            sel.unregister(control)
            return
        message = marshal.loads(data)
        received = dict(zip(message.get("fds", ()), fds, strict=False)) if "ready" in message else {}
        for fd in fds[len(received):]:
            os.close(fd)
        self.secrets_dir_fd = received.pop("secrets_dir", None)
        self.sock_diag_fd = received.pop("sockdiag", None)
        landlock = landlock_rights.report(message["ready"]["landlock"]) if "ready" in message else {}
        if "proxy" in received:  # served from the first connection on (launch/shim.py made it listen)
            self._proxy_listener = received.pop("proxy")
            sel.register(self._proxy_listener, selectors.EVENT_READ, "proxy")
        if "notify" in received:
            self._start_notify(received.pop("notify"), sel, landlock)
        if self.setup_error:
            _send_go(control, False)
            return
        for fd in received.values():
            os.close(fd)
        if "ready" in message and self.plan.noexec_mounts:
            from sandboxctl.supervise.noexec import remount_noexec

            try:  # before the command runs: bubblewrap has built the tree, the shim waits for "go"
                remount_noexec(self._init_pid() or 0, self.plan.noexec_mounts)
            except OSError as exc:
                self.setup_error = SandboxError(
                    f"exec.allow: cannot make the writable mounts noexec ({exc.strerror or exc})",
                    "run `sandboxctl doctor`; without it an allowed program could map a written file as code")
                _send_go(control, False)
                return
        if "ready" in message:
            self._init_pid()  # found (and its pidfd held) while it surely lives
            self.layers = self._layers(landlock)
            if self.snapshot is not None and self.snapshot.active:
                protect = self.layers.get("protect") or {}
                self.snapshot.mark(bool(protect.get("wall_whole")))
                self.next_beat = time.monotonic() + HEARTBEAT_S
            degraded = self.layers["landlock"].get("degraded")
            if degraded:
                self.notice(f"sandboxctl: warning: {degraded}; running with `landlock: best-effort`")
            if self.cgroup and self.bwrap_pid:
                # everything alive now (bwrap, its init, the shim) joins before the command may fork
                try:
                    self._cgroup_joined()
                    self.cgroup.add([self.bwrap_pid, *processes.descendants(self.bwrap_pid)])
                except SandboxError as exc:
                    self.setup_error = exc
                    _send_go(control, False)
                    return
            try:
                self.log.write("run.start", argv=self.argv_for_log, workspace=self.plan.workspace,
                               policy=self.plan.policy, policy_source=self.plan.policy_source,
                               policy_sha256=self.plan.policy_sha256,
                               layers=self.layers, limits=self._limits_for_log(),
                               confirmed=list(self.plan.confirmations) or None,
                               head_start=True if self.head_started else None, **self.start_fields())
            except LogWriteError:
                _send_go(control, False)
                raise
            self._log_secrets()
            self.ready = True
            _send_go(control, True)
            self._went()
            self._on_ready()
        elif "error" in message:
            self.shim_error = message
        elif "exec_error" in message:
            self.exec_error = message

    def _start_notify(self, fd: int, sel: selectors.BaseSelector, landlock: dict[str, Any]) -> None:
        """Watch the sandbox's notification listener from the loop (exec and denial events)."""
        self.notify_fd = fd
        import functools

        from sandboxctl.supervise.file_escape import FileEscapes
        from sandboxctl.supervise.mediate import Mediator

        with contextlib.suppress(OSError):  # Linux 6.6: the caller and we switch CPUs less per call
            fcntl.ioctl(fd, notify.NOTIF_SET_FLAGS, notify.FD_SYNC_WAKE_UP)
        routes = {}
        if self.plan.seccomp.net_rules:  # connect/sendto answered here (network/checks.py)
            from sandboxctl.network.checks import SocketChecks

            try:
                self.socket_checks = SocketChecks(
                    self.plan, fd, landlock, sock_diag_fd=self.sock_diag_fd, root_pid=self._init_pid() or 0,
                    sandbox_pids=lambda: processes.descendants(self._init_pid() or 0), log=self._write_log,
                    denied=self.denials)
                routes = self.socket_checks.routes()
            except OSError as exc:
                self.setup_error = SandboxError(f"cannot set up the checks of socket calls: {exc}",
                                                "run sandboxctl doctor")
        plan = self.plan
        verdicts = functools.lru_cache(maxsize=4096)(plan.write_verdict)  # the plan never changes
        log_allowed = plan.file_events != "none"
        self.dispatcher = self.dispatcher_class(fd, self.syscall_names, self._which_rule, verdicts,
                                            self._write_log, self.denials,
                                            escalate=FileEscapes(fd, self.broker, self._write_log, self.denials),
                                            log_allowed=log_allowed, is_denial=self._is_denial,
                                            tasks=self._sandbox_processes, tampered=self.tampered,
                                            memory_writes_trapped=plan.seccomp.file_events != "none",
                                            routes=routes, log_soon=self._write_log_soon)
        self.mediator = Mediator(fd, plan, plan.protection(), self._write_log, self.denials,
                                 outside=self.dispatcher.outside, protected_inodes=self.protected_inodes,
                                 log_allowed=log_allowed)
        self.dispatcher.mediator = self.mediator
        if plan.seccomp.exec_guard:
            from sandboxctl.supervise.exec_guard import ExecGuard

            self.dispatcher.exec_guard = ExecGuard(fd, self._write_log, self.denials, plan.exec_loaders)

    def _start_notify_thread(self) -> None:
        """Once the control message that brought the listener is handled (as the loop would
        have taken its first notification then): the listener gets a thread of its own."""
        self.notify_thread = threading.Thread(target=self._serve_notifications, name="sandboxctl-notify",
                                              daemon=True)
        self.notify_thread.start()

    def _serve_notifications(self) -> None:
        """Every notification is answered here, the thread blocked in NOTIF_RECV in between.

        Why a thread and not the loop's selector: FD_SYNC_WAKE_UP makes the kernel wake the
        receiver on the trapping caller's CPU, and the caller on ours when we answer — but only
        a task blocked in NOTIF_RECV itself (or in poll) gets that wake-up; through epoll it
        becomes an ordinary one, which on a small VM lands on the other, halted vCPU (a cross-CPU
        wake-up: tens of µs each way, measured in bench/exec-floor). And right after its answer
        the thread is back in the kernel, so the caller, woken on this CPU, runs at once instead
        of waiting for the loop's bookkeeping. It stops when the listener hangs up (every
        sandboxed process is gone); if the listener itself fails, the sandbox is killed: nothing
        it calls could be answered any more."""
        dispatcher = self.dispatcher
        try:
            while dispatcher.handle():
                pass
        except BaseException as exc:
            self.notify_error = exc
            self._kill()

    def _stop_notify_thread(self) -> bool:
        """After the sandbox is gone: the thread ends with the listener's hang-up. False if it
        still runs (a process still holds the filter), so its descriptors must stay open."""
        thread = self.notify_thread
        if thread is None:
            return True
        thread.join(NOTIFY_JOIN_S)
        if thread.is_alive():
            self._kill()
            thread.join(NOTIFY_JOIN_S)
        if thread.is_alive():
            return False
        self.notify_thread = None
        return True

    def _is_denial(self, notification: notify.Notification) -> bool:
        name = self.syscall_names.get(notification.nr, "")
        return self.plan.seccomp.rule_for(name, notification.args) is not None

    def _sandbox_processes(self) -> list[int]:
        """Host pids of every process in the sandbox (for exec records: who could share memory):
        the run's cgroup lists them in one read; without one, the process tree is walked."""
        if self.cgroup is not None and self.cgroup.dirs and self.ready:
            with contextlib.suppress(OSError):
                return self.cgroup.processes()
        init = self._init_pid()
        return processes.descendants(init) if init else []

    def _which_rule(self, notification: notify.Notification) -> tuple[str, int, str]:
        """The baseline rule that trapped this call, and the errno it prescribes."""
        name = self.syscall_names.get(notification.nr, f"#{notification.nr}")
        rule = self.plan.seccomp.rule_for(name, notification.args)
        if rule is None:
            return name, errno.EPERM, "seccomp baseline"
        return name, getattr(errno, rule.action.split(":", 1)[1]), rule.why

    def _first_connection(self, sel: selectors.BaseSelector) -> None:
        """A connection waits on the proxy's port: start the proxy (its import and threads are
        paid by runs that use the network, and never before the command may start)."""
        fd, self._proxy_listener = self._proxy_listener, None
        sel.unregister(fd)
        self._start_proxy(fd)
        if self.setup_error:
            self._kill()  # fail closed: the sandbox would wait on a proxy that cannot serve

    def _start_proxy(self, fd: int) -> None:
        """Serve the sandbox's proxy port from here; every connection becomes a `net` event."""
        import socket  # the proxy's sockets are socket.socket (accept, makefile): paid by runs that use it

        from sandboxctl.network.proxy import NetPolicy, ProxyServer

        net = self.plan.network
        listener = socket.socket(fileno=fd)
        listener.setblocking(True)
        self.proxy = ProxyServer(listener, NetPolicy(net.allow, net.deny, net.allow_private),
                                 log=lambda record: self._on_net(record), ask=self._ask_network,
                                 inspection=self.inspection, log_http=self._on_http, ask_request=self._ask_request,
                                 max_connections=fd_budget.connection_cap(self.nofile))
        self.proxy.start()
        if not self.proxy.serving:
            self.setup_error = SandboxError("the network proxy could not start", "run sandboxctl doctor")

    def _on_net(self, record: dict[str, Any]) -> None:
        if record.get("decision") == "deny":
            target = f"{record['host']}:{record.get('port')}" if record.get("host") else (
                "any destination" if "count" in record else "unparsable request")
            self.denials.append({"kind": "net", "target": target, "rule": record.get("rule"),
                                 "count": int(record.get("count", 1))})
        self._write_log("net", **record)

    def _on_http(self, record: dict[str, Any]) -> None:
        if record.get("decision") == "deny":
            port = record.get("port")
            host = f"{record.get('host')}" + ("" if port in (80, 443, None) else f":{port}")
            target = f"{record.get('method')} {host}{record.get('path', '')}"
            self.denials.append({"kind": "http", "target": target, "rule": record.get("rule")})
        self._write_log("http", **record)

    def _write_log(self, event: str, **fields: Any) -> None:
        """Proxy threads and the loop share the log; one lock keeps seq and the chain in order.
        A write failure stops the sandbox rather than letting it go on unobserved."""
        self._annotate(event, fields)
        try:
            with self.log_lock:
                if self.throttle.admit(event, fields):
                    self.log.write(event, **fields)
                self._check_flood()
        except LogWriteError:
            self._log_failed()

    def _write_log_soon(self, event: str, **fields: Any) -> None:
        """The exec path's records: queued for the log's thread (ActionLog.write_soon), so the
        kernel's next call is not kept waiting for the disk; order and chain are the log's care."""
        self._annotate(event, fields)
        with self.log_lock:
            if self.throttle.admit(event, fields):
                self.log.write_soon(event, **fields)

    def _annotate(self, event: str, fields: dict[str, Any]) -> None:
        """Fields a record gets while what it names is still there (a session: the command)."""

    def _after_queued(self) -> None:
        """The log's thread wrote a queued record that rotated the log (see flood.py)."""
        try:
            with self.log_lock:
                self._check_flood()
        except LogWriteError:
            self._log_failed()

    def _check_flood(self) -> None:
        """With log_lock held, after a write."""
        if self.log_guarded and self.log_flooded is None and self.log.rotations != self.log_rotations:
            self.log_rotations = self.log.rotations
            age = self.log.first_record_age()
            if flood.endangered(age, self.log.keep):  # before rotations push its first records out
                self.log_flooded = -1 if age is None else age
                self.log.write("limit", kind="log", action="kill", first_record_rotations=age,
                               kept_rotations=self.log.keep)
                self._kill()

    def _log_failed(self) -> None:
        self.log_failed = True
        self._kill()

    def flush_throttled(self) -> None:
        """One record per denial that repeated past what is written one by one (before run.end)."""
        for event, fields in self.throttle.pending():
            self.log.write(event, **fields)

    def _log_secrets(self) -> None:
        now = time.monotonic()
        for secret in self.plan.secrets:
            note = "an env secret cannot expire" if secret.deliver_as == "env" and secret.ttl else None
            self.log.write("secret", name=secret.name, **{"as": secret.deliver_as}, action="inject",
                           ttl_s=secret.ttl, note=note, hosts=list(secret.hosts) or None)
            if secret.ttl and secret.deliver_as in ("file", "proxy"):
                self.expiries.append((now + secret.ttl, secret.name))
        self.expiries.sort()

    def _expire(self, name: str) -> None:
        """Delete an expired file secret through the handle the shim gave us into the sandbox; a proxy
        secret is no longer put into requests."""
        secret = next((s for s in self.plan.secrets if s.name == name), None)
        if secret is not None and secret.deliver_as == "proxy":
            if self.inspection is not None:
                self.inspection.phantoms.expire(name)
            self._write_log("secret", name=name, **{"as": "proxy"}, action="expire")
            return
        if self.secrets_dir_fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.secrets_dir_fd)
        self._write_log("secret", name=name, **{"as": "file"}, action="expire")

    def _on_stderr(self, err_r: int, sel: selectors.BaseSelector) -> None:
        data = os.read(err_r, 65536)
        if not data:
            sel.unregister(err_r)
            return
        self._take_stderr(data)

    def _take_stderr(self, data: bytes) -> None:
        """After the shim is ready it is the command's business: pass it on. Before, it explains
        a failed launch: keep it for the error message."""
        if self.ready:
            self.io.emit(2, data)
        else:
            self.bwrap_stderr += data

    def _drain(self, control: socket.socket, err_r: int) -> None:
        control.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionError):
            while data := control.recv(1 << 20):
                message = marshal.loads(data)
                if "exec_error" in message:
                    self.exec_error = message
                elif "error" in message:
                    self.shim_error = message
        os.set_blocking(err_r, False)
        with contextlib.suppress(BlockingIOError):
            while data := os.read(err_r, 65536):
                self._take_stderr(data)

    # ------------------------------------------------------------------ signals and limits
    def _install_signal_handlers(self) -> None:
        """Handlers only note a signal; the loop acts on it (forward, or ignore a terminal's)."""
        def remember(signum: int, _frame: Any) -> None:
            self.pending_signals.append(signum)

        for signum in FORWARDED:
            _signal.signal(signum, remember)

    def _on_signals(self) -> None:
        pending, self.pending_signals = self.pending_signals, []
        for signum in pending:
            if signum in (_signal.SIGINT, _signal.SIGQUIT) and _terminal_delivered():
                continue  # the terminal sent it to the whole foreground group, command included
            init = self._init_pid()
            if init:
                for pid in processes.command_pids(init):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signum)
            if signum in (_signal.SIGTERM, _signal.SIGHUP) and self.kill_at is None:
                self.kill_at = time.monotonic() + 10.0

    def _on_timeout(self) -> None:
        self.timed_out = True
        self._write_log("limit", kind="timeout", action="kill", limit_s=self.plan.limits.timeout)
        init = self._init_pid()
        if init:
            processes.signal_all(init, _signal.SIGTERM)
        self.kill_at = time.monotonic() + TERM_GRACE_S

    def _init_pid(self) -> int | None:
        """bubblewrap's PID-namespace init: the outer bwrap's only child."""
        if self.init_pid is None and self.bwrap_pid:
            children = processes.command_pids(self.bwrap_pid)
            self.init_pid = children[0] if children else None
            if self.init_pid and self.init_pidfd is None:  # to see the namespace empty at the end, however it ends
                with contextlib.suppress(OSError):
                    self.init_pidfd = os.pidfd_open(self.init_pid)
        return self.init_pid

    def _kill(self) -> None:
        """SIGKILL the namespace init (the kernel then kills every process in it) and bwrap."""
        init = self._init_pid()
        if init:
            if self.init_pidfd is None:
                with contextlib.suppress(OSError):
                    self.init_pidfd = os.pidfd_open(init)
            processes.kill_sandbox(init)
        if self.bwrap_pid:
            processes.kill_sandbox(self.bwrap_pid)  # --die-with-parent takes the rest down

    # ------------------------------------------------------------------ result
    def log_stop_error(self) -> SandboxError | None:
        """Why the log stopped the run, if it did: a record could not be written, or the run's
        records reached its budget (flood.py)."""
        if self.log_failed:
            return SandboxError("the action log could not be written; the sandbox was stopped",
                                "free some space or pass --log PATH")
        if self.log_flooded is not None:
            when = ("after its first records had already been rotated out (other runs write to the same log)"
                    if self.log_flooded < 0 else "before the log's rotation could drop its first records")
            return SandboxError(f"the run wrote so many action-log records that it was stopped {when}",
                                "with log.forward in the policy every record is kept outside too and a run may "
                                "write more; or split the work into several runs, or give it --log PATH")
        return None

    def _layers(self, landlock: dict[str, Any]) -> dict[str, Any]:
        from sandboxctl.network import checks

        plan = self.plan
        return {
            "bubblewrap": {
                "namespaces": ["user", "pid", "ipc", "uts", "cgroup",
                               *([] if plan.network.mode == "host" else ["net"])],
                "mounts": len(plan.mounts),
                "capabilities": "all dropped",
            },
            "landlock": landlock,
            "seccomp": {"rules": len(plan.seccomp.rules), "default": plan.seccomp.default_action,
                        "foreign_arch": plan.seccomp.bad_arch_action,
                        "denials_trapped": plan.seccomp.trap_denials and self.notify_fd is not None,
                        "exec_events": plan.seccomp.notify_exec and self.notify_fd is not None},
            "network": {**checks.network_layer(plan, landlock, self.socket_checks,
                                     f"127.0.0.1:{PROXY_PORT} inside, served by the supervisor"
                                     if plan.network.mode == "proxy" else None),
                        "inspected": [str(p) for p in self.inspection.patterns] if self.inspection else None},
            "approvals": {"mode": plan.approval_mode,
                          "via": plan.approval_via if plan.approval_mode == "ask" else None,
                          "file_writes": "approved opens are made by the supervisor (seccomp ADDFD)"
                          if self.notify_fd is not None and plan.seccomp.file_events != "none" else None},
            "protect": self._protect_layer(landlock),
            "exec_allow": {"landlock_execute": bool(landlock.get("enforced")),
                           "noexec_mounts": list(plan.noexec_mounts),
                           "memory_files": "made non-executable by the supervisor (MFD_NOEXEC_SEAL)",
                           "elf_loader": "refused as a command"} if plan.exec_loaders else None,
            "memory": plan.limits.memory_method,
            "pids": plan.limits.pids_method,
            **({"workspace": {"mode": "overlay", "layer": plan.overlay.layer_dir,
                              "mount": "overlayfs (userxattr) in bubblewrap's own mount namespace; "
                                       "the host's workspace is not written"}} if plan.overlay else {}),
        }

    def _protect_layer(self, landlock: dict[str, Any]) -> dict[str, Any] | None:
        """What holds the protected paths in this run, as it really is."""
        protect = self.plan.protect
        if not protect.roots:
            return None
        enforced = protect.mediated and self.notify_fd is not None and bool(landlock.get("enforced"))
        binds = sum(m.reason == "protected" for m in self.plan.mounts)
        return {"writable_roots": list(protect.roots), "git_directories": len(protect.gitdirs),
                "recorded": len(protect.record), "wall_whole": enforced,
                "enforced_by": "Landlock (writable roots read-only to the kernel) + the supervisor performing "
                               "each change" if enforced else "read-only binds and the supervisor's checks only",
                "read_only_binds": binds,
                "binds_left_out": "past bubblewrap's option limit" if protect.binds_left_out else None,
                "end_of_run_check": True}

    def _limits_for_log(self) -> dict[str, Any]:
        lim = self.plan.limits
        return {"timeout_s": lim.timeout, "memory": lim.memory, "memory_method": lim.memory_method,
                "pids": lim.pids, "pids_method": lim.pids_method, "file_size": lim.file_size,
                "open_files": lim.open_files}

    def _result(self, code: int, duration: float) -> RunResult:
        error = None
        if self.cgroup and self.cgroup.oom_killed():
            with contextlib.suppress(LogWriteError):
                self.log.write("limit", kind="memory", action="oom-kill", limit=self.plan.limits.memory)
            code = 137
        if self.timed_out:
            code = EXIT_TIMEOUT
        elif self.setup_error:
            error, code = self.setup_error, EXIT_SANDBOX_FAILED
        elif self.shim_error:
            error = SandboxError(self.shim_error["error"], self.shim_error.get("hint"))
            code = EXIT_SANDBOX_FAILED
        elif not self.ready:
            detail = self.bwrap_stderr.decode(errors="replace").strip().splitlines()
            first = detail[0].removeprefix("bwrap: ") if detail else f"exit status {code}"
            error = SandboxError(f"bubblewrap could not build the sandbox: {first}",
                                 "run `sandboxctl doctor` to see what this machine lacks")
            code = EXIT_SANDBOX_FAILED
        elif self.exec_error:
            from sandboxctl.plan.locate import hint_for_exec_error

            code = int(self.exec_error.get("code", 126))
            hint = self.exec_error.get("hint") or hint_for_exec_error(self.plan, code, self.plan.command[0],
                                                                      os.environ.get("PATH", ""))
            error = SandboxError(self.exec_error["exec_error"], hint, code)
        stopped = self.log_stop_error()
        if stopped is not None:
            error, code = stopped, EXIT_SANDBOX_FAILED
        if self.notify_error is not None:  # _serve_notifications killed the sandbox
            why = type(self.notify_error).__name__
            error = SandboxError(f"the supervisor could no longer answer the sandbox's system calls ({why}); "
                                 "the sandbox was stopped", "re-run with --debug and please report it")
            code = EXIT_SANDBOX_FAILED
        return RunResult(code, duration, self.timed_out, error, self.layers, self.denials, tampered=self.tampered)


def _send_go(control: socket.socket, go: bool) -> None:
    """The shim's answer. A shim that died meanwhile is not an error here: bubblewrap's exit, which
    the loop reads next, says what became of the run (a BrokenPipeError reaching the CLI could be
    taken for its reader going away, and a run that never ran would exit 0)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        control.sendall(marshal.dumps({"go": go}))


def _recv_fds(sock: socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """socket.recv_fds without socket.py: the message and the descriptors passed with it."""
    fds = array.array("i")
    data, ancillary, _flags, _addr = sock.recvmsg(bufsize, _socket.CMSG_LEN(maxfds * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds)


def _terminal_delivered() -> bool:
    """True when we are in the terminal's foreground group: the kernel signalled the command too."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)
