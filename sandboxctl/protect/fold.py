"""Names as a case-insensitive file system takes them (pure): every protected name is compared so.

On a case-insensitive directory or file system (casefold directories of ext4, tmpfs and f2fs;
exFAT, FAT, NTFS mounted so; FUSE ones) the kernel resolves `.GIT/config` or `.git/CONFIG` to
the real `.git/config`, so every spelling that some folding makes equal to a protected name is
that name (protect/names.py), on case-sensitive file systems too.
"""

from __future__ import annotations

import functools

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    import re

GIT = ".git"

# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties): Linux's casefolding before 6.13
# and HFS+ drop them, so `.g\u200cit` was `.git` there.
_IGNORABLE = (r"[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
              r"\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
              r"\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
_ignorable: re.Pattern[str] | None = None


def fold_name(name: str) -> str:
    """One directory entry's name as a case-insensitive file system may take it: lower case (full
    Unicode case folding, and a character whose upper case is ASCII taken as that: exFAT's and
    NTFS's up-case tables map dotless i to I), compatibility-decomposed, without the code points
    some foldings ignore, without an NTFS stream name (`config::$DATA` is the file's content
    where streams are named so) and without trailing dots and spaces (FAT and exFAT drop them:
    `config.` is `config`). Conservative: a name any of those foldings makes protected is."""
    folded = name.lower() if name.isascii() else _fold_unicode(name)
    if ":" in folded and folded[0] != ":":  # NTFS streams (ntfs-3g streams_interface=windows): config::$DATA
        folded = folded.split(":", 1)[0]
    trimmed = folded.rstrip(". ")
    return trimmed or folded  # "." and ".." stay themselves


@functools.lru_cache(maxsize=4096)
def _fold_unicode(name: str) -> str:
    global _ignorable
    import unicodedata  # only for names that are not ASCII

    if _ignorable is None:
        import re  # as unicodedata: ~2.5 ms of import a run of ASCII names never needs

        _ignorable = re.compile(_IGNORABLE)
    out = []
    for char in unicodedata.normalize("NFKD", _ignorable.sub("", name)):
        if char.isascii():
            out.append(char.lower())
            continue
        ascii_form = next((c for c in (char.casefold(), char.upper().casefold(), char.lower()) if c.isascii()), None)
        out.append(ascii_form.lower() if ascii_form is not None else char.casefold())
    return "".join(out)


def fold_path(path: str) -> str:
    """fold_name of each component (so a folded path is still a path: prefixes are kept)."""
    if path.isascii():
        low = path.lower()
        if not (low.endswith((".", " ")) or "./" in low or " /" in low or ":" in low):
            return low
    return "/".join(fold_name(part) if part else part for part in path.split("/"))


def is_git_name(name: str) -> bool:
    """A directory entry git may take for `.git` (on a case-insensitive directory it is one)."""
    return fold_name(name) == GIT
