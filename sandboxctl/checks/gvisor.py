"""The optional gVisor backend: is runsc here, which platform works, what a sandbox has under it."""

from __future__ import annotations

from sandboxctl.checks.common import OK, WARN, CheckResult


def _verdict(value: str | None, good: str) -> str:
    return "?" if value is None else ("yes" if value == good else "no")


def gvisor_table(probe: dict) -> list[dict[str, str]]:
    """What a sandbox has under `--backend gvisor` here, each row measured by the probe or fixed
    by how the backend works (a layer not measured is not claimed)."""
    chosen = probe.get("platform")
    inside = (probe.get("platforms", {}).get(chosen) or {}).get("inside", {}) if chosen else {}
    landlock = inside.get("landlock")
    listener = inside.get("seccomp_listener")
    automount = inside.get("stat_no_automount")
    rows = [
        ("mounts: grants, masks, workspace, protected paths", "yes" if chosen else "?",
         "the same plan as bubblewrap, served by gVisor's kernel and file proxy"),
        ("Landlock (second file-system wall, exec.allow)", "no" if landlock else "?",
         f"gVisor does not implement it (landlock_create_ruleset: {landlock})" if landlock else "not probed"),
        ("seccomp baseline", _verdict(inside.get("seccomp_mode"), "2"),
         "loaded by sandboxctl's launcher, enforced by gVisor's kernel"),
        ("seccomp user notification: exec/file/syscall events, file-write approvals",
         "no" if listener and listener != "ok" else _verdict(listener, "ok"),
         f"SECCOMP_FILTER_FLAG_NEW_LISTENER: {listener}" if listener else "not probed"),
        ("network: none", "yes" if chosen else "?", "gVisor's own loopback only (runsc --network=none)"),
        ("network: proxy (allowlist, approvals, net events)", "yes" if chosen else "?",
         "a forwarder on 127.0.0.1:3128 to the supervisor's host UNIX socket (runsc --host-uds=open)"),
        ("network: host", "no", "rootless runsc cannot share the host network"),
        ("limits: pids, file size, open files, memory", "yes" if chosen else "?",
         "rlimits enforced by gVisor's kernel (pids even for root; memory as address space, no cgroup)"),
        ("timeout, secrets, action log", "yes" if chosen else "?", "the supervisor, outside gVisor"),
        ("stat with AT_NO_AUTOMOUNT (coreutils 9 `ls`, `stat`)", _verdict(automount, "ok"),
         "" if automount in (None, "ok") else f"{automount} from this gVisor: `ls -l`/`stat` from coreutils 9 fail; "
         "newer gVisor releases (gVisor's apt repository) run them"),
    ]
    for name, result in sorted(probe.get("platforms", {}).items()):
        detail = f"{result.get('ms')} ms to start and stop a sandbox" if result.get("ok") else result.get("error", "")
        rows.append((f"platform {name}", "yes" if result.get("ok") else "no", detail))
    return [{"feature": f, "here": h, "how": w} for f, h, w in rows]


def assess_gvisor(path: str | None, probe: dict | None) -> CheckResult:
    """`--backend gvisor` runs the plan under runsc; optional: the default backend does not need it."""
    if not path:
        return CheckResult("gvisor", WARN, "runsc is not installed: `--backend gvisor` is unavailable "
                           "(the default bubblewrap backend does not need it)",
                           "sudo apt-get install runsc (Debian/Ubuntu), or gVisor's own apt repository for a newer one")
    probe = probe or {}
    chosen = probe.get("platform")
    table = gvisor_table(probe)
    found = f"{path}: runsc {probe.get('version', 'unknown version')}"
    if not chosen:
        errors = "; ".join(f"{name}: {r.get('error', 'failed')}" for name, r in probe.get("platforms", {}).items())
        return CheckResult("gvisor", WARN, f"{found}; no gVisor platform works here ({errors or 'not probed'})",
                           "run `runsc --rootless --network=none do /bin/true` to see runsc's own error", table)
    found += f"; `--backend gvisor` works, platform {chosen}"
    missing = [row["feature"] for row in table if row["here"] == "no" and not row["feature"].startswith("platform")]
    found += f"; not available under it: {'; '.join(missing)}" if missing else ""
    return CheckResult("gvisor", OK, found, details=table)


def check_gvisor() -> CheckResult:
    """`--backend gvisor` runs the plan under runsc; optional: the default backend does not need it."""
    from sandboxctl.errors import SandboxError
    from sandboxctl.launch import runsc, runsc_probe

    path = runsc.find()
    if not path:
        return assess_gvisor(None, None)
    try:
        return assess_gvisor(path, runsc_probe.probe(path))
    except SandboxError as exc:
        return CheckResult("gvisor", WARN, f"{path}: cannot probe gVisor: {exc.message}", exc.hint or "")
