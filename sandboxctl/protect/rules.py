"""`Protection`: may the sandbox change this entry? Pure; built from the plan's ProtectPlan.

Paths are the sandbox's own absolute, canonical paths (the supervisor gets them from the kernel,
via readlink of a descriptor it resolved, never from the sandboxed process's memory). Three
sources of protection, checked in this order:

1. explicit paths: discovered git directories that are not named `.git` (bare repositories,
   `gitdir:` targets), core.hooksPath directories, config include targets, targets of protected
   names that are symlinks, filesystem.protect, the policy in use, sandboxctl's own code;
2. names at the root of every writable grant (names.ROOT_NAMES), and bwrap and runsc at any
   depth (names.ANYWHERE_NAMES);
3. git directories: any `.git` component, and the discovered ones, judged by names.gitdir_reason.

`blocks_move(path)` also refuses moving a directory that holds an explicit protected path or a
discovered git directory, so the explicit list stays true for the whole run.

Every comparison is made on folded paths (names.fold_path): on a case-insensitive directory the
kernel names an entry as the caller spelt it (`/ws/.GIT/hooks` when nothing had looked it up
before), and `.git/CONFIG` opens `.git/config`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sandboxctl.paths import within
from sandboxctl.protect import names
from sandboxctl.protect.names import fold_path


def ancestors(path: str) -> list[str]:
    """path and every directory above it, deepest first ("/a/b" -> ["/a/b", "/a", "/"])."""
    out = [path]
    while path not in ("/", ""):
        path = path.rsplit("/", 1)[0] or "/"
        out.append(path)
    return out


def _parts(path: str, root: str) -> tuple[str, ...]:
    rest = path[len(root.rstrip("/")) + 1:] if path != root else ""
    return tuple(p for p in rest.split("/") if p)


class Protection:
    def __init__(self, roots: Iterable[str], gitdirs: Iterable[str] = (),
                 explicit: Mapping[str, str] | None = None, masked: Iterable[str] = (),
                 anchors: Iterable[str] = (), homes: Iterable[str] = ()):
        # looked up by each ancestor of a path (a dict probe per level, not a scan per entry), folded
        self.roots = set(roots)  # as given: the mediator compares them with its mount targets
        self._roots = {fold_path(r): r for r in self.roots}
        self._gitdirs = {fold_path(g): g for g in gitdirs}
        self.gitdirs = set(self._gitdirs)
        explicit = {p.rstrip("/") or "/": why for p, why in (explicit or {}).items()}
        self.explicit = {fold_path(p): why for p, why in explicit.items()}
        self._named = {fold_path(p): p for p in explicit}  # as given, for messages
        self.masked = {fold_path(m.rstrip("/") or "/") for m in masked}  # filesystem.deny paths under a writable grant
        self.anchors = {fold_path(a) for a in anchors}  # directories the sandbox's mounts hang from (never moved)
        self.homes = {fold_path(h) for h in homes}  # roots that are a home: its start-up names (bin, …) too

    def hold(self, path: str, why: str) -> bool:
        """Protect one more explicit path from now on (mediate_judge.LiveGitRefs: the host's git config came to
        point at it while the run went on); False if it was already held or lies under no root."""
        path = path.rstrip("/") or "/"
        folded = fold_path(path)
        if folded in self.explicit or self.root_of(path) is None:
            return False
        self.explicit[folded] = why
        self._named[folded] = path
        return True

    def root_of(self, path: str) -> str | None:
        """The deepest writable root holding path (as the plan names it)."""
        root = next((a for a in ancestors(fold_path(path)) if a in self._roots), None)
        return None if root is None else self._roots[root]

    def gitdir_of(self, path: str) -> str | None:
        """The innermost git directory holding path (or being it) within its root, folded."""
        path = fold_path(path)
        chain = ancestors(path)
        root = next((a for a in chain if a in self._roots), None)
        return None if root is None else self._gitdir_of(path, root, chain)

    def reason(self, path: str) -> str | None:
        """Why the entry at `path` (and whatever lies beneath it) may not be created, written,
        removed, renamed or re-moded by the sandbox; None if it may."""
        path = fold_path(path)
        chain = ancestors(path)
        for level in chain:
            why = self.explicit.get(level)
            if why:
                return why
        if any(level in self.masked for level in chain):
            return "filesystem.deny: masked inside the sandbox"
        root = next((a for a in chain if a in self._roots), None)
        if root is None:
            return None
        parts = _parts(path, root)
        why = names.root_name_reason(parts, root in self.homes) or names.anywhere_reason(parts)
        if why:
            return f"protected: {why}"
        gitdir = self._gitdir_of(path, root, chain)
        if gitdir is None:
            return None
        if path == gitdir:
            return ("protected: a repository's git directory (a new one would run its config and hooks outside: "
                    "create repositories outside the sandbox, with git init or git clone)")
        why = names.gitdir_reason(_parts(path, gitdir))
        return f"protected: {gitdir.rsplit('/', 1)[-1]}/{why}" if why else None

    def _gitdir_of(self, path: str, root: str, chain: list[str]) -> str | None:
        """The innermost git directory holding path (or being it) within its root: a discovered
        one, or any `.git` component of the path itself (a repository the index did not see is
        still one). One above the root does not count: granting .git/hooks by name releases it."""
        for level in chain:  # deepest first
            if level == root or not within(level, root):
                return None
            if level in self.gitdirs or level.rsplit("/", 1)[-1] == names.GIT:  # folded: .GIT too
                return level
        return None

    def holds_names(self, path: str) -> str | None:
        """Why a directory moved (or renamed) to `path` could bring a protected name in beneath it:
        path is a proper prefix of a multi-part protected name (.config of .config/git), a git
        directory's objects, objects/info or refs (alternates, replace refs), a directory that
        holds an explicit protected path, or a git directory itself."""
        path = fold_path(path)
        chain = ancestors(path)
        root = next((a for a in chain if a in self._roots), None)
        if root is not None:
            parts = _parts(path, root)
            if parts in names.prefixes_of_names(root in self.homes):
                return f"protected: names beneath {'/'.join(parts)} (it would bring one in)"
            gitdir = self._gitdir_of(path, root, chain)
            if gitdir is not None and path != gitdir:
                inner = _parts(path, gitdir)
                for deep in names.GITDIR_DEEP:
                    if len(inner) < len(deep) and deep[:len(inner)] == inner:
                        return f"protected: {'/'.join(deep)} lies beneath it"
        prefix = path.rstrip("/") + "/"
        for held, why in self.explicit.items():
            if held.startswith(prefix):
                return f"holds {self._named[held]} ({why})"
        return None

    def blocks_move(self, path: str) -> str | None:
        """Moving or removing `path` away: refused if it is protected, or if it holds an explicit
        protected path or a discovered git directory (their rules are tied to where they are)."""
        why = self.reason(path)
        if why:
            return why
        path = fold_path(path)
        if path in self.anchors:
            return "a mount of the sandbox hangs from it (the plan's paths must stay where they are)"
        prefix = path.rstrip("/") + "/"
        for held, why in self.explicit.items():
            if held.startswith(prefix):
                return f"holds {self._named[held]} ({why})"
        for gitdir in self.gitdirs:
            if gitdir.startswith(prefix) and not gitdir.endswith("/" + names.GIT):
                return f"holds the repository {self._gitdirs[gitdir]}"
        return None


def protected_reason(relative_path: str) -> str | None:
    """Why a path relative to the root of a writable grant is protected, or None.

    Name rules only, without the index (which directories under .git/modules are submodule
    repositories is not known here, so all of modules/ and worktrees/ counts as protected: this
    errs on the side of the protection). For `sandboxctl apply` and other offline checks."""
    parts = [p for p in relative_path.strip("/").split("/") if p and p != "."]
    if not parts:
        return None
    return Protection(roots=("/",)).reason("/" + "/".join(parts))


def protected_link_reason(relative_path: str) -> str | None:
    """Why a *symlink* at a path relative to the root of a writable grant is protected, or None: a
    link to a directory brings that tree in as a moved directory would (.config -> a directory
    holding git/config), so it is refused wherever such a directory is (Protection.holds_names)."""
    parts = [p for p in relative_path.strip("/").split("/") if p and p != "."]
    if not parts:
        return None
    protection = Protection(roots=("/",))
    path = "/" + "/".join(parts)
    return protection.reason(path) or protection.holds_names(path)
