"""A gVisor run while it runs: waiting for runsc, and what may end the run meanwhile (part of gvisor.py).

The loop waits for runsc's exit (a pidfd), relays the command's regular-file stdio, serves the
terminal and the timers, and watches the forwarder's lifeline: under network: proxy the
forwarder inside gVisor holds 127.0.0.1:3128, and if it goes while the command runs, someone else
could take that address, so the run ends. The command is a process of gVisor's kernel, in no host
process group: signals and the timeout reach it through `runsc kill`, and the run is killed by
killing runsc's group while runsc is still our unreaped child.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from typing import TYPE_CHECKING

from sandboxctl.errors import SandboxError
from sandboxctl.launch import oci
from sandboxctl.supervise.runner import TERM_GRACE_S, terminal_delivered

if TYPE_CHECKING:
    from sandboxctl.launch.runsc import RunDir
    from sandboxctl.plan.model import Plan

TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
# what a terminal sends its foreground group; the command is in no host group, so these go to
# every process of the sandbox from here (SIGWINCH too: the kernel would not deliver it inside)
TO_EVERYONE = (*TERMINAL_SIGNALS, signal.SIGWINCH)


class GvisorLoop:
    """The loop, signals and kill of GvisorSupervisor (a mixin: the state is the supervisor's)."""

    plan: Plan
    runsc_path: str
    runsc_pid: int | None
    run_dir: RunDir | None

    def _wait(self, pid: int, started: float) -> int:
        """Run until runsc exits; returns its exit code as a shell reports it."""
        sel = selectors.DefaultSelector()
        pidfd = os.pidfd_open(pid)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_wakeup = signal.set_wakeup_fd(wake_w) if self.forward_signals else None
        sel.register(pidfd, selectors.EVENT_READ, "exit")
        sel.register(wake_r, selectors.EVENT_READ, "signal")
        sel.register(self.cancel_r, selectors.EVENT_READ, "cancel")
        for fd in self.relays:
            sel.register(fd, selectors.EVENT_READ, "relay")
        self.io.register(sel)
        if self.lifeline_listener is not None:
            sel.register(self.lifeline_listener, selectors.EVENT_READ, "forwarder")
        deadline = started + self.plan.limits.timeout if self.plan.limits.timeout else None
        try:
            while True:
                wait = self._until_next_timer(deadline)
                if self.forwarder_lost_at is not None:
                    wait = max(0.0, min(wait if wait is not None else 1.0, self.forwarder_lost_at - time.monotonic()))
                for key, _ in sel.select(wait):
                    if key.data == "exit":
                        _, status = os.waitpid(pid, 0)
                        code = os.waitstatus_to_exitcode(status)
                        self._drain_relays()
                        self.io.drain()
                        return 128 - code if code < 0 else code
                    if key.data == "relay":
                        self._pass_on(key.fd, sel)
                        continue
                    if key.data in ("forwarder", "lifeline"):
                        self._on_forwarder(key.data, sel)
                        continue
                    if key.data == "io":
                        self.io.handle(key.fd, sel)
                        continue
                    if key.data == "cancel":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self.cancel_r, 512)
                        self._kill()
                        continue
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                    self._on_signals()
                self._on_timers(deadline)
                if self.forwarder_lost_at is not None and time.monotonic() >= self.forwarder_lost_at:
                    self.forwarder_lost_at = None
                    self.setup_error = SandboxError(
                        "the network proxy's forwarder inside gVisor stopped while the command ran; the run was "
                        "ended (nothing else may hold 127.0.0.1:3128)", "run it again; report it if it recurs")
                    self._write_log("limit", kind="forwarder", action="kill")
                    self._kill()
        finally:
            if old_wakeup is not None:
                signal.set_wakeup_fd(old_wakeup)
            sel.close()
            for fd in (pidfd, wake_r, wake_w):
                os.close(fd)

    def _on_forwarder(self, what: str, sel: selectors.BaseSelector) -> None:
        """The forwarder's lifeline: the first connection to alive.sock is the forwarder's (the
        command starts only after it connected), and no other is accepted. When it closes while
        the sandbox still runs, the forwarder is gone and 127.0.0.1:3128 could be taken: the run
        ends. (It also closes when the sandbox ends: a second's grace tells the two apart.)"""
        if what == "forwarder" and self.lifeline_listener is not None:
            connection, _ = self.lifeline_listener.accept()
            sel.unregister(self.lifeline_listener)
            self.lifeline_listener.close()
            self.lifeline_listener = None
            if self.run_dir and self.run_dir.paths and self.run_dir.paths.proxy:
                with contextlib.suppress(OSError):
                    os.unlink(f"{self.run_dir.paths.proxy}/{oci.ALIVE_SOCKET_NAME}")
            self.lifeline = connection
            sel.register(connection, selectors.EVENT_READ, "lifeline")
            return
        if self.lifeline is not None:
            try:
                data = self.lifeline.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(self.lifeline)
                self.lifeline.close()
                self.lifeline = None
                self.forwarder_lost_at = time.monotonic() + 1.0

    def _runsc_kill(self, signum: int, everyone: bool = False) -> None:
        """`runsc kill`: the command is a process of gVisor's kernel, not of the host's."""
        import subprocess

        if not (self.run_dir and self.run_dir.paths):
            return
        argv = [self.runsc_path, f"--root={self.run_dir.paths.state}", "kill",
                *(["--all"] if everyone else []), oci.container_id(self.plan), str(int(signum))]
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=5, check=False)

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(signal.SIGWINCH, lambda signum, _frame: self.pending_signals.append(signum))

    def _on_signals(self) -> None:
        """The command is in no host process group: the terminal's SIGINT/SIGQUIT/SIGWINCH reach
        it only from here (to every process, as a terminal would); others go to the command."""
        pending, self.pending_signals = self.pending_signals, []
        for signum in pending:
            if signum == signal.SIGINT and not self.terminal_interrupted:
                self.terminal_interrupted = terminal_delivered()
            self._runsc_kill(signum, everyone=signum in TO_EVERYONE)
            if signum in (signal.SIGTERM, signal.SIGHUP) and self.kill_at is None:
                self.kill_at = time.monotonic() + 10.0

    def _on_timeout(self) -> None:
        self.timed_out = True
        self._write_log("limit", kind="timeout", action="kill", limit_s=self.plan.limits.timeout)
        self._runsc_kill(signal.SIGTERM, everyone=True)
        self.kill_at = time.monotonic() + TERM_GRACE_S

    def _kill(self) -> None:
        """SIGKILL runsc's process group: the sandbox is attached to `runsc run` and dies with it;
        destroy() at the end kills anything still naming the run directory. Only while runsc is
        our unreaped child (waitid WNOWAIT reaps nothing): its pid, and so its group's id, is then
        surely its own; once reaped, both may be another process's."""
        if not self.runsc_pid:
            return
        try:
            os.waitid(os.P_PID, self.runsc_pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.runsc_pid, signal.SIGKILL)
