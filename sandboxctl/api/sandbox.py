"""The library: a Sandbox runs commands under one policy, exactly as `sandboxctl run` does.

    from sandboxctl import Sandbox
    box = Sandbox(policy="default", workspace=".")
    result = box.run(["pytest", "-q"], timeout="10m")

Same options (cli/runopts.py), same plan, same supervisor, same action log: `sandboxctl run` is
a client of this class (cli/run.py). Differences are the caller's: output is captured (pipes,
stream callbacks) instead of sharing the terminal, approvals go to `on_approval` instead of a
prompt, no signal handler of the caller is touched, and nothing asks on a terminal (a run that
widens the policy needs yes=True, like --yes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from sandboxctl.api import checks
from sandboxctl.api.options import Settings, plan_run, settle
from sandboxctl.errors import SandboxError
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from sandboxctl.api.session import Session
    from sandboxctl.approval.callback import ApprovalRequest
    from sandboxctl.plan.model import Plan

    Output = Callable[[Any], None]


class Result(Record):
    """One finished command. stdout/stderr are str (text=True, UTF-8, errors replaced) or bytes;
    denials are {kind, target, rule} of every escape refused during the run; the run's records
    are in the action log under run_id (`sandboxctl log --run RUN_ID`)."""

    exit_code: int
    stdout: str | bytes
    stderr: str | bytes
    denials: list[dict[str, Any]]
    run_id: str
    duration_s: float = 0.0
    timed_out: bool = False
    warnings: tuple[str, ...] = ()
    log_path: str = ""
    command: int | None = None  # in a session: the command's number

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Sandbox:
    """A policy, a workspace and the options of `sandboxctl run`, ready to run commands.

    Everything is checked here, before anything starts: a bad policy, option or type raises
    SandboxError with the CLI's message (and .exit_code 125)."""

    def __init__(self, policy: str | os.PathLike[str] | None = None, workspace: str | os.PathLike[str] | None = None,
                 *, on_approval: Callable[[ApprovalRequest], str] | None = None, approve: str | None = None,
                 allow_read: Iterable[str | os.PathLike[str]] = (), allow_write: Iterable[str | os.PathLike[str]] = (),
                 allow_net: Iterable[str] = (), net: str | None = None,
                 env: Mapping[str, str] | Iterable[str] = (), timeout: str | float | None = None,
                 memory: str | int | None = None, log: str | os.PathLike[str] | None = None,
                 backend: str | None = None, overlay: bool = False, yes: bool = False):
        if on_approval is not None and not callable(on_approval):
            raise SandboxError(f"on_approval: expected a function, got {type(on_approval).__name__}")
        self.on_approval = on_approval
        self.yes = bool(yes)
        self.notes: list[str] = []
        opts = {
            "policy": checks.text(policy, "policy"), "workspace": checks.text(workspace, "workspace"),
            "allow_read": checks.strings(allow_read, "allow_read"),
            "allow_write": checks.strings(allow_write, "allow_write"),
            "allow_net": checks.strings(allow_net, "allow_net"), "net": checks.text(net, "net"),
            "env": checks.env_items(env, "env"), "timeout": checks.duration(timeout, "timeout"),
            "memory": checks.size(memory, "memory"), "approve": checks.text(approve, "approve"),
            "log": checks.text(log, "log"), "backend": checks.text(backend, "backend"), "yes": self.yes,
            "overlay": bool(overlay),  # `run --overlay`: the workspace's changes held for `sandboxctl apply`
        }
        self.settings = self._settle(opts)

    @classmethod
    def from_options(cls, opts: dict[str, Any], accept: Callable[[Any, str], bool] | None = None) -> Sandbox:
        """The CLI's way in: options as the CLI parsed them, its own answer to an untrusted policy."""
        box = cls.__new__(cls)
        box.on_approval, box.yes, box.notes = None, bool(opts.get("yes")), []
        box.settings = box._settle(opts, accept)
        return box

    def _settle(self, opts: dict[str, Any], accept: Callable[[Any, str], bool] | None = None) -> Settings:
        """An untrusted workspace .sandboxctl.yaml is never used from here, yes=True or not: it is
        written by whoever wrote the repository; `sandboxctl policy trust` pins it (as for --yes)."""
        return settle(opts, accept or (lambda _loaded, _why: False))

    @property
    def policy(self) -> str:
        """The name of the policy in use (after `extends`)."""
        return self.settings.loaded.policy.name

    @property
    def workspace(self) -> str:
        return str(self.settings.workspace)

    # ------------------------------------------------------------------ plans
    def plan(self, argv: Iterable[str | os.PathLike[str]], *, env: Mapping[str, str] | Iterable[str] = (),
             timeout: str | float | None = None, session: str | None = None, interactive: bool | None = None,
             approve: str | None = None, run_id: str | None = None) -> Plan:
        """The Plan of one run (what `--dry-run` prints); `plan(...).to_dict()` is JSON-ready.
        run_id: the run's id when it is already chosen (the CLI's head start); else a new one."""
        from sandboxctl import units
        from sandboxctl.api.options import check_env_items, parse_option
        from sandboxctl.plan.facts import gather

        command = checks.argv(argv) if session is None else []
        extra_env = checks.env_items(env, "env")
        check_env_items(extra_env)
        seconds = parse_option(units.parse_duration, checks.duration(timeout, "timeout"), "--timeout", "30m")
        facts = gather()
        if interactive is not None:
            facts = facts._replace(interactive=interactive)
        return plan_run(self.settings, command, env=tuple(extra_env), timeout=seconds,
                        approve=approve or self._approve_mode(), session=session, facts=facts, run_id=run_id)

    def _approve_mode(self) -> str | None:
        """With on_approval, a policy that asks asks the function (the library has no prompt)."""
        if self.settings.opts.get("approve") or self.on_approval is None:
            return None
        return "ask" if self.settings.loaded.policy.approval.mode == "ask" else None

    def check_confirmations(self, plan: Plan) -> None:
        """What the CLI asks on a terminal, the library accepts only with yes=True."""
        if plan.confirmations and not self.yes:
            raise SandboxError("this run widens the policy: " + "; ".join(plan.confirmations),
                               "pass yes=True to accept (like --yes: nothing widens silently)")

    def execute(self, plan: Plan, **options: Any):
        """Launch a checked plan (the CLI's path, and run()'s): supervise/lifecycle.execute."""
        from sandboxctl.paths import state_dir
        from sandboxctl.supervise.lifecycle import execute

        argv_for_log = list(plan.command) if plan.session is None else ["session", plan.session]
        return execute(plan, state_dir(), argv_for_log, **options)

    def approver(self):
        if self.on_approval is None:
            return None
        from sandboxctl.approval.callback import CallbackFrontEnd

        return CallbackFrontEnd(self.on_approval)

    # ------------------------------------------------------------------ running
    def run(self, argv: Iterable[str | os.PathLike[str]], *, input: str | bytes | None = None,
            env: Mapping[str, str] | Iterable[str] = (), timeout: str | float | None = None,
            cwd: str | os.PathLike[str] | None = None, on_stdout: Output | None = None,
            on_stderr: Output | None = None, capture: bool = True, text: bool = True) -> Result:
        """Run one command in a fresh sandbox and wait for it.

        input: the command's stdin (default: empty). env: extra variables (NAME=VALUE, or a NAME
        taken from this process). timeout: "90s", "10m" or seconds (exit code 124, timed_out).
        cwd: where the command starts (relative: to the workspace). on_stdout/on_stderr: called
        with each chunk as it comes (str with text=True). capture=False: keep nothing in the
        result; output without a callback then goes to this process's own stdout/stderr.
        A failure of sandboxctl itself, or a command that cannot start (126/127), raises
        SandboxError with the CLI's message and exit code."""
        return self._run(argv, input=input, env=env, timeout=timeout, cwd=cwd, on_stdout=on_stdout,
                         on_stderr=on_stderr, capture=capture, text=text)

    def _run(self, argv, *, input=None, env=(), timeout=None, cwd=None, on_stdout=None, on_stderr=None,
             capture=True, text=True, started=None) -> Result:
        from sandboxctl.supervise.stdio import CommandIO

        data = checks.input_bytes(input)
        checks.callback(on_stdout, "on_stdout")
        checks.callback(on_stderr, "on_stderr")
        plan = self.plan(argv, env=env, timeout=timeout, interactive=False)
        directory = checks.cwd(cwd, plan.cwd)
        self.check_confirmations(plan)
        decoders = checks.Decoders(text)
        io = CommandIO(input=data, capture=capture, on_stdout=decoders.sink(1, on_stdout),
                       on_stderr=decoders.sink(2, on_stderr))
        notes: list[str] = list(self.notes) + list(plan.warnings)
        outcome = self.execute(plan, io=io, forward_signals=False, approver=self.approver(), notice=notes.append,
                               cwd=directory, started=started)
        if outcome.error is not None:
            raise outcome.error
        return Result(outcome.exit_code, decoders.whole(io.output(1)), decoders.whole(io.output(2)),
                      list(outcome.denials), plan.run_id, round(outcome.duration_s, 6), outcome.timed_out,
                      tuple(notes), plan.log_path)

    async def arun(self, argv: Iterable[str | os.PathLike[str]], *, input: str | bytes | None = None,
                   env: Mapping[str, str] | Iterable[str] = (), timeout: str | float | None = None,
                   cwd: str | os.PathLike[str] | None = None, on_stdout: Output | None = None,
                   on_stderr: Output | None = None, capture: bool = True, text: bool = True) -> Result:
        """run() for asyncio: the sandbox is supervised on a thread of its own; callbacks are
        called on the event loop; cancelling the task kills the sandbox."""
        import asyncio

        loop = asyncio.get_running_loop()

        def on_loop(callback: Output | None) -> Output | None:
            if callback is None:
                return None
            return lambda chunk: loop.call_soon_threadsafe(callback, chunk)

        holder: list[Any] = []
        return await in_thread(lambda: self._run(argv, input=input, env=env, timeout=timeout, cwd=cwd,
                                                 on_stdout=on_loop(on_stdout), on_stderr=on_loop(on_stderr),
                                                 capture=capture, text=text, started=holder.append),
                               cancel=lambda: holder and holder[0].cancel())

    def session(self, *, name: str | None = None, timeout: str | float | None = None,
                idle_timeout: str | float | None = None) -> Session:
        """One sandbox for many commands (a context manager): `with box.session() as s: s.run([...])`.
        State in the sandbox (its /tmp, HOME, processes) persists between commands; nothing of it
        survives the session. timeout: the whole session's; idle_timeout: ends it after this long
        without a command."""
        from sandboxctl.api.session import Session

        return Session(self, name=name, timeout=timeout, idle_timeout=idle_timeout)


async def in_thread(work: Callable[[], Any], cancel: Callable[[], Any]) -> Any:
    """Run blocking work on a thread of its own (it spawns bubblewrap, whose parent-death signal is
    per thread: a pool thread that exits would take the sandbox with it); on cancellation, cancel()
    it and wait for it to finish before passing the cancellation on."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def target() -> None:
        try:
            value, error = work(), None
        except BaseException as exc:
            value, error = None, exc

        def settle_future() -> None:
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        loop.call_soon_threadsafe(settle_future)

    thread = threading.Thread(target=target, name="sandboxctl-run", daemon=True)
    thread.start()
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        raise
