"""The terminal prompt's key reader: what a terminal types on its own is never a lone key."""

from __future__ import annotations

import pytest

from sandboxctl.approval.keys import KeyReader

SEQUENCES = [
    b"\x1b[12;40R", b"\x1b[?2004;2$y", b"\x1b]11;rgb:0000/0000/0000\x1b\\", b"\x1b]11;rgb:0/0/0\x07",
    b"\x9b12;40R", "\u009b12;40R".encode(), b"\x1bP1+r736d=1b\x1b\\", b"\x1b[M#oa", b"\x1b[M#\xc3\xbfa",
    b"\x1b[<35;79;1M", b"\x1b[200~yes\x1b[201~", b"\x1bOP", b"\x1bo", b"\x1b (B", b"\x1b_Gy\x1b\\",
    b"\x1b]52;c;eQ==\x07",
]


@pytest.mark.parametrize("sequence", SEQUENCES)
def test_a_sequence_fed_byte_by_byte_never_leaves_a_lone_key(sequence: bytes) -> None:
    """Every byte is read alone here (the worst split): none may be in the ground state before it
    and after it, except when the sequence is over."""
    reader = KeyReader()
    for index, byte in enumerate(sequence):
        before = reader.idle
        reader.feed(bytes((byte,)))
        assert not (before and reader.idle), (sequence, index)
    assert reader.idle, sequence  # and the next key counts again


def test_plain_keys_are_lone_and_a_sequence_ends() -> None:
    reader = KeyReader()
    reader.feed(b"\x1b[12;40")
    assert not reader.idle
    reader.feed(b"R")
    assert reader.idle
    reader.feed(b"o")
    assert reader.idle
    reader.feed(b"\x1b[200~o")
    reader.feed(b"\x1b[201")
    assert not reader.idle
    reader.feed(b"~")
    assert reader.idle
