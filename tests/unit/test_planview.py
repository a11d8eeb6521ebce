"""The --dry-run plan on a terminal (rich): what the command line, the policy and the host put in it
is shown as it is, never read as rich markup."""

from __future__ import annotations

import io

import pytest

from sandboxctl.cli import output, planview
from sandboxctl.plan.build import build_plan
from sandboxctl.plan.inputs import Invocation
from sandboxctl.policy.discover import load_named

from .test_plan import BASE_FILES, WS, fake_facts


def _terminal_view(monkeypatch: pytest.MonkeyPatch, plan) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr(output, "console", lambda stderr=False: Console(file=buffer, width=200, highlight=False,
                                                                        soft_wrap=False, color_system=None))
    planview.show(plan, terminal=True)
    return buffer.getvalue()


def test_brackets_in_the_command_and_the_environment_are_shown_not_read_as_markup(monkeypatch):
    invocation = Invocation(command=("echo", "[/]", "[red]x"), workspace=WS, run_id="r1", env=("X=[bold]v[/]",))
    plan = build_plan(load_named("default").policy, invocation, fake_facts(dict(BASE_FILES)))
    shown = _terminal_view(monkeypatch, plan)  # '[/]' raised MarkupError (an internal error, 125)
    assert "command: echo '[/]' '[red]x'" in shown
    assert "[bold]v[/]" in shown


def test_approvals_name_a_way_to_ask_only_when_the_mode_asks():
    from sandboxctl.cli import plantext

    asking = build_plan(load_named("default").policy, Invocation(command=("true",), workspace=WS, run_id="r1"),
                        fake_facts(dict(BASE_FILES), interactive=True))
    denying = build_plan(load_named("default").policy, Invocation(command=("true",), workspace=WS, run_id="r1"),
                         fake_facts(dict(BASE_FILES), interactive=False))
    assert plantext.approvals(asking) == "ask via tty (unanswered after 1m: deny)"
    assert plantext.approvals(denying) == "deny: every escape is denied at once, and logged"


def test_policy_list_shows_a_workspace_policys_words_inert_never_as_markup(tmp_path):
    """A workspace's .sandboxctl.yaml is anyone's text: '[/]' in it made `policy list` an internal
    error, and an ESC in its description reached the terminal."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path), "COLUMNS": "200"}
    for text, shown in (('version: 1\nname: "x[/]"\n', "name: 'x[/]'"),
                        ('version: 1\nname: x\ndescription: "evil [bold]\\x1b[31mred[/]"\n',
                         "evil [bold]\\x1b[31mred[/]")):
        (tmp_path / ".sandboxctl.yaml").write_text(text)
        result = subprocess.run([sys.executable, "-m", "sandboxctl", "policy", "list"], capture_output=True,
                                text=True, env=env, cwd=tmp_path, timeout=60)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert shown in result.stdout and "\x1b" not in result.stdout
