"""`filesystem.create`: writable grants that sandboxctl makes before the run when they are absent.

An agent's state directory (~/.claude, ~/.codex) does not exist on an account where the agent never
ran, and a writable grant must exist to be mounted. The agent would create it on its first start;
a policy can say how (`create:` entries: a directory, or a file with the content the agent itself
writes), and the supervisor then makes exactly that, before the launch, outside the sandbox.

That is a side effect on the host, so it is held tight: only beneath the user's home, only what the
policy's own `filesystem.write` grants (the path or one of its parents is listed there), never a
denied or protected path, never over anything that exists (an existing path of the other kind is an
error), and every path made is logged (`create` events) and named on stderr. This module is pure: it
decides, from the policy and the host facts, what would be made; supervise/create.py makes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sandboxctl import lazyre, paths
from sandboxctl.errors import SandboxError
from sandboxctl.paths import within
from sandboxctl.plan.model import Creation
from sandboxctl.protect.rules import protected_reason


def parse_mode(text: str | None) -> int | None:
    return None if text is None else int(text, 8)


def plan_creations(entries: tuple[dict, ...], write_grants: list[str], denied: list[str],
                   protected: Callable[[str], str | None], home: str, kind: Callable[[str], str],
                   expand: Callable[[str], str]) -> tuple[Creation, ...]:
    """What to make before the run, parents first; every entry that may not be made is a SandboxError
    naming all of them. `protected(path)` says why a path is protected; `denied` holds the deny
    entries, expanded."""
    creations: dict[str, Creation] = {}
    problems: list[str] = []
    for entry in entries:
        path = os.path.normpath(expand(entry["path"]))
        wanted = entry.get("kind", "dir")
        why = _refusal(path, write_grants, denied, protected, home)
        if not why and wanted == "dir" and "content" in entry:
            why = "content is for a file (kind: file)"
        if why:
            problems.append(f"{path}: {why}")
            continue
        present = kind(path)
        if present != "missing":
            if present != wanted and not (present == "symlink" and wanted in ("dir", "file")):
                problems.append(f"{path}: exists as a {present}, the policy expects a {wanted}")
            continue
        parent = os.path.dirname(path)
        chain = []
        while parent != home and within(parent, home) and kind(parent) == "missing":
            chain.append(parent)
            parent = os.path.dirname(parent)
        if kind(parent) not in ("dir", "symlink"):
            problems.append(f"{path}: its parent {parent} is not a directory")
            continue
        for directory in reversed(chain):
            creations.setdefault(directory, Creation(directory, "dir", None, "", f"parent of {path}"))
        creations[path] = Creation(path, wanted, parse_mode(entry.get("mode")),
                                   entry.get("content", "") if wanted == "file" else "", "filesystem.create")
    if problems:
        raise SandboxError("filesystem.create: cannot make " + "; ".join(problems),
                           "filesystem.create makes only absent paths in your home that filesystem.write grants, "
                           "never a denied or protected one")
    return tuple(creations.values())


def _refusal(path: str, write_grants: list[str], denied: list[str], protected: Callable[[str], str | None],
             home: str) -> str | None:
    if not within(path, home) or path == home:
        return f"outside your home ({home}): sandboxctl creates nothing else"
    if not any(within(path, grant) for grant in write_grants):
        return "not granted by filesystem.write (only writable grants, or paths beneath them, are made)"
    for deny in denied:
        if within(path, deny) or lazyre.fnmatchcase(path, deny):
            return f"lies under the denied {deny}"
    why = protected(path)
    if why:
        return f"protected ({why})"
    return None


def overlay_kind(kind: Callable[[str], str], creations: tuple[Creation, ...]) -> Callable[[str], str]:
    """The host as it will be once the creations are made: what the planner must plan the mounts for."""
    made = {c.path: c.kind for c in creations}

    def planned(path: str) -> str:
        return made.get(os.path.normpath(path)) or kind(path)

    return planned


def creations_for(policy, inv, facts) -> tuple[Creation, ...]:
    """The policy's filesystem.create for this invocation and host (Policy, Invocation, HostFacts)."""
    fs = policy.filesystem
    if not fs.create:
        return ()

    def expand(path: str) -> str:
        return paths.expand(path, workspace=inv.workspace, home=facts.home, state=facts.state_dir)

    writes = [expand(p) for p in fs.write]
    patterns = [expand(p) for p in fs.protect]

    def protected(path: str) -> str | None:
        """protect/names.py's reasons beneath each write grant (the roots they apply at), or the policy's protect."""
        for root in writes:
            if path != root and path.startswith(root.rstrip("/") + "/"):
                why = protected_reason(os.path.relpath(path, root))
                if why:
                    return why
        for pattern in patterns:
            if path == pattern or path.startswith(pattern.rstrip("/") + "/") or lazyre.fnmatchcase(path, pattern):
                return f"filesystem.protect {pattern}"
        return None

    return plan_creations(fs.create, writes, [expand(p) for p in fs.deny] + [facts.state_dir], protected,
                          facts.home, facts.kind, expand)
