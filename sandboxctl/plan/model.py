"""The plan of one run: plain, immutable, JSON-serialisable data with no side effects.

`--dry-run` prints it; the launcher renders it to bubblewrap arguments and the shim's
configuration; unit tests check it without launching anything. Secret *values* never enter it.
"""

from __future__ import annotations

from sandboxctl.paths import within
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


class Mount(Record):
    """One mount-tree directive, applied in order (parents before children).

    kind: ro | rw | tmpfs | mask-dir (empty read-only tmpfs) | mask-file (empty read-only file)
          | symlink (source is the link text) | proc | dev | secret-file (source secret:NAME)
          | data-file (a read-only file made at launch; source names it, e.g. tls:bundle)
    """

    kind: str
    target: str
    source: str | None = None
    reason: str = ""


class LandlockPathRule(Record):
    """Rights granted beneath a path: groups read/write/execute/ioctl_dev, mapped to the kernel's ABI."""

    path: str
    access: tuple[str, ...]


class LandlockPlan(Record):
    required: bool
    minimum_abi: int
    paths: tuple[LandlockPathRule, ...]
    restrict_tcp_bind: bool  # handle TCP bind (ABI 4): only bind_tcp_ports may be bound
    restrict_tcp_connect: bool  # handle TCP connect (ABI 4): only connect_tcp_ports may be dialled
    connect_tcp_ports: tuple[int, ...]
    bind_tcp_ports: tuple[int, ...]
    scopes: tuple[str, ...]  # signal, abstract_unix_socket


class SeccompCondition(Record):
    arg: int
    op: str  # eq | ne | lt | le | gt | ge | masked_eq
    value: int
    mask: int = 0

    def matches(self, args: list[int]) -> bool:
        """Evaluate the condition as the BPF program does (to name the rule that trapped a call)."""
        value = args[self.arg]
        if self.op == "masked_eq":
            return value & self.mask == self.value
        return {"eq": value == self.value, "ne": value != self.value, "lt": value < self.value,
                "le": value <= self.value, "gt": value > self.value, "ge": value >= self.value}[self.op]


class SeccompRule(Record):
    syscall: str
    action: str  # errno:NAME | kill_process
    why: str
    conditions: tuple[SeccompCondition, ...] = ()


class SeccompPlan(Record):
    default_action: str
    bad_arch_action: str
    rules: tuple[SeccompRule, ...]
    # Denials the supervisor answers (and logs as `syscall` events) through user notification,
    # and whether every execve/execveat is reported to it (`exec` events). The rest stays in the
    # static filter bubblewrap loads.
    trap_denials: bool = True
    notify_exec: bool = True
    file_events: str = "none"  # none | write (write-intent opens) | all (every open)
    mediate: bool = False  # trap every file-changing call for the mediator (writable host grants)
    exec_guard: bool = False  # exec.allow: memory files are made non-executable by the supervisor
    # connect/sendto/socket calls the supervisor answers (network/sockets.py): UNIX sockets only
    # when listed, direct connections denied and logged (plan/network.py says why each is there)
    net_rules: tuple[SeccompRule, ...] = ()

    def rule_for(self, syscall: str, args: list[int]) -> SeccompRule | None:
        """The trapped rule a notification for this call and these arguments came from."""
        for rule in _trapped_by_name(self).get(syscall, ()):
            if all(c.matches(args) for c in rule.conditions):
                return rule
        return None

    def trapped(self, rule: SeccompRule) -> bool:
        """ENOSYS rules are compatibility fallbacks (clone3 -> clone), not denials worth an event."""
        return self.trap_denials and rule.action.startswith("errno:") and rule.action != "errno:ENOSYS"


class ProtectPlan(Record):
    """Protected paths (SPEC principle 3), judged by protect.rules.Protection.

    Under the bubblewrap backend (mediated) the roots are read-only to Landlock and the
    supervisor performs every change beneath them after asking the rules; existing protected
    entries are also read-only binds, and the end-of-run check compares what `record` held."""

    roots: tuple[str, ...] = ()  # writable host directories (the workspace, write grants, a writable home)
    guard_roots: tuple[str, ...] = ()  # every granted directory: its protected names are never approvable
    gitdirs: tuple[str, ...] = ()  # git directories found beneath the roots (nested, submodules, bare, gitdir:)
    explicit: tuple[tuple[str, str], ...] = ()  # path -> why: hooksPath dirs, includes, symlink targets, protect:
    masked: tuple[str, ...] = ()  # filesystem.deny paths beneath the roots
    record: tuple[str, ...] = ()  # existing protected entries the end-of-run check records and compares
    absent: tuple[str, ...] = ()  # protected names absent at launch: the end-of-run check says if they appeared
    mediated: bool = False  # Landlock + the supervisor enforce it (bwrap); False: binds + the check only (gvisor)
    repositories: tuple[str, ...] = ()  # `.git` entries and bare repositories found at launch
    homes: tuple[str, ...] = ()  # writable roots that are the user's home (its start-up names too)
    json_keys: tuple[tuple[str, str], ...] = ()  # (file, key path): put back at the end (protect_json)
    ephemeral: tuple[str, ...] = ()  # writable sandbox mounts above a root (tmpfs HOME, /tmp): mediated too
    anchors: tuple[str, ...] = ()  # directories mounts hang from, in mediated areas: never moved or removed
    binds_left_out: bool = False  # past bubblewrap's option limit: Landlock and the supervisor alone hold them


class NetworkPlan(Record):
    mode: str
    allow: tuple[str, ...]
    deny: tuple[str, ...]
    allow_private: bool
    listen: bool | tuple[int, ...] = True  # network.listen as the policy says it (landlock has the ports)
    unix: tuple[str, ...] = ()  # listed UNIX socket paths (or directories), as the sandbox sees them
    # hosts read request by request: (host pattern, request rules or None for every request)
    inspect: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
    upstream_ca: tuple[str, ...] = ()  # extra CA files the proxy trusts upstream (host paths)


class LimitsPlan(Record):
    timeout: float | None
    memory: int | None
    memory_method: str | None  # cgroup | rlimit-as
    pids: int | None
    pids_method: str | None  # cgroup | rlimit | unenforced
    file_size: int | None
    open_files: int | None


class SecretPlan(Record):
    name: str
    source: str  # env:NAME / file:PATH / command:... (a reference, never the value)
    deliver_as: str  # file | env | proxy
    ttl: float | None
    hosts: tuple[str, ...] = ()  # proxy: the hosts whose requests get the value (the sandbox: a placeholder)


class OverlayPlan(Record):
    """`workspace: overlay`: the workspace (the lower layer, never written) seen through overlayfs,
    whose upper layer (every write, deletion and rename of the run) lives in the user's state dir.
    The supervisor mounts it over the workspace's own path in a private mount namespace made for
    bubblewrap (workspace/mount.py), so the plan's `rw` bind of the workspace — and every change
    the mediator performs in the sandbox's view — lands in the overlay."""

    lower: str  # the workspace on the host
    layer_dir: str  # state/workspaces/RUN: the run's own directory (meta, manifest, backups)
    upper: str
    work: str  # overlayfs' scratch dir, on the upper's file system


class Creation(Record):
    """An absent writable grant (or a parent of one) the supervisor makes before the launch."""

    path: str
    kind: str  # dir | file
    mode: int | None  # None: as mkdir(0777)/open(0666) make it under the caller's umask
    content: str = ""  # a new file's content
    reason: str = ""  # filesystem.create, or "parent of …"


class Plan(Record):
    run_id: str
    policy: str
    policy_source: str
    policy_sha256: str
    command: tuple[str, ...]
    workspace: str | None
    cwd: str
    home: str
    mounts: tuple[Mount, ...]
    landlock: LandlockPlan
    seccomp: SeccompPlan
    env: tuple[tuple[str, str], ...]
    secrets: tuple[SecretPlan, ...]
    network: NetworkPlan
    limits: LimitsPlan
    approval_mode: str
    approval_via: str
    approval_timeout: float
    log_path: str
    file_events: str
    shim_python: str
    shim_entry: str = "/run/sandboxctl/shim.py"  # what shim_python runs: the compiled shim when there is one
    warnings: tuple[str, ...] = ()  # shown on every run
    notes: tuple[str, ...] = ()  # shown by --dry-run and --verbose
    confirmations: tuple[str, ...] = ()
    # paths no approval may open for writing (sandboxctl's code, policies, state; denied paths)
    never_writable: tuple[tuple[str, str], ...] = ()
    backend: str = "bwrap"  # bwrap | gvisor (launch/oci.py renders the same plan for runsc)
    log_forward: tuple[str, ...] = ()  # copies of every record: syslog targets (log/forward.py)
    creations: tuple[Creation, ...] = ()  # made on the host before the launch (filesystem.create)
    fail_on_denial: bool = False  # ci.fail_on_denial: a successful command with denials exits 123
    protect: ProtectPlan = ProtectPlan()
    exec_loaders: tuple[str, ...] = ()  # the ELF loaders exec.allow keeps executable (never run as a command)
    noexec_mounts: tuple[str, ...] = ()  # exec.allow: writable mounts remounted noexec before the command runs
    session: str | None = None  # a session (supervise/session.py): commands come later, one by one
    overlay: OverlayPlan | None = None  # workspace: overlay

    def protection(self):
        """The rules for changes beneath the writable roots (the mediator asks them)."""
        return _protection(self.protect, self.protect.roots)

    def guard(self):
        """The rules for approvals: protected names under any grant (read-only ones too) are
        never approvable."""
        return _protection(self.protect, self.protect.guard_roots or self.protect.roots)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    @property
    def inspecting(self) -> bool:
        """The proxy terminates TLS for some hosts (network.inspect, or the hosts of a proxy secret)."""
        return self.network.mode == "proxy" and (bool(self.network.inspect)
                                                 or any(s.deliver_as == "proxy" for s in self.secrets))

    def judge_write(self, path: str) -> tuple[bool, str]:
        """Is this path (as the sandbox sees it) in the writable set? The deepest mount holding it
        decides; the answer names the mount, for the file event and the denial table."""
        verdict = self.write_verdict(path)
        return verdict.inside, verdict.rule

    def write_verdict(self, path: str) -> WriteVerdict:
        """judge_write, plus where an approved write would land on the host. Only a path under a
        read-only bind of a real host path can be approved: masks, placeholders, the shim's own
        files and whatever the supervisor relies on (never_writable) are refused outright."""
        holder = None
        for mount in self.mounts:
            if mount.kind != "symlink" and within(path, mount.target) and (
                    holder is None or len(mount.target) >= len(holder.target)):
                holder = mount
        if holder is not None and holder.kind in ("rw", "tmpfs", "dev", "proc"):
            return WriteVerdict(True, f"{holder.reason or holder.kind} ({holder.kind} {holder.target})")
        where = f"{holder.kind} {holder.target}: {holder.reason}" if holder else "not granted"
        rule = f"outside the writable set ({where})"
        for guarded, why in self.never_writable:
            if within(path, guarded) or (set("*?[") & set(guarded) and _matches(path, guarded)):
                return WriteVerdict(False, f"{rule}; never approvable: {why}")
        protected = self.guard().reason(path)
        if protected:
            return WriteVerdict(False, f"{rule}; never approvable: {protected}")
        source = holder.source if holder is not None else None
        if holder is None or holder.kind != "ro" or not source or not source.startswith("/"):
            return WriteVerdict(False, f"{rule}; not approvable: no host file behind it")
        relative = "" if path == holder.target else path[len(holder.target.rstrip("/")) + 1:]
        return WriteVerdict(False, rule, source, relative)


class WriteVerdict(Record):
    inside: bool  # in the writable set: the kernel may go on (mounts and Landlock still decide)
    rule: str
    host_source: str | None = None  # an approvable escape: the host path of the read-only bind...
    relative: str = ""  # ...and the rest of the path beneath it

    @property
    def approvable(self) -> bool:
        return self.host_source is not None

    @property
    def host_path(self) -> str | None:
        if self.host_source is None:
            return None
        return f"{self.host_source.rstrip('/')}/{self.relative}" if self.relative else self.host_source


_by_name: dict[int, tuple[SeccompPlan, dict[str, list[SeccompRule]]]] = {}


def _trapped_by_name(plan: SeccompPlan) -> dict[str, list[SeccompRule]]:
    """The trapped rules by syscall, built once per plan (asked on every notification)."""
    known = _by_name.get(id(plan))
    if known and known[0] is plan:
        return known[1]
    table: dict[str, list[SeccompRule]] = {}
    for rule in plan.rules:
        if plan.trapped(rule):
            table.setdefault(rule.syscall, []).append(rule)
    _by_name[id(plan)] = (plan, table)
    return table


_protections: dict[tuple[int, int], tuple[ProtectPlan, Any]] = {}


def _protection(protect: ProtectPlan, roots: tuple[str, ...]):
    """One Protection per plan and root set (built on first use; plans are immutable)."""
    key = (id(protect), id(roots))
    known = _protections.get(key)
    if known and known[0] is protect:
        return known[1]
    from sandboxctl.protect.rules import Protection

    value = Protection(roots, protect.gitdirs, dict(protect.explicit), protect.masked, protect.anchors,
                       protect.homes)
    _protections[key] = (protect, value)
    return value


def _matches(path: str, pattern: str) -> bool:
    """A glob deny entry covers what it matches and everything beneath."""
    from sandboxctl.lazyre import fnmatchcase

    if "/**/" in pattern and _matches(path, pattern.replace("/**/", "/", 1)):
        return True  # DIR/**/NAME: NAME at any depth, DIR/NAME included
    return fnmatchcase(path, pattern) or fnmatchcase(path, pattern.rstrip("/") + "/*")


def _plain(value: Any) -> Any:
    """Records -> dicts, tuples -> lists, all the way down (for JSON)."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
