"""The plan's mount tree: grants, deny masks, what the supervisor owns, the launcher, secrets, TLS files.

Part of the planner (build.py's _Planner, whose state it uses: policy, invocation, facts,
notes). Pure: the host is read only through HostFacts. The protected paths' binds are
planned by protections.py; this module places them in the tree and anchors the directories
the mounts hang from.
"""

from __future__ import annotations

import functools
import os

from sandboxctl import lazyre
from sandboxctl.errors import SandboxError
from sandboxctl.paths import within
from sandboxctl.plan import network as netwalls
from sandboxctl.plan.layout import (
    GVISOR_INIT,
    SECRETS_DIR,
    SESSION_SERVER,
    SHIM_DIR,
    SHIM_ENTRY,
    SYSTEM_CA_BUNDLES,
    TLS_BUNDLE,
    TLS_CA,
    gvisor_native_launcher,
)
from sandboxctl.plan.model import Mount

_STRENGTH = {"ro": 0, "tmpfs": 1, "rw": 2}


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


class MountPlanner:
    """The mounts of the plan (a mixin of build._Planner); sets grant_kinds, protect, unix_paths."""

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
            under_deny = [d for d in denied if within(target, d)]
            if under_deny and not from_cli:
                self.notes.append(f"{reason} {target}: not mounted, it lies under denied {under_deny[0]}")
                continue
            if under_deny:
                self.confirmations.append(f"{reason} {target} opens a path the policy denies ({under_deny[0]})")
            if from_cli and kind == "rw" and not (self.workspace and within(target, self.inv.workspace)):
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
                if self.workspace and within(prefix, self.workspace):
                    index = self.tree(self.workspace)
                else:
                    index = self.facts.tree(prefix, (name,), True)
                matches = [m for m in index.matches if within(m, prefix)
                           and lazyre.fnmatchcase(os.path.basename(m), name)]
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
            if any(within(target, d) for d in self.denied_paths):
                continue
            done.add(target)
            result.append(Mount("data-file", target, "tls:bundle",
                                "the system CA bundle with the run's CA added (network.inspect)"))
        return result

    def covering(self, path: str, grants: dict, strict: bool = False) -> str | None:
        holders = [t for t in grants if within(path, t) and not (strict and t == path)]
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
            ]
            if self.inv.session:
                mounts.append(Mount("ro", SESSION_SERVER,
                                    os.path.join(os.path.dirname(self.facts.shim_file), "session_server.py"),
                                    "the session's server: starts each command inside the sandbox"))
        prefix = self.facts.shim_python_prefix
        if not self.covering(self.facts.shim_python, visible):
            mounts.append(Mount("ro", prefix, prefix, "the launcher's Python interpreter"))
        return mounts


def _anchor(protect, mounts: list[Mount]):
    """The writable mounts above a writable root (a sandbox tmpfs HOME or /tmp holding the
    workspace) join the mediated set, and every directory a mount hangs from becomes an anchor
    the sandbox may not move or remove (the plan's paths must stay true for the whole run)."""
    roots = set(protect.roots)
    ephemeral = sorted({m.target for m in mounts if m.kind in ("tmpfs", "rw") and m.target not in roots
                        and any(within(r, m.target) for r in roots)})
    zones = roots | set(ephemeral)
    anchors: set[str] = set()
    for mount in mounts:
        if mount.kind in ("proc", "dev"):
            continue
        parent = os.path.dirname(mount.target)
        while parent not in ("/", "") and any(within(parent, z) for z in zones):
            anchors.add(parent)
            parent = os.path.dirname(parent)
        if any(within(mount.target, z) and mount.target != z for z in zones):
            anchors.add(mount.target)
    return protect._replace(ephemeral=tuple(ephemeral), anchors=tuple(sorted(anchors)))
