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
import fnmatch
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sandboxctl.errors import SandboxError
from sandboxctl.supervise import processes

BLOCKED = "blocked"
ESCAPED = "ESCAPED"
NOT_APPLICABLE = "n/a"

ENV_CANARY = "SANDBOXCTL_SELFTEST_CANARY"
RUN_TIMEOUT_S = 120  # a hung probe ends here (unless the policy's own timeout is shorter)
OUTER_TIMEOUT_S = 180.0
CHUNK = 64 << 20
HOME_CANARIES = (("read-ssh-key", "~/.ssh/id_rsa"), ("read-aws", "~/.aws/credentials"), ("read-netrc", "~/.netrc"))


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


# ---------------------------------------------------------------------- host-side helpers

class Listener:
    """A TCP server on the host's loopback: the target of the network escape; counts arrivals."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.thread = threading.Thread(target=self._serve, name="selftest-listener", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with contextlib.suppress(OSError):
                conn.sendall(b"selftest\n")
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(2)


processes_with = processes.with_command_line
_wait_for = processes.wait_for


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


# ---------------------------------------------------------------------- the test bed

class Bed:
    """The temporary world of one selftest: fake HOME and state, workspace, host-side targets."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.state = root / "state"
        self.workspace = root / "workspace"
        self.outside = root / "outside"
        self.tokens: dict[str, str] = {}
        self.canary = secrets.token_hex(16)  # the value of $SANDBOXCTL_SELFTEST_CANARY
        for path in (self.home, self.state, self.workspace, self.outside):
            path.mkdir(mode=0o700)

    def expand(self, raw: str) -> str:
        from sandboxctl import paths

        return paths.expand(raw, workspace=str(self.workspace), home=str(self.home),
                            state=str(self.state / "sandboxctl"))

    def plant(self, key: str, path: Path, template: str) -> None:
        token = f"SBX-SELFTEST-{key.upper()}-{secrets.token_hex(8)}"
        self.tokens[key] = token
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(template.format(token=token))
        path.chmod(0o600)

    def populate(self, policy) -> None:
        self.plant("read-ssh-key", self.home / ".ssh" / "id_rsa",
                   "-----BEGIN OPENSSH PRIVATE KEY-----\n{token}\n-----END OPENSSH PRIVATE KEY-----\n")
        self.plant("read-aws", self.home / ".aws" / "credentials",
                   "[default]\naws_access_key_id = AKIASELFTEST\naws_secret_access_key = {token}\n")
        self.plant("read-netrc", self.home / ".netrc", "machine example.com login me password {token}\n")
        self.plant("read-dotenv", self.workspace / ".env", "OPENAI_API_KEY={token}\n")
        self._git_init()
        self._create_write_grants(policy)
        probe = Path(__file__).with_name("selftest_probe.py")
        shutil.copyfile(probe, self.workspace / "probe.py")
        binary = self.workspace / "selftest-true"
        shutil.copyfile(os.path.realpath(shutil.which("true") or "/bin/true"), binary)
        binary.chmod(0o755)

    def _git_init(self) -> None:
        git = shutil.which("git")
        done = None
        if git:
            done = subprocess.run([git, "init", "-q", str(self.workspace)], capture_output=True,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                                       "GIT_CONFIG_NOSYSTEM": "1"}, check=False)
        if done is None or done.returncode != 0:  # no git here: the same layout by hand
            (self.workspace / ".git" / "hooks").mkdir(parents=True)
            (self.workspace / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
        self.git_config = (self.workspace / ".git" / "config").read_text()
        self.git_hooks = sorted(os.listdir(self.workspace / ".git" / "hooks"))

    def _create_write_grants(self, policy) -> None:
        """A policy's `filesystem.write` paths must exist; create those that fall in the fake HOME or
        workspace (a file when the real one is a file or the name has a suffix, else a directory)."""
        real_home = os.path.expanduser("~")
        for raw in policy.filesystem.write:
            target = Path(self.expand(raw))
            if target.exists() or not any(target.is_relative_to(p) for p in (self.home, self.workspace)):
                continue
            relative = target.relative_to(self.home) if target.is_relative_to(self.home) else None
            real = Path(real_home) / relative if relative else None
            is_file = real.is_file() if real is not None and real.exists() else bool(target.suffix)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if is_file:
                target.touch(mode=0o600)
            else:
                target.mkdir(mode=0o700)

    def env(self, canary: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("SANDBOXCTL_DEBUG",):
            env.pop(name, None)
        env.update({"HOME": str(self.home), "XDG_STATE_HOME": str(self.state)})
        if canary:
            env[ENV_CANARY] = canary
        return env


def _run_argv(spec: str, workspace: Path, *tail: str) -> list[str]:
    return [sys.executable, "-m", "sandboxctl", "run", "-q", "-p", spec, "-w", str(workspace), *tail]


def _timeout_args(plan: dict[str, Any]) -> list[str]:
    """`--timeout` only to narrow: a policy's own shorter timeout is part of what is tested."""
    own = plan["limits"].get("timeout")
    return [] if own and own <= RUN_TIMEOUT_S else ["--timeout", f"{RUN_TIMEOUT_S}s"]


def _first_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("selftest-probe:")]
    errors = [line for line in lines if line.startswith("sandboxctl: error:")]
    text = (errors or lines or ["no output"])[0]
    return text.removeprefix("sandboxctl: error: ").strip()


def _policy_spec(spec: str | None, cwd: Path) -> tuple[Any, str]:
    """The policy `run` would use here, and how to name it from the temporary workspace."""
    from sandboxctl.policy.discover import choose_policy

    loaded, _how = choose_policy(spec, cwd)
    first = loaded.files[0]
    return loaded, (first.label.removeprefix("builtin:") if first.builtin else str(first.path.resolve()))


def _dry_run(bed: Bed, spec: str) -> dict[str, Any]:
    done = subprocess.run(_run_argv(spec, bed.workspace, "--dry-run", "--json", "--", "python3", "probe.py"),
                          cwd=bed.workspace, env=bed.env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SandboxError(f"cannot plan a run with policy {spec}: {_first_error(done.stderr)}",
                           f"check it with: sandboxctl run -p {spec} --dry-run -- true")
    return json.loads(done.stdout)


# ---------------------------------------------------------------------- judging

def _judge(obs: dict[str, Any], plan: dict[str, Any], policy, bed: Bed, listener: Listener,
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


def _memory_attempt(bed: Bed, spec: str, plan: dict[str, Any]) -> Attempt:
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
    done = subprocess.run(_run_argv(spec, bed.workspace, *_timeout_args(plan), "--", "python3",
                                    str(bed.workspace / "probe.py"), json.dumps(config)),
                          cwd=bed.workspace, env=bed.env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=OUTER_TIMEOUT_S, check=False)
    obs = _last_json(done.stdout) or {}
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
                       f"{_first_error(done.stderr)}", "re-run with --keep and inspect the temporary directory")


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None


# ---------------------------------------------------------------------- the whole selftest

def run_selftest(spec: str | None, keep: bool = False, cwd: Path | None = None,
                 progress=None) -> Report:
    """Run every attempt under the policy `run` would use (or `spec`); raise SandboxError on setup errors."""
    say = progress or (lambda _message: None)
    loaded, run_spec = _policy_spec(spec, cwd or Path.cwd())
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
        plan = _dry_run(bed, run_spec)
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
            done = subprocess.run(_run_argv(run_spec, bed.workspace, *_timeout_args(plan), "--",
                                            *probe_cmd, json.dumps(config)),
                                  cwd=bed.workspace, env=bed.env(bed.canary), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=OUTER_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise SandboxError("the probe run did not finish in time",
                               "re-run with --keep and inspect the temporary directory") from None
        observations = _last_json(done.stdout)
        if observations is None:
            stage = [line for line in done.stderr.splitlines() if line.startswith("selftest-probe:")]
            where = f" during {stage[-1].split(':', 1)[1].strip()}" if stage else ""
            raise SandboxError(f"the probe run failed{where} (exit {done.returncode}): {_first_error(done.stderr)}",
                               "check the policy with `sandboxctl run --dry-run`, and the machine with "
                               "`sandboxctl doctor`")
        _wait_for(lambda: not processes_with(daemon), 5)
        escaped_daemons = processes_with(daemon)
        report.attempts = _judge(observations, plan, policy, bed, listener, victim, daemon, escaped_daemons)
        if plan["limits"].get("memory"):
            say("running the memory bomb …")
        report.attempts.append(_memory_attempt(bed, run_spec, plan))
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
        for pid in escaped_daemons or processes_with(daemon):  # the probe's, found by its unique command line
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not keep:
            _remove(root)


def _remove(root: Path) -> None:
    """Remove the temporary tree, even the read-only parts a sandbox may have left."""
    def unlock(function, path, _exc) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=unlock)
    else:
        shutil.rmtree(root, onerror=unlock)

