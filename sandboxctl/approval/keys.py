"""What counts as the human's answer on a terminal the sandboxed command shares.

The command can make the *terminal* type: a query it writes (cursor position `ESC[6n`, a mode
`ESC[?2004$p`, a colour `ESC]11;?`, ENQ for the answerback) is answered by the terminal emulator
on the input side, where the prompt reads its keys, and the answers are full of letters (`R`,
`$y`, `rgb:`, PuTTY's `PuTTY`). With mouse reporting switched on, merely moving the mouse types
`ESC[M` and three bytes that are letters for some columns; a paste types a burst of text. None
of that is a human pressing a key while looking at the prompt.

So a key is an answer only when it is one byte read on its own, outside any escape sequence
(CSI, SS3, OSC/DCS/APC/PM/SOS strings, X10 mouse reports, a bracketed paste, 7-bit or 8-bit
introducers, raw or UTF-8 encoded), with a quiet moment before it and after it: a terminal's
reply is a burst, a human's key is alone.
"""

from __future__ import annotations

QUIET_BEFORE = 0.15  # s without input before the key: a burst that ends in a letter is no answer
QUIET_AFTER = 0.04  # s without input after it: nor is one that starts with a letter

_GROUND, _ESC, _ESC_INTER, _CSI, _STRING, _STRING_ESC, _SS3, _MOUSE, _PASTE, _C2 = range(10)
_STRING_INTRODUCERS = frozenset(b"]P_^X")  # OSC, DCS, APC, PM, SOS after ESC
_C1_STRINGS = frozenset((0x90, 0x98, 0x9D, 0x9E, 0x9F))  # DCS, SOS, OSC, PM, APC
_PASTE_END = b"\x1b[201~"


class KeyReader:
    """Feeds the bytes read from the terminal through a VT input parser; says which lone bytes
    were read outside every sequence (the only ones that may be an answer)."""

    def __init__(self) -> None:
        self.state = _GROUND
        self.csi = b""  # the current CSI's parameter and intermediate bytes
        self.mouse_left = 0  # X10 mouse report: bytes still to skip (UTF-8 mode: characters)
        self.mouse_continuation = False
        self.paste_tail = b""

    @property
    def idle(self) -> bool:
        """Outside every sequence: the next byte starts something new."""
        return self.state == _GROUND

    def feed(self, data: bytes) -> None:
        for byte in data:
            self._byte(byte)

    def _byte(self, byte: int) -> None:
        state = self.state
        if state == _PASTE:  # everything up to ESC[201~ is pasted text
            self.paste_tail = (self.paste_tail + bytes((byte,)))[-len(_PASTE_END):]
            if self.paste_tail == _PASTE_END:
                self.state, self.paste_tail = _GROUND, b""
            return
        if state == _MOUSE:
            if self.mouse_continuation:
                self.mouse_continuation = False
            else:
                self.mouse_continuation = 0xC0 <= byte <= 0xDF  # mode 1005: a coordinate in UTF-8
                self.mouse_left -= 1
            if self.mouse_left <= 0 and not self.mouse_continuation:
                self.state = _GROUND
            return
        if state == _C2:  # 0xC2 0x80..0x9F: a C1 control sent as UTF-8
            self.state = _GROUND
            if 0x80 <= byte <= 0x9F:
                self._c1(byte)
            else:
                self._byte(byte)
            return
        if state in (_STRING, _STRING_ESC):
            if byte in (0x07, 0x9C) or (state == _STRING_ESC and byte == 0x5C):
                self.state = _GROUND
            elif byte == 0x1B:
                self.state = _STRING_ESC
            elif state == _STRING_ESC:  # ESC + something else ends the string and starts a sequence
                self.state = _ESC
                self._byte(byte)
            return
        if state == _SS3:
            self.state = _GROUND
            return
        if byte == 0x1B:
            self.state = _ESC
            return
        if byte in (0x18, 0x1A) and state != _GROUND:  # CAN, SUB: the sequence is cancelled
            self.state = _GROUND
            return
        if state == _ESC:
            if byte == 0x5B:  # [
                self.state, self.csi = _CSI, b""
            elif byte in _STRING_INTRODUCERS:
                self.state = _STRING
            elif byte in (0x4F, 0x4E):  # SS3 (F1-F4, keypad), SS2: one more byte
                self.state = _SS3
            elif 0x20 <= byte <= 0x2F:
                self.state = _ESC_INTER
            else:  # ESC x (Alt+x) is no answer either
                self.state = _GROUND
            return
        if state == _ESC_INTER:
            if not 0x20 <= byte <= 0x2F:
                self.state = _GROUND
            return
        if state == _CSI:
            if 0x20 <= byte <= 0x3F:
                self.csi += bytes((byte,))
            elif 0x40 <= byte <= 0x7E:
                self.state = _GROUND
                if byte == 0x4D and not self.csi:  # CSI M: an X10 mouse report, three raw bytes follow
                    self.state, self.mouse_left, self.mouse_continuation = _MOUSE, 3, False
                elif byte == 0x7E and self.csi == b"200":
                    self.state, self.paste_tail = _PASTE, b""
            else:
                self.state = _GROUND
            return
        # ground
        if byte == 0xC2:
            self.state = _C2
        elif 0x80 <= byte <= 0x9F:
            self._c1(byte)

    def _c1(self, byte: int) -> None:
        if byte == 0x9B:
            self.state, self.csi = _CSI, b""
        elif byte in _C1_STRINGS:
            self.state = _STRING
        elif byte == 0x8F or byte == 0x8E:
            self.state = _SS3
