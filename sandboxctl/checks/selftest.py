"""`sandboxctl selftest`: try the standard escapes for real under a policy, and judge from outside.

Nothing of the user's is touched: everything happens in a fresh temporary directory holding a
fake HOME (with credential canaries), a fake state dir, a `git init`ed workspace (with a `.env`
canary) and a host directory next to it. The probe (`selftest_probe.py`) is copied into the
workspace and run as ONE ordinary `sandboxctl run` (never with --yes); it reports raw
observations as JSON, and the verdicts come mostly from what the host shows afterwards: files
that did or did not appear, connections that did or did not arrive, processes still alive or not.
The memory bomb, which the OOM killer may end, gets a second run of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sandboxctl.checks.selftest_bed import (
    ENV_CANARY,
    HOME_CANARIES,
    OUTER_TIMEOUT_S,
    Bed,
    Listener,
    dry_run,
    first_error,
    last_json,
    policy_spec,
    remove_tree,
    run_argv,
    timeout_args,
)
from sandboxctl.checks.selftest_judge import BLOCKED, ESCAPED, NOT_APPLICABLE, Attempt, judge, memory_attempt
from sandboxctl.errors import SandboxError
from sandboxctl.supervise import processes


@dataclass
class Report:
    policy: str
    source: str
    attempts: list[Attempt] = field(default_factory=list)
    layers: dict[str, Any] = field(default_factory=dict)
    kept: str | None = None

    @property
    def escaped(self) -> list[Attempt]:
        return [a for a in self.attempts if a.verdict == ESCAPED]

    @property
    def exit_code(self) -> int:
        return 1 if self.escaped else 0

    def to_dict(self) -> dict[str, Any]:
        counts = {v: sum(1 for a in self.attempts if a.verdict == v) for v in (BLOCKED, ESCAPED, NOT_APPLICABLE)}
        return {"policy": self.policy, "source": self.source, "exit_code": self.exit_code,
                "counts": counts, "attempts": [asdict(a) for a in self.attempts],
                "layers": self.layers, "kept": self.kept}


def run_selftest(spec: str | None, keep: bool = False, cwd: Path | None = None,
                 progress=None) -> Report:
    """Run every attempt under the policy `run` would use (or `spec`); raise SandboxError on setup errors."""
    say = progress or (lambda _message: None)
    loaded, run_spec = policy_spec(spec, cwd or Path.cwd())
    policy = loaded.policy
    root = Path(tempfile.mkdtemp(prefix="sandboxctl-selftest-"))
    report = Report(policy=policy.name, source=run_spec, kept=str(root) if keep else None)
    listener: Listener | None = None
    victim: subprocess.Popen | None = None
    escaped_daemons: list[int] = []
    tag = f"{secrets.randbelow(10 ** 6):06d}"
    daemon = f"sleep 3600.{tag}"  # unique: a host process with exactly this command line is the probe's
    try:
        bed = Bed(root)
        bed.populate(policy)
        plan = dry_run(bed, run_spec)
        if plan.get("confirmations"):
            raise SandboxError(
                f"policy {run_spec} needs launch-time confirmation ({'; '.join(plan['confirmations'])}), "
                "and selftest never passes --yes; nothing was run",
                f"review the widening with `sandboxctl run -p {run_spec} --dry-run -- true`; "
                "selftest tests policies that run without confirmation")
        listener = Listener()
        victim_cmdline = f"sleep 60.{tag}"
        victim = subprocess.Popen(victim_cmdline.split(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        pids = plan["limits"].get("pids")
        config = {
            "workspace": str(bed.workspace),
            "write_targets": [str(bed.outside / "pwned"), str(bed.home / "planted")],
            "canaries": {**{key: bed.expand(raw) for key, raw in HOME_CANARIES},
                         "read-dotenv": str(bed.workspace / ".env")},
            "port": listener.port,
            "dns_name": "example.com",
            "env_name": ENV_CANARY,
            "exec_path": str(bed.workspace / "selftest-true"),
            "host_pid": victim.pid,
            "host_cmdline": victim_cmdline,
            "daemon": daemon.split(),
            "fork_count": pids + 50 if pids else None,
        }
        probe = str(bed.workspace / "probe.py")
        if plan.get("workspace") is None:  # workspace: none, the probe file is not visible inside
            probe_cmd = ["python3", "-c", (bed.workspace / "probe.py").read_text()]
        else:
            probe_cmd = ["python3", probe]
        say(f"running the probe under policy {policy.name} …")
        try:
            done = subprocess.run(run_argv(run_spec, bed.workspace, *timeout_args(plan), "--",
                                            *probe_cmd, json.dumps(config)),
                                  cwd=bed.workspace, env=bed.env(bed.canary), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=OUTER_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise SandboxError("the probe run did not finish in time",
                               "re-run with --keep and inspect the temporary directory") from None
        observations = last_json(done.stdout)
        if observations is None:
            stage = [line for line in done.stderr.splitlines() if line.startswith("selftest-probe:")]
            where = f" during {stage[-1].split(':', 1)[1].strip()}" if stage else ""
            raise SandboxError(f"the probe run failed{where} (exit {done.returncode}): {first_error(done.stderr)}",
                               "check the policy with `sandboxctl run --dry-run`, and the machine with "
                               "`sandboxctl doctor`")
        processes.wait_for(lambda: not processes.with_command_line(daemon), 5)
        escaped_daemons = processes.with_command_line(daemon)
        report.attempts = judge(observations, plan, policy, bed, listener, victim, daemon, escaped_daemons)
        if plan["limits"].get("memory"):
            say("running the memory bomb …")
        report.attempts.append(memory_attempt(bed, run_spec, plan))
        report.layers = {"network": plan["network"]["mode"], "pids": plan["limits"].get("pids_method"),
                         "memory": plan["limits"].get("memory_method"),
                         "exec_allow": list(policy.exec_allow) if policy.exec_allow is not None else None}
        return report
    except SandboxError as exc:
        if keep:
            exc.hint = (exc.hint + "; " if exc.hint else "") + f"the temporary directory is kept: {root}"
        raise
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()
        if listener is not None:
            listener.close()
        # the probe's daemons, found by their unique command line
        for pid in escaped_daemons or processes.with_command_line(daemon):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not keep:
            remove_tree(root)


