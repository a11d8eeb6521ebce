"""The seccomp notification listener: set up at "ready", answered on a thread of its own.

Part of the Supervisor (runner.py): the Dispatcher (notify.py) and what it routes to (the
Mediator, file escapes, socket checks, the exec guard) are made here from the plan, and the
thread that answers them is started and stopped here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading

from sandboxctl.errors import SandboxError
from sandboxctl.supervise import notify, processes

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import selectors
    from typing import Any

NOTIFY_JOIN_S = 5.0  # the notification thread, once the sandbox is gone (its listener hangs up at once)


class Listener:
    """Seccomp user notifications (a mixin of runner.Supervisor)."""

    dispatcher_class = notify.Dispatcher

    def _start_notify(self, fd: int, sel: selectors.BaseSelector, landlock: dict[str, Any]) -> None:
        """Watch the sandbox's notification listener from the loop (exec and denial events)."""
        self.notify_fd = fd
        import functools

        from sandboxctl.supervise.exec_events import memory_writers
        from sandboxctl.supervise.file_escape import FileEscapes
        from sandboxctl.supervise.mediate import Mediator

        with contextlib.suppress(OSError):  # Linux 6.6: the caller and we switch CPUs less per call
            fcntl.ioctl(fd, notify.NOTIF_SET_FLAGS, notify.FD_SYNC_WAKE_UP)
        self.file_escapes = FileEscapes(fd, self.broker, self._write_log, self.denials)  # closed by tear-down
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
        root = self._sandbox_root()
        if root is None:  # nothing could be resolved in the sandbox's view: the run fails (no go)
            self.setup_error = self.setup_error or SandboxError(
                "cannot open the sandbox's root from its init process", "run sandboxctl doctor")
        verdicts = functools.lru_cache(maxsize=4096)(plan.write_verdict)  # the plan never changes
        log_allowed = plan.file_events != "none"
        self.dispatcher = self.dispatcher_class(fd, self.syscall_names, self._which_rule, verdicts,
                                            self._write_log, self.denials,
                                            escalate=self.file_escapes,
                                            log_allowed=log_allowed, is_denial=self._is_denial,
                                            tasks=self._sandbox_processes, tampered=self.tampered,
                                            memory_writes_trapped=plan.seccomp.file_events != "none",
                                            routes=routes, log_soon=self._write_log_soon,
                                            memory_writers=memory_writers(plan.seccomp.rules),
                                            sandbox_root=None if root is None else os.dup(root))
        self.mediator = Mediator(fd, plan, plan.protection(), self._write_log, self.denials,
                                 outside=self.dispatcher.outside, protected_inodes=self.protected_inodes,
                                 protected_incomplete=self.protected_incomplete,
                                 log_allowed=log_allowed, root=root, log_soon=self._write_log_soon)
        self.dispatcher.mediator = self.mediator
        self.file_escapes.guard = self.mediator.identity_reason  # another name for a protected file
        if plan.seccomp.exec_guard:
            from sandboxctl.supervise.exec_guard import ExecGuard

            self.dispatcher.exec_guard = ExecGuard(fd, self._write_log, self.denials, plan.exec_loaders,
                                                   root=None if root is None else os.dup(root))

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
        """Host ids of every thread in the sandbox (for exec records: who could share memory):
        the run's cgroup lists them in one read; without one, the process tree is walked.

        Threads, not processes: kcmp(KCMP_VM) against a thread-group leader that has exited
        compares the caller's memory with none (a zombie has no mm), while the leader's other
        threads still run in the memory it shared with the caller by clone(CLONE_VM)."""
        if self.cgroup is not None and self.cgroup.dirs and self.ready:
            try:  # not contextlib.suppress: a Python context manager at every exec
                return self.cgroup.threads()
            except OSError:
                pass
        init = self._init_pid()
        return processes.descendants(init, threads=True) if init else []

    def _which_rule(self, notification: notify.Notification) -> tuple[str, int, str]:
        """The baseline rule that trapped this call, and the errno it prescribes."""
        name = self.syscall_names.get(notification.nr, f"#{notification.nr}")
        rule = self.plan.seccomp.rule_for(name, notification.args)
        if rule is None:
            return name, errno.EPERM, "seccomp baseline"
        return name, getattr(errno, rule.action.split(":", 1)[1]), rule.why
