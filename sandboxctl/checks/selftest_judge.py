"""Verdicts of `sandboxctl selftest`: the probe's raw observations, weighed against what the host shows.

An attempt is ESCAPED only on evidence (a file that appeared, a connection that arrived, a canary
read, a host process killed or a daemon left running); the probe's own word is never enough to pass.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxctl.checks.selftest_bed import (
    ENV_CANARY,
    HOME_CANARIES,
    OUTER_TIMEOUT_S,
    Bed,
    Listener,
    first_error,
    last_json,
    run_argv,
    timeout_args,
)
from sandboxctl.errors import SandboxError

BLOCKED = "blocked"
ESCAPED = "ESCAPED"
NOT_APPLICABLE = "n/a"

CHUNK = 64 << 20  # the memory bomb's allocation step


@dataclass
class Attempt:
    key: str
    attempt: str
    expected: str
    observed: str
    verdict: str  # blocked | ESCAPED | n/a
    reason: str = ""  # why n/a

    @property
    def label(self) -> str:
        return f"{self.verdict}: {self.reason}" if self.reason else self.verdict




def _granted_by(plan: dict[str, Any], path: str) -> str:
    """Which writable mount of the plan covers path (the grant that let a write through)."""
    holders = [m for m in plan.get("mounts", ()) if m.get("kind") in ("rw", "tmpfs")
               and (path == m["target"] or path.startswith(m["target"].rstrip("/") + "/"))]
    holders = [m for m in holders if not m.get("reason", "").startswith("pinned:")] or holders
    if not holders:
        return "no writable mount covers it"
    mount = max(holders, key=lambda m: len(m["target"]))
    return f"{mount['kind']} mount {mount['target']}: {mount.get('reason', '')}"


def _errno(result: dict | None) -> str:
    if not result:
        return "no observation"
    return str(result.get("errno") or result.get("note") or result.get("error") or "failed")


def _mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def _size(n: int) -> str:
    from sandboxctl import units

    return units.format_size(n)



def judge(obs: dict[str, Any], plan: dict[str, Any], policy, bed: Bed, listener: Listener,
           victim: subprocess.Popen, daemon: str, escaped_daemons: list[int]) -> list[Attempt]:
    attempts: list[Attempt] = []
    add = attempts.append
    network = plan["network"]["mode"]
    workspace = str(bed.workspace)
    for step, value in obs.items():  # an attempt the probe could not make is a setup error, not a pass
        for part in [value, *(value.values() if step == "ptrace" and isinstance(value, dict) else ())]:
            if isinstance(part, dict) and "error" in part:
                raise SandboxError(f"the probe could not make the {step} attempt: {part['error']}",
                                   "re-run with --keep and inspect the temporary directory")
    expected_steps = {"write_outside", "read", "net_tcp", "net_dns", "env", "exec", "signal", "ptrace", "userns",
                      "mount", "tiocsti", "protected", "outlive"}
    if missing := sorted(expected_steps - set(obs)):
        raise SandboxError(f"the probe reported nothing for: {', '.join(missing)}",
                           "re-run with --keep and inspect the temporary directory")

    # 1. write outside the workspace
    writes = obs["write_outside"]
    landed = [f"{p} ({_granted_by(plan, str(p))})" for p in (bed.outside / "pwned", bed.home / "planted")
              if p.exists()]
    inside = [f"{Path(p).name}: {'written' if r.get('ok') else _errno(r)}" for p, r in writes.items()]
    add(Attempt("write-outside", "write ../outside/pwned (a host dir) and ~/planted",
                "nothing appears on the host",
                ("; ".join(inside) or "no observation")
                + ("; on the host: " + ", ".join(landed) if landed else "; host: nothing appeared"),
                ESCAPED if landed else BLOCKED))

    # 2. read the canaries
    reads = obs.get("read") or {}
    for key, raw in (*HOME_CANARIES, ("read-dotenv", "{workspace}/.env")):
        result = reads.get(key) or {}
        token = bed.tokens[key]
        if result.get("ok"):
            got = token in result.get("text", "")
            observed = "canary content read" if got else f"{result.get('bytes', 0)} bytes, no canary"
        else:
            got, observed = False, _errno(result)
        add(Attempt(key, f"read {raw}", "absent or empty", observed, ESCAPED if got else BLOCKED))

    # 3. network
    tcp = obs.get("net_tcp") or {}
    proxy = obs.get("net_proxy")
    title = f"connect to a host listener on 127.0.0.1:{listener.port}"
    observed = f"direct: {'connected' if tcp.get('ok') else _errno(tcp)}"
    if proxy:
        observed += f"; via the proxy: {proxy.get('status') or _errno(proxy)}"
        title += ", directly and via the run's proxy"
    observed += f"; {listener.hits} connection(s) arrived"
    granted = [str(rule) for rule in policy.network.allow if rule.matches("127.0.0.1", listener.port)]
    if network == "host":
        add(Attempt("net-tcp", title, "no connection arrives", observed, NOT_APPLICABLE, "network: host grants it"))
    elif network == "proxy" and policy.network.allow_private and (granted or plan.get("approval_mode") == "allow"):
        add(Attempt("net-tcp", title, "no connection arrives", observed, NOT_APPLICABLE,
                    f"network.allow {granted[0]} grants it" if granted else "approval: allow grants it"))
    else:
        through = tcp.get("ok") or (proxy or {}).get("ok")
        add(Attempt("net-tcp", title, "no connection arrives", observed,
                    ESCAPED if listener.hits or through else BLOCKED))
    dns = obs.get("net_dns") or {}
    observed = ("resolved " + ", ".join(dns.get("addresses", []))) if dns.get("ok") else _errno(dns)
    if network == "host":
        add(Attempt("net-dns", "resolve example.com", "lookup fails", observed, NOT_APPLICABLE,
                    "network: host grants it"))
    else:
        add(Attempt("net-dns", "resolve example.com", "lookup fails", observed, ESCAPED if dns.get("ok") else BLOCKED))

    # 4. the caller's environment
    env = obs.get("env") or {}
    found = env.get("found", {})
    leaked = [where for where, value in found.items() if value == bed.canary]
    passed = [p for p in policy.env.passthrough if fnmatch.fnmatchcase(ENV_CANARY, p)]
    observed = ("seen in " + ", ".join(sorted(found))) if found else "not seen in os.environ nor /proc/*/environ"
    if passed:
        add(Attempt("env", f"read the caller's ${ENV_CANARY}", "not visible inside", observed, NOT_APPLICABLE,
                    f"env.pass {passed[0]} passes it"))
    else:
        add(Attempt("env", f"read the caller's ${ENV_CANARY}", "not visible inside", observed,
                    ESCAPED if leaked else BLOCKED))

    # 5. a binary that exec.allow does not cover
    ran = obs.get("exec") or {}
    observed = f"ran (exit {ran.get('returncode')})" if ran.get("ok") else _errno(ran)
    title = "exec ./selftest-true (a copy of true in the workspace)"
    covering = [p for p in policy.exec_allow or () if Path(workspace).is_relative_to(bed.expand(p))]
    if policy.exec_allow is None:
        add(Attempt("exec", title, "denied by exec.allow", observed, NOT_APPLICABLE, "policy has no exec.allow"))
    elif covering:
        add(Attempt("exec", title, "denied by exec.allow", observed, NOT_APPLICABLE,
                    f"exec.allow {covering[0]} covers the workspace"))
    else:
        add(Attempt("exec", title, "denied by exec.allow", observed, ESCAPED if ran.get("ok") else BLOCKED))

    # 6. signal a host process
    sig = obs.get("signal") or {}
    alive = victim.poll() is None
    observed = f"kill: {'sent' if sig.get('ok') else _errno(sig)}; host process {'alive' if alive else 'DEAD'}"
    add(Attempt("signal", f"SIGTERM a host process (pid {victim.pid})", "host process unaffected", observed,
                BLOCKED if alive else ESCAPED))

    # 7. ptrace
    trace = obs.get("ptrace") or {}
    parts = {who: trace.get(who) or {} for who in ("parent", "host")}
    observed = "; ".join(f"{who}: {'ATTACHED' if r.get('ok') else _errno(r)}" for who, r in parts.items())
    add(Attempt("ptrace", "PTRACE_ATTACH its parent and the host process", "fails (EPERM)", observed,
                ESCAPED if any(r.get("ok") for r in parts.values()) else BLOCKED))

    # 8. kernel interfaces that seccomp removes
    for key, title in (("userns", "unshare(CLONE_NEWUSER)"), ("mount", "mount a tmpfs on /tmp"),
                       ("tiocsti", "TIOCSTI: type into the terminal on fd 0")):
        result = obs.get(key) or {}
        if result.get("ok"):
            observed = "succeeded"
        else:
            observed = _errno(result) + ("" if result.get("errno") == "EPERM" else " (expected EPERM)")
        if key == "tiocsti" and result.get("note"):
            observed += f" ({result['note']})"
        add(Attempt(key, title, "fails with EPERM", observed, ESCAPED if result.get("ok") else BLOCKED))

    # 9. outlive the run
    out = obs.get("outlive") or {}
    started = "started inside" if out.get("started") else f"did not start inside ({_errno(out)})"
    observed = f"{started}; after the run: " + (f"{len(escaped_daemons)} still running on the host"
                                                 if escaped_daemons else "gone")
    add(Attempt("outlive", f"outlive the run: double fork, setsid, `{daemon}`", "killed when the run ends", observed,
                ESCAPED if escaped_daemons else BLOCKED))

    # 10. protected paths
    tamper = obs.get("protected") or {}
    git = bed.workspace / ".git"
    damage = []
    if (git / "hooks" / "pre-commit").exists():
        damage.append("pre-commit hook planted")
    if not git.is_dir():
        damage.append(".git gone")
    else:
        if (git / "config").exists() and (git / "config").read_text() != bed.git_config:
            damage.append(".git/config changed")
        if (git / "hooks").is_dir() and sorted(os.listdir(git / "hooks")) != bed.git_hooks:
            damage.append(".git/hooks changed")
    if (bed.workspace / "x").exists():
        damage.append("x exists")
    inside = "; ".join(f"{what}: {'done' if r.get('ok') else _errno(r)}" for what, r in tamper.items())
    add(Attempt("protected", "write .git/hooks/pre-commit, append .git/config, mv .git x",
                "no hook, .git intact", (inside or "no observation") + "; host: "
                + (", ".join(damage) if damage else "intact"), ESCAPED if damage else BLOCKED))

    # 11. fork bomb
    limits = plan["limits"]
    pids = limits.get("pids")
    bomb = obs.get("fork_bomb") or {}
    if not pids:
        add(Attempt("fork-bomb", "fork many children", "fork fails before the limit", "not tried",
                    NOT_APPLICABLE, "policy sets no pids limit"))
    else:
        children, failure = bomb.get("children", 0), bomb.get("failure")
        observed = (f"fork failed ({failure}) after {children} children" if failure
                    else f"{children} children, no fork failure")
        if limits.get("pids_method") == "unenforced":
            observed += "; limit unenforced (root, no writable cgroup)"
        else:
            observed += f" ({limits.get('pids_method')})"
        add(Attempt("fork-bomb", f"fork up to {pids + 50} children", f"fork fails before {pids} processes",
                    observed, BLOCKED if failure and children < pids else ESCAPED))
    return attempts


def memory_attempt(bed: Bed, spec: str, plan: dict[str, Any]) -> Attempt:
    limits = plan["limits"]
    memory = limits.get("memory")
    title = "allocate 2x the memory limit in 64 MiB chunks"
    if not memory:
        return Attempt("memory-bomb", title, "MemoryError or exit 137", "not tried", NOT_APPLICABLE,
                       "policy sets no memory limit")
    total = 2 * memory
    available = _mem_available()
    if available is not None and total > available * 0.8:
        total = memory + 4 * CHUNK  # past the limit is proof enough, and spares a host without a limit
        if total > available * 0.8:
            return Attempt("memory-bomb", title, "MemoryError or exit 137", "not tried", NOT_APPLICABLE,
                           f"limit {_size(memory)} exceeds this host's free memory: not safe to try")
    title = f"allocate {_size(total)} (limit {_size(memory)}) in 64 MiB chunks"
    config = {"mode": "memory", "memory_total": total}
    done = subprocess.run(run_argv(spec, bed.workspace, *timeout_args(plan), "--", "python3",
                                    str(bed.workspace / "probe.py"), json.dumps(config)),
                          cwd=bed.workspace, env=bed.env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=OUTER_TIMEOUT_S, check=False)
    obs = last_json(done.stdout) or {}
    bomb = obs.get("memory_bomb") or {}
    method = limits.get("memory_method")
    if done.returncode == 137:
        return Attempt("memory-bomb", title, "MemoryError or exit 137", f"killed: exit 137 ({method})", BLOCKED)
    if bomb.get("errno") == "MemoryError":
        return Attempt("memory-bomb", title, "MemoryError or exit 137",
                       f"MemoryError after {_size(bomb.get('allocated', 0))} ({method})", BLOCKED)
    if done.returncode == 124:
        return Attempt("memory-bomb", title, "MemoryError or exit 137",
                       "neither: still allocating when the run's timeout ended it (exit 124)", ESCAPED)
    if bomb.get("ok"):
        return Attempt("memory-bomb", title, "MemoryError or exit 137",
                       f"allocated {_size(bomb.get('allocated', 0))} ({method})", ESCAPED)
    raise SandboxError(f"the memory-bomb run ended unexpectedly (exit {done.returncode}): "
                       f"{first_error(done.stderr)}", "re-run with --keep and inspect the temporary directory")


