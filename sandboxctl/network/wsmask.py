"""A WebSocket server's frames with a phantom secret's real value masked, after a `101`.

A server that got the real value in the upgrade request (an `Authorization` header the proxy
filled in) may echo it in a message. Server-to-client frames are not XOR-masked (RFC 6455 5.1),
so the value is plain bytes in a frame's payload; the proxy masks it there like in a body (same
length, as it is and in base64: phantoms.Masker). A value can straddle frames of one message, so
every data frame's payload is streamed through one masker per message and re-fragmented (5.4 lets
an intermediary change the fragmentation of a message that uses no extension): what the masker
can pass on now goes out as a fragment at once, a tail that could still start the value waits for
the rest of the message, and the message's final fragment carries what was held. Nothing is held
past the end of a message, so an interactive protocol never stalls on a partial match.

Fail closed: extensions (permessage-deflate would hide the value) are taken out of the upgrade
request, and a frame this cannot read honestly — reserved bits or opcodes, a masked server frame,
a 64-bit length with its top bit set, a fragmented or oversized control frame — ends the
connection with a reset instead of being passed on unread. Hand-written because wsproto, the
sans-I/O library, is an endpoint (it unmasks, validates and reassembles) rather than a relay;
this reads only the frame header, which is all the masking needs.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxctl.network.phantoms import Masker

CONTINUATION, TEXT, BINARY = 0x0, 0x1, 0x2
CONTROL = (0x8, 0x9, 0xA)  # close, ping, pong
FIN = 0x80
EXTENSION_HEADER = b"sec-websocket-extensions"


class FrameError(Exception):
    """A server frame the masking cannot pass on as read."""


def frame_header(opcode: int, length: int, fin: bool) -> bytes:
    """An unmasked frame header (server to client), in the shortest length form."""
    first = (FIN if fin else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return bytes((first, 126)) + struct.pack("!H", length)
    return bytes((first, 127)) + struct.pack("!Q", length)


class WebSocketMasker:
    """Turns the server's byte stream into the one the client gets: the same messages, the real
    values masked, data frames possibly split into more fragments. feed() is called with each read
    from the server, in order, and returns what to send to the client now."""

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.buf = bytearray()
        self.remaining = 0  # payload bytes still to come of the current data frame
        self.frame_fin = False  # the current data frame ends its message
        self.pending_opcode: int | None = None  # a message's opcode until its first fragment went out
        self.in_message = False  # a data message has begun and not ended

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while True:
            if self.remaining:
                if not self.buf:
                    break
                chunk = bytes(self.buf[: self.remaining])
                del self.buf[: len(chunk)]
                self.remaining -= len(chunk)
                self._fragment(out, self.masker.feed(chunk), fin=False)
                if not self.remaining:
                    self._end_frame(out)
                continue
            header = self._header()
            if header is None:
                break
            fin, opcode, length, size = header
            if opcode in CONTROL:
                if size + length > len(self.buf):
                    break  # at most 125 bytes: wait for all of it
                payload = bytes(self.buf[size: size + length])
                del self.buf[: size + length]
                out += frame_header(opcode, length, True) + self.masker.apply(payload)
                continue
            del self.buf[:size]
            if opcode == CONTINUATION and not self.in_message:
                raise FrameError("a continuation frame outside a message")
            if opcode != CONTINUATION:
                if self.in_message:
                    raise FrameError("a new message inside a fragmented one")
                self.in_message, self.pending_opcode = True, opcode
            self.remaining, self.frame_fin = length, fin
            if not length:
                self._end_frame(out)
        return bytes(out)

    def _header(self) -> tuple[bool, int, int, int] | None:
        """(fin, opcode, payload length, header size) of the frame at the front, None until whole."""
        buf = self.buf
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise FrameError("reserved bits set (an extension that was not negotiated)")
        if second & 0x80:
            raise FrameError("a masked frame from the server")
        opcode, length, size = first & 0x0F, second & 0x7F, 2
        if opcode not in (CONTINUATION, TEXT, BINARY, *CONTROL):
            raise FrameError(f"reserved opcode {opcode:#x}")
        if length == 126:
            if len(buf) < 4:
                return None
            length, size = struct.unpack_from("!H", buf, 2)[0], 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, size = struct.unpack_from("!Q", buf, 2)[0], 10
            if length >> 63:
                raise FrameError("a 64-bit payload length with its top bit set")
        if opcode in CONTROL and (length > 125 or not first & FIN):
            raise FrameError("a control frame that is fragmented or longer than 125 bytes")
        return bool(first & FIN), opcode, length, size

    def _end_frame(self, out: bytearray) -> None:
        if self.frame_fin:
            self._fragment(out, self.masker.finish(), fin=True)
            self.in_message = False

    def _fragment(self, out: bytearray, payload: bytes, fin: bool) -> None:
        if not payload and not fin:
            return  # everything held back: nothing to send yet
        opcode = self.pending_opcode if self.pending_opcode is not None else CONTINUATION
        self.pending_opcode = None
        out += frame_header(opcode, len(payload), fin) + payload

    def finish(self) -> bytes:
        """The server closed its side: a message it left unfinished is not completed for it."""
        if self.in_message or self.buf:
            raise FrameError("the server's stream ended in the middle of a frame or a message")
        return b""
