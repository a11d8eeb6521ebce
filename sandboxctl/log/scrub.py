"""Keep secret values out of every record, however they are dressed.

A sandboxed command that holds a secret (env or file delivery) can put it in its own argv, a path,
a host name — anything the supervisor logs. Replacing the exact value is not enough: split across
two argv words, or base64-encoded, it used to be logged in clear. A Scrubber replaces:

- the value itself, and its JSON-escaped form (the last pass, over the encoded line);
- the value split across adjacent elements of a list (argv: `["--token", "abcd", "efgh"]`), and
  split by whitespace inside one string (`command` joins argv with spaces): only where all of
  its characters are there in order, so nothing else is redacted;
- its base64 (standard and URL-safe alphabets, padded or not), base32 (upper or lower case),
  hex (lower or upper) and URL-encoded (quote, quote_plus, every byte %XX in either case) forms.
  An encoded secret is usually part of a longer encoded string (`Basic base64(user:token)`),
  where its characters depend on where it starts within the encoder's groups, so each possible
  alignment contributes the run of characters that only the secret's bytes decide.

Encoded and split forms are looked for only for values of MIN_ENCODED characters or more: the
encodings of a few characters are short enough to occur by chance.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_ENCODED = 8
MIN_NEEDLE = 6  # an aligned fragment shorter than this is too common to redact
_SPACE = re.compile(r"\s+")


def _stable_runs(data: bytes, group: int, chars: int, encode) -> list[str]:
    """For each alignment of `data` inside a longer input, the encoded characters that depend on
    `data` alone (`group` input bytes become `chars` output characters)."""
    bits_per_char = group * 8 // chars
    runs = []
    for offset in range(group):
        encoded = encode(b"\0" * offset + data + b"\0" * group)
        first = -(-offset * 8 // bits_per_char)  # the first character whose bits all come from data
        last = (offset + len(data)) * 8 // bits_per_char  # one past the last such character
        run = encoded[first:last]
        if len(run) >= MIN_NEEDLE:
            runs.append(run)
    return runs


def encodings(value: str) -> set[str]:
    """Every encoded form of `value` that a Scrubber looks for (see the module docstring)."""
    data = value.encode()
    forms: set[str] = set()
    for run in _stable_runs(data, 3, 4, lambda b: base64.b64encode(b).decode()):
        forms.update((run, run.replace("+", "-").replace("/", "_")))
    for run in _stable_runs(data, 5, 8, lambda b: base64.b32encode(b).decode()):
        forms.update((run, run.lower()))
    hexed = binascii.hexlify(data).decode()
    forms.update((hexed, hexed.upper()))
    every = "".join(f"%{byte:02X}" for byte in data)
    forms.update((quote(value, safe=""), quote_plus(value, safe=""), every, every.lower()))
    forms.discard(value)
    return {form for form in forms if len(form) >= MIN_NEEDLE}


class Scrubber:
    def __init__(self, values: Iterable[str]):
        self.values = tuple(sorted({v for v in values if v}, key=len, reverse=True))
        long = [v for v in self.values if len(v) >= MIN_ENCODED]
        needles = set(self.values)
        for value in long:
            needles |= encodings(value)
        self.needles = tuple(sorted(needles, key=len, reverse=True))
        self.splittable = tuple(long)

    def __bool__(self) -> bool:
        return bool(self.values)

    # ------------------------------------------------------------------ values
    def record(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.value(record) if self.values else record

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k) if isinstance(k, str) else k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [self.value(v) for v in value]
            if len(items) > 1 and all(isinstance(v, str) for v in items):
                items = self._across(items)
            return items
        return value

    def text(self, text: str) -> str:
        if not self.values:
            return text
        for needle in self.needles:
            if needle in text:
                text = text.replace(needle, MASK)
        if self.splittable and _SPACE.search(text):
            text = self._spaced(text)
        return text

    # ------------------------------------------------------------------ split values
    def _spaced(self, text: str) -> str:
        """The value with whitespace inside it (argv words joined with spaces)."""
        keep = [i for i, ch in enumerate(text) if not ch.isspace()]
        squeezed = "".join(text[i] for i in keep)
        cuts: list[tuple[int, int]] = []
        for value in self.splittable:
            start = squeezed.find(value)
            while start >= 0:
                cuts.append((keep[start], keep[start + len(value) - 1] + 1))
                start = squeezed.find(value, start + len(value))
        return _cut(text, cuts)

    def _across(self, words: list[str]) -> list[str]:
        """The value spread over adjacent words: `["abcd", "efgh"]` for "abcdefgh"."""
        joined = "".join(words)
        spans: list[tuple[int, int]] = []
        for value in self.splittable:
            start = joined.find(value)
            while start >= 0:
                spans.append((start, start + len(value)))
                start = joined.find(value, start + len(value))
        if not spans:
            return words
        out, offset = [], 0
        for word in words:
            local = [(max(a, offset) - offset, min(b, offset + len(word)) - offset) for a, b in spans
                     if a < offset + len(word) and b > offset]
            out.append(_cut(word, local))
            offset += len(word)
        return out


def _cut(text: str, cuts: list[tuple[int, int]]) -> str:
    if not cuts:
        return text
    merged: list[list[int]] = []
    for a, b in sorted(cuts):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    pieces, last = [], 0
    for a, b in merged:
        pieces.append(text[last:a])
        pieces.append(MASK)
        last = b
    pieces.append(text[last:])
    return "".join(pieces)
