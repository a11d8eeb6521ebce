"""wsmask: a WebSocket server's frames, after a 101 on a connection that carried a real value.

Judged by an independent reader of the output (below): the messages the client would assemble
must be the server's messages with the value masked, and the value must never be whole in them,
however the server fragments its messages and however the bytes arrive.
"""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.network.phantoms import Masker, Phantom
from sandboxctl.network.wsmask import FrameError, WebSocketMasker

REAL = "ghp_realSecretValue0123456789abcdefABCDEF"
STARS = b"*" * len(REAL)


def _masker() -> Masker:
    return Masker([Phantom("GITHUB_TOKEN", REAL, ())])


def frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0, masked: bool = False) -> bytes:
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 1 << 16:
        head = bytes((first, mask_bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((first, mask_bit | 127)) + struct.pack("!Q", n)
    return head + (b"\0\0\0\0" if masked else b"") + payload


def messages_of(stream: bytes) -> list[tuple[int, bytes]]:
    """What a client assembles: (opcode, payload) per message and per control frame."""
    out: list[tuple[int, bytes]] = []
    pos, current, parts = 0, None, b""
    while pos < len(stream):
        first, second = stream[pos], stream[pos + 1]
        assert not first & 0x70 and not second & 0x80
        n, pos = second & 0x7F, pos + 2
        if n == 126:
            n, pos = struct.unpack_from("!H", stream, pos)[0], pos + 2
        elif n == 127:
            n, pos = struct.unpack_from("!Q", stream, pos)[0], pos + 8
        payload, pos = stream[pos:pos + n], pos + n
        opcode, fin = first & 0x0F, bool(first & 0x80)
        if opcode >= 0x8:
            assert fin and n <= 125
            out.append((opcode, payload))
            continue
        if opcode:
            assert current is None, "a new message inside a fragmented one"
            current, parts = opcode, b""
        assert current is not None, "a continuation outside a message"
        parts += payload
        if fin:
            out.append((current, parts))
            current = None
    assert current is None, "a message left unfinished"
    return out


def relay(data: bytes, cuts: list[int] | None = None) -> bytes:
    masker = WebSocketMasker(_masker())
    points = [*sorted({c % (len(data) + 1) for c in cuts or []}), len(data)]
    out, start = b"", 0
    for point in points:
        out += masker.feed(data[start:point])
        start = point
    masker.finish()
    return out


def test_a_value_echoed_in_one_frame_is_masked():
    server = frame(1, f'{{"auth": "Bearer {REAL}"}}'.encode())
    assert messages_of(relay(server)) == [(1, f'{{"auth": "Bearer {STARS.decode()}"}}'.encode())]


def test_a_value_split_across_fragments_and_reads_is_masked():
    text = f"echo: {REAL} end".encode()
    cut = text.index(REAL.encode()) + 10
    server = frame(1, text[:cut], fin=False) + frame(9, b"ping") + frame(0, text[cut:])
    for cuts in ([], list(range(len(server))), [3, 17, 40, 41]):
        out = relay(server, cuts)
        assert REAL.encode() not in out
        assert messages_of(out) == [(9, b"ping"), (1, text.replace(REAL.encode(), STARS))]


def test_base64_echo_and_control_frames_are_masked():
    basic = base64.b64encode(f"x:{REAL}".encode())
    server = frame(2, b"auth " + basic) + frame(8, b"\x03\xe8" + REAL.encode()[:40])
    out = messages_of(relay(server))
    assert out[0][0] == 2 and basic not in out[0][1] and REAL.encode() not in out[1][1]


def test_a_message_ending_like_the_value_begins_is_not_held():
    """An interactive protocol must not stall: nothing is held past the end of a message."""
    masker = WebSocketMasker(_masker())
    out = masker.feed(frame(1, b"prompt> ghp_"))
    assert messages_of(out) == [(1, b"prompt> ghp_")]
    part = masker.feed(frame(1, b"ghp_real", fin=False))  # mid-message, a possible start waits
    assert REAL.encode()[:8] not in part
    rest = masker.feed(frame(0, b"SecretValue0123456789abcdefABCDEF"))
    assert messages_of(part + rest) == [(1, STARS)]


def test_long_frames_stream_without_being_buffered_whole():
    payload = b"x" * 200_000 + REAL.encode() + b"y" * 70_000
    server = frame(2, payload)
    masker = WebSocketMasker(_masker())
    first = masker.feed(server[:100_000])
    assert len(first) > 90_000  # passed on as it came, not held until the frame is whole
    out = first + masker.feed(server[100_000:])
    masker.finish()
    assert messages_of(out) == [(2, payload.replace(REAL.encode(), STARS))]


@pytest.mark.parametrize("bad", [
    frame(1, b"deflated", rsv=0x40),  # permessage-deflate that was never negotiated
    frame(1, b"masked", masked=True),  # servers never mask
    bytes((0x83, 0)),  # a reserved opcode
    bytes((0x89, 126)) + struct.pack("!H", 200) + b"p" * 200,  # a control frame over 125 bytes
    bytes((0x09, 4)) + b"ping",  # a fragmented control frame
    frame(0, b"orphan"),  # a continuation outside a message
    frame(1, b"a", fin=False) + frame(2, b"b"),  # a new message inside a fragmented one
    bytes((0x82, 127)) + struct.pack("!Q", 1 << 63),  # a 64-bit length with its top bit set
])
def test_frames_it_cannot_read_honestly_end_the_connection(bad: bytes):
    with pytest.raises(FrameError):
        relay(bad)


def test_a_stream_that_ends_inside_a_message_is_not_completed():
    masker = WebSocketMasker(_masker())
    masker.feed(frame(1, b"partial", fin=False))
    with pytest.raises(FrameError):
        masker.finish()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=60), st.booleans(),
                          st.lists(st.integers(0, 200), max_size=4)), min_size=1, max_size=5),
       st.lists(st.integers(0, 4000), max_size=12))
def test_any_fragmentation_and_any_reads_keep_the_messages_and_hide_the_value(spec, cuts):
    stream, expected = b"", []
    for opcode, filler, with_value, splits in spec:
        text = filler + (REAL.encode() if with_value else b"") + filler
        expected.append((opcode, text.replace(REAL.encode(), STARS)))
        points = sorted({s % (len(text) + 1) for s in splits})
        pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
        for i, piece in enumerate(pieces):
            stream += frame(opcode if i == 0 else 0, piece, fin=i == len(pieces) - 1)
    out = relay(stream, cuts)
    assert messages_of(out) == expected
    assert all(REAL.encode() not in payload for _, payload in messages_of(out))
