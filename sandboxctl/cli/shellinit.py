"""`sandboxctl shell-init bash|zsh|fish`: shell functions that run coding agents in their policies.

    eval "$(sandboxctl shell-init bash)"          # ~/.bashrc  (zsh: the same with zsh, in ~/.zshrc)
    sandboxctl shell-init fish | source           # ~/.config/fish/config.fish

For every agent with a built-in policy, a function of the agent's own name runs it through
`sandboxctl run -p POLICY -- AGENT ARGS...`. A function is defined only when the init code runs in a
shell whose PATH has the agent (an executable file: not an alias or a function, our own included),
so the same rc file is harmless on machines without it. `command AGENT` runs the real one unsandboxed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import typer

from sandboxctl.errors import SandboxError

SHELLS = ("bash", "zsh", "fish")

# command -> built-in policy. Only pairs whose policy is a built-in are emitted (so the list follows
# `builtin_names()`); a test checks every built-in is either here or in NOT_AGENTS.
AGENTS: dict[str, str] = {
    "claude": "claude-code",
    "codex": "codex",
    "aider": "aider",
}
NOT_AGENTS = frozenset({"base", "default", "ci", "offline"})  # built-ins that belong to no one command

_PLAIN = re.compile(r"[A-Za-z0-9_./+,:@=-]+\Z")  # needs no quotes in fish
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")  # a command name usable as a function name as is


def agents() -> list[tuple[str, str]]:
    """(command, policy) for every agent that has a built-in policy."""
    from sandboxctl.policy.load import builtin_names

    names = set(builtin_names())
    return [(command, policy) for command, policy in AGENTS.items() if policy in names]


def launcher() -> list[str]:
    """How the functions call sandboxctl: by name when it is on PATH (an upgrade or a moved venv keeps
    working), else the program running now (its absolute path, or this Python with -m sandboxctl,
    isolated: `python -m` would search the caller's current directory — the agent's workspace —
    for modules first, and import what a sandbox left there)."""
    if shutil.which("sandboxctl"):
        return ["sandboxctl"]
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name != "__main__.py" and argv0.is_file() and os.access(argv0, os.X_OK):
        return [str(argv0.resolve())]
    return [str(Path(sys.executable).absolute()), "-I", "-m", "sandboxctl"]


def fish_quote(text: str) -> str:
    """fish single quotes: only backslash and the quote itself are special inside them."""
    if _PLAIN.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def install_grants(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """command -> the read grants its install needs beyond its policy: an agent installed with npm
    --prefix, in a venv or under pyenv lies outside every built-in policy, and without them the
    function would end in `command not found` (127). Found now, on this shell's PATH."""
    import tempfile

    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.facts import gather
    from sandboxctl.plan.inputs import Invocation
    from sandboxctl.plan.locate import grantable, locate, shown
    from sandboxctl.policy.load import builtin_source, load_source

    found: dict[str, list[str]] = {}
    path_env = os.environ.get("PATH", "")
    with tempfile.TemporaryDirectory(prefix="sandboxctl-shell-init-") as workspace:  # not the cwd: a neutral one
        for command, policy in pairs:
            location = locate(command, path_env, workspace)
            if location is None:
                continue
            try:
                loaded = load_source(builtin_source(policy))
                plan = build_plan(loaded.policy, Invocation((command,), workspace, "shell-init"), gather())
            except SandboxError:
                continue  # the run itself will say what is wrong with the policy here
            found[command] = [root for root in location.roots
                              if not shown(plan.mounts, os.path.realpath(root)) and grantable(root, plan.home)]
    return found


def render(shell: str, pairs: list[tuple[str, str]] | None = None, sandboxctl: list[str] | None = None,
           grants: dict[str, list[str]] | None = None) -> str:
    if shell not in SHELLS:
        raise SandboxError(f"shell-init: unsupported shell {shell!r}", f"choose one of: {', '.join(SHELLS)}")
    pairs = agents() if pairs is None else pairs
    sandboxctl = launcher() if sandboxctl is None else sandboxctl
    grants = install_grants(pairs) if grants is None else grants
    for command, _policy in pairs:
        if not _NAME.match(command):
            raise SandboxError(f"shell-init: {command!r} cannot be a shell function name")
    load = ('sandboxctl shell-init fish | source' if shell == "fish"
            else f'eval "$(sandboxctl shell-init {shell})"')
    example = pairs[0][0] if pairs else "claude"
    lines = [
        f"# sandboxctl shell-init {shell}: run coding agents inside their sandboxctl policies.",
        f"# Load it from your {'config.fish' if shell == 'fish' else f'~/.{shell}rc'} with:  {load}",
        "# A function is defined only if its agent is on PATH when this runs; an agent installed outside the",
        "# system directories (npm --prefix, a venv, pyenv) gets its install directory read-only (--allow-read).",
        f"# Escape hatch: `command {example}` runs the agent itself, without the sandbox.",
    ]
    if shell == "fish":
        quote = fish_quote
        call = " ".join(["command", *map(quote, sandboxctl)])
        for command, policy in pairs:
            about = f"{command} inside the sandboxctl {policy} policy (`command {command}` runs it unsandboxed)"
            extra = "".join(f" --allow-read {quote(root)}" for root in grants.get(command, ()))
            lines += [
                f"if command -sq {quote(command)}",
                f"    function {command} --wraps {quote(command)} --description {quote(about)}",
                f"        {call} run -p {quote(policy)}{extra} -- {quote(command)} $argv",
                "    end",
                "end",
            ]
    else:
        quote = shlex.quote
        call = " ".join(["command", *map(quote, sandboxctl)])
        # bash: `type -P` and zsh: `whence -p` search PATH only (`command -v` would also accept an
        # alias or a function, this one after a second eval). `function NAME {` rather than
        # `NAME() {`: an alias of the same name (`alias claude='sandboxctl run …'`) is not expanded.
        found = "type -P" if shell == "bash" else "whence -p"
        for command, policy in pairs:
            extra = "".join(f" --allow-read {quote(root)}" for root in grants.get(command, ()))
            lines += [
                f"if {found} {quote(command)} >/dev/null 2>&1; then",
                f"  function {command} {{ {call} run -p {quote(policy)}{extra} -- {quote(command)} \"$@\"; }}",
                "fi",
            ]
    return "\n".join(lines) + "\n"


def complete_shell(incomplete: str) -> list[str]:
    return [shell for shell in SHELLS if shell.startswith(incomplete)]


def register(app: typer.Typer) -> None:
    @app.command("shell-init")
    def shell_init(
        shell: str = typer.Argument(..., metavar="bash|zsh|fish", autocompletion=complete_shell,
                                    help="The shell to print the functions for."),
    ) -> None:
        """Print shell functions that run the installed coding agents (claude, codex, aider) inside their
        built-in policies, e.g. `eval "$(sandboxctl shell-init bash)"` in ~/.bashrc."""
        print(render(shell), end="")
