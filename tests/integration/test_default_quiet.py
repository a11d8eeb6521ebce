"""Under the default policy, tools do not try the network for their own update checks: no denial
to log and show for what the user never asked (npm's registry.npmjs.org at every command), judged
from the action log outside. Set back with --env, the check is made again: the env is the cause."""

from __future__ import annotations

import shutil

import pytest

from sandboxctl.plan.build import build_plan
from sandboxctl.plan.inputs import Invocation
from sandboxctl.policy.discover import load_named
from tests.unit.test_plan import BASE_FILES, WS, fake_facts


@pytest.mark.parametrize("policy", ["default", "ci", "claude-code", "codex", "aider"])
def test_the_update_checks_are_off_in_default_and_what_extends_it(policy: str) -> None:
    plan = build_plan(load_named(policy).policy, Invocation(command=("true",), workspace=WS, run_id="r1"),
                      fake_facts(dict(BASE_FILES)))
    env = dict(plan.env)
    assert env["NPM_CONFIG_UPDATE_NOTIFIER"] == "false" and env["NO_UPDATE_NOTIFIER"] == "1"
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"


def _net_denials(sandbox) -> list[tuple[str, int]]:
    return [(r.get("host"), r.get("port")) for r in sandbox.records() if r["event"] == "net"
            and r.get("decision") == "deny"]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_makes_no_request_of_its_own(sandbox) -> None:
    result = sandbox.run("--approve", "deny", "--", "npm", "init", "-y")
    assert result.returncode == 0, result.stderr
    assert (sandbox.workspace / "package.json").exists()
    assert _net_denials(sandbox) == []
    assert "denied" not in result.stderr
    (sandbox.workspace / "package.json").unlink()
    again = sandbox.run("--approve", "deny", "--env", "NPM_CONFIG_UPDATE_NOTIFIER=true", "--", "npm", "init", "-y")
    assert again.returncode == 0, again.stderr
    assert ("registry.npmjs.org", 443) in _net_denials(sandbox)  # the check the setting stops
