"""Build the Plan from a Policy, an Invocation and HostFacts. Pure: no I/O beyond the facts given."""

from __future__ import annotations

import fnmatch
import functools
import os
import re

from sandboxctl import paths, units
from sandboxctl.errors import SandboxError
from sandboxctl.network.clientenv import (  # noqa: F401 - CA_BUNDLE_VARIABLES, LOOPBACK_NAMES: named here too
    CA_BUNDLE_VARIABLES,
    LOOPBACK_NAMES,
    ca_variables,
    proxy_variables,
)
from sandboxctl.plan import mount_limits, syscalls
from sandboxctl.plan import network as netwalls
from sandboxctl.plan.create import creations_for, overlay_kind
from sandboxctl.plan.inputs import HostFacts, Invocation
from sandboxctl.plan.model import (
    LandlockPathRule,
    LandlockPlan,
    LimitsPlan,
    Mount,
    NetworkPlan,
    OverlayPlan,
    Plan,
    SeccompPlan,
    SecretPlan,
)
from sandboxctl.policy.model import Policy

SHIM_DIR = "/run/sandboxctl"
SHIM_ENTRY = f"{SHIM_DIR}/shim.pyc"  # launch/shim_code.py: the shim as the bubblewrap backend runs it
SESSION_SERVER = f"{SHIM_DIR}/session_server.py"  # a session's in-sandbox server (launch/session_server.py)
GVISOR_INIT = f"{SHIM_DIR}/init.py"  # the gvisor backend's in-sandbox launcher
GVISOR_NATIVE_MACHINES = ("x86_64",)  # launch/gvisor_exec.py: the launcher without python3 inside gVisor
SECRETS_DIR = "/run/secrets"
PROXY_PORT = 3128
TLS_DIR = f"{SHIM_DIR}/tls"  # the run's CA and the combined bundle, made at launch (network/certs.py)
TLS_BUNDLE = f"{TLS_DIR}/ca-bundle.pem"  # the run's CA followed by the system's
TLS_CA = f"{TLS_DIR}/run-ca.pem"  # the run's CA alone
# The system bundles the combined one replaces inside (where the host has them).
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Looks like a credential: never passed by a glob, only when named exactly. (Text: `re` compiles
# it on first use, when a glob matches a variable, rather than every run at import.)
CREDENTIAL_LIKE = (r"(?i).*(_TOKEN|_SECRET|_KEY|PASSWORD|PASSWD|_CREDENTIALS?|_AUTH)$"
                   r"|^(AWS|GITHUB|GH|AZURE|GOOGLE|GCP)_.*")

_STRENGTH = {"ro": 0, "tmpfs": 1, "rw": 2}
LAYERS_DIR = "workspaces"  # state/workspaces/RUN: an overlay run's layer (workspace/layer.py)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


class _Planner:
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

    # ---------------------------------------------------------------- mounts
    def grants(self) -> dict[str, tuple[str, str]]:
        """target -> (kind, reason): the strongest grant wins when one path is listed twice."""
        fs = self.policy.filesystem
        wanted: list[tuple[str, str, str, bool]] = []  # (path, kind, reason, from_cli)
        wanted += [(p, "ro", "filesystem.read", False) for p in fs.read]
        wanted += [(p, "rw", "filesystem.write", False) for p in fs.write]
        wanted += [(p, "tmpfs", "filesystem.tmpfs", False) for p in fs.tmpfs]
        if self.workspace_mode in ("rw", "ro"):
            wanted.append((self.inv.workspace, self.workspace_mode, "workspace", False))
        elif self.workspace_mode == "overlay":
            # a writable grant like rw (the same protections, mediated in the sandbox's own view),
            # whose writes land in the overlay mounted over this path (workspace/mount.py)
            wanted.append((self.inv.workspace, "rw", "workspace (overlay: writes held until `sandboxctl apply`)",
                           False))
        wanted += [(p, "ro", "--allow-read", True) for p in self.inv.allow_read]
        wanted += [(p, "rw", "--allow-write", True) for p in self.inv.allow_write]
        denied = self.denied_paths
        result: dict[str, tuple[str, str]] = {}
        absent: list[str] = []  # writable grants that do not exist: all named in one error
        for raw, kind, reason, from_cli in wanted:
            target = self.expand(raw)
            under_deny = [d for d in denied if _within(target, d)]
            if under_deny and not from_cli:
                self.notes.append(f"{reason} {target}: not mounted, it lies under denied {under_deny[0]}")
                continue
            if under_deny:
                self.confirmations.append(f"{reason} {target} opens a path the policy denies ({under_deny[0]})")
            if from_cli and kind == "rw" and not (self.workspace and _within(target, self.inv.workspace)):
                self.confirmations.append(f"--allow-write {target} is outside the workspace")
            present = self.facts.kind(target)
            if present == "missing" and kind in ("ro", "rw"):
                if kind == "rw":
                    absent.append(f"{reason} {target}")
                else:
                    self.notes.append(f"{reason} {target}: absent on this host, skipped")
                continue
            if target == "/" and kind != "ro":
                raise SandboxError("refusing to make / writable inside the sandbox",
                                   "grant the directories the command needs instead")
            old = result.get(target)
            if old is None or _STRENGTH[kind] >= _STRENGTH[old[0]]:
                result[target] = (kind, reason)
        if absent:
            raise SandboxError(("these writable grants do not exist: " if len(absent) > 1 else "")
                               + "; ".join(absent) + (" does not exist" if len(absent) == 1 else ""),
                               "create them first, list them under filesystem.tmpfs, or under filesystem.create "
                               "for sandboxctl to make them before the run")
        return result

    @functools.cached_property
    def denied_paths(self) -> list[str]:
        """Existing paths the deny list names (globs expanded): read from the host once per plan.
        DIR/**/NAME patterns under the workspace come from the workspace's index (any depth)."""
        found: list[str] = []
        for raw in self.policy.filesystem.deny:
            pattern = self.expand(raw)
            if pattern.endswith("/**") and "*" not in pattern[:-3]:
                pattern = pattern[:-3]  # DIR/**: the directory and everything beneath it
            if "/**/" in pattern:
                prefix, _, name = pattern.partition("/**/")
                if self.workspace and _within(prefix, self.workspace):
                    index = self.tree(self.workspace)
                else:
                    index = self.facts.tree(prefix, (name,), True)
                matches = [m for m in index.matches if _within(m, prefix)
                           and fnmatch.fnmatchcase(os.path.basename(m), name)]
            else:
                matches = self.facts.glob(pattern) if set("*?[") & set(pattern) else [pattern]
            found += [m for m in matches if self.facts.kind(m) != "missing"]
        return sorted(set(found))

    def tree(self, root: str):
        """The index of a writable root (its whole tree: repositories anywhere in a writable home
        keep their protections too), with the names the deny list masks at any depth (for the
        workspace); one walk per root and plan, cached by directory ctime across runs."""
        cache = self.__dict__.setdefault("_trees", {})
        if root not in cache:
            patterns = tuple(sorted({self.expand(raw).partition("/**/")[2] for raw in self.policy.filesystem.deny
                                     if "/**/" in raw})) if root == self.workspace else ()
            index = self.facts.tree(root, patterns, True)
            if not index.complete:
                raise SandboxError(f"{root} holds more than {index.directories} directories: too many to find its "
                                   "repositories and masked files", "narrow the workspace or the writable grant")
            cache[root] = index
        return cache[root]

    def build_mounts(self) -> list[Mount]:
        grants = self.grants()
        self.grant_kinds = grants
        mounts: list[Mount] = [Mount("proc", "/proc", reason="fresh /proc for the sandbox's PID namespace"),
                               Mount("dev", "/dev", reason="minimal /dev: null, zero, random, tty, pts")]
        home = self.facts.home
        if home not in grants:
            mounts.append(Mount("tmpfs", home, reason="HOME: private and empty unless granted"))
        for target in sorted(grants, key=lambda t: (_depth(t), t)):
            kind, reason = grants[target]
            parent = self.covering(target, grants, strict=True)
            if kind == "ro" and parent and grants[parent][0] == "ro":
                continue  # already visible read-only through its parent
            if (self.facts.kind(target) == "symlink" and kind == "ro"
                    and self.covering(self.facts.realpath(target), grants)):
                mounts.append(Mount("symlink", target, self.facts.readlink(target), reason))
                continue
            if kind == "tmpfs" and self.facts.kind(target) == "missing" and parent and grants[parent][0] == "ro":
                self.notes.append(f"{reason} {target}: skipped, it does not exist under read-only {parent}")
                continue
            source = target if kind != "tmpfs" else None
            mounts.append(Mount(kind, target, source, reason))
        # host content shows only through binds; a tmpfs shows nothing of the host
        visible = {m.target: m.kind for m in mounts if m.kind in ("ro", "rw")}
        from sandboxctl.plan.protections import ProtectionPlanner

        protected, self.protect = ProtectionPlanner(self).build(visible)
        mounts += self.masks(visible) + protected
        mounts += self.unix_socket_mounts(mounts)
        mounts += self.runtime_mounts(visible)
        file_secrets = [s for s in self.policy.secrets if s.deliver_as == "file"]
        if file_secrets:
            mounts.append(Mount("tmpfs", SECRETS_DIR, reason="secrets: private, gone with the sandbox"))
            mounts += [Mount("secret-file", f"{SECRETS_DIR}/{s.name}", f"secret:{s.name}",
                             f"secrets.{s.name} (mode 0400)") for s in file_secrets]
        mounts += self.tls_mounts(visible)
        if self.protect.mediated:
            self.protect = _anchor(self.protect, mounts)
        order = {"proc": 0, "dev": 0, "tmpfs": 1, "ro": 1, "rw": 1, "symlink": 1,
                 "mask-dir": 2, "mask-file": 2, "secret-file": 3, "data-file": 3}
        return sorted(mounts, key=lambda m: (_depth(m.target), order.get(m.kind, 1)))

    @property
    def inspecting(self) -> bool:
        return self.network_mode() == "proxy" and (bool(self.policy.network.inspect) or bool(self.proxy_secrets))

    @property
    def proxy_secrets(self) -> list:
        return [s for s in self.policy.secrets if s.deliver_as == "proxy"]

    def tls_mounts(self, visible: dict[str, str]) -> list[Mount]:
        """The run's CA for the sandbox to trust: its own files, and the combined bundle over each system
        bundle the sandbox can see (a symlink's target instead of the link: a mount follows it)."""
        if not self.inspecting:
            return []
        reason = "the run's CA (network.inspect): made at launch, its key stays in the supervisor"
        result = [Mount("data-file", TLS_CA, "tls:ca", reason),
                  Mount("data-file", TLS_BUNDLE, "tls:bundle", reason + "; followed by the system's CAs")]
        done: set[str] = set()
        for path in SYSTEM_CA_BUNDLES:
            target = self.facts.realpath(path) if self.facts.kind(path) == "symlink" else path
            if target in done or self.facts.kind(target) != "file" or not self.covering(target, visible):
                continue
            if any(_within(target, d) for d in self.denied_paths):
                continue
            done.add(target)
            result.append(Mount("data-file", target, "tls:bundle",
                                "the system CA bundle with the run's CA added (network.inspect)"))
        return result

    def covering(self, path: str, grants: dict, strict: bool = False) -> str | None:
        holders = [t for t in grants if _within(path, t) and not (strict and t == path)]
        return max(holders, key=len) if holders else None

    def masks(self, visible: dict[str, str]) -> list[Mount]:
        result = []
        for path in self.denied_paths:
            if not self.covering(path, visible):
                continue
            kind = "mask-dir" if self.facts.kind(path) == "dir" else "mask-file"
            result.append(Mount(kind, path, reason="filesystem.deny"))
        # What the supervisor owns is never visible: state (trust, log, caches) and a custom log dir.
        owned = {self.facts.state_dir: "sandboxctl state: trust store, action log, caches"}
        for runtime in self.facts.runtime_dirs:
            owned[runtime] = "sandboxctl runtime dir: gvisor bundles and file secrets of running sandboxes"
        log_dir = os.path.dirname(self.log_path())
        owned.setdefault(log_dir, "the action log's directory")
        if self.facts.runtime_dir:  # approval sockets: a sandbox that reached one could answer itself
            owned.setdefault(self.facts.runtime_dir, "sandboxctl's approval sockets")
        for path, why in owned.items():
            holder = self.covering(path, visible)
            # a missing dir under a writable grant could be created inside: mask it all the same
            if holder and (self.facts.kind(path) == "dir" or visible[holder] == "rw"):
                result.append(Mount("mask-dir", path, reason=why))
        return result

    def unix_socket_mounts(self, mounts: list[Mount]) -> list[Mount]:
        listed = [self.expand(raw) for raw in self.policy.network.unix]
        added, self.unix_paths, notes = netwalls.unix_sockets(listed, self.denied_paths, mounts, self.facts)
        self.notes.extend(notes)
        return added

    def policy_files(self) -> list[str]:
        return [c for c in self.policy.chain if not c.startswith("builtin:")]

    def runtime_mounts(self, visible: dict[str, str]) -> list[Mount]:
        if self.gvisor:
            mounts = []  # the native launcher is the run directory's launch file (launch/gvisor_exec.py)
            if not gvisor_native_launcher(self.network_mode(), self.facts.machine):
                init = self.facts.gvisor_init_file or os.path.join(os.path.dirname(self.facts.shim_file),
                                                                   "gvisor_init.py")
                mounts = [Mount("ro", GVISOR_INIT, init, "sandboxctl's launcher inside gVisor (loads seccomp)")]
        else:
            mounts = [
                Mount("ro", f"{SHIM_DIR}/shim.py", self.facts.shim_file, "sandboxctl's launcher (applies Landlock)"),
                *([Mount("ro", SHIM_ENTRY, self.facts.shim_code, "the launcher, compiled (the state dir's cache)")]
                  if self.facts.shim_code else []),
                Mount("ro", f"{SHIM_DIR}/lib/landlockpy", self.facts.landlock_lib, "the launcher's Landlock library"),
            ]
            if self.inv.session:
                mounts.append(Mount("ro", SESSION_SERVER,
                                    os.path.join(os.path.dirname(self.facts.shim_file), "session_server.py"),
                                    "the session's server: starts each command inside the sandbox"))
        prefix = self.facts.shim_python_prefix
        if not self.covering(self.facts.shim_python, visible):
            mounts.append(Mount("ro", prefix, prefix, "the launcher's Python interpreter"))
        return mounts

    # ---------------------------------------------------------------- landlock
    def landlock(self, mounts: list[Mount]) -> LandlockPlan:
        if self.gvisor:
            return self.gvisor_landlock()
        exec_anywhere = self.policy.exec_allow is None
        rules: list[LandlockPathRule] = []
        # writable host directories are read-only to the kernel: the supervisor performs each change;
        # so are the writable mounts above them (a Landlock right covers everything beneath its
        # directory, across mount points: a writable /tmp would make a workspace under it writable)
        mediated = set(self.protect.roots) | set(self.protect.ephemeral) if self.protect.mediated else set()
        # No TRUNCATE on read-only mounts, though it would shorten every open there (hook_file_open
        # asks for it and walks up until a rule grants all it asks, else to the root: ~75 ns an open
        # in /usr): a rule is the inode's, so a hardlink of a bound file on a writable mount, or the
        # same directory reached through another mount of its file system (a bind on the host), would
        # be truncatable by the kernel where the supervisor continued an O_TRUNC open whose path a
        # racing thread rewrote. Tried and withdrawn (red team, 2026-12-01).
        for mount in mounts:
            if mount.kind in ("ro", "rw", "tmpfs") and not mount.target.startswith((SHIM_DIR, SECRETS_DIR)):
                access = ["read"] if mount.kind == "ro" or mount.target in mediated else ["read", "write"]
                if exec_anywhere:
                    access.append("execute")
                rules.append(LandlockPathRule(mount.target, tuple(access)))
            elif mount.kind == "proc":
                rules.append(LandlockPathRule("/proc", ("read", "write_file")))
            elif mount.kind == "dev":
                rules.append(LandlockPathRule("/dev", ("read", "write_file", "ioctl_dev")))
            elif mount.target == SECRETS_DIR:
                rules.append(LandlockPathRule(SECRETS_DIR, ("read",)))
            elif mount.kind == "data-file":
                rules.append(LandlockPathRule(mount.target, ("read",)))
        if not exec_anywhere:
            allowed = [self.expand(p) for p in self.policy.exec_allow or ()]
            for path in allowed + list(self.facts.elf_loaders):
                if self.facts.kind(path) != "missing":
                    rules.append(LandlockPathRule(path, ("read", "execute")))
        # listed UNIX sockets: RESOLVE_UNIX where the kernel has it (ABI 9); below, the supervisor
        # answers every connect (network/sockets.py) and this rule is simply not applied
        rules += [LandlockPathRule(path, ("unix",)) for path in self.unix_paths]
        mode = self.network_mode()
        tcp = netwalls.tcp_rules(mode, self.policy.network.listen, PROXY_PORT)
        self.notes.extend(tcp.notes)
        # What `landlock: required` insists on: the file-system rules (ABI 1). TCP rules (ABI 4)
        # and scopes (ABI 6) back up walls the namespaces already build, so they are applied
        # when the kernel has them and reported as such — except under network: host, where the
        # abstract-socket scope is the only wall between the sandbox and the host's sockets, and
        # the bind rule the only one between a server inside and the host's interfaces.
        minimum = 6 if mode == "host" else 1
        if self.protect.binds_left_out:
            # without the protected binds Landlock alone makes the kernel refuse a call the supervisor
            # let through (continued with a path a racing thread then rewrites): truncate(2) and
            # O_TRUNC are Landlock's from ABI 3 only
            minimum = max(minimum, 3)
        return LandlockPlan(
            required=self.policy.landlock == "required",
            minimum_abi=minimum,
            paths=tuple(rules),
            restrict_tcp_bind=tcp.restrict_bind,
            restrict_tcp_connect=tcp.restrict_connect,
            connect_tcp_ports=tcp.connect_ports,
            bind_tcp_ports=tcp.bind_ports,
            scopes=("signal", "abstract_unix_socket"),
        )

    def gvisor_landlock(self) -> LandlockPlan:
        """gVisor does not implement Landlock (landlock_create_ruleset answers ENOSYS inside it),
        so there is nothing to apply: the file-system grants rest on gVisor's own kernel (the
        sentry) and its file proxy (the gofer). exec.allow has no other enforcer: refused unless
        the policy itself allows running without Landlock."""
        if self.policy.exec_allow is not None:
            if self.policy.landlock == "required":
                raise SandboxError("exec.allow cannot be enforced under gVisor: it needs Landlock, which gVisor "
                                   "does not implement",
                                   "use the bubblewrap backend (--backend bwrap), or set `landlock: best-effort` "
                                   "to run under gVisor without the exec.allow limit")
            self.warnings.append("exec.allow is not enforced under gVisor (it needs Landlock); "
                                 "running without it (`landlock: best-effort`)")
        if self.policy.network.listen is not True:
            # gVisor's network stack is private (no route out) but nothing limits its ports
            if self.policy.landlock == "required":
                raise SandboxError("network.listen limits cannot be enforced under gVisor: they need Landlock's TCP "
                                   "rules, which gVisor does not implement",
                                   "use the bubblewrap backend, drop network.listen, or set `landlock: best-effort`")
            self.warnings.append("network.listen is not enforced under gVisor (it needs Landlock): any port of the "
                                 "sandbox's own loopback may be bound")
        if self.unix_paths:
            raise SandboxError("network.unix cannot be enforced under gVisor: runsc opens either every host socket "
                               "a granted path shows, or none",
                               "use the bubblewrap backend (--backend bwrap) to reach listed sockets")
        return LandlockPlan(required=False, minimum_abi=0, paths=(), restrict_tcp_bind=False,
                            restrict_tcp_connect=False, connect_tcp_ports=(), bind_tcp_ports=(), scopes=())

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
        if _within(state, self.workspace) or _within(self.workspace, state):
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
                    if fnmatch.fnmatchcase(name, pattern):
                        if re.match(CREDENTIAL_LIKE, name):
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
            holders = [t for t in targets if _within(path, t)]
            return max(holders, key=len) if holders else None

        keep = {deepest(path) for path in allowed}
        return tuple(t for t in targets if t not in keep)

    def cwd(self) -> str:
        return self.inv.workspace if self.workspace else self.facts.home


def _anchor(protect, mounts: list[Mount]):
    """The writable mounts above a writable root (a sandbox tmpfs HOME or /tmp holding the
    workspace) join the mediated set, and every directory a mount hangs from becomes an anchor
    the sandbox may not move or remove (the plan's paths must stay true for the whole run)."""
    roots = set(protect.roots)
    ephemeral = sorted({m.target for m in mounts if m.kind in ("tmpfs", "rw") and m.target not in roots
                        and any(_within(r, m.target) for r in roots)})
    zones = roots | set(ephemeral)
    anchors: set[str] = set()
    for mount in mounts:
        if mount.kind in ("proc", "dev"):
            continue
        parent = os.path.dirname(mount.target)
        while parent not in ("/", "") and any(_within(parent, z) for z in zones):
            anchors.add(parent)
            parent = os.path.dirname(parent)
        if any(_within(mount.target, z) and mount.target != z for z in zones):
            anchors.add(mount.target)
    return protect._replace(ephemeral=tuple(ephemeral), anchors=tuple(sorted(anchors)))


GVISOR_WARNING = ("gvisor backend: Landlock is not applied (gVisor does not implement it; the file-system grants "
                  "rest on gVisor's kernel and its file proxy), and there are no exec, file or syscall events and "
                  "no file-write approvals (gVisor has no seccomp user notification)")


def gvisor_native_launcher(network_mode: str, machine: str) -> bool:
    """Under gVisor the command is started by a static program in the run directory
    (launch/gvisor_exec.py), not by python3 + gvisor_init.py, unless the proxy's forwarder must
    be started first or the machine has no such program."""
    return network_mode != "proxy" and machine in GVISOR_NATIVE_MACHINES


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
    if planner.workspace and _within(planner.workspace, log_dir):
        # the log's directory is hidden inside the sandbox: it would hide the whole workspace
        raise SandboxError(f"the action log's directory {log_dir} holds the workspace, and is hidden in the sandbox",
                           "put the log in a directory of its own, e.g. --log ~/.local/state/sandboxctl/actions.jsonl")
    overlay = planner.overlay()
    mounts = planner.build_mounts()
    mounts = mount_limits.reachable_guards(mounts, facts.closed_to_sandbox, planner.notes)
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
