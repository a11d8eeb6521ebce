"""Print a Plan for humans (rich) or machines (JSON), with the bubblewrap argv it renders to."""

from __future__ import annotations

import json
import re
from collections import defaultdict

from sandboxctl import units
from sandboxctl.inert import inert
from sandboxctl.launch import bwrap
from sandboxctl.plan.model import Plan

# fds the real launch assigns dynamically; the dry-run shows placeholders in their place
DRY_FDS = bwrap.LaunchFds(seccomp=10, control=11, stderr=12, empty_file="{state}/empty")
CREDENTIAL_VALUE = re.compile(r".*(TOKEN|SECRET|KEY|PASSWORD|PASSWD|CREDENTIAL|AUTH).*", re.IGNORECASE)


def redacted_env(plan: Plan) -> list[tuple[str, str]]:
    return [(k, "***" if CREDENTIAL_VALUE.match(k) else v) for k, v in plan.env]


def gvisor_bundle(plan: Plan) -> dict:
    """What the gvisor backend would hand runsc: config.json, the runsc command line, and the
    symlinks made in the private root ({run} stands for the run's private directory)."""
    from sandboxctl.launch import oci, runsc, runsc_probe

    paths = oci.dry_paths(plan)
    path = runsc.find()
    return {
        "oci_config": oci.config(plan, paths, runsc.unmaskable(plan), runsc.one_terminal()),
        "runsc_argv": oci.runsc_argv(plan, paths, runsc=path or "runsc",
                                     platform=runsc_probe.cached_platform(path)),
        "rootfs_symlinks": [{"path": target, "to": text} for target, text in oci.rootfs_symlinks(plan)],
    }


def plan_json(plan: Plan) -> dict:
    data = plan.to_dict()
    data["env"] = dict(redacted_env(plan))
    if plan.backend == "gvisor":
        data.update(gvisor_bundle(plan))
    else:
        data["bwrap_argv"] = bwrap.render(plan, DRY_FDS)
    return data


def show(plan: Plan, as_json: bool = False, terminal: bool | None = None) -> None:
    """JSON; rich tables on a terminal; else the plain form of cli/plantext (complete, never cut)."""
    if as_json:
        print(json.dumps(plan_json(plan), indent=2))
        return
    import sys

    if not (sys.stdout.isatty() if terminal is None else terminal):
        print("\n".join(plain_lines(plan)))
        return
    from rich.table import Table

    from sandboxctl.cli.output import console

    out = console()
    out.print(f"[bold]Plan[/bold] for run {plan.run_id} — policy [bold]{shown(plan.policy)}[/bold] "
              f"({shown(plan.policy_source)}, sha256 {plan.policy_sha256[:12]}…)")
    out.print(f"command: {shown(_joined(plan.command))}   cwd: {shown(plan.cwd)}   HOME: {shown(plan.home)}")

    from sandboxctl.cli import plantext

    for line in plantext.creations(plan):
        out.print(line, markup=False, highlight=False)
    mounts = Table(title="Mounts (in order)", show_lines=False)
    for col in ("kind", "target", "source", "why"):
        mounts.add_column(col, overflow="fold")  # a path is folded, never cut
    for m in plan.mounts:
        mounts.add_row(*cells(m.kind, m.target, "" if m.source in (None, m.target) else m.source, m.reason))
    out.print(mounts)
    if plan.overlay is not None:
        from rich.text import Text

        out.print(Text(f"Workspace overlay: {inert(plan.overlay.lower)} is overlayfs' lower layer (never written) "
                       f"in bubblewrap's own mount namespace; every write lands in {inert(plan.overlay.upper)} "
                       f"(work dir {inert(plan.overlay.work)}) until `sandboxctl apply {plan.run_id}`"))

    ll = plan.landlock
    if plan.backend == "gvisor":
        out.print("[bold]Landlock[/bold]: not applied — gVisor does not implement it; the mounts above are "
                  "enforced by gVisor's kernel and its file proxy")
    else:
        rules = Table(title=f"Landlock ({'required' if ll.required else 'best-effort'}, "
                            f"minimum ABI {ll.minimum_abi})")
        rules.add_column("path", overflow="fold")
        rules.add_column("access", overflow="fold")
        for rule in ll.paths:
            rules.add_row(*cells(rule.path, ", ".join(rule.access)))
        out.print(rules)
        out.print(f"Landlock TCP (ABI ≥ 4): bind {tcp_ports(ll.restrict_tcp_bind, ll.bind_tcp_ports)}, connect "
                  f"{tcp_ports(ll.restrict_tcp_connect, ll.connect_tcp_ports)};  scopes (ABI ≥ 6): "
                  f"{', '.join(ll.scopes)}")

    grouped: dict[tuple[str, str, str], int] = defaultdict(int)
    for rule in (*plan.seccomp.rules, *plan.seccomp.net_rules):
        grouped[(rule.syscall, rule.action, rule.why)] += 1
    where = ", loaded inside gVisor; no user notification" if plan.backend == "gvisor" else ""
    sc = Table(title=f"seccomp (default {plan.seccomp.default_action}, foreign architectures: "
                     f"{plan.seccomp.bad_arch_action}{where})")
    for col in ("syscall", "action", "why"):
        sc.add_column(col, overflow="fold")
    for (name, action, why), count in grouped.items():
        sc.add_row(*cells(name + (f" ({count} argument rules)" if count > 1 else ""), action, why))
    out.print(sc)

    env = Table(title="Environment (nothing else is inherited)")
    env.add_column("name", overflow="fold")
    env.add_column("value", overflow="fold")
    for name, value in redacted_env(plan):
        env.add_row(*cells(name, value))
    out.print(env)
    for secret in plan.secrets:
        ttl = units.format_duration(secret.ttl) if secret.ttl else "none"
        hosts = f", to {inert(', '.join(secret.hosts))} only (a placeholder inside)" \
            if secret.deliver_as == "proxy" else ""
        out.print(f"secret {secret.name}: from {secret.source.partition(':')[0]}, as {secret.deliver_as}{hosts}, "
                  f"ttl {ttl}{' (an env secret cannot expire)' if secret.deliver_as == 'env' and secret.ttl else ''}",
                  markup=False)

    net = plan.network
    out.print(f"[bold]Network[/bold]: {net.mode}; allow: {shown(', '.join(net.allow) or '-')}; "
              f"deny: {shown(', '.join(net.deny) or '-')}; private addresses: "
              f"{'allowed' if net.allow_private else 'blocked'}")
    for line in network_walls(plan):  # listed socket paths come from the policy: shown inert
        out.print(f"  {inert(line)}", markup=False)
    for host, rules in net.inspect:
        what = "every request" if rules is None else (", ".join(inert(r) for r in rules) or "no request")
        out.print(f"  inspected (HTTPS terminated with the run's CA): {inert(host)}: {what}", markup=False)
    for path in net.upstream_ca:
        out.print(f"  trusted upstream CA: {inert(path)}", markup=False)
    lim = plan.limits
    out.print("[bold]Limits[/bold]: "
              f"timeout {units.format_duration(lim.timeout) if lim.timeout else 'none'}, "
              f"memory {units.format_size(lim.memory) + ' via ' + str(lim.memory_method) if lim.memory else 'none'}, "
              f"pids {lim.pids or 'none'}, file size {units.format_size(lim.file_size) if lim.file_size else 'none'}, "
              f"open files {lim.open_files or 'none'}")
    out.print(f"[bold]Approvals[/bold]: {plantext.approvals(plan)}")
    out.print(f"[bold]Action log[/bold]: {shown(plan.log_path)} (file events: {plan.file_events})")
    if plan.log_forward:
        from rich.markup import escape

        out.print(f"[bold]Log copies[/bold]: {escape(', '.join(plan.log_forward))}")
    protect = plan.protect
    if protect.roots:
        how = ("read-only to Landlock; the supervisor performs and checks every change" if protect.mediated
               else "read-only binds over existing entries; absent ones checked at the end of the run")
        from rich.text import Text

        out.print(Text.assemble(("Protected paths", "bold"), f": under {', '.join(inert(r) for r in protect.roots)} — "
                                f"{how}; {len(protect.gitdirs)} git directories, {len(protect.explicit)} explicit "
                                f"paths, {len(protect.record)} entries recorded for the end-of-run check"))
    for warning in plan.warnings:
        out.print(f"[red]warning[/red]: {shown(warning)}")
    for note in plan.notes:
        out.print(f"[yellow]note[/yellow]: {shown(note)}")
    for item in plan.confirmations:
        out.print(f"[red]needs confirmation[/red]: {shown(item)}")
    if plan.backend == "gvisor":
        bundle = gvisor_bundle(plan)
        out.print("[bold]gVisor[/bold] ({run} stands for the run's private directory, made at launch):")
        out.print(inert(_joined(bundle["runsc_argv"])), soft_wrap=True, markup=False, highlight=False)
        for link in bundle["rootfs_symlinks"]:
            out.print(f"symlink in the private root: {inert(link['path'])} -> {inert(link['to'])}", markup=False)
        out.print("[bold]OCI config.json[/bold]:")
        out.print(json.dumps(bundle["oci_config"], indent=2), soft_wrap=True, markup=False)
        return
    out.print("[bold]bubblewrap[/bold] (fds 10-12 stand for the real descriptors):")
    out.print(inert(_joined(bwrap.render(plan, DRY_FDS))), soft_wrap=True, markup=False, highlight=False)


def tcp_ports(restricted: bool, ports: tuple[int, ...]) -> str:
    if not restricted:
        return "any port"
    return f"only ports {', '.join(map(str, ports))}" if ports else "no port"


def network_walls(plan: Plan) -> list[str]:
    """Servers inside, UNIX sockets and direct connections: who answers what (README "Network walls")."""
    from sandboxctl.plan.network import describe_listen

    net = plan.network
    lines = [f"servers inside: {describe_listen(net.mode, net.listen)}"]
    if plan.backend == "gvisor":
        lines.append("UNIX sockets: "
                     + ("none of the host's (runsc --host-uds=none)" if net.mode != "proxy" else
                        "the proxy's socket, and any other host socket a granted path shows (runsc --host-uds=open)"))
        return lines
    listed = ", ".join(net.unix) if net.unix else "none listed"
    lines.append(f"UNIX sockets: {listed}; sockets bound inside are reachable, a read grant never is "
                 "(Landlock RESOLVE_UNIX on ABI ≥ 9; below, the supervisor performs every connect)")
    if net.mode != "host":
        lines.append("direct connections (anywhere but the sandbox's own loopback): denied and logged as net events")
    return lines


def plain_lines(plan: Plan) -> list[str]:
    from sandboxctl.cli import plantext

    if plan.backend == "gvisor":
        bundle = gvisor_bundle(plan)
        lines = plantext.render(plan, redacted_env(plan), "gVisor ({run} stands for the run's private directory, "
                                "made at launch):", bundle["runsc_argv"])
        lines += [f"symlink in the private root: {plantext.inert(link['path'])} -> {plantext.inert(link['to'])}"
                  for link in bundle["rootfs_symlinks"]]
        return [*lines, "OCI config.json:", json.dumps(bundle["oci_config"], indent=2)]
    return plantext.render(plan, redacted_env(plan), "bubblewrap (fds 10-12 stand for the real descriptors):",
                           bwrap.render(plan, DRY_FDS))


def _joined(argv) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in argv)


def shown(value: object) -> str:
    """A value from a policy, the command line or the host, put into rich markup: inert, and its
    brackets escaped ('[/]' in an argv raised MarkupError; '[red]' in a path coloured it)."""
    from rich.markup import escape

    return escape(inert(value))


def cells(*values: str):
    """Table cells as Text: rich reads markup in a plain string cell."""
    from rich.text import Text

    return tuple(Text(inert(v)) for v in values)
