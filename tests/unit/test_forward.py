"""log.forward: RFC 5424 copies of every line, never blocking; --verify --against the copy."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from sandboxctl.log import against
from sandboxctl.log.forward import Forwarder, message
from sandboxctl.log.writer import ActionLog
from sandboxctl.policy.definition import check_forward


class Collector:
    """A syslog collector on 127.0.0.1 (UDP or TCP with octet counting) that keeps the messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self.messages: list[bytes] = []
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        if kind == "tcp":
            self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                if self.kind == "udp":
                    self.messages.append(self.sock.recv(70000))
                    continue
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(0.2)
            buffer = b""
            while not self.stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buffer += chunk
                while b" " in buffer:
                    size, _, rest = buffer.partition(b" ")
                    if len(rest) < int(size):
                        break
                    self.messages.append(rest[: int(size)])
                    buffer = rest[int(size):]
            conn.close()

    def lines(self) -> list[bytes]:
        return [m[m.index(b'{"ts":'):] for m in self.messages]

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture(params=["udp", "tcp"])
def collector(request):
    server = Collector(request.param)
    yield server
    server.close()


def _wait(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and not predicate():
        time.sleep(0.02)
    return predicate()


def test_targets_are_validated():
    assert check_forward("syslog") == "syslog"
    assert check_forward("syslog+tcp://[::1]:6514")
    for bad in ("udp://h:1", "syslog+udp://h", "syslog+tcp://h:99999", "syslog+udp://:514"):
        with pytest.raises(ValueError):
            check_forward(bad)


def test_message_is_rfc5424_with_the_exact_line():
    line = b'{"ts":"x","run":"r","seq":0,"event":"exec","prev":"0"}'
    data = message(line, "exec", False, "my host", 42)
    header, _, msg = data.partition(b" - ")
    assert msg == line
    version, stamp, host, app, procid, msgid = header.split(b" ")
    assert version == b"<86>1" and host == b"my_host" and app == b"sandboxctl"  # authpriv.info
    assert procid == b"42" and msgid == b"exec" and stamp.endswith(b"Z")
    assert message(line, "file", True, "h", 1).startswith(b"<85>1 ")


def test_every_record_is_forwarded_as_written(tmp_path: Path, collector: Collector):
    log = ActionLog(str(tmp_path / "log.jsonl"), "run-1")
    log.forward = Forwarder([f"syslog+{collector.kind}://127.0.0.1:{collector.port}"])
    for i in range(50):
        log.write("exec", pid=i, path="/bin/true", argv=["true", str(i)])
    log.write("run.end", exit_code=0, head=log.head)
    log.forward.close(5)
    log.close()
    local = (tmp_path / "log.jsonl").read_bytes().splitlines()
    assert _wait(lambda: len(collector.messages) == 51)
    assert collector.lines() == local


def test_a_collector_that_is_down_never_blocks_and_is_one_record(tmp_path: Path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there
    states: list[dict] = []
    log = ActionLog(str(tmp_path / "log.jsonl"), "run-1")
    forwarder = Forwarder([f"syslog+tcp://127.0.0.1:{port}"], on_state=lambda **f: states.append(f))
    log.forward = forwarder
    started = time.monotonic()
    for i in range(500):
        log.write("exec", pid=i, path="/bin/true", argv=["true"])
    assert time.monotonic() - started < 5  # the writer never waits for the collector
    assert forwarder.flush(5)
    assert len(states) == 1 and states[0]["state"] == "down" and "refused" in states[0]["reason"].lower()
    [loss] = forwarder.losses()
    assert loss["lost"] == 500 and loss["state"] == "unsent" and "refused" in loss["reason"].lower()
    forwarder.close(1)
    log.close()
    assert len((tmp_path / "log.jsonl").read_bytes().splitlines()) == 500  # the local log is complete


def test_a_collector_that_comes_back_gets_the_backlog(tmp_path: Path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    states: list[dict] = []
    log = ActionLog(str(tmp_path / "log.jsonl"), "run-1")
    log.forward = Forwarder([f"syslog+tcp://127.0.0.1:{port}"], on_state=lambda **f: states.append(f))
    log.write("exec", pid=1, path="/a", argv=["a"])
    assert log.forward.flush(5)
    server.close()
    collector = Collector("tcp")  # a new port: point a second forwarder at it after an outage
    try:
        log.forward.targets[0].address = ("127.0.0.1", collector.port)
        log.forward.targets[0].next_try = 0.0
        log.write("exec", pid=2, path="/b", argv=["b"])
        log.forward.close(5)
        assert _wait(lambda: len(collector.messages) == 2)
        assert [s["state"] for s in states] == ["down", "up"]
    finally:
        collector.close()
        log.close()


def _forwarded_run(tmp_path: Path, collector: Collector) -> tuple[Path, Path]:
    path = tmp_path / "log.jsonl"
    log = ActionLog(str(path), "run-1")
    log.forward = Forwarder([f"syslog+{collector.kind}://127.0.0.1:{collector.port}"])
    log.write("run.start", argv=["x"])
    log.write("file", pid=1, path="/etc/x", op="create", decision="deny", rule="outside")
    log.write("exec", pid=1, path="/bin/true", argv=["true"])
    log.write("run.end", exit_code=0, denied=1, head=log.head)
    log.forward.close(5)
    log.close()
    assert _wait(lambda: len(collector.messages) == 4)
    copy = tmp_path / "collector.log"
    copy.write_bytes(b"".join(b"Dec  1 10:00:00 host sandboxctl[1]: " + line + b"\n" for line in collector.lines()))
    return path, copy


def test_verify_against_an_intact_copy(tmp_path: Path, collector: Collector):
    path, copy = _forwarded_run(tmp_path, collector)
    result = against.check(path, copy)
    assert result.ok and result.compared == 4 and result.heads == 1, result


def _rechain(lines: list[bytes]) -> list[bytes]:
    """What someone rewriting the local file does: a fresh, valid hash chain."""
    from sandboxctl.log.chain import GENESIS, line_hash

    out, prev = [], GENESIS
    for raw in lines:
        data = json.loads(raw)
        data["prev"] = prev
        line = json.dumps(data, separators=(",", ":")).encode()
        out.append(line)
        prev = line_hash(line)
    return out


@pytest.mark.parametrize("how", ["remove the denial", "edit the denial", "insert a record"])
def test_verify_against_catches_a_rewritten_local_log(tmp_path: Path, collector: Collector, how: str):
    from sandboxctl.log.verify import verify

    path, copy = _forwarded_run(tmp_path, collector)
    lines = path.read_bytes().splitlines()
    if how == "remove the denial":
        lines = [lines[0], lines[2].replace(b'"seq":2', b'"seq":1'), lines[3].replace(b'"seq":3', b'"seq":2')]
    elif how == "edit the denial":
        lines[1] = lines[1].replace(b'"decision":"deny"', b'"decision":"allow"')
    else:
        extra = json.loads(lines[2])
        extra["seq"], extra["argv"] = 4, ["planted"]
        lines = [*lines, json.dumps(extra).encode()]
    path.write_bytes(b"\n".join(_rechain(lines)) + b"\n")
    assert verify(path).ok  # the chain alone cannot tell
    result = against.check(path, copy)
    assert not result.ok, result


def test_the_local_syslog_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """"syslog" is the local /dev/log: a datagram UNIX socket (here one of our own)."""
    from sandboxctl.log import forward

    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    monkeypatch.setattr(forward, "DEV_LOG", path)
    log = ActionLog(str(tmp_path / "log.jsonl"), "run-1")
    log.forward = Forwarder(["syslog"])
    log.write("exec", pid=1, path="/bin/true", argv=["true"])
    log.forward.close(5)
    log.close()
    received = server.recv(70000)
    server.close()
    assert received.startswith(b"<86>1 ") and received.endswith((tmp_path / "log.jsonl").read_bytes().strip())


def test_losses_after_close_count_the_lines_still_queued():
    """At close, a thread that has not sent everything (a collector that takes nothing) leaves lines
    queued: they are counted as not received (said after run.end), not forgotten."""
    from sandboxctl.log.forward import Forwarder, Target

    forwarder = Forwarder([])
    forwarder.close(0.5)  # its thread has ended: what is queued now stays there
    for number in range(3):
        forwarder.queue.put_nowait((b'{"seq":%d}' % number, "exec", False))
    forwarder.targets = [Target("syslog+udp://127.0.0.1:9")]
    assert forwarder.losses() == []
    assert forwarder.losses(pending=True) == [{"target": "syslog+udp://127.0.0.1:9", "state": "unsent",
                                               "reason": None, "lost": 3}]
