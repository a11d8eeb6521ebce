"""`sandboxctl completion` and `sandboxctl shell-init`: the scripts, the committed copies, the answers.

Completion answers are asked for the way the shell scripts ask (no arguments, _SANDBOXCTL_COMPLETE
and the words typed so far in the environment); that the scripts themselves load and call back like
this in real shells is tests/integration/test_shell.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxctl.cli import completion, shellinit

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = ROOT / "completions"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != completion.COMPLETE_VAR}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=60)


def completion_env(shell: str, words: str) -> dict[str, str]:
    """The environment the completion script of `shell` sets for the command line `words` (cursor at the end)."""
    env = {completion.COMPLETE_VAR: f"complete_{shell}"}
    if shell == "bash":
        parts = shlex.split(words)
        if words.endswith(" ") or not parts:
            parts.append("")
        env.update(COMP_WORDS=" ".join(parts), COMP_CWORD=str(len(parts) - 1))
    else:
        env["_TYPER_COMPLETE_ARGS"] = words
        if shell == "fish":
            env["_TYPER_COMPLETE_FISH_ACTION"] = "get-args"
    return env


def parse(shell: str, out: str) -> list[str]:
    """The candidates in an answer (bash: one a line; fish: value<TAB>help; zsh: an _arguments call)."""
    if shell == "bash":
        return out.split()
    if shell == "fish":
        return [line.split("\t", 1)[0] for line in out.splitlines() if line]
    if not out.startswith("_arguments"):  # zsh: `_files` when nothing matches
        return []
    body = out.strip()[len("_arguments '*: :((") : -len("))'")]
    return [re.match(r'"((?:[^"]|"")*)"', line).group(1) for line in body.splitlines()]


@pytest.fixture
def complete(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Ask in-process, through main() with no arguments, as the scripts ask the installed program."""
    from sandboxctl.cli.main import main

    def ask(shell: str, words: str, cwd: Path | None = None) -> str:
        with monkeypatch.context() as patch:
            for name, value in completion_env(shell, words).items():
                patch.setenv(name, value)
            if cwd is not None:
                patch.chdir(cwd)
            with pytest.raises(SystemExit) as exit_:
                main([])
        out, err = capsys.readouterr()
        assert exit_.value.code == 0, err
        return out

    return ask


@pytest.fixture
def values(complete):
    def candidates(shell: str, words: str, cwd: Path | None = None) -> list[str]:
        return parse(shell, complete(shell, words, cwd))

    return candidates


# --- the committed scripts --------------------------------------------------------------------------


def _gen_script():
    spec = importlib.util.spec_from_file_location("gen_completions", ROOT / "scripts" / "gen_completions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_completions_are_not_stale() -> None:
    for shell in completion.SHELLS:
        path = COMPLETIONS / completion.FILES[shell]
        assert path.read_text(encoding="utf-8") == completion.script(shell), \
            f"{path.relative_to(ROOT)} is stale; run: python scripts/gen_completions.py"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_completions.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_gen_completions_check_detects_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _gen_script()
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "TARGET", tmp_path / "completions")
    assert module.main(["--check"]) == 1  # missing
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    stale = tmp_path / "completions" / "_sandboxctl"
    stale.write_text(stale.read_text() + "# edited by hand\n")
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    for shell in completion.SHELLS:
        assert (tmp_path / "completions" / completion.FILES[shell]).read_text() == \
            (COMPLETIONS / completion.FILES[shell]).read_text()


# --- `sandboxctl completion SHELL` ------------------------------------------------------------------


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_completion_prints_the_script(shell: str) -> None:
    result = cli("completion", shell)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == completion.script(shell)
    assert "_SANDBOXCTL_COMPLETE" in result.stdout
    assert f"_SANDBOXCTL_COMPLETE=complete_{shell}" in result.stdout


def test_zsh_script_can_be_autoloaded_from_fpath() -> None:
    assert completion.script("zsh").splitlines()[0] == "#compdef sandboxctl"


@pytest.mark.parametrize("args", [["completion", "tcsh"], ["completion", "BASH"], ["shell-init", "powershell"]])
def test_unsupported_shell_is_one_line_and_125(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 125
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("sandboxctl: error: ") and repr(args[1]) in lines[0], result.stderr
    assert all(line.startswith("  hint: ") for line in lines[1:]) and len(lines) <= 2, result.stderr


def test_completion_without_shell_is_a_usage_error() -> None:
    result = cli("completion")
    assert result.returncode == 125
    assert "Traceback" not in result.stderr and result.stderr.startswith("sandboxctl: error: ")


# --- the answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_subcommands_complete(values, shell: str) -> None:
    assert values(shell, "sandboxctl pol") == ["policy"]
    assert {"run", "policy", "completion", "shell-init", "doctor"} <= set(values(shell, "sandboxctl "))


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_run_policy_names_complete(values, shell: str) -> None:
    # the answer comes from typer: the `run` fast path in main.py never sees a completion call
    assert values(shell, "sandboxctl run -p de") == ["default"]
    assert values(shell, "sandboxctl run --policy cl") == ["claude-code"]


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_the_installed_program_answers_the_scripts_call(shell: str) -> None:
    # the scripts run `sandboxctl` with no arguments: main.py's `run` fast path (args[0] == "run")
    # cannot take it, also while `run -p` is being completed
    result = cli(env=completion_env(shell, "sandboxctl run -p de"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert parse(shell, result.stdout) == ["default"]


def test_policy_names_come_from_the_builtins_and_the_workspace(values, tmp_path: Path) -> None:
    from sandboxctl.policy.load import builtin_names

    assert values("bash", "sandboxctl run -p ", cwd=tmp_path) == builtin_names()
    (tmp_path / ".sandboxctl.yaml").write_text("not: [a, valid policy\n")  # broken: still offered
    assert values("bash", "sandboxctl run -p ", cwd=tmp_path) == [*builtin_names(), ".sandboxctl.yaml"]
    assert values("bash", "sandboxctl run -p .", cwd=tmp_path) == [".sandboxctl.yaml"]
    assert values("bash", "sandboxctl selftest -p .", cwd=tmp_path) == [".sandboxctl.yaml"]
    assert values("bash", "sandboxctl policy show .", cwd=tmp_path) == [".sandboxctl.yaml"]


def test_selftest_and_policy_show_complete_policy_names(values) -> None:
    from sandboxctl.policy.load import builtin_names

    assert values("bash", "sandboxctl selftest -p c") == [n for n in builtin_names() if n.startswith("c")]
    assert "claude-code" in values("bash", "sandboxctl selftest -p c")
    assert values("bash", "sandboxctl selftest --policy of") == ["offline"]
    assert values("bash", "sandboxctl policy show ba") == ["base"]


def test_run_options_and_their_fixed_values_complete(values) -> None:
    from sandboxctl.cli.runopts import RUN_OPTIONS

    offered = values("bash", "sandboxctl run --")
    assert {flag for o in RUN_OPTIONS for flag in o.flags if flag.startswith("--")} <= set(offered)
    assert values("bash", "sandboxctl run --net ") == ["none", "proxy", "host"]
    assert values("bash", "sandboxctl run --approve a") == ["ask", "allow"]
    assert values("bash", "sandboxctl completion ") == ["bash", "zsh", "fish"]
    assert values("bash", "sandboxctl shell-init f") == ["fish"]


def test_zsh_and_fish_answers_carry_descriptions(complete) -> None:
    zsh = complete("zsh", "sandboxctl run -p de")
    assert zsh.startswith("_arguments '*: :((") and '"default":"' in zsh
    fish = complete("fish", "sandboxctl run -p de").splitlines()
    assert len(fish) == 1 and fish[0].startswith("default\t")
    # every description stays on its line (typer renders help at 80 columns)
    for line in complete("fish", "sandboxctl run -p ").splitlines():
        assert "\t" in line and len(line.split("\t", 1)[1]) <= completion.HELP_WIDTH


def test_policy_parameters_get_the_completion_in_the_click_tree() -> None:
    from typer.main import get_command

    from sandboxctl.cli.main import build_app

    root = get_command(build_app())

    def param(path: list[str], name: str):
        command = root
        for part in path:
            command = command.commands[part]
        return next(p for p in command.params if p.name == name)

    for path, name in ((["run"], "policy"), (["selftest"], "policy"), (["policy", "show"], "spec")):
        assert param(path, name)._custom_shell_complete is not None, path
    assert param(["run"], "net")._custom_shell_complete is not None


def test_policy_candidates_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandboxctl.policy.load as load

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(load, "builtin_names", lambda: 1 / 0)
    (tmp_path / ".sandboxctl.yaml").write_text("")
    assert completion.policy_candidates("") == [(".sandboxctl.yaml", completion.policy_candidates("")[0][1])]


# --- shell-init -------------------------------------------------------------------------------------


def test_agent_table_follows_the_builtin_policies() -> None:
    from sandboxctl.policy.load import builtin_names

    names = set(builtin_names())
    assert set(shellinit.AGENTS.values()) <= names, "an agent's policy is no longer a built-in"
    assert names - set(shellinit.AGENTS.values()) == set(shellinit.NOT_AGENTS), \
        "a new built-in policy: add its command to shellinit.AGENTS (or to NOT_AGENTS)"
    assert shellinit.agents() == [("claude", "claude-code"), ("codex", "codex"), ("aider", "aider")]


@pytest.mark.parametrize("shell", shellinit.SHELLS)
def test_shell_init_wraps_every_agent(shell: str) -> None:
    result = cli("shell-init", shell)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "command claude" in text  # the escape hatch is named in the output
    for command, policy in shellinit.agents():
        if shell == "fish":
            assert f"if command -sq {command}\n" in text
            assert f"run -p {policy} -- {command} $argv" in text
        else:
            assert f"function {command} {{ command " in text
            assert f"run -p {policy} -- {command} \"$@\"; }}" in text


def test_launcher_prefers_sandboxctl_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shellinit.shutil, "which", lambda name: "/usr/local/bin/sandboxctl")
    assert shellinit.launcher() == ["sandboxctl"]


def test_launcher_falls_back_to_the_running_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shellinit.shutil, "which", lambda name: None)
    program = tmp_path / "venv dir" / "bin" / "sandboxctl"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    link = tmp_path / "sbx"
    link.symlink_to(program)
    monkeypatch.setattr(sys, "argv", [str(link), "shell-init", "bash"])
    assert shellinit.launcher() == [str(program)]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "sandboxctl" / "__main__.py"), "shell-init", "bash"])
    assert shellinit.launcher() == [str(Path(sys.executable).absolute()), "-I", "-m", "sandboxctl"]


def test_shell_init_quotes_the_launcher() -> None:
    odd = "/opt/it's a \"venv\" $HOME/bin/sandboxctl"
    bash = shellinit.render("bash", [("claude", "claude-code")], [odd])
    line = next(line for line in bash.splitlines() if line.startswith("  function claude"))
    body = line[len("  function claude { "):-len("; }")]
    assert shlex.split(body) == ["command", odd, "run", "-p", "claude-code", "--", "claude", "$@"]
    fish = shellinit.render("fish", [("claude", "claude-code")], [odd])
    assert "command '/opt/it\\'s a \"venv\" $HOME/bin/sandboxctl' run -p claude-code -- claude $argv" in fish


def test_fish_quote() -> None:
    assert shellinit.fish_quote("claude-code") == "claude-code"
    assert shellinit.fish_quote("a b") == "'a b'"
    assert shellinit.fish_quote("it's") == "'it\\'s'"
    assert shellinit.fish_quote("a\\b") == "'a\\\\b'"
    assert shellinit.fish_quote("") == "''"
    assert shellinit.fish_quote("~") == "'~'"


def test_shell_init_refuses_a_name_that_is_not_a_function_name() -> None:
    from sandboxctl.errors import SandboxError

    with pytest.raises(SandboxError):
        shellinit.render("bash", [("rm -rf", "default")], ["sandboxctl"])


def test_global_quiet_and_verbose_precede_any_command(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path)}
    for args in (["-q", "policy", "list"], ["--verbose", "policy", "list"], ["-q", "run", "--dry-run", "--", "true"]):
        result = subprocess.run([sys.executable, "-m", "sandboxctl", *args], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=60)
        assert result.returncode == 0, (args, result.stderr)


def test_log_event_completes_the_event_types_after_each_comma(values) -> None:
    from sandboxctl.log.query import EVENT_TYPES

    assert values("bash", "sandboxctl log --event ") == list(EVENT_TYPES)
    assert values("bash", "sandboxctl log --event n") == ["net"]
    assert values("bash", "sandboxctl log --event net,fi") == ["net,file"]
    assert "net,net" not in values("bash", "sandboxctl log --event net,")  # a chosen type is not offered again
    assert values("fish", "sandboxctl log --event ap") == ["approval"]
