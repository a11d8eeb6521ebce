"""The planner's part of the protected-paths wall (SPEC principle 3). Pure: the host is read only
through HostFacts (kind, realpath, glob, tree, git_refs).

For every writable host directory (a root) it finds what must not change: the protected names
at its top, every git directory beneath it (the index walks the workspace), what git's config
points at (core.hooksPath, includes), the targets of protected names that are symlinks, and the
policy's own `filesystem.protect`. Existing protected entries become read-only binds (a second
wall) and are recorded for the end-of-run check. Under bubblewrap the roots themselves are
read-only to Landlock and the supervisor mediates every change (plan.seccomp.mediate); under
gVisor, which has neither, the binds and the end-of-run check are all there is, and the plan
says so.
"""

from __future__ import annotations

import contextlib
import os

from sandboxctl.paths import within
from sandboxctl.plan.model import Mount, ProtectPlan
from sandboxctl.protect import names
from sandboxctl.protect.rules import Protection

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any



class ProtectionPlanner:
    def __init__(self, planner: Any):
        self.p = planner
        self.facts = planner.facts

    def under_roots(self, path: str, roots: list[str]) -> bool:
        return any(within(path, r) for r in roots)

    def build(self, visible: dict[str, str]) -> tuple[list[Mount], ProtectPlan]:
        facts = self.facts
        roots = [t for t, k in visible.items() if k == "rw" and facts.kind(t) == "dir"]
        guard_roots = sorted({*[t for t in visible if facts.kind(t) == "dir"], facts.home,
                              *([self.p.workspace] if self.p.workspace else [])})
        explicit: dict[str, str] = {}
        record: list[str] = []
        absent: list[str] = []
        gitdirs: list[str] = []
        worktrees: list[str] = []
        repositories: list[str] = []
        from sandboxctl.protect.index import glob_matches  # the tree's scan imports it too

        for root in roots:
            index = self.p.tree(root)
            gitdirs += index.gitdirs
            repositories += index.repositories
            for repository in index.repositories:
                worktree = os.path.dirname(repository) if names.is_git_name(os.path.basename(repository)) else None
                if worktree:
                    worktrees.append(worktree)
                    if worktree != root:
                        explicit.setdefault(f"{worktree}/.gitmodules", "protected: .gitmodules of a nested repository")
                    if facts.kind(repository) in ("file", "symlink"):
                        record.append(repository)  # a gitdir: pointer is a protected file of its own
                else:
                    explicit.setdefault(repository, "protected: a bare repository (its hooks run on push)")
            is_home = root == facts.home
            record += glob_matches(root, facts.listdir)  # *.code-workspace, mise.<env>.toml, …
            for name in (*names.ROOT_NAMES, *(names.HOME_NAMES if is_home else ())):
                path = f"{root}/{name}"
                kind = facts.kind(path)
                if kind == "missing":
                    absent.append(path)
                    continue
                if name == names.GIT:
                    continue  # a git directory is judged entry by entry (gitdirs below)
                record.append(path)
                if kind == "symlink":
                    target = facts.realpath(path)
                    if target != path and self.under_roots(target, roots):
                        why = names.ROOT_NAMES.get(name) or names.HOME_NAMES.get(name, "")
                        explicit.setdefault(target, f"protected: what {name} points to ({why})")
        for gitdir in sorted(set(gitdirs)):
            # absent ones are recorded too, so the end-of-run check removes a planted commondir
            # (under gVisor nothing else holds them); not the locks, modules/ and worktrees/,
            # which the host's own git creates in normal work while a run goes on
            for entry in [*names.GITDIR_NAMES, *("/".join(deep) for deep in names.GITDIR_DEEP)]:
                path = f"{gitdir}/{entry}"
                if entry in ("modules", "worktrees"):
                    continue
                if facts.kind(path) != "missing":
                    record.append(path)
                elif not entry.endswith(".lock"):
                    absent.append(path)
            worktree = os.path.dirname(gitdir) if names.is_git_name(os.path.basename(gitdir)) else None
            for config in ("config", "config.worktree"):
                self._git_refs(f"{gitdir}/{config}", worktree, roots, explicit, [worktree] if worktree else [])
        for template in names.GLOBAL_GIT_CONFIGS:  # the host's own git reads these in every repository
            self._git_refs(template.replace("{home}", facts.home), None, roots, explicit, worktrees)
        for raw in self.p.policy.filesystem.protect:
            pattern = self.p.expand(raw)
            matches = facts.glob(pattern) if set("*?[") & set(pattern) else [pattern]
            for match in matches:
                explicit.setdefault(match, "filesystem.protect")
        for path in self.facts.protected_code:
            explicit.setdefault(path, "sandboxctl's own code and policies")
        for path in self._programs_on_path(roots):
            explicit.setdefault(path, "a program the supervisor runs from your PATH (bwrap, runsc, a secret's command)")
        owned = [self.facts.state_dir, os.path.dirname(self.p.log_path()), *self.facts.runtime_dirs,
                 *([self.facts.runtime_dir] if self.facts.runtime_dir else [])]
        for path in owned:
            explicit.setdefault(path, "sandboxctl's state, log and sockets: never changed from inside")
        for path in self.p.policy_files():
            explicit.setdefault(self.p.expand(path), "the policy in use")
        explicit = self._release_granted(explicit, roots)
        # sandboxctl's own dirs are masked inside, and the supervisor itself writes them during the
        # run (the log, the protect journal): never recorded, or the end-of-run check would undo it
        record += [p for p in explicit if facts.kind(p) != "missing" and self.under_roots(p, roots)
                   and not any(within(p, mine) for mine in owned)]
        masked = [d for d in self.p.denied_paths if self.under_roots(d, roots)]
        homes = [r for r in roots if r == facts.home]
        rules = Protection(roots, gitdirs, explicit, masked, homes=homes)
        record = self._outermost(sorted({p for p in record if rules.reason(p)}))  # released: the command's
        mediated = not self.p.gvisor
        binds = self._binds(record, roots)
        mounts = binds + ([] if mediated else self._pins(binds, visible))
        plan = ProtectPlan(
            roots=tuple(sorted(roots)), guard_roots=tuple(guard_roots), gitdirs=tuple(sorted(set(gitdirs))),
            explicit=tuple(sorted(explicit.items())), masked=tuple(masked), record=tuple(record),
            absent=tuple(sorted({a for a in absent if rules.reason(a)})), mediated=mediated and bool(roots),
            repositories=tuple(sorted(set(repositories))), homes=tuple(homes), json_keys=self._json_keys())
        if not mediated and absent:
            self.p.warnings.append(
                "gvisor backend: protected paths that do not exist yet (" + ", ".join(
                    sorted({os.path.basename(a) for a in absent})[:6]) + ", …) are not held during the run "
                "(gVisor has no seccomp user notification); the end-of-run check removes any that appear")
        return mounts, plan

    def _json_keys(self) -> tuple[tuple[str, str], ...]:
        """filesystem.protect_json entries, expanded: (file, key path)."""
        out = []
        for raw in self.p.policy.filesystem.protect_json:
            path, _, keys = raw.partition("#")
            out.append((self.p.expand(path), keys))
        return tuple(dict.fromkeys(out))

    def _git_refs(self, config: str, worktree: str | None, roots: list[str], explicit: dict[str, str],
                  worktrees: list[str]) -> None:
        if self.facts.kind(config) == "missing":
            return
        from sandboxctl.protect.gitconfig import held_targets

        hooks, includes = self.facts.git_refs(config, worktree)
        for target, why in held_targets(config, hooks, includes, worktrees, self.facts.realpath):
            if self.under_roots(target, roots):
                explicit.setdefault(target, why)

    def _programs_on_path(self, roots: list[str]) -> list[str]:
        """Where the supervisor — this run's and the next — looks for bwrap, runsc and the secrets'
        commands on the caller's PATH, in directories under a writable grant: an activated project
        venv puts WORKSPACE/.venv/bin first, and a `bwrap` a sandbox left there ran outside it.
        (Relative entries are never searched: supervise/spawn.which.)"""
        names = {"bwrap", "runsc"}
        for secret in self.p.policy.secrets:
            if secret.source_kind == "command":
                import shlex  # only then: every run's start-up imports are counted (test_startup_imports)

                with contextlib.suppress(ValueError, IndexError):
                    program = shlex.split(secret.source_ref)[0]
                    if "/" not in program:
                        names.add(program)
        found: list[str] = []
        for directory in self.facts.caller_env.get("PATH", "").split(os.pathsep):
            if not os.path.isabs(directory):
                continue
            real = self.facts.realpath(os.path.normpath(directory))
            if self.under_roots(real, roots):
                found += [f"{real}/{name}" for name in sorted(names)]
        return found

    def _release_granted(self, explicit: dict[str, str], roots: list[str]) -> dict[str, str]:
        """Granting a protected path by name releases it, never silently (a confirmation)."""
        granted = {t for t, (kind, reason) in self.p.grant_kinds.items()
                   if kind == "rw" and reason in ("filesystem.write", "--allow-write")}
        for path in sorted(granted):
            others = [r for r in roots if r != path and within(path, r)]
            why = Protection(others).reason(path) if others else None
            why = why or explicit.get(path)
            if why and why.startswith("protected"):
                self.p.confirmations.append(f"{self.p.grant_kinds[path][1]} {path} releases a protected path "
                                            "(it could plant something that runs later outside the sandbox)")
                explicit.pop(path, None)
        return explicit

    def _outermost(self, record: list[str]) -> list[str]:
        """Leave out an entry the record of a directory above it already walks (every component
        between them a real directory, no symlink): the venv's site-packages is also a dependency's
        place, and was recorded, hashed and compared twice a run."""
        kept: list[str] = []
        for path in record:  # sorted: a directory comes before what lies beneath it
            holder = next((k for k in reversed(kept) if path != k and within(path, k)), None)
            if holder is not None and self.facts.kind(holder) == "dir" and self._walked(holder, path):
                continue
            kept.append(path)
        return kept

    def _walked(self, holder: str, path: str) -> bool:
        """The walk from holder reaches path: each directory between them is a directory (the walk
        never follows a symlink)."""
        current = os.path.dirname(path)
        while current != holder:
            if self.facts.kind(current) != "dir":
                return False
            current = os.path.dirname(current)
        return True

    def _binds(self, record: list[str], roots: list[str]) -> list[Mount]:
        """Existing protected files and directories, read-only binds of themselves (symlinks are
        held by the rules, their targets by their own entries)."""
        mounts: list[Mount] = []
        for path in record:
            if self.facts.kind(path) not in ("file", "dir") or not self.under_roots(path, roots):
                continue
            if any(within(path, m.target) for m in mounts):
                continue
            if path in roots:
                continue  # a root that is itself protected (filesystem.write of it) is released above
            mounts.append(Mount("ro", path, path, "protected"))
        return mounts

    def _pins(self, guards: list[Mount], visible: dict[str, str]) -> list[Mount]:
        """gVisor only: bind each existing parent of a protected bind (up to its writable grant)
        onto itself. A mount point cannot be renamed (EBUSY), so `mv .git x && mkdir -p
        .git/hooks` cannot move a bind out of the way. (Under bubblewrap the supervisor refuses
        such moves itself.)"""
        pinned: dict[str, Mount] = {}
        for guard in guards:
            root = self.p.covering(guard.target, visible)
            if root is None or visible[root] != "rw":
                continue
            ancestor = os.path.dirname(guard.target)
            while ancestor != root and within(ancestor, root) and ancestor not in pinned:
                if self.facts.kind(ancestor) == "dir":
                    pinned[ancestor] = Mount("rw", ancestor, ancestor, "pinned: parent of a protected path")
                ancestor = os.path.dirname(ancestor)
        return list(pinned.values())
