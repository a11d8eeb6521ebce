"""The completion scripts and `shell-init` in real bash, zsh and fish.

Completion: each committed script loads without a word on stderr, and <Tab> really completes
through it (bash: COMP_WORDS/COMP_CWORD and the completion function; zsh: the function with
`_arguments` stubbed, as the completion system is interactive-only; fish: `complete -C`).
shell-init: the output parses in each shell, defines functions only for agents on PATH, passes
arguments through untouched, and a fake `claude` really runs inside `sandboxctl run -p claude-code`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.cli import completion, shellinit

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = ROOT / "completions"

SHELL_PATHS = {name: shutil.which(name) for name in ("bash", "zsh", "fish")}


def needs(shell: str):
    return pytest.mark.skipif(SHELL_PATHS[shell] is None,
                              reason=f"{shell} is not installed (apt-get install {shell}); its tests need it")


ALL_SHELLS = [pytest.param(shell, marks=needs(shell)) for shell in ("bash", "zsh", "fish")]


class Env:
    """A private HOME, a `sandboxctl` on PATH (this checkout's, run by this Python), a directory for
    fake agents, and the shell's own directory; nothing of the developer's PATH."""

    def __init__(self, tmp_path: Path, home: Path, workspace: Path):
        self.home = home
        self.workspace = workspace
        self.state = tmp_path / "state"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        launcher = self.bin / "sandboxctl"
        launcher.write_text(f"#!/bin/sh\nexec {shlex_quote(sys.executable)} -m sandboxctl \"$@\"\n")
        launcher.chmod(0o755)
        self.agents = home / ".local" / "bin"  # where claude's native installer puts it (granted by claude-code)
        self.agents.mkdir(parents=True)
        system = {str(Path(p).parent) for p in SHELL_PATHS.values() if p} | {"/usr/bin", "/bin"}
        self.path = ":".join([str(self.bin), str(self.agents), *sorted(system)])

    def vars(self, **extra: str) -> dict[str, str]:
        return {"PATH": self.path, "HOME": str(self.home), "XDG_STATE_HOME": str(self.state),
                "LANG": "C.UTF-8", **extra}

    def run(self, argv: list[str], timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.workspace, env=self.vars(**extra), capture_output=True, text=True,
                              timeout=timeout)

    def shell(self, shell: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        flags = {"bash": ["--norc", "--noprofile"], "zsh": [], "fish": ["--no-config"]}[shell]
        return self.run([SHELL_PATHS[shell], *flags, "-c", script], timeout=timeout)

    def fake_agent(self, name: str) -> Path:
        """An agent that prints its arguments, one per line, and whether it runs inside sandboxctl."""
        path = self.agents / name
        path.write_text("#!/bin/sh\nfor a in \"$@\"; do printf 'arg<%s>\\n' \"$a\"; done\n"
                        "echo \"SANDBOXCTL=${SANDBOXCTL:-}\"\n")
        path.chmod(0o755)
        return path

    def shell_init(self, shell: str) -> str:
        result = self.run(["sandboxctl", "shell-init", shell])
        assert result.returncode == 0, result.stderr
        return result.stdout


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


@pytest.fixture
def env(tmp_path: Path, home: Path, workspace: Path) -> Env:
    return Env(tmp_path, home, workspace)


# --- completion scripts -----------------------------------------------------------------------------


LOAD = {
    "bash": "source {script}",
    "zsh": "autoload -U compinit; compinit -u; source {script}",
    "fish": "source {script}",
}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_completion_script_loads(env: Env, shell: str) -> None:
    script = COMPLETIONS / completion.FILES[shell]
    result = env.run([SHELL_PATHS[shell], "-c", LOAD[shell].format(script=shlex_quote(str(script)))])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


BASH_COMPLETE = """
source {script}
complete -p sandboxctl
comp() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=()
         _sandboxctl_completion sandboxctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
         echo "[$*] ${{COMPREPLY[*]}}"; }}
comp sandboxctl pol
comp sandboxctl run -p de
comp sandboxctl selftest --policy cl
comp sandboxctl completion ''
"""


@needs("bash")
def test_bash_completes(env: Env) -> None:
    result = env.shell("bash", BASH_COMPLETE.format(script=shlex_quote(str(COMPLETIONS / "sandboxctl.bash"))))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "complete -o default -F _sandboxctl_completion sandboxctl"
    assert lines[1:] == ["[sandboxctl pol] policy", "[sandboxctl run -p de] default",
                         "[sandboxctl selftest --policy cl] claude-code", "[sandboxctl completion ] bash zsh fish"]


ZSH_COMPLETE = """
autoload -U compinit; compinit -u
source {script}
_arguments() {{ print -r -- "$@" }}   # the completion system's own only runs inside zle
comp() {{ words=("$@"); CURRENT=$#words; _sandboxctl_completion }}
comp sandboxctl pol
comp sandboxctl run -p de
print -r -- ${{_comps[sandboxctl]}}
"""


@needs("zsh")
def test_zsh_completes(env: Env) -> None:
    result = env.shell("zsh", ZSH_COMPLETE.format(script=shlex_quote(str(COMPLETIONS / "_sandboxctl"))))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith('*: :(("policy":'), result.stdout
    assert lines[1].startswith('*: :(("default":'), result.stdout
    assert lines[-1] == "_sandboxctl_completion"


ZSH_FPATH = """
fpath=({folder} $fpath)
autoload -U compinit; compinit -u
print -r -- "bound: ${{_comps[sandboxctl]}}"
_arguments() {{ print -r -- "$@" }}
words=(sandboxctl pol); CURRENT=2; ${{_comps[sandboxctl]}}
print -r -- "bound: ${{_comps[sandboxctl]}}"
words=(sandboxctl run -p de); CURRENT=4; ${{_comps[sandboxctl]}}
"""


@needs("zsh")
def test_zsh_script_installed_in_fpath_answers_the_first_tab(env: Env, tmp_path: Path) -> None:
    folder = tmp_path / "site-functions"  # as a package installs it: /usr/share/zsh/vendor-completions
    folder.mkdir()
    shutil.copy(COMPLETIONS / "_sandboxctl", folder / "_sandboxctl")
    result = env.shell("zsh", ZSH_FPATH.format(folder=shlex_quote(str(folder))))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "bound: _sandboxctl"  # compinit read `#compdef sandboxctl`
    assert lines[1].startswith('*: :(("policy":'), result.stdout  # the first <Tab> answers already
    assert lines[2] == "bound: _sandboxctl_completion"
    assert lines[3].startswith('*: :(("default":'), result.stdout


INSTALLED = {  # a new interactive shell after the README's install line
    "bash": ["-i", "-c", "complete -p sandboxctl"],
    "zsh": ["-i", "-c", "print -r -- ${_comps[sandboxctl]}"],
    "fish": ["-c", "complete -C 'sandboxctl pol'"],
}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_readme_install_line_works(env: Env, shell: str) -> None:
    install = env.run([SHELL_PATHS[shell], "-c", completion.INSTALL[shell]])
    assert install.returncode == 0, install.stderr
    result = env.run([SHELL_PATHS[shell], *INSTALLED[shell]], TERM="dumb")
    assert result.returncode == 0, result.stderr
    expected = {"bash": "complete -o default -F _sandboxctl_completion sandboxctl",
                "zsh": "_sandboxctl_completion", "fish": "policy"}[shell]
    assert expected in result.stdout.splitlines()[-1], result.stdout + result.stderr


FISH_COMPLETE = """
source {script}
complete -C 'sandboxctl pol'
complete -C 'sandboxctl run -p de'
complete -C 'sandboxctl run --net '
"""


@needs("fish")
def test_fish_completes(env: Env) -> None:
    result = env.shell("fish", FISH_COMPLETE.format(script=shlex_quote(str(COMPLETIONS / "sandboxctl.fish"))))
    assert result.returncode == 0, result.stderr
    found = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert found == ["policy", "default", "host", "none", "proxy"], result.stdout


# --- shell-init -------------------------------------------------------------------------------------


CHECK = {"bash": ["-n"], "zsh": ["-n"], "fish": ["--no-execute"]}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_shell_init_parses(env: Env, shell: str, tmp_path: Path) -> None:
    env.fake_agent("claude")
    script = tmp_path / f"init.{shell}"
    script.write_text(env.shell_init(shell))
    result = env.run([SHELL_PATHS[shell], *CHECK[shell], str(script)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


DEFINED = {
    "bash": 'eval "$(sandboxctl shell-init bash)"; for c in {names}; do printf "%s=%s\\n" $c "$(type -t $c)"; done',
    "zsh": 'eval "$(sandboxctl shell-init zsh)"; '
           'for c in {names}; do print -r -- "$c=${{functions[$c]:+function}}"; done',
    "fish": 'sandboxctl shell-init fish | source; for c in {names}; '
            'if functions -q $c; echo "$c=function"; else; echo "$c="; end; end',
}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_shell_init_defines_only_agents_on_path(env: Env, shell: str) -> None:
    env.fake_agent("claude")
    names = [command for command, _ in shellinit.agents()]
    result = env.shell(shell, DEFINED[shell].format(names=" ".join(names)))
    assert result.returncode == 0, result.stderr
    defined = dict(line.split("=", 1) for line in result.stdout.splitlines())
    for command in names:
        on_path = shutil.which(command, path=env.path) is not None
        assert defined[command] == ("function" if on_path else ""), (command, result.stdout)
    assert defined["claude"] == "function"


# Each shell calls the wrapper with awkward arguments; a fake sandboxctl shows what it receives.
PASS_THROUGH = {
    "bash": """eval "$(cat {init})"; claude --version 'a b' '' '$HOME' "it's" """,
    "zsh": """eval "$(cat {init})"; claude --version 'a b' '' '$HOME' "it's" """,
    "fish": """source {init}; claude --version 'a b' '' '$HOME' "it's" """,
}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_shell_init_passes_arguments_through_a_quoted_launcher(env: Env, shell: str, tmp_path: Path) -> None:
    env.fake_agent("claude")
    odd = tmp_path / "it's a \"dir\" $x"  # the fallback launcher may live anywhere
    odd.mkdir()
    launcher = odd / "sandboxctl"
    launcher.write_text("#!/bin/sh\nfor a in \"$@\"; do printf 'arg<%s>\\n' \"$a\"; done\n")
    launcher.chmod(0o755)
    init = tmp_path / f"init.{shell}"
    init.write_text(shellinit.render(shell, [("claude", "claude-code")], [str(launcher)]))
    result = env.shell(shell, PASS_THROUGH[shell].format(init=shlex_quote(str(init))))
    assert result.returncode == 0, result.stderr
    expected = ["run", "-p", "claude-code", "--", "claude", "--version", "a b", "", "$HOME", "it's"]
    assert result.stdout.splitlines() == [f"arg<{a}>" for a in expected]


@needs("bash")
def test_shell_init_is_not_broken_by_an_alias_of_the_same_name(env: Env) -> None:
    env.fake_agent("claude")  # the README's alias, then the init code: `claude() {` would be a syntax error
    script = ("shopt -s expand_aliases\nalias claude='echo aliased'\n"
              'eval "$(sandboxctl shell-init bash)"\nunalias claude\ntype -t claude\n')
    result = env.shell("bash", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "function"


SANDBOXED = {
    "bash": 'eval "$(sandboxctl shell-init bash)"; claude --version "a b"; echo "rc=$?"; command claude direct',
    "zsh": 'eval "$(sandboxctl shell-init zsh)"; claude --version "a b"; echo "rc=$?"; command claude direct',
    "fish": 'sandboxctl shell-init fish | source; claude --version "a b"; echo "rc=$status"; command claude direct',
}


@pytest.mark.parametrize("shell", ALL_SHELLS)
def test_shell_init_runs_the_agent_inside_its_policy(env: Env, shell: str) -> None:
    env.fake_agent("claude")
    (env.home / ".claude").mkdir()  # the claude-code policy grants both writable: they must exist
    (env.home / ".claude.json").write_text("{}\n")
    result = env.shell(shell, SANDBOXED[shell], timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "arg<--version>", "arg<a b>", "SANDBOXCTL=1", "rc=0",  # through sandboxctl run -p claude-code
        "arg<direct>", "SANDBOXCTL=",  # the escape hatch: the agent itself
    ], result.stdout + result.stderr
    log = env.state / "sandboxctl" / "actions.jsonl"
    starts = [r for r in map(json.loads, log.read_text().splitlines()) if r["event"] == "run.start"]
    assert [(r["policy"], r["argv"]) for r in starts] == [("claude-code", ["claude", "--version", "a b"])]
