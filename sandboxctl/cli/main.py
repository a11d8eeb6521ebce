"""Entry point: assemble the command groups and turn every failure into one line + exit code.

`sandboxctl run ...` takes a fast path that never imports typer (see cli/runopts.py); every other
command goes through the typer app built in `build_app`.
"""

from __future__ import annotations

import sys

from sandboxctl.cli.output import error, report
from sandboxctl.errors import EXIT_SANDBOX_FAILED, SandboxError


def build_app():
    import typer

    from sandboxctl import __version__
    from sandboxctl.cli import (
        approve,
        completion,
        doctor,
        execcmd,
        exportcmd,
        logcmd,
        policycmd,
        proxycmd,
        run,
        selftest,
        session,
        shellinit,
        workspacecmd,
    )

    app = typer.Typer(
        name="sandboxctl",
        help="Run AI coding agents, and the commands they run, inside a layered Linux sandbox "
        "(bubblewrap + Landlock + seccomp).",
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    def _version(value: bool) -> None:
        if value:
            print(f"sandboxctl {__version__}")
            raise typer.Exit(0)

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                     help="Print the version and exit."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks for internal errors."),
        quiet: bool = typer.Option(False, "-q", "--quiet", help="No notes, status lines or summaries on stderr."),
        verbose: bool = typer.Option(False, "-v", "--verbose", help="Every note on stderr."),
    ) -> None:
        if debug:
            from sandboxctl.cli import output

            output.DEBUG = True

    run.register(app)
    app.add_typer(policycmd.app, name="policy")
    app.add_typer(exportcmd.app, name="export")
    logcmd.register(app)
    doctor.register(app)
    approve.register(app)
    selftest.register(app)
    session.register(app)
    execcmd.register(app)
    workspacecmd.register(app)
    proxycmd.register(app)
    completion.register(app)  # after the commands whose -p/--policy it completes
    shellinit.register(app)
    return app


def missing_command(ctx) -> None:
    """A group called without its command: name what it takes, in one line and a hint."""
    path = ctx.command_path if ctx is not None else "sandboxctl"
    names = ctx.command.list_commands(ctx) if ctx is not None and hasattr(ctx.command, "list_commands") else []
    hint = f"`{path} COMMAND`, COMMAND one of: {', '.join(names)}; " if names else ""
    error("no command given", f"{hint}see `{path} --help`")


def _wants_help(args: list[str]) -> bool:
    head = args[: args.index("--")] if "--" in args else args
    return not args or any(a in ("-h", "--help") for a in head)


def _note_interrupts() -> None:
    """Ctrl-C raises KeyboardInterrupt as ever, and is noted: typer makes it a plain exit 130,
    which must still end the process by SIGINT (output.die_of_sigint)."""
    import signal

    from sandboxctl.cli import output

    def interrupted(_signum: int, _frame: object) -> None:
        output.INTERRUPTED = True
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # never a caller's SIG_IGN
        signal.signal(signal.SIGINT, interrupted)


def _exit_now(code: int) -> None:
    """Exit without the interpreter's finalization (~7 ms of tearing down the modules of a run):
    the run is over — log closed, cgroup removed, every thread of ours stopped (and daemonic) —
    so only the output buffers are left to flush."""
    import contextlib
    import os

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader that went away (`| head`), a closed stream
            stream.flush()
    os._exit(code)


def _pause_garbage_collector():
    """No cycle collection while a run starts: its ~170 imports allocate enough objects for ~20
    collections (~2 ms of a start-up on the critical path), and none of them is garbage. Returns
    what turns it back on, once the command is let go (the supervisor may then run for hours):
    what start-up made is frozen first (it lives as long as the process), so later collections
    need not walk it."""
    import gc

    if not gc.isenabled():  # somebody wanted it off (python -X ... or a wrapper): leave it so
        return None
    gc.disable()

    def resume() -> None:
        gc.freeze()
        gc.enable()

    return resume


def _stdout_gone() -> bool:
    """True when standard output's reader has gone: a pipe with no reader left (POLLERR), a
    socket whose peer hung up (POLLHUP)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def entry() -> None:
    """The program (pip's script, `python -m sandboxctl`): main(), importing nothing more from
    the current directory (`python -m` puts it first; an empty PYTHONPATH entry names it) or
    from the directory that holds the package when that is a clone (an editable install), not
    site-packages. Both are often a workspace, which a sandbox may write: a `nt.py` left there
    would be imported by pathlib's first import in the next supervisor. `sandboxctl` is
    imported already; the package's own __path__ finds the rest."""
    import os

    drop = {os.path.realpath(".")}
    clone = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.basename(clone) not in ("site-packages", "dist-packages"):
        drop.add(os.path.realpath(clone))
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") not in drop]
    main()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; usage errors and sandbox failures exit 125 with one line, never a traceback."""
    from sandboxctl.cli import output

    args = output.take_global_flags(list(argv if argv is not None else sys.argv[1:]))
    try:
        if args and args[0] == "exec" and not _wants_help(args[1:]):
            from sandboxctl.cli.execcmd import run_exec  # the hot path of sessions: no typer

            sys.exit(run_exec(args[1:]))
        if args and args[0] == "run":
            from sandboxctl.cli.runopts import parse_fast, wants_slow_path

            if not wants_slow_path(args[1:]):
                early = None, ""
                on_go = None
                if argv is None:  # the process's own command line: bubblewrap may start before the plan
                    on_go = _pause_garbage_collector()
                    from sandboxctl.launch.headstart import try_start

                    key, head_start = try_start(args[1:])
                    early = head_start, key
                try:
                    from sandboxctl.cli.run import execute_run

                    options, command = parse_fast(args[1:])
                except BaseException:
                    if early[0] is not None:
                        early[0].abort()
                    raise
                code = execute_run(options, command, *early, on_go=on_go)
                if code == 130 and output.INTERRUPTED:  # the terminal's Ctrl-C killed the command
                    output.die_of_sigint()
                if argv is None:  # nothing is left to do but exit
                    _exit_now(code)
                sys.exit(code)
        from typer.main import get_command

        command = get_command(build_app())
        _note_interrupts()
        code = command.main(args=args, prog_name="sandboxctl", standalone_mode=False)
        if code == 130 and output.INTERRUPTED:  # typer turned the KeyboardInterrupt into Exit(130)
            output.die_of_sigint()
    except SandboxError as exc:
        code = report(exc)
    except SystemExit:
        raise
    except KeyboardInterrupt:  # everything above has cleaned up on its way out
        print(file=sys.stderr)
        output.die_of_sigint()
        code = 130
    except BrokenPipeError as exc:
        if not _stdout_gone():  # a pipe of ours broke, not the reader's: never a success
            error(f"internal error: {type(exc).__name__}: {exc}",
                  "re-run with --debug for a traceback, and please report it")
            code = EXIT_SANDBOX_FAILED
        else:  # `sandboxctl run --dry-run | head`: the reader went away, not an error
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            code = 0
    except Exception as exc:
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):  # typer.Exit
            sys.exit(exc.exit_code)
        # click's own errors (bad option, missing argument): duck-typed, click is vendored by typer
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            name = type(exc).__name__
            if name == "Abort":  # click's KeyboardInterrupt (or EOF at a prompt)
                if isinstance(exc.__context__, KeyboardInterrupt):
                    output.die_of_sigint()
                code = 130
            elif name == "NoArgsIsHelpError":  # `sandboxctl policy`: one line and the commands, not the help
                missing_command(getattr(exc, "ctx", None))
                code = EXIT_SANDBOX_FAILED
            else:
                ctx = getattr(exc, "ctx", None)
                where = f"{ctx.command_path} --help" if ctx is not None else "sandboxctl --help"
                error(exc.format_message(), f"see `{where}`")
                code = EXIT_SANDBOX_FAILED
        else:
            from sandboxctl.cli import output

            if output.DEBUG:
                raise
            error(f"internal error: {type(exc).__name__}: {exc}",
                  "re-run with --debug for a traceback, and please report it")
            code = EXIT_SANDBOX_FAILED
    sys.exit(code if isinstance(code, int) else 0)
