"""inert: untrusted text shown to a human holds only visible, fixed-width characters."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandboxctl.inert import display_width, inert, inert_argv, inert_lines

_ESCAPE = re.compile(r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def undo(shown: str) -> str:
    """The test's own decoder: inert output back to the value (proves nothing was lost or merged)."""
    def one(match: re.Match[str]) -> str:
        token = match.group(1)
        if token in ("\\", "n", "r", "t"):
            return {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}[token]
        code = int(token[1:], 16)
        if token[0] == "x" and code >= 0x80:
            return chr(0xDC00 + code)  # a byte that was not UTF-8
        return chr(code)
    return _ESCAPE.sub(one, shown)


def visible_only(shown: str) -> bool:
    for char in shown:
        category = unicodedata.category(char)
        if char != " " and (category[0] in "CZ"):
            return False
        if ord(char) in (0x2800, 0x3164, 0x115F, 0x1160, 0xFFA0, 0xFEFF, 0xFFFD) or 0xFE00 <= ord(char) <= 0xFE0F:
            return False
    return True


# -- what each kind of character becomes -----------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), [
    ("plain text /usr/bin/ls -la", "plain text /usr/bin/ls -la"),
    ("\x1bM\x1bM\x1b[99G", "\\x1bM\\x1bM\\x1b[99G"),          # ESC sequences: the ESC visible
    ("a\nb\rc\td", "a\\nb\\rc\\td"),                           # line breaks never reach the screen
    ("\x00\x07\x7f", "\\x00\\x07\\x7f"),                       # C0 and DEL
    ("\x9b31m\x85", "\\u009b31m\\u0085"),                      # C1 (CSI, NEL) as code points
    ("C:\\x1b", "C:\\\\x1b"),                                  # a literal backslash cannot fake an escape
    ("evil\u202etxt.sh", "evil\\u202etxt.sh"),                 # bidi override
    ("a\u2066b\u2069", "a\\u2066b\\u2069"),                    # bidi isolates
    ("x\u200by\u200dz\ufeff", "x\\u200by\\u200dz\\ufeff"),     # zero-width
    ("\u2800\u3164\u115f\u1160\uffa0", "\\u2800\\u3164\\u115f\\u1160\\uffa0"),  # blank-looking letters
    ("a\u00a0b\u2003c\u3000d\u202fe", "a\\u00a0b\\u2003c\\u3000d\\u202fe"),     # other spaces
    ("\u2028\u2029", "\\u2028\\u2029"),                        # line/paragraph separators
    ("x\U000e0041\U000e007f", "x\\U000e0041\\U000e007f"),      # tag characters
    ("a\ufe0f\U000e0100", "a\\ufe0f\\U000e0100"),             # variation selectors
    ("\ue000", "\\ue000"),                                     # private use
    ("\u00ad", "\\u00ad"),                                     # soft hyphen
    ("\ufffd", "\\ufffd"),                                     # replacement char: say it, do not draw it
    ("café naïve", "café naïve"),                              # ordinary letters stay readable
    ("cafe\u0301", "cafe\u0301"),                              # one combining accent is text
    ("e\u0301\u0302\u0303\u0304", "e\u0301\u0302\\u0303\\u0304"),  # a stack of them is not
    ("\u0301x", "\\u0301x"),                                   # nothing to combine with
    ("日本語", "日本語"),
    ("│ what ╰─", "\\u2502 what \\u2570\\u2500"),            # frame characters could fake a panel
])
def test_characters(raw: str, shown: str):
    assert inert(raw) == shown
    assert undo(shown) == raw


def test_bytes_that_are_not_utf8_are_shown_as_bytes():
    assert inert(b"ok\xff\xfe\xc3") == "ok\\xff\\xfe\\xc3"
    assert inert(b"caf\xc3\xa9") == "café"
    assert inert("x\udcff") == "x\\xff"          # the same byte carried by surrogateescape (os.fsdecode)
    assert inert("x\ud800") == "x\\ud800"        # a lone surrogate that is not a byte


def test_not_text():
    assert inert(1234) == "1234"
    assert inert(None) == "None"


# -- cutting ------------------------------------------------------------------------------------


def test_long_value_cut_with_marker():
    shown = inert("a" * 500, limit=40)
    assert shown.endswith("…[+" + str(500 - shown.index("…")) + " chars]")
    assert display_width(shown) <= 40
    assert inert("short", limit=40) == "short"
    assert inert("a" * 40, limit=40) == "a" * 40          # exactly fitting: not cut


def test_cut_never_splits_an_escape():
    shown = inert("\x1b" * 100, limit=30)
    body = shown[: shown.index("…")]
    assert re.fullmatch(r"(\\x1b)+", body)
    hidden = int(re.search(r"\+(\d+) chars", shown).group(1))
    assert len(body) // 4 + hidden == 100


def test_cut_counts_wide_characters_as_two_columns():
    shown = inert("日" * 100, limit=30)
    assert display_width(shown) <= 30


def test_limit_narrower_than_marker_shows_marker():
    assert inert("abcdefghijklmnopqrstuvwxyz" * 4, limit=3) == "…[+104 chars]"


# -- argv ---------------------------------------------------------------------------------------


def test_argv_words_stay_visible():
    assert inert_argv(["python3", "docs.py"]) == "python3 docs.py"
    assert inert_argv(["echo", "a b", ""]) == "echo 'a b' ''"
    assert inert_argv(["echo", "it's"]) == "echo 'it\\'s'"
    assert inert_argv(["x", "\x1bM\n"]) == "x \\x1bM\\n"
    assert inert_argv([b"/bin/\xff"]) == "/bin/\\xff"
    assert inert_argv(None) == ""
    assert inert_argv("already a string\x1b") == "already a string\\x1b"


def test_argv_cut():
    shown = inert_argv(["python3", "x" * 300, "tail"], limit=50)
    assert display_width(shown) <= 50 and shown.startswith("python3 ")
    hidden = int(re.search(r"\+(\d+) chars", shown).group(1))
    assert hidden == len("python3 " + "x" * 300 + " tail") - len(shown[: shown.index("…")])


def test_spoofing_payload_from_the_issue():
    """Three reverse line feeds, a fake 'what' line padded with U+2800, a column jump."""
    payload = "\x1bM\x1bM\x1bM│ what  write /home/u/w/NOTES.md" + "\u2800" * 80 + "\x1b[99G"
    shown = inert_argv(["python3", "docs.py", payload], limit=120)
    assert "\x1b" not in shown and "\u2800" not in shown
    assert shown.startswith("python3 docs.py '\\x1bM\\x1bM\\x1bM")
    assert display_width(shown) <= 120


# -- properties ---------------------------------------------------------------------------------

_ANY_TEXT = st.text(alphabet=st.characters(codec=None, blacklist_categories=()), max_size=60)


@settings(max_examples=400, deadline=None)
@given(_ANY_TEXT)
def test_property_visible_one_line_and_reversible(text: str):
    shown = inert(text)
    assert visible_only(shown)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    assert undo(shown) == text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_property_bytes(raw: bytes):
    shown = inert(raw)
    assert visible_only(shown)
    assert undo(shown).encode("utf-8", "surrogateescape") == raw


@settings(max_examples=300, deadline=None)
@given(_ANY_TEXT, st.integers(min_value=16, max_value=80))
def test_property_limit(text: str, limit: int):
    shown = inert(text, limit=limit)
    assert display_width(shown) <= limit
    if "…[+" in shown and not text.count("…[+"):
        body, _, rest = shown.rpartition("…[+")
        hidden = int(rest.split(" ")[0])
        assert undo(body) == text[: len(text) - hidden]  # the shown part is a true prefix


@settings(max_examples=200, deadline=None)
@given(st.lists(_ANY_TEXT, max_size=6), st.integers(min_value=16, max_value=80))
def test_property_argv(argv: list[str], limit: int):
    shown = inert_argv(argv, limit=limit)
    assert visible_only(shown) and display_width(shown) <= limit


# -- folded (for the target of an approval) -----------------------------------------------------


def test_lines_fold_on_escape_boundaries():
    lines = inert_lines("/w/" + "\x1b" * 15 + "name.txt", width=30)
    assert all(display_width(line) <= 30 for line in lines)
    assert undo("".join(lines)) == "/w/" + "\x1b" * 15 + "name.txt"
    assert all(re.fullmatch(r"(\\x1b|[^\\])*", line) for line in lines)  # no escape cut in two


def test_lines_keep_start_and_end_of_a_long_value():
    path = "/home/u/" + "d/" * 400 + "secret-target.txt"
    lines = inert_lines(path, width=40, max_lines=3)
    assert len(lines) == 3 and all(display_width(line) <= 40 for line in lines)
    assert lines[0].startswith("/home/u/") and lines[-1].endswith("secret-target.txt")
    hidden = int(re.search(r"\+(\d+) chars", lines[-1]).group(1))
    shown = "".join(lines[:-1]) + lines[-1].split("…", 2)[-1]
    assert len(shown) + hidden == len(path)


def test_lines_short_value_is_one_line():
    assert inert_lines("/w/notes.md", width=40) == ["/w/notes.md"]
    assert inert_lines("", width=40) == [""]


@settings(max_examples=200, deadline=None)
@given(_ANY_TEXT, st.integers(min_value=24, max_value=90), st.integers(min_value=1, max_value=4))
def test_property_lines(text: str, width: int, max_lines: int):
    lines = inert_lines(text * 3, width=width, max_lines=max_lines)
    assert len(lines) <= max_lines
    assert all(visible_only(line) and display_width(line) <= width for line in lines)


def test_a_long_path_folds_after_a_slash_so_the_file_name_stays_whole():
    path = "/tmp/pytest-of-sandboxctl-ci/pytest-3/test_live_approve_marks_a_requ0/outside/elsewhere.txt"
    lines = inert_lines(path, width=87)
    assert lines == [path[: path.rindex("/") + 1], "elsewhere.txt"]
    assert inert_lines("x" * 50, width=24, max_lines=3)[0] == "x" * 24  # no slash: a plain fold
    assert "".join(inert_lines("/a" + "/" * 60 + "b", width=24, max_lines=5)) == "/a" + "/" * 60 + "b"
