"""From options to a Plan, in one order for every caller: the CLI's `run`, `session start` and
the library's Sandbox all check their options, find the workspace, create the owned dirs, load
the policy and parse limits here — so the same input fails with the same message everywhere.

Options are the CLI's (cli/runopts.py RUN_OPTIONS names: policy, workspace, allow_read, ...).
"""

from __future__ import annotations

import os

from sandboxctl.cli.runopts import RUN_OPTIONS, defaults
from sandboxctl.errors import SandboxError
from sandboxctl.record import Record
from sandboxctl.runid import new_run_id

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any


def workspace_dir(path: str | None) -> str:
    from sandboxctl.paths import expand_user, is_dir, resolve

    candidate = expand_user(path or os.getcwd())
    if not is_dir(candidate):
        raise SandboxError(f"workspace {candidate} is not a directory", "pass -w DIR with an existing directory")
    return resolve(candidate)


def parse_option(parse, value: str | None, option: str, example: str):
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise SandboxError(f"{option}: {exc}", f"for example {option} {example}") from None


def check_env_items(items: list[str]) -> None:
    for item in items:
        name = item.partition("=")[0]
        if not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "a").isalnum():
            raise SandboxError(f"--env {item!r}: not NAME or NAME=VALUE",
                               "a NAME is letters, digits and _, not starting with a digit: --env LANG, --env DEBUG=1")


def check_options(opts: dict[str, Any]) -> None:
    from sandboxctl import units

    for option in RUN_OPTIONS:
        value = opts.get(option.dest)
        if option.choices and value is not None and value not in option.choices:
            raise SandboxError(f"{option.flags[-1]} {value!r}: must be one of {', '.join(option.choices)}")
    check_env_items(opts["env"])
    for host in opts["allow_net"]:
        parse_option(units.parse_host_pattern, host, "--allow-net", "pypi.org:443")
    for path in opts["allow_read"] + opts["allow_write"]:
        if not os.path.isabs(os.path.expanduser(path)):
            raise SandboxError(f"{path}: extra paths must be absolute (or start with ~)",
                               f"for example {os.path.abspath(path)}")


def create_owned_dirs(log_path: str | None) -> None:
    """The state and log dirs exist before planning, so the plan masks what is really there."""
    from sandboxctl.paths import ensure_private_dir, make_dirs, parent, state_dir

    ensure_private_dir(state_dir())
    if log_path:
        make_dirs(parent(log_path), 0o700)


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


class Settings(Record):
    """Checked options, the workspace and the loaded policy: what every plan of a Sandbox shares."""

    opts: dict[str, Any]
    workspace: str  # resolved (paths.resolve)
    loaded: Any  # policy.load.LoadedPolicy
    timeout: float | None
    memory: int | None


def settle(opts: dict[str, Any], accept=None) -> Settings:
    """Options -> workspace -> owned dirs -> policy -> limits (accept: an untrusted workspace policy)."""
    from sandboxctl import units
    from sandboxctl.paths import join, state_dir
    from sandboxctl.policy.discover import choose_policy

    opts = {**defaults(), **opts}
    check_options(opts)
    space = workspace_dir(opts["workspace"])
    if not opts["dry_run"]:
        create_owned_dirs(absolute(opts["log"]) if opts["log"] else None)
    loaded, _how = choose_policy(opts["policy"], space, cache_dir=join(state_dir(), "cache"), accept=accept)
    return Settings(opts, space, loaded,
                    parse_option(units.parse_duration, opts["timeout"], "--timeout", "30m"),
                    parse_option(units.parse_size, opts["memory"], "--memory", "4G"))


def plan_run(settings: Settings, command: list[str] | tuple[str, ...], *, env: tuple[str, ...] = (),
             timeout: float | None = None, approve: str | None = None, session: str | None = None,
             facts=None, run_id: str | None = None):
    """The Plan of one run (or one session) of these settings; env and timeout add to the options."""
    from sandboxctl.plan.build import build_plan
    from sandboxctl.plan.facts import gather
    from sandboxctl.plan.inputs import Invocation

    opts = settings.opts
    invocation = Invocation(
        command=tuple(command),
        workspace=str(settings.workspace),
        run_id=run_id or new_run_id(),
        allow_read=tuple(absolute(p) for p in opts["allow_read"]),
        allow_write=tuple(absolute(p) for p in opts["allow_write"]),
        allow_net=tuple(opts["allow_net"]),
        net=opts["net"],
        env=tuple(opts["env"]) + tuple(env),
        timeout=timeout or settings.timeout,
        memory=settings.memory,
        approve=approve or opts["approve"],
        log_path=absolute(opts["log"]) if opts["log"] else None,
        backend=opts["backend"],
        session=session,
        fail_on_denial=bool(opts.get("fail_on_denial")),
        workspace_mode="overlay" if opts.get("overlay") else None,
    )
    return build_plan(settings.loaded.policy, invocation, facts or gather())
