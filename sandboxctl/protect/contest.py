"""Two live runs' launch records of the same protected paths: the earlier record is the truth.

Part of the end-of-run check (snapshot.py). A run launched while another one goes on records
what that run's sandbox may already have changed (two gVisor runs, or any two runs for the keys
of `protect_json`, which no kernel wall holds). Its end-of-run check must put back what was
there before the first of them, never what the other sandbox wrote (red team rt4: the second
run restored the first one's hostile .git/config), and never leave its own sandbox's change in
place either (red team rt5: the first run put .git/commondir away, the second run's sandbox
made it again, and a check that only reported what the other run had recorded otherwise left it
there, unreported when it was made byte for byte again; two claude-code runs restored the first
one's hostile `mcpServers`). So a launch takes, for every part of an entry or a key that an
earlier live run recorded otherwise, that run's record (which took, in turn, its own earlier
ones'): its check compares with and puts back the state before the first run.

A run whose kernel wall was whole (bubblewrap with Landlock) could not change the entries it
recorded, so what differs from its record was changed outside (the user's own `git config`, an
IDE): the later run keeps its own record of those. JSON keys have no kernel wall: always taken.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

MISSING_ENTRY = {"kind": "missing"}


def adopt(path: str, mine: dict[str, Any], theirs: dict[str, Any], taken: set[str]) -> dict[str, Any]:
    """mine, with every part that theirs holds otherwise replaced by theirs (each such path added
    to taken); mine itself (the same object) where they agree."""
    kind = mine.get("kind")
    if kind != theirs.get("kind"):
        taken.add(path)
        return _with_parent(theirs, mine)
    if kind == "file":
        if mine.get("sha256") != theirs.get("sha256") or mine.get("mode") != theirs.get("mode"):
            taken.add(path)
            return _with_parent(theirs, mine)
        return mine
    if kind == "symlink":
        if mine.get("target") != theirs.get("target"):
            taken.add(path)
            return _with_parent(theirs, mine)
        return mine
    if kind != "dir":
        return mine
    ours, others = mine.get("children") or {}, theirs.get("children") or {}
    merged: dict[str, Any] = {}
    changed = False
    for name in sorted(ours.keys() | others.keys()):
        child = f"{path}/{name}"
        if name in ours and name in others:
            merged[name] = adopt(child, ours[name], others[name], taken)
        elif name in others:  # removed since theirs was taken (or beyond my record's limit)
            taken.add(child)
            merged[name] = others[name]
        elif theirs.get("complete", True):  # made since theirs was taken
            taken.add(child)
            merged[name] = MISSING_ENTRY
        else:  # theirs was cut short: it says nothing of this name
            merged[name] = ours[name]
        changed = changed or merged[name] is not ours.get(name)
    result = {**mine, "children": merged} if changed else mine
    if mine.get("mode") != theirs.get("mode"):
        taken.add(path)
        result = {**result, "mode": theirs.get("mode")}
    return result


def _with_parent(theirs: dict[str, Any], mine: dict[str, Any]) -> dict[str, Any]:
    """theirs, checked at the end against the parent directory as this launch found it."""
    return {**theirs, "parent": mine["parent"]} if "parent" in mine else theirs


def adopt_keys(mine: dict[str, dict[str, Any]], theirs: dict[str, dict[str, Any]],
               same_patterns: set[str], taken: set[str]) -> dict[str, dict[str, Any]]:
    """Protected JSON keys likewise: for each file both records hold, every concrete key theirs
    recorded otherwise; a key only mine holds is taken as absent when both runs protected the
    file with the same patterns (else theirs says nothing of it)."""
    from sandboxctl.protect.jsonkeys import MISSING

    out = dict(mine)
    for path, values in mine.items():
        if path not in theirs:
            continue
        others = theirs[path]
        keys = set(others) | (set(values) if path in same_patterns else set())
        merged = dict(values)
        for key in keys:
            if values.get(key, MISSING) != others.get(key, MISSING):
                merged[key] = others.get(key, MISSING)
                taken.add(f"{path}#{key}")
        out[path] = merged
    return out
