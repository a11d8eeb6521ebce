"""Which policy a run uses: --policy, else a *trusted* workspace .sandboxctl.yaml, else `default`.

A workspace policy is written by whoever wrote the repository, so it is used only after the user
has pinned its exact bytes with `sandboxctl policy trust`; a changed file must be trusted again.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sandboxctl.errors import SandboxError
from sandboxctl.paths import ensure_private_dir, is_file, join, resolve, state_dir
from sandboxctl.policy.load import (
    LoadedPolicy,
    builtin_names,
    builtin_source,
    load_source,
    read_source,
)

WORKSPACE_POLICY = ".sandboxctl.yaml"
DEFAULT_POLICY = "default"


TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike


def _trust_file() -> str:
    return join(state_dir(), "trust.json")


def trusted_digests() -> dict[str, str]:
    import json  # not at import: the json package compiles regular expressions (~2 ms of every run)

    try:
        with open(_trust_file()) as handle:
            data = json.loads(handle.read())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def is_trusted(loaded: LoadedPolicy) -> bool:
    path = resolve(loaded.files[0].path)
    return trusted_digests().get(path) == loaded.chain_sha256


def trust(loaded: LoadedPolicy) -> None:
    """Record the digest atomically in the private state dir (never in the workspace)."""
    import json

    digests = trusted_digests()
    digests[resolve(loaded.files[0].path)] = loaded.chain_sha256
    ensure_private_dir(state_dir())
    target = _trust_file()
    tmp = join(state_dir(), f".trust.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(digests, handle, indent=1, sort_keys=True)
    os.replace(tmp, target)


def load_named(spec: str, cache_dir: str | PathLike[str] | None = None) -> LoadedPolicy:
    """A built-in name, or a path to a YAML file."""
    looks_like_path = "/" in spec or spec.endswith((".yaml", ".yml")) or os.path.exists(spec)
    if not looks_like_path:
        if spec in builtin_names():
            return load_source(builtin_source(spec), cache_dir)
        raise SandboxError(f"no built-in policy named {spec!r}",
                           f"built-in policies: {', '.join(builtin_names())}; or give a path to a YAML file")
    return load_source(read_source(resolve(spec), spec), cache_dir)


def choose_policy(spec: str | None, workspace: str | PathLike[str], cache_dir: str | PathLike[str] | None = None,
                  accept: Callable[[LoadedPolicy, str], bool] | None = None) -> tuple[LoadedPolicy, str]:
    """Return the policy for a run and how it was chosen (cache_dir: reuse validated policies).
    An untrusted workspace policy is used only when `accept(loaded, why)` says so (the user on a
    terminal trusting it; never --yes)."""
    if spec:
        return load_named(spec, cache_dir), "--policy"
    candidate = join(workspace, WORKSPACE_POLICY)
    if is_file(candidate):
        loaded = load_source(read_source(candidate, candidate), cache_dir)
        if not is_trusted(loaded):
            changed = resolve(candidate) in trusted_digests()
            state = "has changed since it was trusted" if changed else "is not trusted yet"
            if accept is not None and accept(loaded, f"workspace policy {candidate} {state}"):
                return loaded, "workspace"
            raise SandboxError(
                f"workspace policy {candidate} {state}",
                f"review it, then run: sandboxctl policy trust {candidate}  (or pick one with -p NAME)",
            )
        return loaded, "workspace"
    return load_source(builtin_source(DEFAULT_POLICY), cache_dir), "default"
