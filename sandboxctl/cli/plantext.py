"""The plan as plain lines, for a pipe, a file or a CI log: complete, one item per line, never cut.

Rich tables fit themselves to 80 columns when stdout is not a terminal, and cut long paths
mid-name; what someone greps or diffs must hold every path and value whole. Every string that
comes from outside (policy paths, the command, environment values) is shown inert.
"""

from __future__ import annotations

from collections import defaultdict

from sandboxctl import units
from sandboxctl.plan.model import Plan

INDENT = "  "


def inert(value: object) -> str:
    """Shown inert (sandboxctl.inert): a path or an environment value must not drive the terminal."""
    from sandboxctl.inert import inert as shown

    return shown(value)


def header(plan: Plan) -> list[str]:
    return [
        f"plan for run {plan.run_id}: policy {inert(plan.policy)} ({inert(plan.policy_source)}, "
        f"sha256 {plan.policy_sha256[:12]})",
        f"command: {inert(_joined(plan.command))}",
        f"cwd: {inert(plan.cwd)}   HOME: {inert(plan.home)}   backend: {plan.backend}",
    ]


def mounts(plan: Plan) -> list[str]:
    lines = ["mounts, in order (kind target [from source]: why):"]
    width = max((len(m.kind) for m in plan.mounts), default=4)
    for mount in plan.mounts:
        source = "" if mount.source in (None, mount.target) else f" from {inert(mount.source)}"
        why = f": {inert(mount.reason)}" if mount.reason else ""
        lines.append(f"{INDENT}{mount.kind:<{width}} {inert(mount.target)}{source}{why}")
    return lines


def creations(plan: Plan) -> list[str]:
    if not plan.creations:
        return []
    lines = ["made on the host before the run, absent now (filesystem.create; never over anything that exists):"]
    for item in plan.creations:
        mode = format(item.mode, "04o") if item.mode is not None else "umask default"
        size = f", {len(item.content.encode())} bytes" if item.kind == "file" else ""
        lines.append(f"{INDENT}{item.kind} {inert(item.path)} ({mode}{size}): {inert(item.reason)}")
    return lines


def landlock(plan: Plan) -> list[str]:
    if plan.backend == "gvisor":
        return ["landlock: not applied (gVisor does not implement it; the mounts above are enforced by "
                "gVisor's kernel and its file proxy)"]
    ll = plan.landlock
    lines = [f"landlock ({'required' if ll.required else 'best-effort'}, minimum ABI {ll.minimum_abi}):"]
    lines += [f"{INDENT}{inert(rule.path)}: {', '.join(rule.access)}" for rule in ll.paths]
    from sandboxctl.cli.planview import tcp_ports

    lines.append(f"{INDENT}TCP (ABI >= 4): bind {tcp_ports(ll.restrict_tcp_bind, ll.bind_tcp_ports)}, connect "
                 f"{tcp_ports(ll.restrict_tcp_connect, ll.connect_tcp_ports)}; scopes (ABI >= 6): "
                 f"{', '.join(ll.scopes) or '-'}")
    return lines


def seccomp(plan: Plan) -> list[str]:
    """One line per reason: the calls it removes, their answer, why (argument rules counted)."""
    where = ", loaded inside gVisor; no user notification" if plan.backend == "gvisor" else ""
    lines = [f"seccomp (default {plan.seccomp.default_action}, foreign architectures "
             f"{plan.seccomp.bad_arch_action}{where}; action syscalls: why):"]
    grouped: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for rule in (*plan.seccomp.rules, *plan.seccomp.net_rules):
        calls = grouped[(rule.action, rule.why)]
        calls[rule.syscall] = calls.get(rule.syscall, 0) + 1
    for (action, why), calls in grouped.items():
        names = ", ".join(name + (f" ({count} argument rules)" if count > 1 else "") for name, count in calls.items())
        lines.append(f"{INDENT}{action} {names}: {why}")
    return lines


def environment(pairs: list[tuple[str, str]], plan: Plan) -> list[str]:
    lines = ["environment (nothing else is inherited):"]
    lines += [f"{INDENT}{inert(name)}={inert(value)}" for name, value in pairs]
    for secret in plan.secrets:
        ttl = units.format_duration(secret.ttl) if secret.ttl else "none"
        lines.append(f"{INDENT}secret {secret.name}: from {secret.source.partition(':')[0]}, "
                     f"as {secret.deliver_as}, ttl {ttl}")
    return lines


def settings(plan: Plan) -> list[str]:
    from sandboxctl.cli.planview import network_walls

    net, lim = plan.network, plan.limits
    return [
        f"network: {net.mode}; allow: {inert(', '.join(net.allow) or '-')}; deny: {inert(', '.join(net.deny) or '-')}; "
        f"private addresses: {'allowed' if net.allow_private else 'blocked'}",
        *[f"{INDENT}{inert(line)}" for line in network_walls(plan)],
        "limits: "
        f"timeout {units.format_duration(lim.timeout) if lim.timeout else 'none'}, "
        f"memory {units.format_size(lim.memory) + ' via ' + str(lim.memory_method) if lim.memory else 'none'}, "
        f"pids {lim.pids or 'none'}"
        f"{' via ' + str(lim.pids_method) if lim.pids else ''}, "
        f"file size {units.format_size(lim.file_size) if lim.file_size else 'none'}, "
        f"open files {lim.open_files or 'none'}",
        f"approvals: {approvals(plan)}",
        f"action log: {inert(plan.log_path)} (file events: {plan.file_events})",
        *protected_paths(plan),
        *[f"warning: {inert(w)}" for w in plan.warnings],
        *[f"note: {inert(n)}" for n in plan.notes],
        *[f"needs confirmation: {inert(c)}" for c in plan.confirmations],
    ]


def approvals(plan: Plan) -> str:
    """How escapes are answered. 'deny via tty' read as if a prompt would still come: only `ask`
    has a way to ask and a timeout."""
    if plan.approval_mode == "ask":
        return (f"ask via {plan.approval_via} "
                f"(unanswered after {units.format_duration(plan.approval_timeout)}: deny)")
    if plan.approval_mode == "deny":
        return "deny: every escape is denied at once, and logged"
    return f"{plan.approval_mode}: every escape is allowed, and logged"


def protected_paths(plan: Plan) -> list[str]:
    """The same line as the terminal view: where protections hold, and how."""
    protect = plan.protect
    if not protect.roots:
        return []
    how = ("read-only to Landlock; the supervisor performs and checks every change" if protect.mediated
           else "read-only binds over existing entries; absent ones checked at the end of the run")
    return [f"protected paths: under {', '.join(inert(r) for r in protect.roots)}: {how}; {len(protect.gitdirs)} "
            f"git directories, {len(protect.explicit)} explicit paths, {len(protect.record)} entries recorded for "
            "the end-of-run check"]


def render(plan: Plan, env: list[tuple[str, str]], argv_title: str, argv: list[str]) -> list[str]:
    """Every line of the plain form; argv is what the backend is handed (bwrap's or runsc's)."""
    lines = [*header(plan), *creations(plan), *mounts(plan), *landlock(plan), *seccomp(plan), *environment(env, plan),
             *settings(plan), argv_title, INDENT + inert(_joined(argv))]
    return lines


def _joined(argv) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)
