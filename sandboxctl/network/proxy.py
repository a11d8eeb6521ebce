"""The allowlisting proxy behind `network: proxy`.

Why it exists: under `network: proxy` the sandbox has a network namespace of its own with nothing
in it but a listening socket on 127.0.0.1:3128. The supervisor receives that socket (the sandbox
never sees the host's network), accepts the sandbox's connections on it, decides each destination
against the policy (addresses.py), and dials out from the host. Every connection, allowed or
refused, becomes one `net` record of the action log.

What it speaks — the three ways tools reach a proxy, told apart by the first byte:
- HTTP CONNECT host:port (any TCP protocol; what HTTPS_PROXY clients send),
- plain HTTP with an absolute URI (`GET http://host/path HTTP/1.1`; what HTTP_PROXY clients send),
  rewritten to origin form with the hop-by-hop and Proxy-* headers removed, Host set from the URI
  (so a Host header cannot point an allowed server's virtual hosting elsewhere) and
  `Connection: close`, so one client connection carries one request (anything the client sends
  after it goes to the same, already checked, upstream, which stops reading after a close request),
- SOCKS5 without authentication (first byte 0x05), names included (socks5h), CONNECT only.

A refusal tells the agent, in one sentence, which rule refused it and how a human would allow it:
HTTP 403 with a plain-text body, or the SOCKS5 reply code for "not allowed by ruleset".

Threads, and why not a select loop: one accept thread polls the listener together with a wake-up
pipe (closing a socket does not wake a thread blocked in accept(); a pipe write does). Each
connection gets a thread that reads the request, waits for a human's approval if needed (which may
take a while), resolves and dials — all blocking steps — and then relays one direction while a
second thread relays the other. Blocking relays give back-pressure for free (a slow reader stalls
its writer, nothing is buffered without bound), half-close is simply "EOF on one side, shutdown
(SHUT_WR) on the other", both directions run in parallel because recv/send/splice release the GIL,
and a blocking loop can hand bulk transfers to splice(2), which a poll loop over non-blocking
sockets would make much harder. A select loop was measured too: it relayed no faster than the
copying threads, and needs buffering and wake-up bookkeeping of its own. The cost is two threads
per connection and a small buffer (16 KiB, growing to 64 KiB before a bulk transfer switches to a
pipe), bounded by `max_connections`. stop() shuts every socket down, which wakes every blocked
thread, so the threads close what they own and end.

The proxy relies on SIGPIPE being ignored, as Python arranges at start-up (a write to a closed
socket is then an EPIPE error, handled as the end of that connection).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sandboxctl.network.addresses import NetPolicy
from sandboxctl.network.connection import CONNECT_TIMEOUT_S, HEAD_TIMEOUT_S, _Connection
from sandboxctl.network.wire import (
    HEAD_LIMIT,
    HttpError,
    ProxyRequest,
    parse_request_head,
)

if TYPE_CHECKING:
    from sandboxctl.network.inspection import Inspection

__all__ = ["HEAD_LIMIT", "HttpError", "NetPolicy", "ProxyRequest", "ProxyServer", "parse_request_head"]

MAX_CONNECTIONS = 256
STOP_JOIN_S = 3.0
BURST_QUIET_S = 1.0  # refusals closer than this to each other are one burst: one `net` record


class ProxyServer:
    """Serve the sandbox's proxy connections from a listening socket; see the module docstring.

    `log(record)` gets one `net` record per destination a connection reached or was refused (calls are
    serialized, but come from proxy threads); `ask(host, port, client_port)` is asked about destinations the
    policy does not list (None: deny); it may block while a human decides, holding the connection open.
    `inspection` (network/inspection.py) names the hosts read request by request, their rules and the phantom
    secrets; `log_http(record)` gets one `http` record per request to such a host (None: they go to `log`,
    marked `"event": "http"`), and `ask_request(method, host, port, path, client_port)` is asked about
    requests their rules do not list (None: deny).
    `resolver` has socket.getaddrinfo's signature (a seam for tests); it is called once per dial.
    `log_peers`: each `net` record names the client's address (`client`): a standalone proxy's clients
    are whoever can connect, a sandbox's are always the sandbox.
    `attribute(client_port)`: fields added to every record of a connection (a session's `command_id`),
    asked once in the connection's own thread as it starts, while its client is surely alive.
    """

    def __init__(
        self,
        listener: socket.socket,
        policy: NetPolicy,
        log: Callable[[dict[str, Any]], None],
        ask: Callable[[str, int, int | None], bool] | None = None,
        *,
        inspection: Inspection | None = None,
        log_http: Callable[[dict[str, Any]], None] | None = None,
        ask_request: Callable[[str, str, int, str, int | None], bool] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        head_timeout: float = HEAD_TIMEOUT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        resolver: Callable[..., list[Any]] = socket.getaddrinfo,
        log_peers: bool = False,
        attribute: Callable[[int | None], dict[str, Any]] | None = None,
    ) -> None:
        self.listener = listener
        self.policy = policy
        self.log = log
        self.ask = ask
        self.inspection = inspection if inspection else None
        self.log_http = log_http
        self.ask_request = ask_request
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.connect_timeout = connect_timeout
        self.resolver = resolver
        self.log_peers = log_peers
        self.attribute = attribute
        self.log_failures = 0
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._conns: set[_Connection] = set()
        self._accept_thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._started = False
        self._stopping = False
        self._busy = 0  # connections refused at the limit since the last record of them
        self._busy_first = self._busy_last = 0.0

    def start(self) -> None:
        """Serve in the background; returns at once. A second call does nothing."""
        with self._lock:
            if self._started or self._stopping:
                return
            self._started = True
        try:
            self._wake = os.pipe()
            self.listener.setblocking(False)
            self._accept_thread = threading.Thread(target=self._accept_loop, name="sandboxctl-proxy", daemon=True)
            self._accept_thread.start()
        except (OSError, RuntimeError) as exc:
            self._report(f"sandboxctl: the network proxy could not start: {exc}")
            self._accept_thread = None

    def stop(self, timeout: float = STOP_JOIN_S) -> None:
        """Close the listener and every connection, and wait (at most ~timeout s) for the threads to end."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        try:
            self._stop(timeout)
        except Exception as exc:  # stop() is called from clean-up paths: it must not raise
            self._report(f"sandboxctl: error while stopping the network proxy: {exc!r}")

    def _stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake[1], b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        self._flush_busy(force=True)
        with contextlib.suppress(OSError):
            self.listener.close()
        if self._wake is not None and (self._accept_thread is None or not self._accept_thread.is_alive()):
            for fd in self._wake:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()
        for conn in conns:
            thread = conn.thread
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        for conn in conns:
            if conn.thread is not None and conn.thread.is_alive():
                conn.force_close()
                if conn.seen and self._first_record(conn):  # still busy at the deadline: its record now,
                    record = conn.record()                    # or it would be lost once stop() returns
                    record.setdefault("error", "still open when the proxy stopped")
                    self._emit(record)

    def unfinished(self) -> int:
        """Connection threads still running after stop() (stuck in a resolver): what they record
        goes to the caller's log, which refuses it once the run has ended (log/late.py)."""
        with self._lock:
            conns = list(self._conns)
        return sum(1 for conn in conns if conn.thread is not None and conn.thread.is_alive())

    @property
    def serving(self) -> bool:
        """True while new connections are accepted. After start(), False means it could not start
        (no thread or pipe to be had): the sandbox then has no network, and the caller should say so."""
        thread = self._accept_thread
        return thread is not None and thread.is_alive() and not self._stopping

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    # -------------------------------------------------------------- internals
    def _accept_loop(self) -> None:
        assert self._wake is not None
        poller = select.poll()
        try:
            poller.register(self.listener, select.POLLIN)
        except (OSError, ValueError):
            return
        poller.register(self._wake[0], select.POLLIN)
        listener_fd = self.listener.fileno()
        while not self._stopping:
            try:
                events = poller.poll(BURST_QUIET_S * 1000 if self._busy else None)
            except OSError:
                return
            self._flush_busy()
            if self._stopping:
                return
            for fd, event in events:
                if fd != listener_fd:
                    continue
                if event & (select.POLLERR | select.POLLNVAL):
                    self._report("sandboxctl: the network proxy's listening socket failed; no new connections")
                    return
                if not self._accept_ready():
                    return

    def _accept_ready(self) -> bool:
        """Accept every pending connection; False if the listener is unusable."""
        while not self._stopping:
            try:
                client, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.05)  # out of descriptors: back off instead of spinning on poll()
                    return True
                return False
            self._admit(client, peer)
        return True

    def _admit(self, client: socket.socket, peer: Any = None) -> None:
        with self._lock:
            busy = len(self._conns) >= self.max_connections
            conn = None if busy else _Connection(self, client)
            if conn is not None:
                self._conns.add(conn)
        if conn is not None and self.log_peers:
            conn.peer = _peer_text(peer)
        if conn is None:
            self._refuse_busy(client)
            return
        thread = threading.Thread(target=conn.run, name="sandboxctl-proxy-conn", daemon=True)
        conn.thread = thread
        try:
            thread.start()
        except RuntimeError:
            with self._lock:
                self._conns.discard(conn)
            with contextlib.suppress(OSError):
                client.close()

    def _refuse_busy(self, client: socket.socket) -> None:
        """Beyond max_connections: a 503 in one non-blocking send, then close. Never blocks the accept loop."""
        message = (f"sandboxctl: this sandbox already has {self.max_connections} connections open through its "
                   "proxy, the limit; close some and retry.")
        try:
            client.setblocking(False)
            try:
                first = client.recv(1, socket.MSG_PEEK)
            except OSError:
                first = b""
            if first == b"\x05":  # SOCKS5: "no acceptable methods", the refusal a SOCKS client understands
                client.send(b"\x05\xff")
            else:
                client.send(HttpError(503, message, "proxy_internal_error").to_bytes())
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
        now = time.monotonic()
        with self._lock:
            if not self._busy:
                self._busy_first = now
            self._busy += 1
            self._busy_last = now

    def _flush_busy(self, force: bool = False) -> None:
        """One `net` record for a burst of refusals at the limit (a flood is not worth a record per
        connection, and records cost descriptors too), with how many there were."""
        with self._lock:
            if not self._busy or (not force and time.monotonic() - self._busy_last < BURST_QUIET_S):
                return
            count, self._busy = self._busy, 0
            duration = round(self._busy_last - self._busy_first, 6)
        self._emit({"host": None, "port": None, "address": None, "decision": "deny",
                    "rule": f"connection limit ({self.max_connections}) reached", "count": count,
                    "bytes_in": 0, "bytes_out": 0, "duration_s": duration, "protocol": None})

    def _first_record(self, conn: _Connection) -> bool:
        """True once per connection: its `net` record is written by whoever gets here first."""
        with self._lock:
            if conn.recorded:
                return False
            conn.recorded = True
            return True

    def _finished(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _emit(self, record: dict[str, Any]) -> None:
        """Also after stop(): the caller's log refuses (and counts, and says) a record after its run's
        end; dropping it here would lose it silently."""
        with self._log_lock:
            try:
                self.log(record)
            except Exception:
                self.log_failures += 1
                if self.log_failures == 1:
                    self._report("sandboxctl: the network proxy could not write a log record")

    def _emit_http(self, record: dict[str, Any]) -> None:
        if self.log_http is None:
            self._emit({"event": "http", **record})
            return
        with self._log_lock:
            try:
                self.log_http(record)
            except Exception:
                self.log_failures += 1
                if self.log_failures == 1:
                    self._report("sandboxctl: the network proxy could not write a log record")

    @staticmethod
    def _report(message: str) -> None:
        with contextlib.suppress(Exception):
            print(message, file=sys.stderr)


def _peer_text(peer: Any) -> str | None:
    """host:port of an accepted client (IPv6 in brackets), or None for a socket without one."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None
