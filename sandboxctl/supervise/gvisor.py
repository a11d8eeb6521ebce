"""Run one Plan under gVisor's runsc: the bubblewrap supervisor's run, with another launcher.

What stays the same (inherited from runner.Supervisor): the action log and its run.start/run.end,
secrets (env and file, file ones expiring), the timeout, the network proxy with its policy,
network approvals (the same broker and front ends) and `net` events, forwarded signals, the
denial summary.

What differs, and why:
- the sandbox is an OCI bundle rendered from the plan (launch/oci.py) in a private run directory
  (launch/runsc.py) that is removed at the end; a watchdog removes it if the supervisor is killed;
- there is no control socket: nothing can be handed out of gVisor (its kernel owns every
  descriptor), so no seccomp listener (gVisor has no user notification anyway: no exec, file or
  syscall events) and no proxy listener; under network: proxy the sandbox reaches the supervisor's
  proxy through a host UNIX socket (runsc --host-uds=open) and a forwarder on 127.0.0.1:3128;
- run.start is written once runsc has started: the layers are what the bundle configures; if the
  launcher inside cannot apply one, the command never runs (exit 125);
- signals reach the command through `runsc kill` (it is not a host process): the loop that waits
  for runsc, the forwarder's lifeline, signals, the timeout and the kill are gvisor_loop.py.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from typing import Any

from sandboxctl import unixpath
from sandboxctl.errors import EXIT_SANDBOX_FAILED, EXIT_TIMEOUT, SandboxError
from sandboxctl.launch import oci, runsc, runsc_probe, seccomp
from sandboxctl.launch.gvisor_init import FORWARDER_UID
from sandboxctl.log.writer import LogWriteError
from sandboxctl.paths import join
from sandboxctl.plan.build import PROXY_PORT
from sandboxctl.plan.network import describe_listen
from sandboxctl.protect.snapshot import HEARTBEAT_S
from sandboxctl.supervise.gvisor_loop import TERMINAL_SIGNALS, GvisorLoop
from sandboxctl.supervise.runner import FORWARDED, RunResult, Supervisor


class GvisorSupervisor(GvisorLoop, Supervisor):
    """Supervisor for `backend: gvisor` (see the module docstring)."""

    runsc_path: str = ""
    platform: str = "ptrace"
    version: str = "unknown"
    runsc_pid: int | None = None
    run_dir: runsc.RunDir | None = None
    runsc_started = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.relays: dict[int, int] = {}  # pipe read end -> the regular file it is copied to
        self.lifeline_listener: socket.socket | None = None  # the proxy forwarder's lifeline (see _wait)
        self.lifeline: socket.socket | None = None
        self.forwarder_lost_at: float | None = None

    # ------------------------------------------------------------------ launch
    def launch(self) -> RunResult:
        plan = self.plan
        self.runsc_path = runsc.require()
        self.platform, self.version = runsc_probe.platform_for_run(self.runsc_path)
        program = seccomp.load_or_compile(plan.seccomp, join(self.state, "cache"))
        base = runsc.runtime_base()
        runsc.sweep(base)
        self.run_dir = runsc.RunDir(base, plan.run_id)
        watchdog = runsc.watchdog(self.run_dir.path)  # before any thread, before anything is on disk
        listener: socket.socket | None = None
        originals = {s: signal.getsignal(s) for s in (*FORWARDED, signal.SIGWINCH)}
        started = time.monotonic()
        try:
            if plan.network.mode == "proxy":  # the only way anything reaches a broker under gVisor
                self._start_broker()  # after the watchdog's fork: a front end may run threads
            data_files = self._prepare_inspection()
            env = dict(plan.env)
            env.update({s.name: self.secret_values[s.name] for s in plan.secrets if s.deliver_as == "env"})
            if self.inspection is not None:
                env.update(self.inspection.placeholders)  # never the values
            default_signals = [int(s) for s in TERMINAL_SIGNALS if originals.get(s) is not signal.SIG_IGN]
            launch = oci.launch_config(plan, program, env, default_signals,
                                       seccomp.SECCOMP_SYSCALL.get(os.uname().machine, 317), launch_hints(plan))
            files = {s.name: self.secret_values[s.name] for s in plan.secrets if s.deliver_as == "file"}
            try:
                paths = self.run_dir.create(plan, launch, files, runsc.one_terminal(), data_files)
            except OSError as exc:
                raise SandboxError(f"cannot prepare the gVisor bundle in {self.run_dir.path}: {exc.strerror}",
                                   "check the runtime directory (XDG_RUNTIME_DIR, /dev/shm) and run sandboxctl "
                                   "doctor") from None
            if paths.secrets:
                self.secrets_dir_fd = os.open(paths.secrets, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            if paths.proxy:
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                unixpath.bind(listener, f"{paths.proxy}/{oci.PROXY_SOCKET_NAME}")
                listener.listen(256)
                self.lifeline_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                unixpath.bind(self.lifeline_listener, f"{paths.proxy}/{oci.ALIVE_SOCKET_NAME}")
                self.lifeline_listener.listen(4)
                for name in (oci.PROXY_SOCKET_NAME, oci.ALIVE_SOCKET_NAME):  # the forwarder is another user
                    os.chmod(f"{paths.proxy}/{name}", 0o666)
            argv = oci.runsc_argv(plan, paths, runsc=self.runsc_path, platform=self.platform)
            stdio = self._relay_regular_files() if self.io.inherit else {}
            started = time.monotonic()
            try:
                # the library's pipes (supervise/stdio.py) replace 0, 1, 2 (the CLI passes its own)
                self.runsc_pid = runsc.spawn(argv, {**stdio, **dict(enumerate(self.io.child_fds()))}
                                             if not self.io.inherit else stdio)
            except OSError as exc:
                raise SandboxError(f"cannot start runsc: {exc.strerror}", "run sandboxctl doctor") from None
            finally:
                for fd in stdio.values():
                    os.close(fd)
                self.io.close_child_ends()
            self.runsc_started = True
            if self.forward_signals:
                self._install_signal_handlers()
            self.layers = self._layers({})
            if self.snapshot is not None and self.snapshot.active:  # gVisor: the wall is never whole
                self.snapshot.mark(False)
                self.next_beat = time.monotonic() + HEARTBEAT_S
            try:
                self._write_record("run.start", argv=self.argv_for_log, workspace=plan.workspace,
                                   policy=plan.policy, policy_source=plan.policy_source,
                                   policy_sha256=plan.policy_sha256, backend="gvisor",
                                   layers=self.layers, limits=self._limits_for_log(),
                                   confirmed=list(plan.confirmations) or None)
                self._log_secrets()
            except LogWriteError:
                self._kill()
                raise
            self.ready = True
            self._went()
            if listener is not None:
                self._start_proxy(listener.detach())
                listener = None
                if self.setup_error:
                    self._kill()
            returncode = self._wait(self.runsc_pid, started)
        finally:
            if self.forward_signals:  # as runner.Supervisor: kept until run.end (lifecycle)
                self.signal_originals = originals
                if not self.defer_signals:
                    self.restore_signals()
            if listener is not None:
                listener.close()
            if self.broker is not None:
                self.broker.stop()  # waiting requests are denied, so proxy threads can finish
            if self.proxy is not None:
                self.proxy.stop()
            if self.secrets_dir_fd is not None:
                os.close(self.secrets_dir_fd)
                self.secrets_dir_fd = None
            for held in (self.lifeline_listener, self.lifeline):
                if held is not None:
                    held.close()
            for fd in self.relays:
                os.close(fd)
            if self.runsc_pid and self.returncode_unknown():
                self._kill()
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.runsc_pid, 0)
            self.runsc_error = self.run_dir.runsc_error()
            self.run_dir.destroy()
            watchdog.done()
        return self._result(returncode, time.monotonic() - started)

    def _relay_regular_files(self) -> dict[int, int]:
        """Pipes for a stdout/stderr that is a regular file, copied to it from the loop.

        gVisor (runsc 20221219) writes to a regular-file stdio descriptor at an offset of its own,
        from 0, not at the file's shared offset: `cmd > log 2>&1` lost output, `(echo a; cmd) > f`
        overwrote. Through a pipe, the writes land where the caller's descriptor points.
        """
        import stat

        stdio: dict[int, int] = {}
        for fd in (1, 2):
            try:
                regular = stat.S_ISREG(os.fstat(fd).st_mode)
            except OSError:
                continue
            if regular:
                read, write = os.pipe()
                self.relays[read] = fd
                stdio[fd] = write
        return stdio

    def _pass_on(self, source: int, sel: selectors.BaseSelector | None) -> bool:
        """Copy what is in one relay pipe to its file; False at end of file."""
        try:
            data = os.read(source, 65536)
        except BlockingIOError:
            return True
        if not data:
            if sel is not None:
                sel.unregister(source)
            return False
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.relays[source], view):]
            except OSError:
                break  # the file is gone or full: the command's output is lost, as it would be
        return True

    def _drain_relays(self) -> None:
        """After runsc exits: the rest of the output (the sandbox's end of the pipes closes with it)."""
        import select

        end = time.monotonic() + 2.0
        open_fds = list(self.relays)
        while open_fds and time.monotonic() < end:
            ready, _, _ = select.select(open_fds, [], [], max(0.0, end - time.monotonic()))
            for fd in ready:
                if not self._pass_on(fd, None):
                    open_fds.remove(fd)

    def returncode_unknown(self) -> bool:
        """True while runsc has not been reaped (an exception left the loop early)."""
        try:
            pid, _ = os.waitpid(self.runsc_pid or -1, os.WNOHANG)
        except ChildProcessError:
            return False
        return pid == 0

    # ------------------------------------------------------------------ result
    def _layers(self, landlock: dict[str, Any]) -> dict[str, Any]:
        plan = self.plan
        proxy = plan.network.mode == "proxy"
        return {
            "gvisor": {
                "runsc": self.runsc_path, "version": self.version, "platform": self.platform, "rootless": True,
                "mounts": len(plan.mounts), "capabilities": "none",
                "launcher": "native (a static program: loads seccomp, executes the command)"
                if oci.native_launcher(plan) else "python3 (gvisor_init.py)",
                "user": "uid 0 inside gVisor, mapped to the calling user",
                "host_unix_sockets": "open (the proxy's socket; also any other visible in the granted paths)"
                if proxy else "none",
                "masks_not_needed": sorted(self.run_dir.skipped_masks) if self.run_dir else [],
            },
            "landlock": {"enforced": False, "why": "gVisor does not implement Landlock; the file-system grants "
                         "are enforced by gVisor's kernel and its file proxy"},
            "seccomp": {"rules": len(plan.seccomp.rules), "default": plan.seccomp.default_action,
                        "foreign_arch": plan.seccomp.bad_arch_action,
                        "enforced_by": "gVisor's kernel (loaded by sandboxctl's launcher before the command)",
                        "denials_trapped": False, "exec_events": False, "file_events": False,
                        "why": "gVisor has no seccomp user notification"},
            "network": {"mode": plan.network.mode,
                        "proxy": f"127.0.0.1:{PROXY_PORT} inside, held by a forwarder running as uid "
                                 f"{FORWARDER_UID} (out of the command's signal reach; the run ends if it stops), "
                                 "relayed over a host UNIX socket to the supervisor" if proxy else None,
                        "listen": describe_listen(plan.network.mode, plan.network.listen)
                        + ("" if plan.network.listen is True else " (not enforced: no Landlock under gVisor)"),
                        "unix_sockets": {"enforced_by": None,
                                         "why": "runsc opens every host socket a granted path shows, or none"},
                        "direct_connections": "no route (gVisor's own network stack, --network=none); not logged",
                        "inspected": [str(p) for p in self.inspection.patterns] if self.inspection else None},
            "capabilities": "none for the command (the launcher's, used to start the forwarder, are dropped "
                            "before it)" if proxy else "none",
            "approvals": {"mode": plan.approval_mode,
                          "via": plan.approval_via if plan.approval_mode == "ask" else None,
                          "file_writes": None,
                          "why": "network escapes only: file writes need seccomp user notification, which "
                                 "gVisor does not have",
                          "terminal_freeze": {"enforced": False, "why": "not under gVisor: the command runs, and may "
                                              "write to the terminal, while a panel waits"}
                          if plan.approval_mode == "ask" and plan.approval_via == "tty" else None},
            "memory": plan.limits.memory_method,
            "pids": plan.limits.pids_method,
        }

    runsc_error: str | None = None

    def _result(self, code: int, duration: float) -> RunResult:
        error = None
        if self.timed_out:
            code = EXIT_TIMEOUT
        elif self.setup_error:
            error, code = self.setup_error, EXIT_SANDBOX_FAILED
        elif code == 128 and self.runsc_error:
            error = SandboxError(f"gVisor (runsc) could not run the sandbox: {self.runsc_error}",
                                 "run `sandboxctl doctor` to see whether the gvisor backend works here")
            code = EXIT_SANDBOX_FAILED
        stopped = self.log_stop_error()
        if stopped is not None:
            error, code = stopped, EXIT_SANDBOX_FAILED
        return RunResult(code, duration, self.timed_out, error, self.layers, self.denials,
                         interrupted=error is None and self.interrupted(code))


def launch_hints(plan) -> dict[str, str]:
    """The hints the launcher inside writes after its own errors, worked out here, before the run,
    as bubblewrap's runs get them after (supervise/result.py): under gVisor the launcher's line goes
    straight to the caller's stderr, and nothing outside can tell its 126/127 from the command's."""
    from sandboxctl.plan.locate import hint_for_exec_error

    path_env = os.environ.get("PATH", "")
    return {"exec": hint_for_exec_error(plan, 126, plan.command[0], path_env),
            "not_found": hint_for_exec_error(plan, 127, plan.command[0], path_env)}
