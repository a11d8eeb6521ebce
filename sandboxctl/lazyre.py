"""Regular expressions and fnmatch patterns without `re` until one is really needed.

Importing `re` (with the `enum` module it needs, its parser and compiler) and compiling a run's
few patterns is ~4 ms of a first run's CPU, before bubblewrap may start; most runs never match a
pattern before their command does something unusual. A `Pattern` is compiled at its first use,
and `fnmatchcase` answers the patterns a policy usually has (a literal, `PREFIX*`) by comparing
strings: what fnmatch would answer, as fnmatch translates neither (tests/unit/test_lazyre.py).
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import re

_WILD = ("*", "?", "[")  # the only characters fnmatch.translate does not take literally


class Pattern:
    """re.compile(text), made at the first match: the same pattern object and answers.

    `starts`: literal prefixes every string the pattern matches (or fullmatches) begins with, for
    a pattern anchored at the start: a string that begins with none of them is answered None
    without compiling. The mediator matches its patterns against every path of some calls (git's
    open of /dev/null, each link), and compiling them there cost ~1.5-4 ms of the first calls'
    CPU in a run; search() is never short-cut (tests/unit/test_lazyre.py holds each pattern's
    prefixes to what it matches)."""

    __slots__ = ("_compiled", "starts", "text")

    def __init__(self, text: str, starts: tuple[str, ...] = ()):
        self.text = text
        self.starts = starts
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            import re

            self._compiled = re.compile(self.text)
        return self._compiled

    def match(self, string: str) -> re.Match[str] | None:
        if self.starts and not string.startswith(self.starts):
            return None
        return self.compiled.match(string)

    def fullmatch(self, string: str) -> re.Match[str] | None:
        if self.starts and not string.startswith(self.starts):
            return None
        return self.compiled.fullmatch(string)

    def search(self, string: str) -> re.Match[str] | None:
        return self.compiled.search(string)


def fnmatchcase(name: str, pattern: str) -> bool:
    """fnmatch.fnmatchcase(name, pattern). A pattern without wildcards is the name itself, and
    `PREFIX*` (no other wildcard) is any name that starts with PREFIX: translate() makes them
    `(?s:NAME)\\Z` and `(?s:PREFIX.*)\\Z`; anything else goes to fnmatch."""
    head = pattern[:-1] if pattern.endswith("*") else None
    if head is not None and not any(w in head for w in _WILD):
        return name.startswith(head)
    if not any(w in pattern for w in _WILD):
        return name == pattern
    import fnmatch

    return fnmatch.fnmatchcase(name, pattern)
