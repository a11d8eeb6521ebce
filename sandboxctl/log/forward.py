"""Copies of the action log outside the user's files: every record, to syslog, as it is written.

`log.forward` names the targets: "syslog" (the local /dev/log), "syslog+udp://HOST:PORT" and
"syslog+tcp://HOST:PORT" (RFC 5424 messages; over TCP with octet-counting framing, RFC 6587).
Each message carries the record's exact line as its MSG, so a collector's file can be checked
against the local log (`sandboxctl log --verify --against FILE`), and run.end's `head` proves
that the records of the run before it were not changed afterwards.

A collector never blocks or fails a run: the writer only puts the line on a bounded queue, and a
thread of its own sends it. A target that cannot be reached becomes one `log.forward` record
(state "down", with the reason), not one per record; stream targets (TCP, /dev/log) keep a
bounded backlog and send it when they come back ("up", with how many were lost if the backlog
overflowed). Before run.end, one record per target says how many records it has not received
("unsent"). The local log stays complete whatever happens to the copies.

Messages use facility authpriv (security data, private to the administrators on a syslog host)
and severity notice for denials and tampering, info otherwise. A collector must accept messages
as long as the records (rsyslog: `$MaxMessageSize 64k`); a UDP datagram holds at most ~64 KiB.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from sandboxctl.policy.definition import split_host_port

FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE, SEVERITY_INFO = 5, 6
QUEUE_RECORDS = 10000
BACKLOG_RECORDS = 10000
RETRY_S = 2.0
SEND_TIMEOUT_S = 2.0
DEV_LOG = "/dev/log"
_STOP = object()


def _printable(text: str, limit: int) -> str:
    """RFC 5424 header fields are printable US-ASCII without spaces."""
    cleaned = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in text)[:limit]
    return cleaned or "-"


def message(line: bytes, event: str, notice: bool, hostname: str, procid: int) -> bytes:
    """One RFC 5424 message whose MSG is the record's line, byte for byte."""
    pri = FACILITY_AUTHPRIV * 8 + (SEVERITY_NOTICE if notice else SEVERITY_INFO)
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    header = f"<{pri}>1 {stamp} {_printable(hostname, 255)} sandboxctl {procid} {_printable(event, 32)} - "
    return header.encode() + line


class Target:
    """One destination: its socket, whether it works, and what it could not deliver."""

    def __init__(self, spec: str):
        self.spec = spec
        self.kind, self.address = _parse(spec)
        self.sock: socket.socket | None = None
        self.down: str | None = None  # why, while down
        self.next_try = 0.0
        self.backlog: collections.deque[bytes] = collections.deque()
        self.lost = 0  # records this target will never get (backlog overflow, oversize, UDP while down)
        self.reported_lost = 0

    @property
    def stream(self) -> bool:
        return self.kind in ("tcp", "unix")

    def connect(self) -> None:
        if self.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            address: Any = self.address
        else:
            host, port = self.address
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM if self.kind == "udp" else socket.SOCK_STREAM)
            family, kind, proto, _, address = info[0]
            sock = socket.socket(family, kind, proto)
        sock.settimeout(SEND_TIMEOUT_S)
        try:
            sock.connect(address)  # UDP too: ICMP "port unreachable" then shows as ECONNREFUSED
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def send(self, data: bytes) -> None:
        assert self.sock is not None
        if self.kind == "tcp":
            self.sock.sendall(f"{len(data)} ".encode() + data)  # RFC 6587 octet counting
        else:
            self.sock.send(data)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def _parse(spec: str) -> tuple[str, Any]:
    if spec == "syslog":
        return "unix", DEV_LOG
    scheme, _, rest = spec.partition("://")
    host, port = split_host_port(rest)
    return ("udp" if scheme == "syslog+udp" else "tcp"), (host, port)


class Forwarder:
    """Sends every line it is given to every target, from a thread of its own (never blocks)."""

    def __init__(self, targets: tuple[str, ...] | list[str], *, on_state: Callable[..., None] | None = None,
                 hostname: str | None = None):
        self.targets = [Target(spec) for spec in targets]
        self.on_state = on_state  # on_state(target=, state=, reason=, lost=): a record in the local log
        self.hostname = hostname or socket.gethostname()
        self.procid = os.getpid()
        self.queue: queue.Queue[Any] = queue.Queue(QUEUE_RECORDS)
        self.dropped = 0  # lines the queue had no room for (every target misses them)
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="sandboxctl-log-forward", daemon=True)
        self._thread.start()

    def send(self, line: bytes, event: str, notice: bool = False) -> None:
        """Called by the writer with each line it appended (no newline). Never blocks."""
        try:
            self.queue.put_nowait((line, event, notice))
        except queue.Full:
            self.dropped += 1

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far was handled (sent or counted lost); False on timeout."""
        done = threading.Event()
        try:
            self.queue.put((done, None, None), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        for target in self.targets:
            target.close()

    def losses(self, pending: bool = False) -> list[dict[str, Any]]:
        """What each target has not received and was not reported yet: lost records, the backlog
        still waiting, and lines the queue had no room for (for a last record before run.end);
        `pending` (after close): also the lines still queued, which the thread will not send now."""
        found = []
        dropped, self.dropped = self.dropped, 0
        if pending:
            with self.queue.mutex:
                waiting = list(self.queue.queue)
            dropped += sum(1 for item in waiting if isinstance(item, tuple) and isinstance(item[0], bytes))
        for target in self.targets:
            lost = target.lost - target.reported_lost + len(target.backlog) + dropped
            if lost > 0:
                found.append({"target": target.spec, "state": "unsent", "reason": target.down, "lost": lost})
                target.reported_lost = target.lost
        return found

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is _STOP:
                for target in self.targets:  # a last try for what waits in a backlog
                    if target.backlog:
                        target.next_try = 0.0
                        data = target.backlog.pop()
                        self._deliver(target, data)
                return
            line, event, notice = item
            if isinstance(line, threading.Event):
                line.set()
                continue
            data = message(line, event, notice, self.hostname, self.procid)
            for target in self.targets:
                self._deliver(target, data)
            self.sent += 1

    def _deliver(self, target: Target, data: bytes) -> None:
        now = time.monotonic()
        if target.sock is None:
            if now < target.next_try:
                self._keep(target, data)
                return
            try:
                target.connect()
            except OSError as exc:
                self._failed(target, f"cannot connect: {exc.strerror or exc}", now)
                self._keep(target, data)
                return
        try:
            while target.backlog:
                target.send(target.backlog[0])
                target.backlog.popleft()
            target.send(data)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                target.lost += 1  # larger than a datagram: this one record cannot travel this way
                return
            target.close()
            self._failed(target, exc.strerror or str(exc), now)
            self._keep(target, data)
            return
        if target.down is not None:
            target.down = None
            self._state(target, "up", None)

    def _keep(self, target: Target, data: bytes) -> None:
        if not target.stream:
            target.lost += 1  # UDP has no way to know what arrived: no backlog
            return
        if len(target.backlog) >= BACKLOG_RECORDS:
            target.backlog.popleft()
            target.lost += 1
        target.backlog.append(data)

    def _failed(self, target: Target, reason: str, now: float) -> None:
        target.next_try = now + RETRY_S
        if target.down is None:  # one record per outage, not one per line
            target.down = reason
            self._state(target, "down", reason)

    def _state(self, target: Target, state: str, reason: str | None) -> None:
        if self.on_state is None:
            return
        lost = target.lost - target.reported_lost
        target.reported_lost = target.lost
        with contextlib.suppress(Exception):  # the callback writes the local log; it kills the run on failure
            self.on_state(target=target.spec, state=state, reason=reason, lost=lost or None)
