"""The panel with every hostile kind of text in every field the sandbox controls (red team rt13):
C1 controls, bidi overrides, zero-width characters, stacked combining marks, bytes that are not
UTF-8, OSC 8 hyperlinks and OSC 52 clipboard writes, line separators. None reaches the terminal raw,
and the frame keeps its width."""

from __future__ import annotations

import re
import unicodedata

import pytest

from sandboxctl.approval.view import render
from sandboxctl.inert import display_width

HOSTILE = ("\x9b2J\x9d0;title\x07\u202egpj.exe\u200b\u2066x\u2069" + "e\u0301\u0301\u0301\u0301"
           + b"\xff\xfe\x9b".decode("utf-8", "surrogateescape") + "\x1b]8;;https://evil\x1b\\link\x1b]8;;\x1b\\"
           + "\x1b]52;c;eQ==\x07\u2028\u0085")
_SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("policy", ["default", HOSTILE])
@pytest.mark.parametrize("field", ["target", "command", "detail", "rule", "id"])
def test_hostile_text_in_any_field_is_shown_not_obeyed(field: str, policy: str) -> None:
    request = {"id": "r-1", "kind": "file", "target": "/home/u/.gitconfig", "detail": "write", "pid": 7,
               "command": "python3 agent.py", "rule": "outside the writable set", "expires_in_s": 30}
    request[field] = request[field] + HOSTILE
    shown = _SGR.sub("", render(request, 0, policy, 100))
    raw = [hex(ord(c)) for c in shown if c != "\n" and (unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")
                                                         or 0x80 <= ord(c) <= 0x9F)]
    assert not raw, raw
    lines = shown.splitlines()
    assert {display_width(line) for line in lines} == {100}, lines
    assert lines[1].startswith("│ write    /home/u/.gitconfig"), lines
