"""`sandboxctl approve`: answer pending approval requests from another terminal.

For runs whose policy says `approval.via: socket` (full-screen agents own their terminal). Without
arguments it follows every such run live and asks about each request in turn; `--list` prints
what waits; `sandboxctl approve ID ANSWER` answers one request (for scripts).
"""

from __future__ import annotations

import json
import os
import select
import sys
import termios
import time

from sandboxctl.errors import SandboxError


def register(app) -> None:
    import typer

    @app.command("approve")
    def approve(
        request: str = typer.Argument(None, help="A request id, as --list shows it."),
        answer: str = typer.Argument(None, help="once | run | always | deny"),
        list_only: bool = typer.Option(False, "--list",
                                       help="Print the pending requests and exit (1 when there are none, like grep)."),
        as_json: bool = typer.Option(False, "--json", help="With --list: one JSON object per request."),
        wait: float = typer.Option(0.0, "--wait", metavar="SECONDS",
                                   help="With --list: wait this long for a request to appear."),
    ) -> None:
        """Answer pending approval requests of runs using `approval.via: socket`."""
        if request is not None:
            raise typer.Exit(answer_one(request, answer))
        if list_only:
            raise typer.Exit(list_pending(as_json, wait))
        raise typer.Exit(follow())


def _pending(connections) -> list[tuple[object, dict]]:
    return [(c, r) for c in connections for r in c.pending]


def list_pending(as_json: bool, wait: float) -> int:
    from sandboxctl.approval.client import connect_all

    deadline = time.monotonic() + wait
    while True:
        connections = connect_all()
        items = _pending(connections)
        for connection in connections:
            connection.close()
        if items or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    from sandboxctl.inert import inert

    for connection, request in items:
        if as_json:
            print(json.dumps({**request, "run": connection.run.get("run"), "policy": connection.run.get("policy")}))
        else:  # the target, as everything a run sends, is shown inert (it comes from the sandbox)
            print(f"{inert(request.get('id'), 24)}  {inert(request.get('kind'), 7):<7}  "
                  f"{inert(request.get('target'), 400)}  "
                  f"(pid {inert(request.get('pid') or '?', 12)}, {inert(request.get('expires_in_s'), 12)} s left)")
    if not items and not as_json:
        print("no pending approval requests", file=sys.stderr)
    return 0 if items else 1


def answer_one(request_id: str, choice: str | None) -> int:
    from sandboxctl.approval.broker import CHOICES
    from sandboxctl.approval.client import connect_all

    if choice not in CHOICES:
        raise SandboxError(f"answer {choice!r}: must be one of {', '.join(CHOICES)}",
                           "for example: sandboxctl approve ID once")
    connections = connect_all()
    try:
        for connection in connections:
            if any(r["id"] == request_id for r in connection.pending):
                problem = connection.answer(request_id, choice)
                if problem:
                    raise SandboxError(problem, "list what waits with: sandboxctl approve --list")
                return 0
    finally:
        for connection in connections:
            connection.close()
    raise SandboxError(f"no pending request {request_id}", "list what waits with: sandboxctl approve --list")


def _settled_elsewhere(connection, request_id: str) -> str:
    """How a request on screen was settled without our key: another window, the timeout, the run's end."""
    from sandboxctl.approval.view import outcome

    if connection is None:
        return "the run ended"
    item = getattr(connection, "settled", {}).get(request_id)
    if item is None:
        return "no longer pending"
    from sandboxctl.inert import inert

    answer, via = str(item.get("answer")), inert(item.get("via") or "", 120)
    if via == "socket":
        return f"answered in another window: {outcome(answer)}"
    return f"{outcome(answer)} ({via})" if via else outcome(answer)


def follow() -> int:
    """Live: every run's requests, oldest first, one single-key question at a time."""
    from sandboxctl.approval.client import connect_all
    from sandboxctl.approval.view import KEYS, outcome, render
    from sandboxctl.inert import inert

    if not sys.stdin.isatty():
        raise SandboxError("sandboxctl approve needs a terminal to ask",
                           "use `sandboxctl approve --list` and `sandboxctl approve ID ANSWER`")
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = list(saved)
    quiet[3] &= ~(termios.ICANON | termios.ECHO)
    quiet[6] = list(saved[6])
    quiet[6][termios.VMIN], quiet[6][termios.VTIME] = 1, 0
    connections: dict[str, object] = {}
    shown: str | None = None  # the request on screen...
    shown_on: str | None = None  # ...and the socket of its run
    answered_here: set[str] = set()
    print("sandboxctl approve: waiting for requests (q to quit)", file=sys.stderr)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        last_scan = 0.0
        while True:
            if time.monotonic() - last_scan > 1.0:  # runs come and go
                known = {str(c.path) for c in connections.values()}
                for connection in connect_all():
                    if str(connection.path) in known:
                        connection.close()
                    else:
                        connections[str(connection.path)] = connection
                last_scan = time.monotonic()
            items = _pending(connections.values())
            if shown is not None and all(r["id"] != shown for _c, r in items):
                # gone from the queue: say how, unless it was our own key
                if shown not in answered_here:
                    print(f"  -> {inert(shown)}: {_settled_elsewhere(connections.get(shown_on or ''), shown)}",
                          file=sys.stderr)
                answered_here.discard(shown)
                shown = shown_on = None
            if items and items[0][1]["id"] != shown:
                connection, request = items[0]
                width = max(40, min(100, os.get_terminal_size(fd).columns))
                sys.stderr.write("\n" + render(request, len(items) - 1, str(connection.run.get("policy") or ""), width))
                sys.stderr.flush()
                shown, shown_on = request["id"], str(connection.path)
            ready, _, _ = select.select([fd, *connections.values()], [], [], 0.5)
            for source in ready:
                if source == fd:
                    key = os.read(fd, 1).decode(errors="replace").lower()
                    if key == "q":
                        return 0
                    if key in KEYS and items:
                        connection, request = items[0]
                        problem = connection.answer(request["id"], KEYS[key])
                        print(f"  -> {inert(problem, 200) if problem else outcome(KEYS[key])}", file=sys.stderr)
                        answered_here.add(request["id"])
                else:
                    try:
                        message = source.read()
                    except (OSError, ValueError):
                        message = None
                    if message is None:
                        source.close()
                        connections.pop(str(source.path), None)
    except KeyboardInterrupt:
        return 130
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
        for connection in connections.values():
            connection.close()
