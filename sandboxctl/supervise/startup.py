"""Start-up: bubblewrap spawned from the plan (or the head start adopted), the shim sent its configuration.

Part of the Supervisor (runner.py): what happens before its loop starts, while the sandbox builds itself.
"""

from __future__ import annotations

import _signal  # not signal.py nor socket.py: their enums cost start-up time (runner.py)
import _socket
import contextlib
import os
import time

from sandboxctl.errors import SandboxError
from sandboxctl.launch import bwrap, headstart, seccomp
from sandboxctl.launch.config_frames import send_config
from sandboxctl.plan.build import PROXY_PORT
from sandboxctl.supervise import fdops, processes, spawn
from sandboxctl.supervise import secrets as secret_store
from sandboxctl.supervise.loop import FORWARDED

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import socket
    from typing import Any

    from sandboxctl.plan.model import Plan


class Startup:
    """Spawn or adopt bubblewrap, and what the shim is sent (a mixin of runner.Supervisor)."""

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
        # a terminal prompt freezes the sandbox while it waits (approval/freeze.py): pending
        # notifications must survive the stop; nothing else asks for the killable wait
        config["notify_killable"] = self._freezes_for_prompts()
        # the sandbox's own network namespace lists the UNIX sockets bound inside (network/unixwall.py)
        config["sock_diag"] = bool(plan.seccomp.net_rules) and plan.network.mode != "host"
        config["seccomp_nr"] = seccomp.SECCOMP_SYSCALL.get(os.uname().machine, 317)
        config["cwd"] = self.command_cwd
        config.update(self._extra_config())
        return config

    def _freezes_for_prompts(self) -> bool:
        """Whether a terminal prompt may be shown (and so the sandbox frozen while it waits)."""
        plan = self.plan
        return (plan.approval_mode == "ask" and plan.approval_via == "tty"
                and getattr(self, "approver", None) is None)

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
                self._hold_bwrap()
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
                    and processes.running_child(early.pid))  # not reaped: abort() kills it by that pid
        except ChildProcessError:
            same = False
        if not same:
            early.abort()
            return None
        early.adopt()
        self.bwrap_pid = early.pid
        self._hold_bwrap()  # unreaped (running_child said so above)
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

    def _hold_bwrap(self) -> None:
        """bubblewrap's pidfd, taken while it is our unreaped child (its pid surely its own): every
        later signal goes through it (loop._kill). Without one it is killed now, by that pid."""
        try:
            self.bwrap_pidfd = os.pidfd_open(self.bwrap_pid)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.kill(self.bwrap_pid, _signal.SIGKILL)
                os.waitpid(self.bwrap_pid, 0)
            self.bwrap_pid = None
            raise SandboxError(f"cannot hold bubblewrap's pidfd: {exc.strerror}", "run sandboxctl doctor") from None

    def _end_sandbox(self) -> None:
        """bubblewrap and everything in its namespace killed, reaped and gone."""
        self._kill()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.bwrap_pid, 0)
        self._await_namespace_end()

    def _abandon(self, control: socket.socket, err_r: int, originals: dict[int, Any]) -> None:
        """A launch that failed after bubblewrap started: nothing of it may outlive this frame."""
        if self.bwrap_pid:
            self._end_sandbox()
            self.bwrap_pid = None
            self._close_pidfd("bwrap_pidfd")
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
