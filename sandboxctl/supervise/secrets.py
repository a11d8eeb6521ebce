"""Resolve secret values in the supervisor, just before launch, and never anywhere else.

Values go to the shim over its control socket (env delivery) or to bubblewrap through a memfd
(file delivery); they never appear on a command line, in the plan, in `--dry-run`, or in the log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sandboxctl.errors import SandboxError
from sandboxctl.plan.model import SecretPlan

COMMAND_TIMEOUT_S = 60


def resolve(secret: SecretPlan, caller_env: Mapping[str, str], home: str) -> str:
    """The value of one secret; a missing or empty source stops the run (exit 125), naming it."""
    kind, _, ref = secret.source.partition(":")
    if kind == "env":
        value = caller_env.get(ref)
        if value is None:
            raise SandboxError(f"secret {secret.name}: the variable {ref} is not set",
                               f"export {ref} before the run, or change secrets.{secret.name}.from")
    elif kind == "file":
        path = home + ref[1:] if ref.startswith("~") else ref
        try:
            with open(path, encoding="utf-8") as handle:
                value = handle.read()
        except OSError as exc:
            raise SandboxError(f"secret {secret.name}: cannot read {path}: {exc.strerror}",
                               f"check secrets.{secret.name}.from") from None
    elif kind == "command":
        value = _from_command(secret.name, ref, caller_env)
    else:  # the validator allows nothing else
        raise SandboxError(f"secret {secret.name}: unknown source {kind!r}")
    value = value.removesuffix("\n")
    if not value:
        raise SandboxError(f"secret {secret.name}: the source {kind}:… gave an empty value",
                           "an empty secret is never injected")
    if "\0" in value:
        raise SandboxError(f"secret {secret.name}: the value contains a NUL byte")
    return value


def _from_command(name: str, command: str, caller_env: Mapping[str, str]) -> str:
    import shlex
    import subprocess

    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SandboxError(f"secret {name}: cannot parse the command: {exc}") from None
    if argv and "/" not in argv[0]:  # found as bwrap is: never in a relative PATH entry (the workspace)
        from sandboxctl.supervise.spawn import which

        found = which(argv[0], caller_env.get("PATH", os.defpath))
        if not found:
            raise SandboxError(f"secret {name}: command not found: {argv[0]}",
                               f"install it or change secrets.{name}.from")
        argv = [found, *argv[1:]]
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT_S, env=dict(caller_env))
    except FileNotFoundError:
        raise SandboxError(f"secret {name}: command not found: {argv[0]}",
                           f"install it or change secrets.{name}.from") from None
    except subprocess.TimeoutExpired:
        raise SandboxError(f"secret {name}: the command did not finish within {COMMAND_TIMEOUT_S}s") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [""])[0][:200]
        reason = f": {detail}" if detail else ""
        raise SandboxError(f"secret {name}: the command failed (exit {result.returncode}){reason}",
                           f"run it yourself to see why: {argv[0]} …")
    return result.stdout


def memfd_with(value: str, name: str) -> int:
    """An inheritable memfd holding the value, for bubblewrap's --file (read once, then closed)."""
    fd = os.memfd_create(f"sandboxctl-secret-{name}", 0)
    os.write(fd, value.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
