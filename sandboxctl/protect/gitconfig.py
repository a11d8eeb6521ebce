"""Read the two things a protection needs from git's config files: core.hooksPath and includes.

A hooks directory elsewhere (husky: `core.hooksPath = .husky`) and an included config file run
code just like .git/hooks and .git/config do, so where they lie under a writable grant they are
protected too. Spawning `git config` per repository costs milliseconds each; this reads the INI
dialect directly: sections `[core]`, `[include]`, `[includeIf "…"]`, quoted values with
escapes, `;`/`#` comments, and continuation lines. Only the host's own files are read (the
sandbox cannot write them: they are protected), so a parse that errs only loses precision for
files a human wrote; it errs towards reporting more paths, never fewer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sandboxctl.paths import open_regular
from sandboxctl.record import Record

MAX_DEPTH = 10  # git's own include depth limit


class GitConfigRefs(Record):
    hooks_path: str | None  # the last core.hooksPath, as written
    includes: tuple[str, ...]  # include.path and includeIf.*.path values, as written, in order


def _value(raw: str) -> str:
    """A config value: strip comments outside quotes, handle quotes and backslash escapes."""
    out: list[str] = []
    quoted = False
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append({"n": "\n", "t": "\t", "b": "\b"}.get(nxt, nxt))
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in "#;" and not quoted:
            break
        else:
            out.append(ch)
        i += 1
    return "".join(out).strip()


def parse(text: str) -> GitConfigRefs:
    hooks_path: str | None = None
    includes: list[str] = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        while line.endswith("\\") and i + 1 < len(lines):  # continuation
            i += 1
            line = line[:-1] + lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            end = line.find("]")
            header = line[1:end] if end > 0 else line[1:]
            name, _, sub = header.partition(" ")
            if "." in name and not sub:  # [section.subsection] (deprecated syntax)
                name, _, sub = name.partition(".")
            section = name.strip().lower() + ("\0" + sub.strip().strip('"') if sub else "")
            line = line[end + 1:].strip() if end > 0 else ""
            if not line:
                continue
        key, sep, raw = line.partition("=")
        key = key.strip().lower()
        value = _value(raw) if sep else ""
        base = section.split("\0", 1)[0]
        if base == "core" and "\0" not in section and key == "hookspath" and sep:
            hooks_path = value
        elif key == "path" and sep and (section == "include" or base == "includeif"):
            includes.append(value)
    return GitConfigRefs(hooks_path, tuple(includes))


def _expand(path: str, relative_to: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return os.path.normpath(os.path.join(relative_to, path))


def _hooks_base(config_file: str, worktree: str | None) -> str | None:
    """Where git takes a relative core.hooksPath from, for a config file: the worktree's top; a
    linked worktree's (its admin directory's `gitdir` file names the top's .git); a bare
    repository's git directory; None for a config of no repository (~/.gitconfig): from each
    worktree's top, which held_targets joins (review rev: `git config --global core.hooksPath
    .githooks` was held as ~/.githooks, and the sandbox wrote the workspace's .githooks/pre-commit)."""
    if worktree:
        return worktree
    gitdir = os.path.dirname(config_file)
    if not os.path.isfile(os.path.join(gitdir, "HEAD")):
        return None
    try:
        with open(os.path.join(gitdir, "gitdir"), encoding="utf-8", errors="replace") as handle:
            dot_git = handle.read(4096).strip()
    except OSError:
        return gitdir  # bare: hooks run in the git directory
    return os.path.dirname(os.path.normpath(os.path.join(gitdir, dot_git))) if dot_git else gitdir


def _read_regular(path: str) -> str | None:
    """A config file's first MiB, if it is a regular file. Opened without waiting: a FIFO named by
    an include (one the sandbox made where the host's config came to include a file) held the
    supervisor's open, and with it every mediated call of the run and its end (review rev)."""
    fd = open_regular(path)
    if fd is None:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8", errors="replace", closefd=False) as handle:
            return handle.read(1 << 20)
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def references(config_file: str, home: str, worktree: str | None) -> tuple[str | None, list[str]]:
    """The hooks directory (absolute, or relative for a config of no repository: see _hooks_base)
    and every included file (absolute, followed to MAX_DEPTH) that config_file leads to.
    includeIf conditions are not evaluated: each candidate counts."""
    base = _hooks_base(config_file, worktree)
    hooks: str | None = None
    included: list[str] = []
    seen: set[str] = set()
    queue = [(config_file, 0)]
    while queue:
        path, depth = queue.pop(0)
        if path in seen or depth > MAX_DEPTH:
            continue
        seen.add(path)
        text = _read_regular(path)
        if text is None:
            continue
        refs = parse(text)
        if refs.hooks_path:
            # git: a relative core.hooksPath is taken from where hooks run (the worktree's top)
            raw = refs.hooks_path
            relative = not raw.startswith("/") and raw != "~" and not raw.startswith("~/")
            hooks = os.path.normpath(raw) if relative and base is None else _expand(raw, base or "/", home)
        for item in refs.includes:
            target = _expand(item, os.path.dirname(path), home)
            included.append(target)
            queue.append((target, depth + 1))
    return hooks, included


def held_targets(config_file: str, hooks: str | None, includes: list[str],
                 worktrees: list[str], realpath: Callable[[str], str] = os.path.realpath) -> list[tuple[str, str]]:
    """(path, why) for what a config file's references make protected: its core.hooksPath (taken
    from each worktree when relative, as git does; husky 9's `.husky/_` is all of `.husky`, whose
    files its stubs run) and every file it includes. Shared by the planner and LiveGitRefs.

    Each also where it leads now (`realpath`): the host's git follows a symlink on the way, and
    the mediator judges a write by where it lands. `.husky -> hidden` (committed, or planted before
    the host set core.hooksPath) held only the name `.husky`; the sandbox wrote hidden/pre-commit
    and the host's next commit ran it (review rev). The name stays held as well: it and every
    symlink on the way to it cannot then be removed or renamed (blocks_move: it holds a held path)."""
    out: list[tuple[str, str]] = []
    if hooks:
        bases: list[str | None] = list(worktrees) if not hooks.startswith("/") else [None]
        for base in bases:
            target = os.path.normpath(os.path.join(base, hooks)) if base else hooks
            if os.path.basename(target) == "_":
                target = os.path.dirname(target)
            out.append((target, f"protected: core.hooksPath of {config_file} (hooks run outside)"))
    out += [(target, f"protected: included by {config_file} (git config)") for target in includes]
    resolved = []
    for target, why in out:
        real = realpath(target)
        if real != target:
            resolved.append((real, f"{why}, through a symlink at {target}"))
    return out + resolved
