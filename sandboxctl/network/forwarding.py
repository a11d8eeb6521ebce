"""One allowed request on its way up and its answer on its way back (part of exchange.py).

The request is written again by h11 for the upstream; its body is passed on as it comes, read for
a secret's placeholder on the way (the upstream gets a reset instead of the rest of a body that
carries one); the answer's headers, body and trailers have the injected secrets' values masked
(a compressed body cannot be read, README: limits); a 101 makes the connection a relay of the
upgraded protocol, a WebSocket's frames masked too (wsmask.py). A truncated body or answer is
passed on truncated (a reset), never as complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h11

from sandboxctl.network import messages
from sandboxctl.network.messages import Refusal
from sandboxctl.network.terminate import StreamRelay
from sandboxctl.network.upstream import Broken
from sandboxctl.network.wsmask import EXTENSION_HEADER, WebSocketMasker

if TYPE_CHECKING:
    from sandboxctl.network.connection import _Connection
    from sandboxctl.network.inspection import Inspection
    from sandboxctl.network.tls import Stream
    from sandboxctl.network.upstream import Upstream

IDLE_TIMEOUT_S = 300.0  # a keep-alive connection with no request for this long is closed


class Forwarding:
    """Forwarding for exchange.Exchange (a mixin: the state is the exchange's)."""

    conn: _Connection
    client: Stream
    cl: h11.Connection
    upstream: Upstream
    inspection: Inspection | None

    def _forward(self, request: h11.Request, target: str, headers: messages.Headers, injected: list[str],
                 host: str, port: int, event: dict[str, Any], started: float) -> bool:
        self.upstream.send(h11.Request(method=request.method, target=target.encode("ascii"), headers=headers), event)
        if self.cl.client_is_waiting_for_100_continue:
            self._send_client(h11.InformationalResponse(status_code=100, headers=[]), event)
        scanner = self.inspection.phantoms.body_scanner(host, port) if self.inspection else None
        if not self._forward_body(scanner, event):
            return False
        masker = self.inspection.phantoms.masker(injected) if injected and self.inspection else None
        return self._answer(masker, event)

    def _forward_body(self, scanner: Any, event: dict[str, Any]) -> bool:
        while True:
            try:
                body_event = self.cl.next_event()
            except h11.RemoteProtocolError as exc:
                self.conn.abort(reset=True)
                raise Broken(f"bad request body: {exc}") from None
            if body_event is h11.NEED_DATA:
                data = self._recv_client(IDLE_TIMEOUT_S)
                self.cl.receive_data(data)
                if not data and self.cl.their_state is h11.SEND_BODY:
                    self.conn.abort(reset=True)  # a truncated body must not reach the upstream as complete
                    raise Broken("the client closed the connection in the middle of a request body")
                continue
            if isinstance(body_event, h11.Data):
                data = bytes(body_event.data)
                if scanner is not None:
                    data = scanner.feed(data)
                    if scanner.leaked:
                        return self._body_leak(scanner.leaked, event)
                if data:
                    self.upstream.send(h11.Data(data=data), event)
                continue
            if isinstance(body_event, h11.EndOfMessage):
                if scanner is not None and (rest := scanner.finish()):
                    self.upstream.send(h11.Data(data=rest), event)
                self.upstream.send(h11.EndOfMessage(headers=body_event.headers), event)
                return True
            raise Broken("the client closed the connection in the middle of a request")

    def _body_leak(self, name: str, event: dict[str, Any]) -> bool:
        """A placeholder in the body: the upstream gets a reset instead of the rest of the request."""
        event.update(decision="deny", rule=f"leak: {name}", leak=name, status=403)
        self.upstream.reset()
        self._send_refusal(Refusal(403, f"sandboxctl: this request's body carries the placeholder of the secret "
                                        f"{name}, which is only sent to its own hosts; refused and logged."),
                           close=True)
        return False

    def _answer(self, masker: Any, event: dict[str, Any]) -> bool:
        while True:
            answer = self.upstream.next_event()
            if isinstance(answer, h11.InformationalResponse):
                if answer.status_code == 101:
                    return self._switch(answer, event, masker)
                if answer.status_code != 100:  # 100 was sent already, if the client waited for it
                    self._send_client(h11.InformationalResponse(
                        status_code=answer.status_code, reason=answer.reason,
                        headers=_masked(masker, messages.response_headers(list(answer.headers.raw_items())))), event)
                continue
            if isinstance(answer, h11.Response):
                event["status"] = answer.status_code
                headers = _masked(masker, messages.response_headers(list(answer.headers.raw_items())))
                fields_masker = masker  # header-like fields (trailers) are masked, compressed or not
                if masker is not None and any(name.lower() == b"content-encoding" for name, _ in headers):
                    masker = None  # compressed: the value cannot be seen in it (README: limits)
                self._send_client(h11.Response(status_code=answer.status_code, headers=headers,
                                               reason=answer.reason), event)
                break
            if answer is h11.PAUSED:
                raise Broken("the upstream switched protocols without a 101")
            if event.get("status") is None and self.cl.our_state is h11.SEND_RESPONSE:
                event.update(status=502, error="the upstream closed the connection without an answer")
                self._send_refusal(Refusal(502, "sandboxctl: the server closed the connection without an answer.",
                                           "connection_terminated"), close=True)
                return False
            raise Broken("the upstream closed the connection")
        while True:
            part = self.upstream.next_event()
            if isinstance(part, h11.Data):
                data = masker.feed(bytes(part.data)) if masker is not None else part.data
                if data:
                    self._send_client(h11.Data(data=data), event)
                continue
            if isinstance(part, h11.EndOfMessage):
                if masker is not None and (rest := masker.finish()):
                    self._send_client(h11.Data(data=rest), event)
                trailers = _masked(fields_masker, list(part.headers.raw_items()))  # a trailer echoes like a header
                self._send_client(h11.EndOfMessage(headers=trailers), event)
                break
            self.conn.abort(reset=True)  # a truncated answer must look truncated to the client
            raise Broken("the upstream closed the connection in the middle of its answer")
        self.upstream.finished()
        return True

    def _switch(self, answer: h11.InformationalResponse, event: dict[str, Any], masker: Any) -> bool:
        """101: from now on the connection carries the upgraded protocol, relayed as it is. Its
        headers are masked (a WebSocket server names the Sec-WebSocket-Protocol it accepted)."""
        event["status"] = 101
        event["upgrade"] = next((v.decode("latin-1") for n, v in answer.headers.raw_items() if n.lower() == b"upgrade"),
                                None)
        headers = _masked(masker, messages.response_headers(list(answer.headers.raw_items()), switching=True))
        inbound = None
        if masker is not None:  # the server got a real value: its frames are read and masked (wsmask.py)
            if event["upgrade"] is None or event["upgrade"].strip().lower() != "websocket" or any(
                    name.lower() == EXTENSION_HEADER for name, _ in headers):
                self.conn.abort(reset=True)
                raise Broken("the server switched to a protocol (or a WebSocket extension) the proxy did not offer, "
                             "on a connection that carries a secret")
            inbound = WebSocketMasker(masker)
        self._send_client(h11.InformationalResponse(status_code=101, headers=headers, reason=answer.reason), event)
        upstream = self.upstream
        assert upstream.stream is not None and upstream.h11 is not None
        client_rest, up_rest = self.cl.trailing_data[0], upstream.h11.trailing_data[0]
        StreamRelay(self.conn, event, inbound).run(self.client, upstream.stream, client_rest, up_rest)
        return False


def _masked(masker: Any, headers: messages.Headers) -> messages.Headers:
    """Answer headers with the injected secrets' values masked (none injected: as they are)."""
    if masker is None:
        return headers
    return [(name, masker.apply(value)) for name, value in headers]
