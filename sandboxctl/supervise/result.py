"""What the run reports: the layers it applied (run.start, RunResult.layers) and its RunResult.

Part of the Supervisor (runner.py). Layers are reported as they really are (a wall that was not
applied is never reported as enforced); the result turns how the run ended (exit status,
timeout, OOM, a failed launch, a stopped log, a dead listener) into one exit code and error.
"""

from __future__ import annotations

import contextlib
import os

from sandboxctl.errors import EXIT_SANDBOX_FAILED, EXIT_TIMEOUT, SandboxError
from sandboxctl.log.writer import LogWriteError
from sandboxctl.plan.build import PROXY_PORT
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


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
    interrupted: bool = False  # the command died of the terminal's Ctrl-C (Supervisor.interrupted)


class Outcome:
    """The layers and the result (a mixin of runner.Supervisor)."""

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
                          if self.notify_fd is not None and plan.seccomp.file_events != "none" else None,
                          "terminal_freeze": self._terminal_freeze_layer()},
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
                self._write_record("limit", kind="memory", action="oom-kill", limit=self.plan.limits.memory)
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
        return RunResult(code, duration, self.timed_out, error, self.layers, self.denials, tampered=self.tampered,
                         interrupted=error is None and self.interrupted(code))
