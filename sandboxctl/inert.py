"""Render untrusted text inert for a human: what is on the screen is exactly what was there.

Argv, paths, host names, process names and rule text reach a prompt or a table from sandboxed
processes. Printed raw, they can move the cursor (ESC sequences), reorder the line (bidi
controls), or hide behind characters that look like nothing (zero-width, U+2800, Hangul fillers,
odd spaces) — and the human approves something other than what they read. `inert` turns every
such character into a visible escape (`\\x1b`, `\\u2800`, `\\n`, a backslash as `\\\\`), shows
bytes that are not UTF-8 as `\\xNN`, and can cut a long field with a visible marker. The result
holds only characters with a fixed, known width and never a line break.

The mapping is reversible (nothing is silently dropped or merged), so two different values never
look the same. Logs keep raw values; this is for what people read.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

__all__ = ["display_width", "inert", "inert_argv", "inert_lines"]

# Blank or invisible in most fonts although Unicode calls them letters or symbols, plus the
# Default_Ignorable_Code_Point set (which `unicodedata` does not expose): a terminal draws these as
# nothing, so they can pad a fake line or split a word without the reader seeing it. Also the
# frame-drawing characters, with which a value could draw a fake border inside a prompt.
_INVISIBLE_RANGES: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),    # soft hyphen
    (0x034F, 0x034F),    # combining grapheme joiner
    (0x061C, 0x061C),    # Arabic letter mark (bidi)
    (0x115F, 0x1160),    # Hangul choseong / jungseong fillers
    (0x17B4, 0x17B5),    # Khmer inherent vowels
    (0x180B, 0x180F),    # Mongolian variation selectors and vowel separator
    (0x200B, 0x200F),    # zero-width space/joiners, LRM, RLM
    (0x202A, 0x202E),    # bidi embeddings and overrides
    (0x2060, 0x206F),    # word joiner, invisible operators, bidi isolates
    (0x2500, 0x259F),    # box drawing and block elements: they fake the frame of our own panels
    (0x2800, 0x2800),    # braille pattern blank
    (0x3164, 0x3164),    # Hangul filler
    (0xFE00, 0xFE0F),    # variation selectors
    (0xFEFF, 0xFEFF),    # zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),    # halfwidth Hangul filler
    (0xFFF0, 0xFFFC),    # specials, interlinear annotation, object replacement
    (0xFFFD, 0xFFFD),    # the replacement character: say "this was not text", don't draw a box
    (0x16FE4, 0x16FE4),  # Khitan small script filler
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol format controls
    (0xE0000, 0xE0FFF),  # tag characters, variation selectors supplement
)

# Categories that never reach the screen raw: controls (C0, C1, DEL), format characters (bidi,
# zero-width, tags), surrogates, private use (any glyph a font likes), unassigned (unknown width),
# line/paragraph separators and every space except U+0020.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_SHORT = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Combining marks stacked on one base character ("Zalgo") draw over the lines above and below;
# a couple is ordinary text (accents, Indic vowel signs), more are shown escaped.
_MAX_COMBINING = 2


def _invisible(code: int) -> bool:
    return any(low <= code <= high for low, high in _INVISIBLE_RANGES)


def _escape(code: int) -> str:
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, carried by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _pieces(text: str) -> Iterator[tuple[str, int]]:
    """(what to show, its width in columns) for each character of `text`, in order."""
    combining = _MAX_COMBINING  # at the start there is no base character to combine with
    for char in text:
        if char in _SHORT:
            combining = _MAX_COMBINING
            yield _SHORT[char], 2
            continue
        code = ord(char)
        category = unicodedata.category(char)
        if char != " " and (category in _ESCAPED_CATEGORIES or _invisible(code)):
            shown = _escape(code)
            combining = _MAX_COMBINING
            yield shown, len(shown)
        elif category in ("Mn", "Me", "Mc"):
            if combining >= _MAX_COMBINING:
                shown = _escape(code)
                yield shown, len(shown)
            else:
                combining += 1
                yield char, 1 if category == "Mc" else 0
        else:
            combining = 0
            yield char, 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape")
    return value if isinstance(value, str) else str(value)


def _marker(hidden: int) -> str:
    return f"…[+{hidden} chars]"


def _cut(pieces: Iterable[tuple[str, int, int]], total: int, limit: int | None) -> str:
    """Join (shown, width, source length) pieces, cut on a piece boundary to fit `limit` columns.

    The marker counts the source characters left out. It is reserved at its largest possible
    width, so the result never exceeds `limit` (unless `limit` is narrower than the marker itself,
    which is then shown alone)."""
    out: list[str] = []
    if limit is None:
        return "".join(shown for shown, _, _ in pieces)
    budget = max(limit - len(_marker(total)), 0)
    used = consumed = 0
    pending: list[tuple[str, int, int]] = []  # pieces beyond the budget that may still fit whole
    for shown, width, length in pieces:
        if not pending and used + width <= budget:
            out.append(shown)
            used += width
            consumed += length
        else:
            pending.append((shown, width, length))
            if used + sum(w for _, w, _ in pending) > limit:
                return "".join(out) + _marker(total - consumed)
    out.extend(shown for shown, _, _ in pending)
    return "".join(out)


def inert(value: Any, limit: int | None = None) -> str:
    """`value` (str, bytes or anything printable) as one line of plain, visible characters.

    `limit`: at most this many terminal columns; a longer value is cut and ends with
    `…[+N chars]`, N being how many characters of the value are not shown."""
    text = _as_text(value)
    return _cut(((shown, width, 1) for shown, width in _pieces(text)), len(text), limit)


def _word(word: str) -> list[tuple[str, int, int]]:
    pieces = [(shown, width, 1) for shown, width in _pieces(word)]
    if word and not any(ch in " '\"" for ch in word):
        return pieces
    quoted = [("\\'", 2, 1) if shown == "'" else (shown, width, length) for shown, width, length in pieces]
    return [("'", 1, 0), *quoted, ("'", 1, 0)]


def inert_argv(argv: Sequence[Any] | Any, limit: int | None = None) -> str:
    """A command line for reading: each word inert, words holding a space or a quote (or empty)
    in single quotes, so word boundaries stay visible. Cut like `inert`."""
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence):
        return inert(argv if argv is not None else "", limit)
    words = [_as_text(word) for word in argv]
    pieces: list[tuple[str, int, int]] = []
    for index, word in enumerate(words):
        if index:
            pieces.append((" ", 1, 1))
        pieces.extend(_word(word))
    return _cut(pieces, sum(map(len, words)) + max(len(words) - 1, 0), limit)


def _fold(pieces: list[tuple[str, int]], width: int) -> list[str]:
    """Fold into lines of `width` columns, breaking after a "/" in the line's second half when
    there is one, so that a path's last components (the file name) stay whole on a line."""
    lines: list[str] = []
    line: list[tuple[str, int]] = []
    used = 0
    for piece in pieces:
        if line and used + piece[1] > width:
            slash = max((i for i, (shown, _) in enumerate(line) if shown == "/"), default=-1)
            carry = line[slash + 1:] if slash >= len(line) // 2 else []
            kept = line[: len(line) - len(carry)]
            lines.append("".join(shown for shown, _ in kept))
            line, used = carry, sum(columns for _, columns in carry)
        line.append(piece)
        used += piece[1]
    if line or not lines:
        lines.append("".join(shown for shown, _ in line))
    return lines


def inert_lines(value: Any, width: int, max_lines: int = 3) -> list[str]:
    """`value` inert, folded into lines of at most `width` columns (never splitting an escape).

    For what a human must read whole, such as the target of an approval: when it needs more than
    `max_lines`, the middle is cut (`…[+N chars]…` on the last line) so that both its start and
    its end (the file name) stay on the screen."""
    text = _as_text(value)
    width = max(width, 24)
    pieces = list(_pieces(text))
    folded = _fold(pieces, width)
    if len(folded) <= max_lines:
        return folded
    head_lines = folded[: max_lines - 1]
    head_count = 0  # how many pieces (characters of the value) those lines hold
    for line in head_lines:
        rest = line
        while rest:
            shown = pieces[head_count][0]
            rest = rest[len(shown):]
            head_count += 1
    tail_budget = width - len(_marker(len(text))) - 1
    tail: list[tuple[str, int]] = []
    used = 0
    for piece in reversed(pieces[head_count:]):
        if used + piece[1] > tail_budget:
            break
        tail.insert(0, piece)
        used += piece[1]
    hidden = len(pieces) - head_count - len(tail)  # one piece per character of the value
    return [*head_lines, _marker(hidden) + "…" + "".join(shown for shown, _ in tail)]


def display_width(shown: str) -> int:
    """Columns that `inert` output takes on a terminal (wide characters count two)."""
    width = 0
    for char in shown:
        category = unicodedata.category(char)
        if category in ("Mn", "Me"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width
