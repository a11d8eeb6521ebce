"""Keys of a writable JSON file that must come out of a run as they went in (filesystem.protect_json).

Some agents keep their state and their commands in one file: Claude Code's ~/.claude.json holds
its preferences and per-project state (it must stay writable, or claude hangs) and also the MCP
servers it starts (`mcpServers`, `projects.*.mcpServers`), which would run later outside the
sandbox. The file stays writable; the values under the listed keys are recorded at launch and, at
the end of the run, any change to them is put back (the rest of the file — the agent's state — is
kept), the changed file is kept aside, and it is reported. A key path is names joined by dots;
`*` matches any key at its level.
"""

from __future__ import annotations

import contextlib
import os

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

MAX_BYTES = 16 << 20
MISSING = {"$sandboxctl": "missing"}  # a value JSON cannot hold: the key was not there


def _load(path: str) -> Any:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError:
        return MISSING
    if len(data) > MAX_BYTES:
        return MISSING
    import json  # only for a file that is there: the json package compiles regular expressions at import

    try:
        return json.loads(data)
    except ValueError:
        return MISSING


def values(document: Any, keys: str) -> dict[str, Any]:
    """Every concrete key path the pattern matches, with its value ("a.b" -> value)."""
    found: dict[str, Any] = {}

    def walk(node: Any, parts: list[str], done: list[str]) -> None:
        if not parts:
            found[".".join(done)] = node
            return
        if not isinstance(node, dict):
            return
        head, rest = parts[0], parts[1:]
        for key in (list(node) if head == "*" else [head]):
            if key in node:
                walk(node[key], rest, [*done, key])
            elif not rest:
                found[".".join([*done, key])] = MISSING

    walk(document, keys.split("."), [])
    return found


def record(entries: tuple[tuple[str, str], ...]) -> dict[str, dict[str, Any]]:
    """{path: {concrete key path: value}} at launch."""
    out: dict[str, dict[str, Any]] = {}
    for path, keys in entries:
        document = _load(path)
        out.setdefault(path, {}).update(values(document, keys) if document is not MISSING else {})
    return out


def _set(document: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = document
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if value == MISSING:
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def changed(path: str, before: dict[str, Any], patterns: list[str]) -> list[str]:
    """The concrete key paths whose value differs now (added, removed or changed)."""
    document = _load(path)
    now: dict[str, Any] = {}
    if isinstance(document, dict):
        for keys in patterns:
            now.update(values(document, keys))
    elif before:
        return sorted(before)  # the file is gone or no longer JSON: every protected key changed
    return sorted(k for k in set(before) | set(now) if before.get(k, MISSING) != now.get(k, MISSING))


def put_back(path: str, before: dict[str, Any], keys: list[str]) -> bool:
    """Write the launch values of keys back into the file (atomically, in the agent's own 2-space
    JSON), keeping everything else it holds now."""
    document = _load(path)
    if not isinstance(document, dict):
        document = {}
    for dotted in keys:
        _set(document, dotted, before.get(dotted, MISSING))
    tmp = f"{path}.sandboxctl-restore.{os.getpid()}.{os.urandom(4).hex()}"
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o600
    try:
        import json

        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True
