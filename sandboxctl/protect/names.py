"""Which entries are protected, and why (pure data and one pure function).

Two kinds of names:

- at the root of every writable grant (the workspace, a writable home, any filesystem.write
  directory): start-up files of shells and tools, editor and agent configuration, the
  repository's `.git` and `.gitmodules`, sandboxctl's own workspace policy. Each runs code, or
  makes a program run code, the next time the user works there outside the sandbox.
- inside a repository's git directory (any `.git`, a submodule's `.git/modules/<name>`, a
  worktree's `.git/worktrees/<name>`, a bare repository): everything that makes git run a
  program or look elsewhere. What git writes in normal work (objects, refs, index, HEAD, logs,
  the rebase and merge state) stays writable.

A new `.git` is refused anywhere: a repository created inside would have its config and hooks
run by the host's git (or an editor's git integration scanning sub-folders) later.

Names are compared folded (`fold_name`): on a case-insensitive directory or file system (casefold
directories of ext4, tmpfs and f2fs; exFAT, FAT, NTFS mounted so; FUSE ones) the kernel resolves
`.GIT/config` or `.git/CONFIG` to the real `.git/config`, so every spelling that some folding
makes equal to a protected name is that name, on case-sensitive file systems too (fail closed:
nobody names a directory `.Git` there for real work).
"""

from __future__ import annotations

import functools

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import re

GIT = ".git"

# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties): Linux's casefolding before 6.13
# and HFS+ drop them, so `.g\u200cit` was `.git` there.
_IGNORABLE = (r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
              r"\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
              r"\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
_ignorable: re.Pattern[str] | None = None


def fold_name(name: str) -> str:
    """One directory entry's name as a case-insensitive file system may take it: lower case (full
    Unicode case folding, and a character whose upper case is ASCII taken as that: exFAT's and
    NTFS's up-case tables map dotless i to I), compatibility-decomposed, without the code points
    some foldings ignore, without an NTFS stream name (`config::$DATA` is the file's content
    where streams are named so) and without trailing dots and spaces (FAT and exFAT drop them:
    `config.` is `config`). Conservative: a name any of those foldings makes protected is."""
    folded = name.lower() if name.isascii() else _fold_unicode(name)
    if ":" in folded and folded[0] != ":":  # NTFS streams (ntfs-3g streams_interface=windows): config::$DATA
        folded = folded.split(":", 1)[0]
    trimmed = folded.rstrip(". ")
    return trimmed or folded  # "." and ".." stay themselves


@functools.lru_cache(maxsize=4096)
def _fold_unicode(name: str) -> str:
    global _ignorable
    import unicodedata  # only for names that are not ASCII

    if _ignorable is None:
        import re  # as unicodedata: ~2.5 ms of import a run of ASCII names never needs

        _ignorable = re.compile(_IGNORABLE)
    out = []
    for char in unicodedata.normalize("NFKD", _ignorable.sub("", name)):
        if char.isascii():
            out.append(char.lower())
            continue
        ascii_form = next((c for c in (char.casefold(), char.upper().casefold(), char.lower()) if c.isascii()), None)
        out.append(ascii_form.lower() if ascii_form is not None else char.casefold())
    return "".join(out)


def fold_path(path: str) -> str:
    """fold_name of each component (so a folded path is still a path: prefixes are kept)."""
    if path.isascii():
        low = path.lower()
        if not (low.endswith((".", " ")) or "./" in low or " /" in low or ":" in low):
            return low
    return "/".join(fold_name(part) if part else part for part in path.split("/"))


def is_git_name(name: str) -> bool:
    """A directory entry git may take for `.git` (on a case-insensitive directory it is one)."""
    return fold_name(name) == GIT

# Names at the root of every writable grant. Multi-part names protect that sub-path.
ROOT_NAMES: dict[str, str] = {
    ".git": "the repository: its config and hooks run on every git command",
    ".gitmodules": "submodule paths and URLs that git follows",
    ".gitconfig": "git's configuration where this is a home (aliases, pager, hooks, filters run programs)",
    ".config/git": "git's XDG configuration (config, attributes, hooks)",
    ".sandboxctl.yaml": "sandboxctl's workspace policy",
    # shells and what they source
    ".bashrc": "run by every interactive bash",
    ".bash_profile": "run by bash login shells",
    ".bash_login": "run by bash login shells",
    ".bash_logout": "run when a bash login shell exits",
    ".profile": "run by sh/bash/dash login shells",
    ".zshrc": "run by every interactive zsh",
    ".zshenv": "run by every zsh",
    ".zprofile": "run by zsh login shells",
    ".zlogin": "run by zsh login shells",
    ".zlogout": "run when a zsh login shell exits",
    ".kshrc": "run by interactive ksh",
    ".cshrc": "run by csh/tcsh",
    ".tcshrc": "run by tcsh",
    ".config/fish": "fish's config.fish and functions run in every fish",
    ".inputrc": "readline key bindings can type commands",
    ".bash_aliases": "sourced by Debian's and Ubuntu's .bashrc",
    ".envrc": "direnv runs it on entering the directory",
    # tools that read project config and run programs from it
    ".npmrc": "npm config can set script-shell, node-options and git",
    ".yarnrc": "yarn 1 config (yarn-path runs a program)",
    ".yarnrc.yml": "yarn berry config (yarnPath runs a program)",
    ".pnpmfile.cjs": "pnpm runs its hooks on every install",
    ".ripgreprc": "ripgrep options (--pre runs a program)",
    ".pre-commit-config.yaml": "the pre-commit hook runs what it lists at the next commit",
    "lefthook.yml": "lefthook's git hook runs what it lists",
    ".lefthook.yml": "lefthook's git hook runs what it lists",
    ".config/lefthook.yml": "lefthook's git hook runs what it lists",
    "lefthook.yaml": "lefthook's git hook runs what it lists",
    ".lefthook.yaml": "lefthook's git hook runs what it lists",
    ".config/lefthook.yaml": "lefthook's git hook runs what it lists",
    "lefthook.toml": "lefthook's git hook runs what it lists",
    ".lefthook.toml": "lefthook's git hook runs what it lists",
    ".config/lefthook.toml": "lefthook's git hook runs what it lists",
    "lefthook.json": "lefthook's git hook runs what it lists",
    ".lefthook.json": "lefthook's git hook runs what it lists",
    ".config/lefthook.json": "lefthook's git hook runs what it lists",
    "lefthook.jsonc": "lefthook's git hook runs what it lists",
    ".lefthook.jsonc": "lefthook's git hook runs what it lists",
    ".config/lefthook.jsonc": "lefthook's git hook runs what it lists",
    "lefthook-local.yml": "lefthook's local config, merged in (even without a main one)",
    ".lefthook-local.yml": "lefthook's local config, merged in (even without a main one)",
    ".config/lefthook-local.yml": "lefthook's local config, merged in (even without a main one)",
    "lefthook-local.yaml": "lefthook's local config, merged in (even without a main one)",
    ".lefthook-local.yaml": "lefthook's local config, merged in (even without a main one)",
    ".config/lefthook-local.yaml": "lefthook's local config, merged in (even without a main one)",
    "lefthook-local.toml": "lefthook's local config, merged in (even without a main one)",
    ".lefthook-local.toml": "lefthook's local config, merged in (even without a main one)",
    ".config/lefthook-local.toml": "lefthook's local config, merged in (even without a main one)",
    "lefthook-local.json": "lefthook's local config, merged in (even without a main one)",
    ".lefthook-local.json": "lefthook's local config, merged in (even without a main one)",
    ".config/lefthook-local.json": "lefthook's local config, merged in (even without a main one)",
    "lefthook-local.jsonc": "lefthook's local config, merged in (even without a main one)",
    ".lefthook-local.jsonc": "lefthook's local config, merged in (even without a main one)",
    ".config/lefthook-local.jsonc": "lefthook's local config, merged in (even without a main one)",
    ".lefthook": "lefthook's source_dir: the scripts its git hooks run",
    ".lefthook-local": "lefthook's source_dir_local: the scripts its git hooks run",
    "mise.toml": "mise runs its hooks and tasks, and sources its env files, on entering the directory",
    ".mise.toml": "mise config (hooks, env sourcing, tasks)",
    "mise.local.toml": "mise config (hooks, env sourcing, tasks)",
    ".mise.local.toml": "mise config (hooks, env sourcing, tasks)",
    "mise/config.toml": "mise config (hooks, env sourcing, tasks)",
    ".mise": "mise's config directory (config.toml, config.<env>.toml, conf.d/, tasks)",
    "mise/conf.d": "mise loads every *.toml there as config (hooks, env sourcing, tasks)",
    ".config/mise": "mise config directory (config.toml, tasks)",
    ".config/mise.toml": "mise config (hooks, env sourcing, tasks)",
    ".tool-versions": "asdf's and mise's versions: a `path:` one puts a directory's programs behind their shims "
                      "and on PATH (mise activate) when entering the directory",
    # toolchains that run a program the project names, whatever the command
    "rust-toolchain.toml": "rustup's toolchain file: `path` makes every cargo and rustc there run that toolchain",
    "rust-toolchain": "rustup's toolchain file: `path` makes every cargo and rustc there run that toolchain",
    ".cargo/config.toml": "cargo config read from the working directory up: rustc-wrapper, runners and "
                          "credential providers run programs in any build or install there",
    ".cargo/config": "cargo config read from the working directory up: rustc-wrapper, runners and "
                     "credential providers run programs in any build or install there",
    ".yarn/releases": "where yarnPath points (yarn set version): every yarn command there runs it",
    ".yarn/plugins": "yarn plugins listed in .yarnrc.yml: loaded by every yarn command there",
    # editors
    ".vscode": "VS Code tasks (runOn: folderOpen), launch configs and settings that run programs",
    ".idea": "JetBrains run configurations and startup tasks",
    ".run": "JetBrains run configurations stored as project files (a startup task runs one when the project opens)",
    ".zed": "Zed tasks and language-server commands",
    ".devcontainer": "devcontainer.json initializeCommand runs on the host",
    ".devcontainer.json": "initializeCommand runs on the host",
    ".vimrc": "vim's startup file (and exrc in the project)",
    ".exrc": "vi/vim exrc, read in the project with 'exrc' set",
    ".nvimrc": "neovim exrc",
    ".nvim.lua": "neovim exrc",
    ".config/nvim": "neovim's configuration",
    ".emacs": "Emacs' init file",
    ".emacs.d": "Emacs' init directory",
    ".dir-locals.el": "Emacs directory-local variables (eval forms)",
    # coding agents
    ".claude": "Claude Code project settings: hooks and permissions run commands",
    ".mcp.json": "Claude Code project MCP servers (commands it starts)",
    ".codex": "Codex CLI project config: MCP servers and sandbox settings",
    ".cursor": "Cursor project MCP servers and rules",
    ".gemini": "Gemini CLI settings: MCP servers, tool discovery and call commands",
    ".continue": "Continue config: MCP servers and commands",
    ".aider.conf.yml": "aider config: lint-cmd and test-cmd run commands",
    ".windsurf": "Windsurf rules and workflows",
    ".windsurfrules": "Windsurf rules",
    "opencode.json": "opencode project config: MCP servers and commands it starts",
    "opencode.jsonc": "opencode project config: MCP servers and commands it starts",
    ".opencode": "opencode plugins (code it loads at start), commands and agents",
    "crush.json": "Crush project config: MCP servers and language servers it starts",
    ".crush.json": "Crush project config: MCP servers and language servers it starts",
    ".kiro": "Kiro agent hooks (shell commands on file events) and MCP servers",
    ".roo": "Roo Code project MCP servers",
    ".amazonq": "Amazon Q Developer project MCP servers",
    ".qwen": "Qwen Code settings: MCP servers, tool discovery and call commands",
    ".clinerules": "Cline rules and hooks (hooks/ run commands)",
    ".junie": "JetBrains Junie project MCP servers",
}

# At the root of a writable *home* only (they are ordinary names in a project): what the user's
# shell, session and tools run from their home directory.
HOME_NAMES: dict[str, str] = {
    "bin": "first in PATH where it exists (Debian's .profile)",
    ".local/bin": "first in PATH where it exists (Debian's .profile); pip --user installs scripts there",
    ".local/lib": "Python's user site-packages: its .pth files run in every python",
    ".local/share/direnv": "direnv's allow list (which .envrc files run)",
    ".config/systemd": "systemd user units run at login",
    ".config/autostart": "XDG autostart entries run at login",
    ".config/environment.d": "the session environment (PATH, LD_PRELOAD)",
    ".config/Code/User": "VS Code user settings and tasks",
    ".config/zed": "Zed user settings and tasks",
    ".config/emacs": "Emacs' init directory",
    ".vim": "vim plugins run at start",
    ".tmux.conf": "tmux runs commands from it",
    ".gdbinit": "gdb runs it at start",
    ".pdbrc": "pdb runs it at start",
    ".psqlrc": "psql runs it at start",
    ".hgrc": "Mercurial hooks and aliases",
    ".gradle/init.d": "Gradle init scripts run in every build",
    ".gradle/init.gradle": "a Gradle init script run in every build",
    ".claude/settings.json": "Claude Code user hooks and permissions",
    ".claude/settings.local.json": "Claude Code user hooks and permissions",
}

# Anywhere beneath a writable grant: the programs the supervisor itself runs from the caller's
# PATH, outside the sandbox. PATH may name a directory there only in a later run (a project venv
# activated after this one: WORKSPACE/.venv/bin), so no directory of the grant may hold them.
ANYWHERE_NAMES: dict[str, str] = {
    "bwrap": "the supervisor runs bwrap from your PATH, outside the sandbox (a later PATH may lead here)",
    "runsc": "the supervisor runs runsc from your PATH, outside the sandbox (a later PATH may lead here)",
}


def anywhere_reason(parts: tuple[str, ...]) -> str | None:
    """Why parts (folded, relative to the root of a writable grant) hold an ANYWHERE_NAMES entry."""
    for part in parts:
        why = ANYWHERE_NAMES.get(part)
        if why:
            return f"{part}: {why}"
    return None


# The host's own git reads these in every repository (core.hooksPath and includes there count too).
GLOBAL_GIT_CONFIGS = ("{home}/.gitconfig", "{home}/.config/git/config", "/etc/gitconfig")

# Inside a git directory: entries that make git run programs or look elsewhere.
GITDIR_NAMES: dict[str, str] = {
    "config": "git config: core.fsmonitor, core.hooksPath, aliases and filters run programs",
    "config.lock": "the lock through which config is rewritten",
    "config.worktree": "per-worktree git config",
    "config.worktree.lock": "the lock through which config.worktree is rewritten",
    "hooks": "git hooks run on commit, checkout, merge and push",
    "commondir": "points git at another repository's config and hooks",
    "gitdir": "a worktree's pointer to its checkout",
    "info": "attributes, excludes, grafts and sparse-checkout rules git applies",
    "modules": "submodules' own repositories",
    "worktrees": "linked worktrees' repositories",
    "remotes": "legacy remote definitions: git fetch and pull take an unconfigured remote's URL from here",
    "branches": "legacy remote definitions: git fetch and pull take an unconfigured remote's URL from here",
}
GITDIR_DEEP: dict[tuple[str, ...], str] = {
    ("objects", "info", "alternates"): "makes git read objects from another place",
    ("objects", "info", "http-alternates"): "makes git fetch objects from another place",
    ("refs", "replace"): "replace refs change the history git shows",
}


# the tables by folded name (all of them are ASCII): folded name -> the name as written above
_ROOT_FOLDED = {fold_path(name): name for name in ROOT_NAMES}
_HOME_FOLDED = {fold_path(name): name for name in HOME_NAMES}
_GITDIR_FOLDED = {fold_name(name): name for name in GITDIR_NAMES}
GITDIR_MARKERS = ("HEAD", "objects", "refs", "commondir")  # what makes git take a directory for a repository
_MARKERS_FOLDED = {fold_name(name): name for name in GITDIR_MARKERS}


def gitdir_marker(name: str) -> str | None:
    """The marker (HEAD, objects, refs, commondir) a directory entry's name is, folded."""
    return _MARKERS_FOLDED.get(fold_name(name))


# Names at the root of every writable grant by a pattern (git's glob: `*` never crosses a `/`),
# compared folded: held by the rules only (refused when written under bwrap), not recorded at
# launch like ROOT_NAMES.
ROOT_GLOBS: dict[str, str] = {
    "*.code-workspace": "a VS Code workspace file: its tasks (runOn: folderOpen) and settings run programs",
    ".envrc.*": "shell code an .envrc sources on entering the directory (source_env_if_exists .envrc.local): "
                "direnv's allow covers the .envrc alone",
    "mise.*.toml": "mise's config for an environment or a local one (mise.dev.toml, mise.dev.local.toml): "
                   "hooks, env sourcing, tasks",
    ".mise.*.toml": "mise's config for an environment or a local one: hooks, env sourcing, tasks",
    "mise/config.*.toml": "mise's config for an environment or a local one: hooks, env sourcing, tasks",
    ".config/mise.*.toml": "mise's config for an environment or a local one: hooks, env sourcing, tasks",
    "*.iml": "a JetBrains module file, read when the project opens (its settings, as .idea/ holds the project's)",
    "*.ipr": "a JetBrains project file (the file-based format of .idea/: run configurations and startup tasks)",
    "*.iws": "a JetBrains workspace file (the file-based format of .idea/: run configurations and startup tasks)",
}


def _glob_match(name: str, head: str, tail: str) -> bool:
    """fnmatch of one folded component against a glob with one `*` (head*tail, what ROOT_GLOBS
    holds): string comparisons, not `re` (~4 ms a run's start-up need not pay, lazyre.py)."""
    return len(name) >= len(head) + len(tail) and name.startswith(head) and name.endswith(tail)


class _Globs:
    """ROOT_GLOBS split once: the one-part globs as (head, tail, glob), with the heads and tails
    a match must start or end with (one str call each turns away every other name: this is asked
    for every mediated path's first component), and the two-part ones by their folded directory."""

    def __init__(self) -> None:
        self.single = tuple((*glob.split("*", 1), glob) for glob in ROOT_GLOBS if "/" not in glob)
        self.heads = tuple(head for head, _, _ in self.single if head)
        self.tails = tuple(tail for _, tail, _ in self.single if tail)
        double: dict[str, list[tuple[str, str, str]]] = {}
        for glob in ROOT_GLOBS:
            if "/" in glob:
                first, rest = glob.split("/", 1)
                double.setdefault(fold_name(first), []).append((*rest.split("*", 1), glob))
        self.double = {first: tuple(rest) for first, rest in double.items()}


@functools.cache
def _globs() -> _Globs:
    return _Globs()


def root_glob_reason(parts: tuple[str, ...]) -> str | None:
    """Why parts (relative to the root of a writable grant) fall under a ROOT_GLOBS entry, folded."""
    if not parts:
        return None
    globs = _globs()
    first = fold_name(parts[0])
    found = None
    if first.endswith(globs.tails) or first.startswith(globs.heads):
        found = next((glob for head, tail, glob in globs.single if _glob_match(first, head, tail)), None)
    if found is None and len(parts) >= 2 and first in globs.double:
        second = fold_name(parts[1])
        found = next((glob for head, tail, glob in globs.double[first] if _glob_match(second, head, tail)), None)
    return None if found is None else f"{found}: {ROOT_GLOBS[found]}"


def root_name_reason(parts: tuple[str, ...], home: bool = False) -> str | None:
    """Why parts (relative to the root of a writable grant) fall under a protected root name
    (and, at the root of a writable home, under a home name); compared folded."""
    if parts:
        why = root_glob_reason(parts)
        if why:
            return why
    for length in (3, 2, 1):
        if len(parts) < length:
            continue
        folded = fold_path("/".join(parts[:length]))
        name = _ROOT_FOLDED.get(folded)
        if name is not None and name != GIT:
            return f"{name}: {ROOT_NAMES[name]}"
        name = _HOME_FOLDED.get(folded) if home else None
        if name is not None:
            return f"~/{name}: {HOME_NAMES[name]}"
    return None


@functools.cache
def prefixes_of_names(home: bool = False) -> frozenset[tuple[str, ...]]:
    """The proper prefixes of multi-part names (.config for .config/git): a directory moved to
    such a place would bring the protected name in with it."""
    found: set[tuple[str, ...]] = set()
    for name in (*ROOT_NAMES, *(HOME_NAMES if home else ()), *ROOT_GLOBS):
        parts = tuple(fold_path(name).split("/"))
        found.update(parts[:i] for i in range(1, len(parts)))
    return frozenset(found)


def gitdir_reason(parts: tuple[str, ...]) -> str | None:
    """Why a path inside a git directory (parts relative to it) is protected, if it is (compared
    folded: `CONFIG` is `config` on a case-insensitive directory).

    modules/ and worktrees/ hold other git directories: the ones the index found are judged on
    their own (rules.Protection picks the innermost git directory); anything else there is
    protected, so a new submodule or worktree repository cannot be made."""
    if not parts:
        return None
    folded = tuple(fold_name(part) for part in parts[:3])
    for deep, why in GITDIR_DEEP.items():
        if folded[:len(deep)] == deep:
            return f"{'/'.join(deep)}: {why}"
    head = _GITDIR_FOLDED.get(folded[0])
    if head is not None:
        return f"{head}: {GITDIR_NAMES[head]}"
    return None
