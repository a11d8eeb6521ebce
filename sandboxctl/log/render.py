"""Records as people read them: one-line summaries, times, durations.

Every value in a record may come from a sandboxed process (argv, paths, host names), so each one
goes through `sandboxctl.inert` here; what these functions return is safe to print as it is (and
must not be escaped a second time). The log file itself keeps the raw values.
"""

from __future__ import annotations

import json
from typing import Any

from sandboxctl.inert import inert, inert_argv
from sandboxctl.log.query import parse_ts

FIELD = 200  # columns one value may take in a summary before it is cut


def clean(text: Any, limit: int | None = 120) -> str:
    """One value, inert and cut to `limit` columns."""
    return inert("" if text is None else text, limit)


def format_argv(argv: Any, limit: int | None = FIELD) -> str:
    return inert_argv(argv if isinstance(argv, list) else ("" if argv is None else str(argv)), limit)


def format_seconds(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


_STANDARD = ("ts", "run", "seq", "event", "prev")


def _exec(g) -> str:
    path, argv = g("path"), g("argv")
    text = format_argv(argv) if argv else clean(path or "?", FIELD)
    if path and isinstance(argv, list) and argv and path != argv[0]:
        text += f"  [{clean(path, 80)}]"
    if g("resolved"):
        text += f"  (-> {clean(g('resolved'), 120)})"
    if g("interpreter"):
        text += f"  (#! {clean(g('interpreter'), 120)})"
    if g("result") not in (None, "ok"):
        text += f"  -> {clean(g('result'), 40)}"
    if g("verified") is False:
        text += f"  (unverified: {clean(g('unverified'), 80)})"
    return text


def summarize(data: dict[str, Any]) -> str:
    """What a record is about, in a few words, inert (never a secret value: only names are logged)."""
    event = data.get("event")
    g = data.get
    if event == "run.start":
        text = format_argv(g("argv"))
        return f"{text} (policy {clean(g('policy'), 40)})" if g("policy") else text
    if event == "exec":
        return _exec(g)
    if event == "command.start":  # a session's command
        return f"#{clean(g('command_id'), 12)} {format_argv(g('argv'))}"
    if event == "command.end":
        text = f"#{clean(g('command_id'), 12)} exit {clean(g('exit_code'), 12)} after {format_seconds(g('duration_s'))}"
        return text + (", timed out" if g("timed_out") else "")
    if event == "tamper":
        return f"{clean(g('kind', '?'), 20)}: {clean(g('what', ''), FIELD)}"
    if event == "file":
        return f"{clean(g('op', '?'), 12)} {clean(g('path', ''), FIELD)}"
    if event == "net":
        from sandboxctl.network.sockaddr import destination  # a UNIX socket has no port

        text = clean(destination(g("host", "?"), g("port")), 110)
        if isinstance(g("count"), int) and g("count") > 1:
            text += f" ({g('count')} connections)"
        return text
    if event == "http":
        port = g("port")
        host = clean(g("host", "?"), 100) + ("" if port in (80, 443, None) else f":{clean(port, 8)}")
        text = f"{clean(g('method', '?'), 16)} {host}{clean(g('path', ''), FIELD)}"
        if g("status") is not None:
            text += f" -> {clean(g('status'), 4)}"
        if isinstance(g("secrets"), list) and g("secrets"):
            text += f" (secrets: {', '.join(clean(n, 60) for n in g('secrets'))})"
        if g("leak"):
            text += f" (leak: {clean(g('leak'), 60)})"
        return text
    if event == "syscall":
        return clean(g("name", "?"), 40)
    if event == "approval":
        return f"{clean(g('kind', '?'), 12)} {clean(g('target', ''), FIELD)}".rstrip()
    if event == "create":
        return f"made {clean(g('kind', '?'), 12)} {clean(g('path', ''), FIELD)}"
    if event == "secret":
        name = clean(g("name", "?"), 60)
        return f"{name} ({clean(g('action'), 20)})" if g("action") else name
    if event == "limit":
        kind = clean(g("kind", "?"), 40)
        return f"{kind} ({clean(g('action'), 40)})" if g("action") else kind
    if event == "log.forward":
        text = f"copy to {clean(g('target'), 80)} {clean(g('state', '?'), 12)}"
        if g("reason"):
            text += f": {clean(g('reason'), 80)}"
        return text + (f" ({clean(g('lost'), 12)} records not delivered)" if g("lost") else "")
    if event == "workspace":
        return f"{clean(g('action'), 12)} ({clean(g('state') or g('previous') or '?', 20)})"
    if event == "run.end":
        text = f"exit {clean(g('exit_code'), 12)} after {format_seconds(g('duration_s'))}"
        if g("signal"):
            text += f" (signal {clean(g('signal'), 12)})"
        if g("timed_out"):
            text += ", timed out"
        return text
    rest = {k: v for k, v in data.items() if k not in _STANDARD}
    return clean(json.dumps(rest, separators=(",", ":"), default=str), FIELD)


def decision(data: dict[str, Any]) -> str:
    value = data.get("decision") or data.get("answer") or ""
    return clean(value, 12)


def local_time(ts: Any, with_date: bool = False) -> str:
    moment = parse_ts(ts)
    if moment is None:
        return clean(ts or "?", 32)
    local = moment.astimezone()
    return local.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S.%f")[: 19 if with_date else 12]
