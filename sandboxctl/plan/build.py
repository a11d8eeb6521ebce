"""Build the Plan from a Policy, an Invocation and HostFacts. Pure: no I/O beyond the facts given."""

from __future__ import annotations

import os

from sandboxctl import lazyre, paths, units
from sandboxctl.errors import SandboxError
from sandboxctl.network.clientenv import (  # noqa: F401 - CA_BUNDLE_VARIABLES, LOOPBACK_NAMES: named here too
    CA_BUNDLE_VARIABLES,
    LOOPBACK_NAMES,
    ca_variables,
    proxy_variables,
)
from sandboxctl.paths import within
from sandboxctl.plan import mount_limits, syscalls
from sandboxctl.plan import network as netwalls
from sandboxctl.plan.create import creations_for, overlay_kind
from sandboxctl.plan.inputs import HostFacts, Invocation
from sandboxctl.plan.landlock import LandlockPlanner
from sandboxctl.plan.layout import (  # noqa: F401 - named here too: build is where the rest of sandboxctl finds them
    GVISOR_INIT,
    GVISOR_NATIVE_MACHINES,
    PROXY_PORT,
    SECRETS_DIR,
    SESSION_SERVER,
    SHIM_DIR,
    SHIM_ENTRY,
    SYSTEM_CA_BUNDLES,
    TLS_BUNDLE,
    TLS_CA,
    TLS_DIR,
    gvisor_native_launcher,
)
from sandboxctl.plan.model import (
    LimitsPlan,
    Mount,
    NetworkPlan,
    OverlayPlan,
    Plan,
    SeccompPlan,
    SecretPlan,
)
from sandboxctl.plan.mounts import MountPlanner
from sandboxctl.policy.model import Policy

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Looks like a credential: never passed by a glob, only when named exactly. (Text: `re` compiles
# it on first use, when a glob matches a variable, rather than every run at import.)
CREDENTIAL_LIKE = (r"(?i).*(_TOKEN|_SECRET|_KEY|PASSWORD|PASSWD|_CREDENTIALS?|_AUTH)$"
                   r"|^(AWS|GITHUB|GH|AZURE|GOOGLE|GCP)_.*")
_CREDENTIAL_ENDS = ("_TOKEN", "_SECRET", "_KEY", "PASSWORD", "PASSWD", "_CREDENTIAL", "_CREDENTIALS", "_AUTH")
_CREDENTIAL_STARTS = ("AWS_", "GITHUB_", "GH_", "AZURE_", "GOOGLE_", "GCP_")


def credential_like(name: str) -> bool:
    """re.match(CREDENTIAL_LIKE, name). An ASCII name without a newline by comparing its upper case
    (IGNORECASE matches nothing but ASCII case there, `.` anything, `$` only the end); re for others."""
    if name.isascii() and "\n" not in name:
        upper = name.upper()
        return upper.endswith(_CREDENTIAL_ENDS) or upper.startswith(_CREDENTIAL_STARTS)
    import re

    return re.match(CREDENTIAL_LIKE, name) is not None

LAYERS_DIR = "workspaces"  # state/workspaces/RUN: an overlay run's layer (workspace/layer.py)


class _Planner(MountPlanner, LandlockPlanner):
    """One plan's making: its state (the inputs, notes, warnings, confirmations) and the parts of
    the plan that are not the mount tree (mounts.py) or Landlock's rules (landlock.py)."""

    def __init__(self, policy: Policy, inv: Invocation, facts: HostFacts):
        self.policy = policy
        self.inv = inv
        self.facts = facts
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.confirmations: list[str] = []
        self.workspace_mode = inv.workspace_mode or policy.workspace
        self.workspace = inv.workspace if self.workspace_mode != "none" else None
        self.backend = inv.backend or policy.backend
        self.gvisor = self.backend == "gvisor"
        self.unix_paths: list[str] = []  # network.unix, expanded and present (set with the mounts)

    def expand(self, path: str) -> str:
        return paths.expand(path, workspace=self.inv.workspace, home=self.facts.home,
                            state=self.facts.state_dir)

    @property
    def inspecting(self) -> bool:
        return self.network_mode() == "proxy" and (bool(self.policy.network.inspect) or bool(self.proxy_secrets))

    @property
    def proxy_secrets(self) -> list:
        return [s for s in self.policy.secrets if s.deliver_as == "proxy"]

    def policy_files(self) -> list[str]:
        return [c for c in self.policy.chain if not c.startswith("builtin:")]

    # ---------------------------------------------------------------- overlay
    def overlay(self) -> OverlayPlan | None:
        """Where an overlay run's layer lives: its own directory in the state dir, which every
        sandbox has masked (so the layer changes only through the overlay)."""
        if self.workspace_mode != "overlay" or not self.workspace:
            return None
        if self.gvisor:
            raise SandboxError("workspace: overlay is not available under gVisor: gVisor's own overlay (runsc "
                               "--overlay2) keeps a run's writes in a file store of its own, which `sandboxctl "
                               "changes` and `apply` cannot read",
                               "use the bubblewrap backend (--backend bwrap) for overlay workspaces")
        if self.policy.workspace == "none":
            self.confirmations.append("--overlay shows the workspace, which the policy keeps out (workspace: none)")
        state = self.facts.realpath(self.facts.state_dir)
        if within(state, self.workspace) or within(self.workspace, state):
            raise SandboxError(f"the workspace {self.workspace} and sandboxctl's state dir {state} overlap: an "
                               "overlay's layer cannot lie inside the directory it covers",
                               "run from a project directory, or set XDG_STATE_HOME outside the workspace")
        layer = os.path.join(state, LAYERS_DIR, self.inv.run_id)
        return OverlayPlan(lower=self.workspace, layer_dir=layer, upper=f"{layer}/upper", work=f"{layer}/work")

    # ---------------------------------------------------------------- the rest
    def network_mode(self) -> str:
        if self.inv.net:
            return self.inv.net
        if self.inv.allow_net and self.policy.network.mode == "none":
            return "proxy"
        return self.policy.network.mode

    def network(self) -> NetworkPlan:
        mode = self.network_mode()
        if mode == "host" and self.gvisor:
            raise SandboxError("network: host is not available under gVisor: rootless runsc cannot share the "
                               "host's network (its host network stack answers 'network unreachable')",
                               "use network: proxy with an allowlist, or the bubblewrap backend (--backend bwrap)")
        if mode == "host":
            self.confirmations.append("network: host shares the host's whole network with the command")
        extra = tuple(str(units.parse_host_pattern(h)) for h in self.inv.allow_net)
        if extra:
            self.confirmations.append(f"--allow-net {', '.join(extra)} widens the network allowlist")
        net = self.policy.network
        for secret in self.proxy_secrets:
            if mode != "proxy":
                raise SandboxError(f"secrets.{secret.name}: as: proxy needs network mode proxy (the proxy puts the "
                                   f"value into requests), and this run's network is {mode}",
                                   "use network.mode: proxy (or --net proxy), or deliver the secret as: file")
        if net.inspect and mode == "host":
            self.notes.append("network.inspect has no effect under network: host (no proxy reads the traffic)")
        upstream_ca = tuple(self.expand(p) for p in net.upstream_ca)
        for path in upstream_ca if self.inspecting else ():
            if self.facts.kind(path) not in ("file", "symlink"):
                raise SandboxError(f"network.upstream_ca: {path} is not a file",
                                   "name a PEM file of CA certificates the proxy should trust upstream")
        allow = tuple(str(h) for h in net.allow) + extra
        if self.inspecting:
            patterns = [units.parse_host_pattern(h) for h in allow]
            wanted = [host for host, _ in net.inspect] + [h for s in self.proxy_secrets for h in s.hosts]
            for host in dict.fromkeys(wanted):
                if not _listed(units.parse_host_pattern(host), patterns):
                    self.notes.append(f"{host} is inspected but not in network.allow: connecting to it needs an "
                                      "approval")
        return NetworkPlan(
            mode=mode,
            allow=allow,
            deny=tuple(str(h) for h in net.deny),
            allow_private=net.allow_private,
            inspect=net.inspect if mode == "proxy" else (),
            upstream_ca=upstream_ca if self.inspecting else (),
            listen=net.listen,
            unix=tuple(self.unix_paths),
        )

    def environment(self) -> tuple[tuple[str, str], ...]:
        caller = self.facts.caller_env
        env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOME": self.facts.home,
                               "USER": self.facts.user, "LOGNAME": self.facts.user}
        if self.facts.interactive and "TERM" in caller:
            env["TERM"] = caller["TERM"]
        skipped: list[str] = []
        for pattern in self.policy.env.passthrough:
            if pattern.endswith("*"):
                for name in sorted(caller):
                    if lazyre.fnmatchcase(name, pattern):
                        if credential_like(name):
                            skipped.append(name)
                        else:
                            env[name] = caller[name]
            elif pattern in caller:
                env[pattern] = caller[pattern]
        skipped = [name for name in skipped if name not in self.policy.env.passthrough]  # named: passed
        if skipped:
            self.warnings.append("not passed (look like credentials; name them exactly to pass): "
                              + ", ".join(sorted(set(skipped))))
        env.update(dict(self.policy.env.set))
        for item in self.inv.env:
            name, sep, value = item.partition("=")
            if sep:
                env[name] = value
            elif name in caller:
                env[name] = caller[name]
            else:
                self.notes.append(f"--env {name}: not set in the caller's environment")
        for secret in self.policy.secrets:
            if secret.deliver_as == "file":
                env[f"{secret.name}_FILE"] = f"{SECRETS_DIR}/{secret.name}"
            elif secret.deliver_as == "proxy":
                self.notes.append(f"secrets.{secret.name}: ${secret.name} holds a per-run placeholder; the proxy "
                                  f"puts the real value into requests to {', '.join(secret.hosts)} only")
            env.pop(secret.name, None)  # the value (or placeholder) arrives at launch, never through the plan
        if self.inspecting:
            env.update(ca_variables(TLS_BUNDLE, TLS_CA))
        if self.network_mode() == "proxy":
            # the loopback inside is the sandbox's own (servers of a test suite: network.listen), and
            # the proxy would refuse it anyway (loopback is private on the host) — unless the policy
            # names the host's loopback: then 127.0.0.1 goes to the proxy, which may reach it
            allowed = [h.host for h in self.policy.network.allow] + [h.partition(":")[0] for h in self.inv.allow_net]
            host_loopback = netwalls.names_host_loopback(allowed)
            if host_loopback:
                self.notes.append("network.allow names the host's loopback: HTTP clients send 127.0.0.1 and localhost "
                                  "to the proxy (NO_PROXY is empty), so servers inside the sandbox are reached only "
                                  "by programs that ignore the proxy variables")
            env.update(proxy_variables("127.0.0.1", PROXY_PORT, "" if host_loopback else LOOPBACK_NAMES))
        env["SANDBOXCTL"] = "1"
        env["SANDBOXCTL_RUN"] = self.inv.run_id
        for name, value in env.items():  # execve cannot pass one: the launcher would fail after the go
            if "\0" in name or "\0" in value:
                raise SandboxError(f"environment variable {name.partition(chr(0))[0]!r} contains a NUL byte",
                                   "remove it: no program can receive one (env.set, --env, the library's env=)")
        return tuple(sorted(env.items()))

    def log_path(self) -> str:
        return self.expand(self.inv.log_path or self.policy.log.path)

    def limits(self) -> LimitsPlan:
        lim = self.policy.limits
        memory = self.inv.memory or lim.memory
        if self.gvisor:
            # rlimits set on the OCI process, enforced by gVisor's kernel: RLIMIT_NPROC binds uid 0
            # there too (measured), so the pids limit holds even for root; no cgroup (runsc runs
            # with --ignore-cgroups: its own cgroups would outlive a killed run and need root)
            return LimitsPlan(timeout=self.inv.timeout or lim.timeout, memory=memory,
                              memory_method=None if memory is None else "rlimit-as", pids=lim.pids,
                              pids_method="rlimit" if lim.pids else None, file_size=lim.file_size,
                              open_files=lim.open_files)
        cgroup = self.facts.cgroup is not None
        pids_method = None
        if lim.pids:
            # the kernel never applies RLIMIT_NPROC to uid 0, so root needs a cgroup for it
            pids_method = "cgroup" if cgroup else ("unenforced" if self.facts.uid == 0 else "rlimit")
            if pids_method == "unenforced":
                self.warnings.append(f"limits.pids {lim.pids} is not enforced: running as root with no "
                                     "writable cgroup, and the kernel ignores RLIMIT_NPROC for root")
        return LimitsPlan(
            timeout=self.inv.timeout or lim.timeout,
            memory=memory,
            memory_method=None if memory is None else ("cgroup" if cgroup else "rlimit-as"),
            pids=lim.pids,
            pids_method=pids_method,
            file_size=lim.file_size,
            open_files=lim.open_files,
        )

    def never_writable(self) -> tuple[tuple[str, str], ...]:
        """What no approval may open for writing, whatever mount shows it: the next run's
        supervisor code and policies, sandboxctl's state (trust, grants, log), denied paths."""
        guarded = [(self.facts.state_dir, "sandboxctl state: trust store, remembered approvals, log"),
                   (os.path.dirname(self.log_path()), "the action log's directory"),
                   *[(p, "sandboxctl's own code and policies") for p in self.facts.protected_code],
                   *[(self.expand(f), "the policy in use") for f in self.policy_files()],
                   *[(p, "filesystem.deny") for p in self.denied_paths],
                   # absent ones too (an approval must not create ~/.ssh/authorized_keys), globs as patterns
                   *[(self.expand(p), "filesystem.deny") for p in self.policy.filesystem.deny]]
        if self.facts.runtime_dir:
            guarded.append((self.facts.runtime_dir, "sandboxctl's approval sockets"))
        guarded += [(p, "sandboxctl runtime dir: gvisor bundles and file secrets") for p in self.facts.runtime_dirs]
        if self.workspace_mode == "overlay" and self.workspace:
            # an approved open is made on the host, beneath the overlay: never in an overlay workspace
            guarded.append((self.workspace, "an overlay workspace: its writes are held in the run's layer"))
        return tuple(dict.fromkeys(guarded))

    def approval_mode(self) -> str:
        if self.inv.approve:
            return self.inv.approve
        mode = self.policy.approval.mode
        if mode == "ask" and (self.facts.ci or not self.facts.interactive):
            return "deny"
        return mode

    def seccomp(self) -> SeccompPlan:
        if self.policy.syscalls_allow:
            self.confirmations.append(
                "syscalls.allow takes out of the seccomp baseline: " + ", ".join(self.policy.syscalls_allow))
        rules = syscalls.apply_policy(syscalls.baseline_rules(), self.policy.syscalls_deny,
                                      self.policy.syscalls_allow)
        if self.gvisor:
            # one static filter, loaded inside gVisor by its launcher: gVisor implements seccomp-bpf
            # for the sandboxed program but not user notification (NEW_LISTENER answers EINVAL)
            return SeccompPlan("allow", "kill_process", tuple(rules), trap_denials=False, notify_exec=False,
                               file_events="none")
        trapped_opens = self.policy.log.file_events
        mediate = self.protect.mediated
        if trapped_opens == "none" and (self.approval_mode() != "deny" or mediate or self.policy.log.exec_events):
            # a write outside the writable set must reach the approval broker; one beneath a
            # writable host grant must reach the supervisor, which alone may perform it; and exec
            # records rely on write opens of /proc/PID/mem being refused (supervise/exec_events.py)
            trapped_opens = "write"
        return SeccompPlan("allow", "kill_process", tuple(rules), trap_denials=True,
                           notify_exec=self.policy.log.exec_events, file_events=trapped_opens, mediate=mediate,
                           exec_guard=self.policy.exec_allow is not None,
                           net_rules=netwalls.trap_rules(self.network_mode()))

    def noexec_mounts(self, mounts: list[Mount]) -> tuple[str, ...]:
        """Under exec.allow, every writable mount (and /dev) that holds no allowed path becomes
        noexec: Landlock checks execve only, while a noexec mount also refuses mmap(PROT_EXEC),
        so LD_PRELOAD, dlopen and the ELF loader cannot run what the command wrote."""
        if self.policy.exec_allow is None or self.gvisor:
            return ()
        allowed = [self.expand(p) for p in self.policy.exec_allow]
        targets = [m.target for m in mounts if m.kind in ("tmpfs", "rw", "dev")]

        def deepest(path: str) -> str | None:
            holders = [t for t in targets if within(path, t)]
            return max(holders, key=len) if holders else None

        keep = {deepest(path) for path in allowed}
        return tuple(t for t in targets if t not in keep)

    def cwd(self) -> str:
        return self.inv.workspace if self.workspace else self.facts.home


GVISOR_WARNING = ("gvisor backend: Landlock is not applied (gVisor does not implement it; the file-system grants "
                  "rest on gVisor's kernel and its file proxy), and there are no exec, file or syscall events and "
                  "no file-write approvals (gVisor has no seccomp user notification)")


def build_plan(policy: Policy, invocation: Invocation, facts: HostFacts) -> Plan:
    if not invocation.command and not invocation.session:
        raise SandboxError("no command given", "usage: sandboxctl run [OPTIONS] -- COMMAND [ARG...]")
    creations = creations_for(policy, invocation, facts)
    if creations:  # plan the mounts for the host as it will be once they are made
        facts = facts._replace(kind=overlay_kind(facts.kind, creations))
    planner = _Planner(policy, invocation, facts)
    if planner.backend not in ("bwrap", "gvisor"):
        raise SandboxError(f"unknown backend {planner.backend!r}", "use bwrap or gvisor")
    if invocation.session and planner.gvisor:
        raise SandboxError("sessions need the bubblewrap backend: nothing can be handed out of gVisor to start "
                           "commands in a running sandbox", "use --backend bwrap for the session")
    if planner.workspace == "/":
        raise SandboxError("refusing to use / as the workspace", "run from a project directory or pass -w DIR")
    log_dir = os.path.dirname(planner.log_path())
    if planner.workspace and within(planner.workspace, log_dir):
        # the log's directory is hidden inside the sandbox: it would hide the whole workspace
        raise SandboxError(f"the action log's directory {log_dir} holds the workspace, and is hidden in the sandbox",
                           "put the log in a directory of its own, e.g. --log ~/.local/state/sandboxctl/actions.jsonl")
    overlay = planner.overlay()
    mounts = planner.build_mounts()
    mounts = mount_limits.reachable_guards(mounts, facts.closed_to_sandbox, planner.notes)
    mount_limits.masks_cover_every_spelling(mounts, facts.spelt_otherwise)
    if not planner.gvisor:
        kept = mount_limits.within_bwrap_limit(mounts, planner.protect, planner.policy.landlock, planner.notes)
        if len(kept) < len(mounts):  # the protected binds were left out: Landlock must refuse truncation
            planner.protect = planner.protect._replace(binds_left_out=True)
        mounts = kept
    network = planner.network()
    landlock = planner.landlock(mounts)
    seccomp = planner.seccomp()
    env = planner.environment()
    if planner.gvisor:
        planner.warnings.insert(0, GVISOR_WARNING)
    return Plan(
        run_id=invocation.run_id,
        policy=policy.name,
        policy_source=policy.source,
        policy_sha256=policy.sha256,
        command=tuple(invocation.command),
        workspace=planner.workspace,
        cwd=planner.cwd(),
        home=facts.home,
        mounts=tuple(mounts),
        landlock=landlock,
        seccomp=seccomp,
        env=env,
        secrets=tuple(SecretPlan(s.name, s.source, s.deliver_as, s.ttl, s.hosts) for s in policy.secrets),
        network=network,
        limits=planner.limits(),
        approval_mode=planner.approval_mode(),
        approval_via=policy.approval.via,
        approval_timeout=policy.approval.timeout,
        log_path=planner.log_path(),
        log_forward=tuple(dict.fromkeys(policy.log.forward)),
        file_events="none" if planner.gvisor else policy.log.file_events,
        shim_python=facts.shim_python,
        shim_entry=SHIM_ENTRY if facts.shim_code and not planner.gvisor else f"{SHIM_DIR}/shim.py",
        warnings=tuple(planner.warnings),
        notes=tuple(planner.notes),
        confirmations=tuple(dict.fromkeys(planner.confirmations)),
        never_writable=planner.never_writable(),
        backend=planner.backend,
        creations=creations,
        fail_on_denial=invocation.fail_on_denial or policy.ci.fail_on_denial,
        overlay=overlay,
        protect=planner.protect,
        exec_loaders=tuple(facts.elf_loaders) if policy.exec_allow is not None else (),
        noexec_mounts=planner.noexec_mounts(mounts),
        session=invocation.session,
    )


def _listed(pattern: units.HostPattern, allow: list[units.HostPattern]) -> bool:
    """Does some allow entry cover every destination pattern covers (roughly: for a note only)?"""
    host = pattern.host[2:] if pattern.wildcard else pattern.host
    port = pattern.port or 443
    return any(rule.matches(host if not pattern.wildcard else "x." + host, port) for rule in allow)
