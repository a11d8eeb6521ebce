"""log.forward against a real rsyslog (started here, on 127.0.0.1): every record arrives as
written, a collector that is down costs the run nothing, and the copy catches a rewritten log."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
pytestmark = pytest.mark.skipif(RSYSLOGD is None, reason="rsyslogd is not installed (apt-get install rsyslog)")

CONF = """
global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%msg%\\n")
ruleset(name="udp") {{ action(type="omfile" file="{dir}/udp.log" template="raw") }}
ruleset(name="tcp") {{ action(type="omfile" file="{dir}/tcp.log" template="raw") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
"""


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Rsyslog:
    def __init__(self, directory: Path):
        self.dir = directory
        self.udp, self.tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
        self.conf = directory / "rsyslog.conf"
        self.conf.write_text(CONF.format(dir=directory, udp=self.udp, tcp=self.tcp))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "rsyslogd.pid")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"rsyslogd exited: {self.proc.stdout.read().decode(errors='replace')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.tcp), timeout=1):
                time.sleep(0.3)  # imudp starts with imtcp
                return
            time.sleep(0.1)
        pytest.fail("rsyslogd did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def lines(self, name: str) -> list[bytes]:
        path = self.dir / name
        if not path.exists():
            return []
        return [line[line.index(b'{"ts":'):] for line in path.read_bytes().splitlines() if b'{"ts":' in line]

    def wait_for(self, name: str, needle: bytes, timeout: float = 20) -> list[bytes]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            lines = self.lines(name)
            if any(needle in line for line in lines):
                return lines
            time.sleep(0.1)
        return self.lines(name)


@pytest.fixture
def rsyslog(tmp_path):
    directory = tmp_path / "collector"
    directory.mkdir()
    server = Rsyslog(directory)
    server.start()
    yield server
    server.stop()


def _policy(sandbox, *targets: str) -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    return str(sandbox.write_policy("forward.yaml", f"version: 1\nextends: default\nlog:\n  forward: [{listed}]\n"))


def _log(sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", "log", *args], env=sandbox.env(),
                          capture_output=True, text=True, timeout=60)


def test_every_record_reaches_rsyslog_and_the_copy_catches_a_rewrite(sandbox, rsyslog):
    policy = _policy(sandbox, f"syslog+udp://127.0.0.1:{rsyslog.udp}", f"syslog+tcp://127.0.0.1:{rsyslog.tcp}")
    result = sandbox.run("--", "/bin/sh", "-c", "echo x > /etc/forwarded-denial; /bin/true; echo ok", policy=policy)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    local = sandbox.log_path.read_bytes().splitlines()
    end = [line for line in local if b'"event":"run.end"' in line]
    assert end and json.loads(end[0])["head"], "run.end carries head"
    for name in ("udp.log", "tcp.log"):
        copied = rsyslog.wait_for(name, b'"event":"run.end"')
        assert copied == local, name  # every record, byte for byte, in order
    assert b"/etc/forwarded-denial" in b"".join(local)

    intact = _log(sandbox, "--verify", "--against", str(rsyslog.dir / "tcp.log"))
    assert intact.returncode == 0 and "matches the copy" in intact.stdout, intact

    # someone rewrites the local file: the denial removed, seq and the chain recomputed
    from sandboxctl.log.chain import GENESIS, line_hash

    kept = [json.loads(line) for line in local if b"/etc/forwarded-denial" not in line]
    rewritten, prev = [], GENESIS
    for seq, record in enumerate(kept):
        record["seq"], record["prev"] = seq, prev
        line = json.dumps(record, separators=(",", ":")).encode()
        rewritten.append(line)
        prev = line_hash(line)
    sandbox.log_path.write_bytes(b"\n".join(rewritten) + b"\n")
    assert _log(sandbox, "--verify").returncode == 0  # the chain alone cannot tell
    caught = _log(sandbox, "--verify", "--against", str(rsyslog.dir / "udp.log"))
    assert caught.returncode == 1 and "differs from the copy" in caught.stdout, caught
    assert "removed" in caught.stdout or "edited" in caught.stdout


def test_a_collector_that_is_down_costs_the_run_nothing(sandbox, rsyslog):
    rsyslog.stop()
    policy = _policy(sandbox, f"syslog+tcp://127.0.0.1:{rsyslog.tcp}", f"syslog+udp://127.0.0.1:{rsyslog.udp}")
    started = time.monotonic()
    result = sandbox.run("--", "/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done; echo ok",
                         policy=policy)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr
    assert time.monotonic() - started < 30
    records = sandbox.records()
    events = [r["event"] for r in records]
    assert events[0] == "run.start" and events[-1] == "run.end" and events.count("exec") >= 11
    tcp = [r for r in records if r["event"] == "log.forward" and r["target"].startswith("syslog+tcp")]
    assert [r["state"] for r in tcp if r["state"] == "down"] == ["down"], tcp  # once, not per record
    assert [r for r in tcp if r["state"] == "unsent" and r["lost"] >= 12], "what the collector missed, counted"
    assert events.index("run.end") > max(i for i, r in enumerate(records) if r["event"] == "log.forward")
