"""The `sandboxctl` script scripts/setup writes (sandboxctl/console_script.py): python -I -S.

It must be the same program as pip's entry point — the same plan down to every protected path
(the venv's own included, which `site` would have named through sys.prefix) — and nothing of
the caller's PYTHON* environment may put code into the supervisor. Judged from outside: the plan
as --dry-run prints it, exit codes, and a canary file that injected code would write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sandboxctl import console_script


def _script(tmp_path) -> str:
    path = tmp_path / "sandboxctl"
    subprocess.run([sys.executable, "-m", "sandboxctl.console_script", str(path)], check=True, timeout=60)
    assert os.stat(path).st_mode & 0o777 == 0o755
    return str(path)


def _plan(argv: list[str], sandbox) -> dict:
    result = subprocess.run([*argv, "run", "-q", "-p", "default", "--dry-run", "--json", "--", "/bin/true"],
                            cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    run_id = plan.pop("run_id")
    plan["env"] = {k: v for k, v in plan["env"].items() if v != run_id}
    plan["bwrap_argv"] = [word.replace(run_id, "RUN") for word in plan["bwrap_argv"]]
    return plan


def test_the_script_starts_the_interpreter_without_site_and_plans_as_pip_s_does(sandbox, tmp_path):
    script = _script(tmp_path)
    with open(script) as handle:
        assert handle.readline() == f"#!{sys.executable} -IS\n"
    ours, pips = _plan([script], sandbox), _plan([sys.executable, "-m", "sandboxctl"], sandbox)
    assert ours == pips
    protected = [path for path, why in ours["never_writable"] if why == "sandboxctl's own code and policies"]
    assert os.path.realpath(sys.prefix) in protected  # the venv, as site names it


def test_the_script_runs_commands_and_the_typer_commands(sandbox, tmp_path):
    script = _script(tmp_path)
    run = subprocess.run([script, "run", "-q", "-p", "default", "--", "/bin/sh", "-c", "echo inside; exit 7"],
                         cwd=sandbox.workspace, env=sandbox.env(), capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (7, "inside\n"), run.stderr
    version = subprocess.run([script, "--version"], env=sandbox.env(), capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("sandboxctl "), version.stderr


def test_no_python_variable_of_the_caller_reaches_the_supervisor(sandbox, tmp_path):
    """PYTHONPATH naming a planted `sandboxctl` package, PYTHONSTARTUP and PYTHONINSPECT: the
    script's interpreter (-I) reads none of them, so the planted code never runs."""
    canary = tmp_path / "canary"
    planted = tmp_path / "planted"
    (planted / "sandboxctl").mkdir(parents=True)
    (planted / "sandboxctl" / "__init__.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    (planted / "startup.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    env = sandbox.env({"PYTHONPATH": str(planted), "PYTHONSTARTUP": str(planted / "startup.py"),
                       "PYTHONINSPECT": "1"})
    run = subprocess.run([_script(tmp_path), "run", "-q", "-p", "default", "--", "/bin/true"],
                         cwd=sandbox.workspace, env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert not canary.exists()


def test_a_path_that_cannot_follow_a_shebang_is_refused():
    for python in ("relative/python", "/opt/my python/bin/python"):
        try:
            console_script.render(python, [], ("/p", "/p"))
        except ValueError:
            continue
        raise AssertionError(f"{python!r} was written on a #! line")
