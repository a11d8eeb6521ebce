"""`sandboxctl session start | list | stop`: a sandbox that stays up for many `sandboxctl exec`s.

`start` checks everything in the foreground (policy, options, confirmations: the messages of
`run`), then forks the session's process: it detaches from the terminal, supervises the sandbox
(supervise/session.py) and listens on the session's socket (supervise/session_registry.py);
`start` returns once the sandbox is ready, printing the session's name on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

from sandboxctl.cli.runopts import RUN_OPTIONS, defaults
from sandboxctl.errors import SandboxError
from sandboxctl.supervise import session_registry as registry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SESSION_OPTIONS = ("policy", "workspace", "allow_read", "allow_write", "allow_net", "net", "env", "timeout",
                   "memory", "approve", "log", "yes", "quiet")
DEFAULT_IDLE = "30m"
STOP_WAIT_S = 15.0


def printable(text: object) -> str:
    """Untrusted text (a workspace path, a note from the session's process) shown inert."""
    from sandboxctl.inert import inert

    return inert(text)


def default_name(workspace: str | None) -> str:
    base = os.path.basename(os.path.abspath(os.path.expanduser(workspace or os.getcwd()))) or "session"
    name = "".join(c if c in registry.NAME_CHARS else "-" for c in base)[:48].lstrip("._-")
    return name or "session"


# ------------------------------------------------------------------ start
def start(opts: dict[str, Any], name: str | None, idle_timeout: str | None) -> int:
    from sandboxctl import units
    from sandboxctl.api.options import parse_option
    from sandboxctl.api.sandbox import Sandbox
    from sandboxctl.cli import output
    from sandboxctl.cli.run import _accept_untrusted, _confirm

    opts = {**defaults(), **opts}
    quiet = opts["quiet"] or output.QUIET
    name = registry.check_name(name or default_name(opts["workspace"]))
    idle = parse_option(units.parse_duration, idle_timeout or DEFAULT_IDLE, "--idle-timeout", DEFAULT_IDLE)
    box = Sandbox.from_options(opts, accept=lambda candidate, why: _accept_untrusted(candidate, why, opts["yes"]))
    plan = box.plan([], session=name, interactive=False)
    if not quiet:
        for warning in plan.warnings:
            print(f"sandboxctl: warning: {warning}", file=sys.stderr)
    _confirm(plan.confirmations, opts["yes"])
    if plan.approval_mode == "ask":  # the session has no terminal: requests go to `sandboxctl approve`
        plan = plan._replace(approval_via="socket")
    listener = registry.claim(name)
    report_r, report_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        _session_process(box, plan, listener, report_w, idle)  # never returns
    listener.close()
    os.close(report_w)
    with os.fdopen(report_r, "rb") as handle:
        data = handle.read()
    try:
        message = json.loads(data) if data else {}
    except ValueError:
        message = {}
    if "ready" not in message:
        os.waitpid(pid, 0)
        raise SandboxError(message.get("error") or "the session's process stopped before its sandbox was ready",
                           message.get("hint"), int(message.get("exit_code", 125)))
    if not quiet:
        for note in message.get("notes", []):
            print(printable(note), file=sys.stderr)
        print(f"sandboxctl: session {name} started (run {plan.run_id}); run commands with "
              f"`sandboxctl exec {name} -- COMMAND`, end it with `sandboxctl session stop {name}`"
              + (f"; it ends after {units.format_duration(idle)} without a command" if idle else ""),
              file=sys.stderr)
    print(name)
    return 0


def _session_process(box, plan, listener, report_w: int, idle: float | None) -> None:
    """The session's own process: detached, it supervises the sandbox until the session ends."""
    code = 0
    notes: list[str] = []
    reported = False
    was_ready: list[bool] = []

    def report(message: dict) -> None:
        nonlocal reported
        if reported:
            return
        reported = True
        try:
            os.write(report_w, json.dumps(message).encode())
        finally:
            os.close(report_w)

    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        watchdog = registry.watchdog(plan.session, plan.run_id)  # before any thread exists
        from sandboxctl.supervise.session import SessionSupervisor

        def ready(supervisor) -> None:
            registry.write_info(plan.session, {**supervisor.status(), "started": time.time(),
                                               "idle_timeout_s": idle, "timeout_s": plan.limits.timeout})
            was_ready.append(True)
            report({"ready": plan.run_id, "notes": notes})

        holder: list = []
        try:
            result = box.execute(plan, supervisor_class=SessionSupervisor, listener=listener, idle_timeout=idle,
                                 on_ready=ready, notice=notes.append, started=holder.append)
            if result.error is not None:
                report({"error": result.error.message, "hint": result.error.hint,
                        "exit_code": result.error.exit_code})
            reason = holder[0].end_reason if holder else None
            ended = None  # a session that ended by itself says why to the next command naming it
            if was_ready and reason != "stopped":
                ended = {"reason": reason or "its server inside the sandbox stopped", "run": plan.run_id}
            if result.protected:  # the end-of-run check's findings: said by `stop` (or the next command)
                ended = {**(ended or {"reason": "stopped", "run": plan.run_id}),
                         "protected": [dict(change) for change in result.protected]}
            registry.remove(plan.session, plan.run_id, ended)
        except SandboxError as exc:
            report({"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code})
            registry.remove(plan.session, plan.run_id)
        finally:
            watchdog.done()
    except BaseException as exc:  # never a traceback on a terminal we no longer have
        code = 125
        with contextlib.suppress(OSError):
            report({"error": f"internal error: {type(exc).__name__}: {exc}", "exit_code": 125})
        registry.remove(plan.session, plan.run_id)
    os._exit(code)


# ------------------------------------------------------------------ list and stop
def _live_status(name: str) -> dict | None:
    from sandboxctl.supervise import session_wire as wire

    try:
        sock = registry.connect(name)
    except SandboxError:
        return None
    try:
        sock.settimeout(2.0)
        wire.send(sock, {"status": True})
        message, fds = wire.receive(sock)
        wire.close_all(fds)
        return (message or {}).get("session")
    except OSError:
        return None
    finally:
        sock.close()


def list_sessions(as_json: bool) -> int:
    sessions = []
    for info in registry.running():
        live = _live_status(str(info.get("name"))) or {}
        sessions.append({**info, **live})
    if as_json:
        for item in sessions:
            print(json.dumps(item))
        return 0
    if not sessions:
        print("no sessions are running", file=sys.stderr)
        return 0
    rows = [("NAME", "RUN", "POLICY", "COMMANDS", "IDLE", "WORKSPACE")]
    for item in sessions:
        rows.append((printable(item.get("name")), printable(item.get("run")), printable(item.get("policy")),
                     f"{item.get('commands', 0)} ({item.get('running', 0)} running)",
                     f"{round(float(item.get('idle_s') or 0))}s", printable(item.get("workspace"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def stop(name: str) -> int:
    """End a session and wait until its process (and with it the sandbox) is gone."""
    from sandboxctl.cli import output
    from sandboxctl.supervise import session_wire as wire

    registry.check_name(name)
    info = registry.read_info(name) or {}
    try:
        sock = registry.connect(name)
    except SandboxError as exc:
        if exc.message.startswith(f"session {name} ended"):
            output.warn(f"{exc.message} (nothing to stop)")
            _said_protected(exc.ended if isinstance(exc, registry.SessionEnded) else {})
            return 0
        raise
    try:
        wire.send(sock, {"stop": True})
        sock.settimeout(STOP_WAIT_S)
        while True:
            message, fds = wire.receive(sock)
            wire.close_all(fds)
            if message is None:
                break
    finally:
        sock.close()
    pid = info.get("pid")
    deadline = time.monotonic() + STOP_WAIT_S
    while isinstance(pid, int) and registry._alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    ended = registry.take_ended(name) or {}
    output.warn(f"session {name} stopped")
    _said_protected(ended)
    return 0


def _said_protected(ended: dict) -> None:
    """A session's end-of-run check (protected paths put back, commits bringing one in) ran in its
    detached process, whose stderr is gone: its findings were only in the log, where a user who
    then runs `git reset --hard` would not look (red team rt14). `stop` says them as `run` does."""
    from sandboxctl.cli.run import _print_protected

    changes = ended.get("protected")
    if isinstance(changes, list) and all(isinstance(c, dict) for c in changes):
        _print_protected(changes, str(ended.get("run")))


def register(app) -> None:
    import inspect

    import typer

    group = typer.Typer(help="Sandboxes that stay up: start one, run commands in it with `sandboxctl exec`, stop it.",
                        no_args_is_help=True, rich_markup_mode=None)

    def start_command(**kwargs):
        name = kwargs.pop("name")
        idle = kwargs.pop("idle_timeout")
        for key in ("allow_read", "allow_write", "allow_net", "env"):
            kwargs[key] = kwargs.get(key) or []
        raise typer.Exit(start(kwargs, name, idle))

    params = [
        inspect.Parameter("name", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                          default=typer.Option(None, "--name", metavar="NAME",
                                               help="The session's name (default: the workspace's directory name).")),
        inspect.Parameter("idle_timeout", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                          default=typer.Option(None, "--idle-timeout", metavar="DURATION",
                                               help=f"End the session after this long without a command "
                                                    f"(default {DEFAULT_IDLE}).")),
    ]
    for option in RUN_OPTIONS:
        if option.dest not in SESSION_OPTIONS:
            continue
        help_text = option.help
        if option.dest == "timeout":
            help_text = "End the whole session after this long, e.g. 2h (default: the policy's limits.timeout)."
        if option.kind == "flag":
            annotation, default = bool, typer.Option(False, *option.flags, help=help_text)
        elif option.kind == "multi":
            annotation = list[str] | None
            default = typer.Option(None, *option.flags, help=help_text, metavar=option.metavar)
        else:
            annotation = str | None
            default = typer.Option(None, *option.flags, help=help_text, metavar=option.metavar)
        params.append(inspect.Parameter(option.dest, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=default))
    start_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    start_command.__doc__ = "Start a session: one sandbox, kept up for `sandboxctl exec NAME -- COMMAND`."
    group.command("start")(start_command)

    @group.command("list")
    def list_command(as_json: bool = typer.Option(False, "--json", help="One JSON object per session.")) -> None:
        """The running sessions: name, run, policy, commands, idle time, workspace."""
        raise typer.Exit(list_sessions(as_json))

    @group.command("stop")
    def stop_command(name: str = typer.Argument(..., help="The session's name.")) -> None:
        """End a session: every process of its sandbox goes, and its files with it."""
        raise typer.Exit(stop(name))

    app.add_typer(group, name="session")
