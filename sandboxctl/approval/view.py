"""How a request looks to the human (the terminal prompt and `sandboxctl approve` share it)."""

from __future__ import annotations

from typing import Any

KEYS = {"o": "once", "y": "once", "r": "run", "a": "always", "d": "deny", "n": "deny"}
LABELS = (("o", "allow once"), ("r", "allow for this run"), ("a", "always"), ("d", "deny"))


def render(request: dict[str, Any], others: int, policy: str, width: int) -> str:
    """A rich panel, rendered to text with the terminal's escape codes: what, who, which rule."""
    from io import StringIO

    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    body = Text()
    from sandboxctl.inert import inert

    verb = {"network": "connect to", "http": "send the request"}.get(request["kind"], "write")
    what = f"{verb} {inert(request['target'])}"
    body.append("what  ", style="bold").append(what + "\n")
    if request.get("detail"):
        body.append("      " + request["detail"] + "\n", style="dim")
    who = f"pid {request['pid']}" if request.get("pid") else "unknown process"
    if request.get("command"):
        who += f": {request['command']}"
    body.append("who   ", style="bold").append(who + "\n")
    body.append("rule  ", style="bold").append(str(request.get("rule", "")) + "\n")
    for key, label in LABELS:
        body.append(f"[{key}]", style="bold cyan").append(f" {label}  ")
    body.append(f"\n(denied in {round(request.get('expires_in_s', 0))} s without an answer")
    if others:
        body.append(f"; {others} more waiting")
    body.append(")")
    buffer = StringIO()
    console = Console(file=buffer, force_terminal=True, width=width, height=200, highlight=False)
    console.print(Panel(body, title=f"sandboxctl: approval needed ({request['id']})",
                        subtitle=f"policy {policy}" if policy else None, expand=False))
    return buffer.getvalue()


def outcome(answer: str | None) -> str:
    return {"once": "allowed once", "run": "allowed for this run", "always": "always allowed",
            "timeout": "no answer in time: denied"}.get(answer or "", "denied")
