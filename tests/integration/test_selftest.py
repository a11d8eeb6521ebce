"""`sandboxctl selftest`: the standard escapes tried for real, judged from outside, in a throwaway world."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


class Selftest:
    """Runs `sandboxctl selftest` in a subprocess with a private HOME, state dir and TMPDIR."""

    def __init__(self, tmp_path: Path, workspace: Path, home: Path):
        self.workspace = workspace
        self.home = home
        self.tmpdir = tmp_path / "tmp"
        self.tmpdir.mkdir()
        self.state = tmp_path / "state"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "XDG_STATE_HOME": str(self.state), "TMPDIR": str(self.tmpdir), "LANG": "C.UTF-8"}
        return subprocess.run([sys.executable, "-m", "sandboxctl", "selftest", *args], cwd=self.workspace,
                              env=env, capture_output=True, text=True, timeout=300, check=False)

    def json(self, *args: str) -> tuple[int, dict]:
        result = self.run(*args, "--json")
        assert result.stdout.strip(), result.stderr
        return result.returncode, json.loads(result.stdout)

    def leftovers(self) -> list[str]:
        return [name for name in os.listdir(self.tmpdir) if name.startswith("sandboxctl-selftest-")]

    def write_policy(self, name: str, text: str) -> Path:
        path = self.home.parent / name
        path.write_text(text)
        return path


@pytest.fixture
def selftest(tmp_path: Path, workspace: Path, home: Path) -> Selftest:
    return Selftest(tmp_path, workspace, home)


def rows(report: dict) -> dict[str, dict]:
    return {attempt["key"]: attempt for attempt in report["attempts"]}


def test_default_policy_blocks_every_escape(selftest):
    code, report = selftest.json("-p", "default")
    assert code == 0, report
    by_key = rows(report)
    assert {"write-outside", "read-ssh-key", "read-aws", "read-netrc", "read-dotenv", "net-tcp", "net-dns", "env",
            "exec", "signal", "ptrace", "userns", "mount", "tiocsti", "outlive", "protected", "fork-bomb",
            "memory-bomb"} <= set(by_key)
    assert all(a["verdict"] in ("blocked", "n/a") for a in report["attempts"]), report
    assert by_key["exec"]["verdict"] == "n/a" and "exec.allow" in by_key["exec"]["reason"]
    assert by_key["memory-bomb"]["verdict"] == "n/a" and "memory" in by_key["memory-bomb"]["reason"]
    for key in ("read-ssh-key", "net-tcp", "env", "signal", "outlive", "protected", "fork-bomb"):
        assert by_key[key]["verdict"] == "blocked", by_key[key]
    assert report["counts"]["ESCAPED"] == 0
    assert not selftest.leftovers()  # the temporary world is gone
    assert not os.listdir(selftest.home)  # and the caller's HOME was never touched


def test_a_policy_that_needs_confirmation_is_refused_with_125(selftest):
    policy = selftest.write_policy("host.yaml", "version: 1\nextends: default\nnetwork:\n  mode: host\n")
    result = selftest.run("-p", str(policy))
    assert result.returncode == 125
    assert "confirmation" in result.stderr and "network: host" in result.stderr
    assert "--yes" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not selftest.leftovers()


def test_limits_and_exec_allow_are_tested_when_the_policy_sets_them(selftest):
    policy = selftest.write_policy("limits.yaml", "version: 1\nextends: default\nlimits:\n  pids: 64\n"
                                   "  memory: 256M\nexec:\n  allow: [/usr/bin, /usr/local/bin]\n")
    code, report = selftest.json("-p", str(policy))
    by_key = rows(report)
    assert by_key["fork-bomb"]["verdict"] == "blocked", by_key["fork-bomb"]
    assert "64" in by_key["fork-bomb"]["expected"]
    assert by_key["memory-bomb"]["verdict"] == "blocked", by_key["memory-bomb"]
    assert by_key["exec"]["verdict"] == "blocked", by_key["exec"]
    assert code == 0, report


def test_escapes_are_reported_and_exit_1(selftest, tmp_path):
    """The control: a policy without `base` that shows HOME and a host dir really lets things out,
    and selftest says so (the judge is not blind)."""
    policy = selftest.write_policy("leaky.yaml", f"""\
version: 1
name: leaky
workspace: rw
filesystem:
  read: [/usr, /bin, /lib, /lib64, /etc, "~"]
  write: ["{selftest.tmpdir}"]
""")
    code, report = selftest.json("-p", str(policy))
    assert code == 1
    by_key = rows(report)
    for key in ("write-outside", "read-ssh-key", "read-aws", "read-netrc"):
        assert by_key[key]["verdict"] == "ESCAPED", by_key[key]
    assert by_key["net-tcp"]["verdict"] == "blocked"
    assert not selftest.leftovers()


def test_table_output_and_keep(selftest):
    result = selftest.run("-p", "offline", "--keep")
    assert result.returncode == 0, result.stderr
    assert "blocked" in result.stdout and "nothing escaped" in result.stdout
    kept = selftest.leftovers()
    assert len(kept) == 1 and kept[0] in result.stdout
    root = selftest.tmpdir / kept[0]
    assert (root / "workspace" / "probe.py").is_file() and (root / "home" / ".ssh" / "id_rsa").is_file()


def test_untrusted_workspace_policy_is_refused_like_run(selftest):
    (selftest.workspace / ".sandboxctl.yaml").write_text("version: 1\nextends: default\n")
    result = selftest.run()
    assert result.returncode == 125
    assert "not trusted" in result.stderr


def test_a_granted_loopback_is_not_applicable_and_the_listener_sees_it(selftest):
    """The network control: when the policy grants the host's loopback through the proxy, the
    connection really arrives (the outside count is not blind), and the row is n/a, not ESCAPED."""
    policy = selftest.write_policy("loopback.yaml", "version: 1\nextends: default\nnetwork:\n  mode: proxy\n"
                                   "  allow: ['127.0.0.1']\n  allow_private: true\n")
    code, report = selftest.json("-p", str(policy))
    row = rows(report)["net-tcp"]
    assert row["verdict"] == "n/a" and "127.0.0.1" in row["reason"], row
    assert "1 connection(s) arrived" in row["observed"], row
    assert code == 0
