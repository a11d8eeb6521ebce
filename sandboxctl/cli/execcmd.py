"""`sandboxctl exec NAME -- COMMAND`: run a command in a running session's sandbox.

The client is on the hot path (an agent may run hundreds of commands), so it imports only the
stdlib pieces it needs — no typer, no rich, no policy code — and parses its few options itself
(`--help` goes through typer, see register). Without a terminal, the command gets this process's
own stdin, stdout and stderr (passed over the session's socket: no copying). With one (stdin
and stdout both terminals), it gets a pty of its own inside the sandbox, relayed from here,
so Ctrl-C, job control and window size reach it as in any terminal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from sandboxctl.errors import SandboxError
from sandboxctl.supervise import session_registry as registry
from sandboxctl.supervise import session_wire as wire

USAGE = "usage: sandboxctl exec [--timeout DURATION] [--env NAME[=VALUE]] [--cwd DIR] NAME -- COMMAND [ARG...]"
VALUE_OPTIONS = ("--timeout", "--env", "--cwd")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
TTY_DRAIN_S = 0.2


def parse(args: list[str]) -> tuple[dict, str, list[str]]:
    opts: dict = {"timeout": None, "env": [], "cwd": None, "quiet": False}
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        flag, eq, value = args[i].partition("=")
        if flag in ("-q", "--quiet") and not eq:
            opts["quiet"] = True
            i += 1
            continue
        if flag not in VALUE_OPTIONS:
            raise SandboxError(f"no such option: {flag}", "see `sandboxctl exec --help`")
        if not eq:
            if i + 1 >= len(args):
                raise SandboxError(f"option {flag} requires an argument", "see `sandboxctl exec --help`")
            value = args[i + 1]
            i += 1
        i += 1
        if flag == "--env":
            opts["env"].append(value)
        else:
            opts[flag[2:]] = value
    if i >= len(args) or args[i] == "--":
        raise SandboxError("no session name given", USAGE)
    name = args[i]
    rest = args[i + 1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        raise SandboxError("no command given", USAGE)
    return opts, name, rest


def _request(opts: dict, command: list[str], tty: tuple[int, int] | None) -> dict:
    env: dict[str, str] = {}
    if tty and os.environ.get("TERM"):
        env["TERM"] = os.environ["TERM"]
    for item in opts["env"]:
        name, sep, value = item.partition("=")
        if not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "a").isalnum():
            raise SandboxError(f"--env {item!r}: not NAME or NAME=VALUE",
                               "a NAME is letters, digits and _, not starting with a digit: --env LANG, --env DEBUG=1")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    timeout = None
    if opts["timeout"] is not None:
        from sandboxctl import units

        try:
            timeout = units.parse_duration(opts["timeout"])
        except ValueError as exc:
            raise SandboxError(f"--timeout: {exc}", "for example --timeout 30m") from None
    cwd = opts["cwd"]  # relative: to the workspace, where the session's server runs
    return {"exec": {"argv": command, "cwd": cwd, "env": env, "timeout": timeout,
                     "tty": list(tty) if tty else None}}


def run_exec(args: list[str]) -> int:
    opts, name, command = parse(args)
    from sandboxctl.cli import output

    quiet = opts["quiet"] or output.QUIET
    tty = _terminal_size() if os.isatty(0) and os.isatty(1) else None
    request = _request(opts, command, tty)
    sock = registry.connect(name)
    try:
        wire.send(sock, request, () if tty else (0, 1, 2))
    except OSError as exc:
        raise SandboxError(f"session {name}: cannot send the command: {exc.strerror}",
                           "the command may be too long for a session") from None
    relay = None
    pending: list[int] = []
    interrupted = []  # a SIGINT came and was passed on

    def forward(signum: int, _frame) -> None:
        pending.append(signum)
        if signum == signal.SIGINT:
            interrupted.append(signum)

    wake_r = wake_w = -1
    if not tty:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for signum in FORWARDED:
            signal.signal(signum, forward)
    try:
        while True:
            if pending:
                for signum in pending:
                    wire.send(sock, {"signal": int(signum)})
                pending.clear()
            if relay is not None:
                message, fds = relay.serve_until_message(sock)
            else:
                message, fds = _receive_or_wake(sock, wake_r)
                if message is False:
                    continue
            if message is None:
                wire.close_all(fds)
                raise SandboxError(f"session {name} ended while the command ran",
                                   f"see its records: sandboxctl log (session {name})")
            if "started" in message:
                if tty and fds:
                    relay = TtyRelay(fds[0])
                    fds = fds[1:]
                wire.close_all(fds)
                continue
            wire.close_all(fds)
            if "exited" in message:
                if relay is not None:
                    relay.finish()
                code = _report(message, name, quiet)
                if code == 128 + signal.SIGINT and interrupted:  # it died of our Ctrl-C: so do we (as `run`)
                    from sandboxctl.cli.output import die_of_sigint

                    sock.close()
                    die_of_sigint()
                return code
            if "error" in message:
                raise SandboxError(str(message["error"]), message.get("hint"), int(message.get("exit_code", 125)))
    finally:
        if relay is not None:
            relay.restore()
        sock.close()


def _receive_or_wake(sock, wake_r: int):
    """A reply, or (False, []) when a signal arrived first (so it can be forwarded)."""
    import select

    if wake_r < 0:
        return wire.receive(sock)
    ready, _, _ = select.select([sock, wake_r], [], [], None)
    if wake_r in ready:
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 512)
    return wire.receive(sock) if sock in ready else (False, [])


def _report(message: dict, name: str, quiet: bool) -> int:
    code = int(message.get("exit_code", 125))
    if message.get("error"):  # words of the server inside the sandbox, which its commands share: inert
        from sandboxctl.cli.output import error
        from sandboxctl.plan.locate import session_exec_hint

        error(str(message["error"]), str(message.get("hint") or session_exec_hint(code)), limit=500)
    denials = message.get("denials") or []
    if denials and not quiet:
        from sandboxctl.cli.run import _print_denials

        _print_denials(denials, f"{name} (command {message.get('exited')})")
    if message.get("timed_out") and not quiet:
        print("sandboxctl: timeout: the command ran out of time; it was killed", file=sys.stderr)
    return code


def _terminal_size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(1)
        return size.lines, size.columns
    except OSError:
        return 24, 80


class TtyRelay:
    """This terminal <-> the command's pty (its master came back over the session's socket)."""

    def __init__(self, master: int):
        import termios
        import tty

        self.master = master
        self.saved = termios.tcgetattr(0)
        tty.setraw(0)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old_wakeup = signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGWINCH, lambda *_: self.resize())
        self.resize()

    def resize(self) -> None:
        import fcntl
        import struct
        import termios

        rows, cols = _terminal_size()
        with contextlib.suppress(OSError):
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def serve_until_message(self, sock):
        import select

        readers = [sock, self.master, 0, self.wake_r]
        while True:
            try:
                ready, _, _ = select.select(readers, [], [])
            except InterruptedError:
                continue
            if self.wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 512)
            if self.master in ready and not self._copy_out():
                readers.remove(self.master)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    os.write(self.master, data)
                else:
                    readers.remove(0)
            if sock in ready:
                return wire.receive(sock)

    def _copy_out(self) -> bool:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: no process holds the pty any more
            return False
        if not data:
            return False
        os.write(1, data)
        return True

    def finish(self) -> None:
        """The command exited: what it wrote before is still in the pty; read it."""
        import select

        while True:
            ready, _, _ = select.select([self.master], [], [], TTY_DRAIN_S)
            if not ready or not self._copy_out():
                return

    def restore(self) -> None:
        import termios

        termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
        signal.set_wakeup_fd(self.old_wakeup)
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        os.close(self.master)
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)


def register(app) -> None:
    import typer

    @app.command("exec", context_settings={"allow_interspersed_args": False}, no_args_is_help=True)
    def exec_command(
        name: str = typer.Argument(..., help="The session's name (sandboxctl session list)."),
        command: list[str] = typer.Argument(None, metavar="-- COMMAND [ARG...]", help="The command to run."),
        timeout: str = typer.Option(None, "--timeout", metavar="DURATION",
                                    help="Kill the command after this long, e.g. 90s (exit 124)."),
        env: list[str] = typer.Option(None, "--env", metavar="NAME[=VALUE]",
                                      help="Pass NAME from here, or set NAME=VALUE (repeatable)."),
        cwd: str = typer.Option(None, "--cwd", metavar="DIR",
                                help="Where the command starts inside the sandbox (relative: to the workspace)."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="No denial table or notes on stderr."),
    ) -> None:
        """Run COMMAND in a running session's sandbox; exits with the command's exit code."""
        args = [*(["--timeout", timeout] if timeout else []), *[a for e in env or [] for a in ("--env", e)],
                *(["--cwd", cwd] if cwd else []), *(["-q"] if quiet else []), name, "--", *(command or [])]
        raise typer.Exit(run_exec(args))
