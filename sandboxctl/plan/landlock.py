"""The plan's Landlock rules: from the mount tree, exec.allow, listed UNIX sockets and TCP ports.

Part of the planner (build.py's _Planner). Under gVisor there is no Landlock: what it would
have enforced is refused or warned about here.
"""

from __future__ import annotations

from sandboxctl.errors import SandboxError
from sandboxctl.plan import network as netwalls
from sandboxctl.plan.layout import PROXY_PORT, SECRETS_DIR, SHIM_DIR
from sandboxctl.plan.model import LandlockPathRule, LandlockPlan, Mount


class LandlockPlanner:
    """The Landlock part of the plan (a mixin of build._Planner)."""

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
