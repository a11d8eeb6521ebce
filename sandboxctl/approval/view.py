"""How a request looks to the human (the terminal prompt and `sandboxctl approve` share it).

Everything in a request but its id comes from the sandbox (the path, the host, the caller's
command line), so every field goes through `sandboxctl.inert`: an escape sequence, a bidi
control or a run of blank-looking characters is shown, never obeyed. The layout holds as well:
the target comes first, on lines of its own that fit the panel (a long one keeps its start and
its end, the middle cut), and every other field is cut to one line, so no value can wrap into,
push away or draw over the line that says what is being approved.
"""

from __future__ import annotations

from typing import Any

KEYS = {"o": "once", "y": "once", "r": "run", "a": "always", "d": "deny", "n": "deny"}
LABELS = (("o", "allow once"), ("r", "allow for this run"), ("a", "always"), ("d", "deny"))
LABEL = 9  # columns of the label column: "connect  ", "write    ", "request  ", "who      "
TARGET_LINES = 4


def render(request: dict[str, Any], others: int, policy: str, width: int) -> str:
    """A rich panel, rendered to text with the terminal's escape codes: what, who, which rule."""
    from io import StringIO

    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from sandboxctl.inert import inert, inert_lines

    value_width = max(width - 4 - LABEL, 24)  # the panel's borders and padding take 4 columns
    verb = {"network": "connect", "http": "request"}.get(request.get("kind", ""), "write")
    body = Text(no_wrap=True, overflow="crop")
    for index, line in enumerate(inert_lines(request.get("target", ""), value_width, TARGET_LINES)):
        body.append(f"{verb if index == 0 else '':<{LABEL}}", style="bold")
        body.append(line, style="bold").append("\n")
    if request.get("detail"):
        body.append(" " * LABEL).append(inert(request["detail"], value_width), style="dim").append("\n")
    who = f"pid {inert(request['pid'], 12)}" if request.get("pid") else "unknown process"
    if request.get("command"):
        who += ": "
        who += inert(request["command"], max(value_width - len(who), 16))
    body.append(f"{'who':<{LABEL}}", style="bold").append(who + "\n")
    body.append(f"{'rule':<{LABEL}}", style="bold").append(inert(request.get("rule", ""), value_width))
    keys = Text("\n")
    for key, label in LABELS:
        keys.append(f"[{key}]", style="bold cyan").append(f" {label}  ")
    keys.append(f"\n(denied in {round(request.get('expires_in_s', 0))} s without an answer")
    if others:
        keys.append(f"; {others} more waiting")
    keys.append(")")
    buffer = StringIO()
    body.append(keys)
    console = Console(file=buffer, force_terminal=True, width=width, height=200, highlight=False)
    title = f"sandboxctl: approval needed ({inert(request.get('id', '?'), 24)})"
    subtitle = f"policy {inert(policy, 40)}" if policy else None
    console.print(Panel(body, title=title, subtitle=subtitle, width=width))
    return buffer.getvalue()


def outcome(answer: str | None) -> str:
    return {"once": "allowed once", "run": "allowed for this run", "always": "always allowed",
            "timeout": "no answer in time: denied"}.get(answer or "", "denied")
