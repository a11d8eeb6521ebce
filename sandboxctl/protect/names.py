"""Which workspace paths are protected, by name: they run later outside the sandbox.

`protected_reason(relative_path)` classifies a path relative to a writable root (the workspace).
It is the one question `sandboxctl apply` asks before writing a run's change into a workspace.

This version is built from the lists the planner already protects (plan/build.py) and is
deliberately wider than the mounts: every name counts at any depth, because a repository or a
project can be nested anywhere in a workspace, and any path with a `.git` component is git
metadata. (Interim: the lead's rewrite of protected paths for issue 13 replaces this module.)
"""

from __future__ import annotations

from sandboxctl.plan.build import HOME_PROTECTED_NAMES, PROTECTED_DIRS, PROTECTED_NAMES

_WHY = {
    ".git": "git metadata (hooks and config run git commands)",
    ".gitmodules": "git submodule configuration",
    ".sandboxctl.yaml": "a sandboxctl policy",
    ".envrc": "direnv runs it when a shell enters the directory",
    ".mcp.json": "agent configuration (MCP servers are started from it)",
    ".vscode": "editor configuration (tasks and settings can run commands)",
    ".idea": "editor configuration (run configurations)",
    ".claude": "agent configuration (hooks run commands)",
}
_SHELL = "shell or tool start-up file"


def _sequences() -> dict[tuple[str, ...], str]:
    names = {tuple(name.split("/")) for name in (*PROTECTED_NAMES, *HOME_PROTECTED_NAMES, *PROTECTED_DIRS)}
    return {parts: _WHY.get(parts[0], _SHELL if parts[0] != ".git" else _WHY[".git"]) for parts in names}


_PROTECTED = _sequences()
_LONGEST = max(len(parts) for parts in _PROTECTED)


def protected_reason(relative_path: str) -> str | None:
    """Why this workspace-relative path is protected, or None. The path itself, or anything under
    a protected name, counts: `.vscode/tasks.json` is editor configuration, `a/b/.git/x` git metadata."""
    parts = [p for p in relative_path.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        if part == ".git":
            return _WHY[".git"]
        for length in range(_LONGEST, 0, -1):
            reason = _PROTECTED.get(tuple(parts[index:index + length]))
            if reason is not None:
                return reason
    return None
