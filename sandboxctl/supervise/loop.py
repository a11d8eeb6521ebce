"""The run's event loop: one selector until bubblewrap exits, its timers, signals and the kill.

Part of the Supervisor (runner.py). The loop dispatches each ready descriptor to its step
(the control socket to handshake.py, the proxy's port to escapes.py, a session's clients to
session.py); the timers are the run's timeout, the kill after the grace, the secrets' expiry
and the protected paths' heartbeat.
"""

from __future__ import annotations

import _signal  # signal.py's enums cost ~0.8 ms of every start-up
import contextlib
import os
import selectors
import time

from sandboxctl.protect.snapshot import HEARTBEAT_S
from sandboxctl.supervise import processes

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import socket
    from typing import Any

TERM_GRACE_S = 2.0
FORWARDED = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)


class Loop:
    """The loop, timers, signals and limits (a mixin of runner.Supervisor)."""

    def _loop(self, pid: int, control: socket.socket, err_r: int, started: float) -> int:
        """Run until bubblewrap exits; returns its exit code as a shell reports it."""
        sel = selectors.DefaultSelector()
        pidfd = os.dup(self.bwrap_pidfd) if self.bwrap_pidfd is not None else os.pidfd_open(pid)  # unreaped: ours
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

    def _log_secrets(self) -> None:
        now = time.monotonic()
        for secret in self.plan.secrets:
            note = "an env secret cannot expire" if secret.deliver_as == "env" and secret.ttl else None
            self._write_record("secret", name=secret.name, **{"as": secret.deliver_as}, action="inject",
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

    def _install_signal_handlers(self) -> None:
        """Handlers only note a signal; the loop acts on it (forward, or ignore a terminal's)."""
        def remember(signum: int, _frame: Any) -> None:
            self.pending_signals.append(signum)

        for signum in FORWARDED:
            _signal.signal(signum, remember)

    def _on_signals(self) -> None:
        pending, self.pending_signals = self.pending_signals, []
        for signum in pending:
            if signum in (_signal.SIGINT, _signal.SIGQUIT) and terminal_delivered():
                self.terminal_interrupted = self.terminal_interrupted or signum == _signal.SIGINT
                continue  # the terminal sent it to the whole foreground group, command included
            if signum in (_signal.SIGTERM, _signal.SIGHUP):
                self._end_prompts()  # a frozen sandbox could not take the signal
            init = self._init_pid()
            if init:
                processes.signal_members(processes.command_pids(init), self.sandbox_pidns, signum)
            if signum in (_signal.SIGTERM, _signal.SIGHUP) and self.kill_at is None:
                self.kill_at = time.monotonic() + 10.0

    def _on_timeout(self) -> None:
        self.timed_out = True
        self._write_log("limit", kind="timeout", action="kill", limit_s=self.plan.limits.timeout)
        self._end_prompts()  # a frozen sandbox would take its SIGTERM only when killed
        init = self._init_pid()
        if init:
            processes.signal_members(processes.descendants(init), self.sandbox_pidns, _signal.SIGTERM)
        self.kill_at = time.monotonic() + TERM_GRACE_S

    def _init_pid(self) -> int | None:
        """bubblewrap's PID-namespace init: the outer bwrap's only child, found while bwrap lives
        (unreaped, its pid is its own) and held from then on by a pidfd: every signal to it goes
        through that pidfd, its namespace is the sandbox's (signal_members), its root the sandbox's
        root (_sandbox_root). Never looked up once bwrap has exited: its pid may be another's."""
        if self.init_pid is None and self.bwrap_pidfd is not None:
            with self.pidfds_lock:  # looked again under the lock: another thread may have found it, or closed bwrap's
                found = processes.first_child(self.bwrap_pid, self.bwrap_pidfd) \
                    if self.init_pid is None and self.bwrap_pidfd is not None else None
                if found is not None:
                    self.init_pid, self.init_pidfd = found
                    self.sandbox_pidns = processes.pid_namespace(*found)
        return self.init_pid

    def _sandbox_root(self) -> int | None:
        """A descriptor of the sandbox's root, opened from its init (proved alive after the open),
        for resolving paths in the sandbox's view (supervise/mediate_resolve.Resolver, exec records)."""
        init = self._init_pid()
        with self.pidfds_lock:
            if not init or self.init_pidfd is None:
                return None
            try:
                root = os.open(f"/proc/{init}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
            if processes.exited(self.init_pidfd):
                os.close(root)
                return None
            return root

    def _kill(self) -> None:
        """SIGKILL the namespace init (the kernel then kills every process in it) and bwrap, each
        through the pidfd held since it was known to be ours (none held: nothing is signalled,
        never a pid that may be another process's by now). From any thread."""
        self._init_pid()
        with self.pidfds_lock:
            processes.send(self.init_pidfd, _signal.SIGKILL)
            processes.send(self.bwrap_pidfd, _signal.SIGKILL)  # --die-with-parent takes the rest down

    def _close_pidfd(self, name: str) -> None:
        """Close init_pidfd or bwrap_pidfd (a thread may be signalling through it)."""
        with self.pidfds_lock:
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                os.close(fd)


def terminal_delivered() -> bool:
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
