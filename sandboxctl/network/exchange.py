"""HTTP/1.1 request by request: how the proxy reads plain HTTP and inspected tunnels.

Two ways in, one loop:
- plain HTTP (`GET http://host/path`): every request names its destination, and each is decided
  on its own (allowlist, approval, address screening); a keep-alive connection may go on to
  another host, which is then dialled (and logged) as a destination of its own;
- an inspected tunnel (CONNECT or SOCKS5 to a host under `network.inspect`, or one a proxy secret
  is bound to): the proxy answers the client's TLS with a certificate from the run's CA, opens
  its own verified TLS to the real server, and reads the requests inside (`Host` must name the
  tunnel's destination).

Each request is parsed by h11 on the client side and written again by h11 on the upstream side,
so the upstream only ever sees requests the proxy has parsed, framed and ruled on: a second
request hidden behind a refused `Upgrade`, a Content-Length/Transfer-Encoding conflict, an
obs-folded header, a duplicate Content-Length (h11) — each is either read as a request of its
own or refused, never passed through. Requests are handled one at a time (pipelined requests
wait in h11's buffer); a refused request that has no body leaves the connection open, one with a
body closes it. A WebSocket upgrade is passed on after the rule check, and once the server
answers 101 the connection becomes a relay of that protocol.

For an inspected host, the request rules decide (an unmatched request may go to the approval
prompt), phantom secrets are injected into the headers and masked in the answer, and every
request becomes an `http` event. A placeholder sent anywhere else is refused (`leak: NAME`).
An allowed request's way up and its answer's way back are forwarding.py.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING, Any

import h11

from sandboxctl.network import messages
from sandboxctl.network.forwarding import IDLE_TIMEOUT_S, Forwarding
from sandboxctl.network.messages import Refusal
from sandboxctl.network.tls import StreamClosed
from sandboxctl.network.upstream import Broken, Upstream
from sandboxctl.network.wire import HEAD_LIMIT, parse_absolute_target
from sandboxctl.network.wsmask import EXTENSION_HEADER

if TYPE_CHECKING:
    from sandboxctl.network.connection import _Connection
    from sandboxctl.network.rules import HostRules
    from sandboxctl.network.tls import Stream

PATH_LOG_LIMIT = 2048


class Exchange(Forwarding):
    """One client connection read request by request (see the module docstring)."""

    def __init__(self, conn: _Connection, client: Stream, first: bytes, *,
                 tunnel: tuple[str, int] | None = None) -> None:
        self.conn = conn
        self.server = conn.server
        self.inspection = conn.server.inspection
        self.client = client
        self.tunnel = tunnel
        self.default_port = 443 if client.tls else 80
        self.cl = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        if first:
            self.cl.receive_data(first)
        self.upstream = Upstream(conn, client.tls)
        self.dest: tuple[str, int] | None = tunnel

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        try:
            while True:
                request = self._next_request()
                if request is None or not self._handle(request):
                    return
                if self.cl.our_state is not h11.DONE or self.cl.their_state is not h11.DONE:
                    return
                self.cl.start_next_cycle()
        except Broken as exc:
            self.conn.error = self.conn.error or str(exc)
        finally:
            if self.client.tls and not self.conn.aborted:
                self.client.close_notify()

    def _next_request(self) -> h11.Request | None:
        while True:
            if self.cl.their_state is h11.IDLE and messages.fold_in_head(self.cl.trailing_data[0]):
                self._refuse_bad("folded header lines (obs-fold) are not accepted")
                return None
            try:
                event = self.cl.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse_bad(str(exc), exc.error_status_hint)
                return None
            if event is h11.NEED_DATA:
                self.cl.receive_data(self._recv_client(IDLE_TIMEOUT_S))
                continue
            if isinstance(event, h11.Request):
                return event
            return None  # ConnectionClosed, or PAUSED after a protocol switch

    def _recv_client(self, timeout: float | None) -> bytes:
        try:
            self.client.settimeout(timeout)
            return self.client.recv()
        except (TimeoutError, StreamClosed):
            return b""

    # ------------------------------------------------------------------ one request
    def _handle(self, request: h11.Request) -> bool:
        """Judge, forward and answer one request; False: the connection is over."""
        started = time.monotonic()
        method = request.method.decode("ascii")
        target = request.target.decode("ascii")
        headers = list(request.headers.raw_items())
        event: dict[str, Any] = {"method": method, "path": target.split("?", 1)[0][:PATH_LOG_LIMIT],
                                 "status": None, "decision": "deny", "rule": "", "bytes_in": 0, "bytes_out": 0}
        problem = messages.framing_problem(headers)
        if problem:
            self._refuse_bad(problem)
            return False
        where = self._destination(method, target, headers, event)
        if where is None:
            return False
        host, port, path_target, rules = where
        event.update(host=host, port=port, path=path_target.split("?", 1)[0][:PATH_LOG_LIMIT])
        logged = rules is not None
        try:
            verdict = self._judge(rules, method, path_target, event)
            if verdict is not None:
                logged = True
                return self._refuse_request(request, verdict, event)
            phantoms = self.inspection.phantoms if self.inspection else None
            send_headers = headers
            injected: list[str] = []
            if phantoms:
                outcome = phantoms.rewrite_headers(headers, host, port, tls=self.client.tls)
                leaked = outcome.leaked + [n for n in phantoms.leaks_in(target.encode(), host, port)
                                           if n not in outcome.leaked]
                refusal = self._phantom_refusal(outcome, leaked, host, event)
                if refusal is not None:
                    logged = True
                    return self._refuse_request(request, refusal, event)
                send_headers, injected = outcome.headers, outcome.injected
                if injected:  # an answer must come back where the masking can read it: uncompressed
                    # (for a WebSocket: no permessage-deflate, no extension at all: wsmask.py)
                    send_headers = [(name, value) for name, value in send_headers
                                    if name.lower() not in (b"accept-encoding", EXTENSION_HEADER)]
                    send_headers.append((b"Accept-Encoding", b"identity"))
                event["secrets"] = injected or None
                logged = logged or bool(injected)
            upgrade = self._upgrade(headers, rules is not None)
            forward = messages.upstream_request_headers(send_headers, host, port, self.default_port, upgrade)
            refusal = self.upstream.ensure(host, port)
            if refusal is not None:
                return self._upstream_failed(refusal, event)
            return self._forward(request, path_target, forward, injected, host, port, event, started)
        finally:
            event["duration_s"] = round(time.monotonic() - started, 6)
            if logged or event.get("leak"):
                self.server._emit_http(event)

    def _destination(self, method: str, target: str, headers: messages.Headers,
                     event: dict[str, Any]) -> tuple[str, int, str, HostRules | None] | None:
        """Where this request goes, decided; None when it was refused (the connection is then over)."""
        if method == "CONNECT":
            self._refuse_bad("CONNECT must be the first request on a proxy connection")
            return None
        if self.tunnel is not None:
            host, port = self.tunnel
            if not target.startswith("/"):
                parsed = parse_absolute_target(target, self.default_port)
                if isinstance(parsed, str) or parsed[:2] != (host, port):
                    self._refuse_bad("inside a tunnel a request names a path, or the tunnel's own URL")
                    return None
                target = parsed[2]
            if not messages.host_header_matches(headers, host):
                self._send_refusal(Refusal(403, f"sandboxctl: this request's Host header names another host than "
                                                f"{host}, where the connection goes; refused."), close=True)
                event.update(host=host, port=port, status=403, rule="Host header names another host")
                self.server._emit_http(event)
                return None
        else:
            parsed = parse_absolute_target(target, 80)
            if isinstance(parsed, str):
                self._refuse_bad(parsed)
                return None
            host, port, target = parsed
            if (host, port) != self.dest:
                self.upstream.drop()
                self.conn.begin_destination(host, port)
                refusal = self.conn.decide(host, port)
                outcome = refusal if refusal is not None else self.conn.connect(host, port)
                if not isinstance(outcome, socket.socket):
                    self._send_refusal(Refusal(outcome.status, outcome.message, outcome.proxy_status), close=True)
                    return None
                self.dest = (host, port)
        rules = self.inspection.rules_for(host, port) if self.inspection else None
        if rules is not None:
            self.conn.inspected = True
        return host, port, target, rules

    def _judge(self, rules: HostRules | None, method: str, target: str, event: dict[str, Any]) -> Refusal | None:
        if rules is None:
            event.update(decision="allow", rule=self.conn.rule)
            return None
        verdict = rules.judge(method, target)
        asked = not verdict.allowed and verdict.askable and self.server.ask_request is not None
        if asked and self._ask(method, event["host"], event["port"], target):
            event.update(decision="allow", rule=f"{verdict.rule} (approved)")
            return None
        event.update(decision="allow" if verdict.allowed else "deny",
                     rule=f"{verdict.rule} (not approved)" if asked else verdict.rule)
        if verdict.allowed:
            return None
        if not verdict.askable:
            return Refusal(403, f"sandboxctl: {verdict.reason}; only a human can change that, by editing the policy.")
        declined = " and sending it was not approved" if asked else ""
        return Refusal(403, f"sandboxctl: {verdict.reason}{declined}; a human can allow it in the policy.")

    def _ask(self, method: str, host: str, port: int, target: str) -> bool:
        ask = self.server.ask_request
        if ask is None:
            return False
        try:
            return ask(method, host, port, target.split("?", 1)[0], self.conn.peer_port()) is True
        except Exception as exc:  # a failing approval channel denies
            self.conn.error = f"approval failed: {exc!r}"
            return False

    def _phantom_refusal(self, outcome: Any, leaked: list[str], host: str, event: dict[str, Any]) -> Refusal | None:
        if leaked:
            event.update(decision="deny", rule=f"leak: {leaked[0]}", leak=leaked[0])
            return Refusal(403, f"sandboxctl: this request carries the placeholder of the secret {leaked[0]}, "
                                f"which is only sent to its own hosts, not to {host}; refused and logged.")
        if outcome.cleartext:
            event.update(decision="deny", rule=f"secret {outcome.cleartext[0]} only over HTTPS")
            return Refusal(403, f"sandboxctl: the secret {outcome.cleartext[0]} is only put into requests over "
                                f"HTTPS; use https://{host}.")
        if outcome.expired:
            event.update(decision="deny", rule=f"secret {outcome.expired[0]} expired")
            return Refusal(403, f"sandboxctl: the secret {outcome.expired[0]} has expired (its ttl is over) and is "
                                "no longer put into requests.")
        return None

    def _upgrade(self, headers: messages.Headers, inspected: bool) -> bytes | None:
        protocols = messages.upgrade_requested(headers)
        if not protocols:
            return None
        if inspected and protocols != [b"websocket"]:
            return None  # h2c and friends would carry requests past the rules: not offered upstream
        return protocols[0]

    def _upstream_failed(self, refusal: Refusal, event: dict[str, Any]) -> bool:
        event.update(status=refusal.status, error=refusal.message.removeprefix("sandboxctl: "))
        self._send_refusal(refusal, close=True, count=event)
        return False

    def _send_client(self, event: Any, count: dict[str, Any]) -> None:
        data = self.cl.send(event)
        if data:
            try:
                self.client.sendall(data)
            except StreamClosed as exc:
                raise Broken(f"client connection failed: {exc}") from None
            count["bytes_in"] += len(data)
            self.conn.bytes_in += len(data)

    # ------------------------------------------------------------------ refusals
    def _refuse_request(self, request: h11.Request, refusal: Refusal, event: dict[str, Any]) -> bool:
        """Refuse one request; the connection stays open only when the request had no body to skip."""
        event["status"] = refusal.status
        has_body = any(name.lower() == b"transfer-encoding" or (name.lower() == b"content-length" and
                                                                 value.strip() != b"0")
                       for name, value in request.headers.raw_items())
        keep = False
        if not has_body:
            with contextlib.suppress(h11.RemoteProtocolError):
                keep = isinstance(self.cl.next_event(), h11.EndOfMessage)
        self._send_refusal(refusal, close=not keep, count=event)
        return keep

    def _refuse_bad(self, detail: str, status: int = 400) -> None:
        if self.conn.host is None:
            self.conn.rule = f"bad request: {detail}"
        else:
            self.conn.error = self.conn.error or f"bad request: {detail}"
        status = status if status in (400, 431, 501) else 400
        self._send_refusal(Refusal(status, f"sandboxctl: bad request ({detail}).", "http_request_error"), close=True)

    def _send_refusal(self, refusal: Refusal, close: bool, count: dict[str, Any] | None = None) -> None:
        if self.cl.our_state is not h11.SEND_RESPONSE and self.cl.our_state is not h11.IDLE:
            return
        count = count if count is not None else {"bytes_in": 0}
        try:
            self._send_client(h11.Response(status_code=refusal.status, headers=refusal.headers(close),
                                           reason=refusal.reason), count)
            self._send_client(h11.Data(data=refusal.body()), count)
            self._send_client(h11.EndOfMessage(), count)
        except (h11.LocalProtocolError, Broken):
            return
        if close:
            self.client.shutdown_write()

