"""The OpenAI Agents SDK's sandbox, on Linux, under a sandboxctl policy.

`openai-agents` (0.24) runs a `SandboxAgent`'s tools through a sandbox client. Its local client
(`UnixLocalSandboxClient`) confines commands on macOS only: on Linux
`UnixLocalSandboxSession._confined_exec_command` returns the command as it is, and file reads
and writes go straight to the host. This client runs everything the SDK does for the agent in
one sandboxctl session — every command (`exec_command`, the SDK's own `ls`, `mkdir`, `rm`, `mv`
checks) and every file operation (`read`, `write`: `apply_patch`, `view_image`, the manifest)
— inside the sandbox, under the policy's walls, approvals and action log:

    from agents import Runner
    from agents.run_config import RunConfig, SandboxRunConfig
    from sandboxctl.integrations.openai_agents import SandboxctlSandboxClient

    client = SandboxctlSandboxClient(policy="default")
    await Runner.run(agent, "run the tests", run_config=RunConfig(sandbox=SandboxRunConfig(client=client)))

The workspace is the manifest's root, a host directory the sandbox sees at the same path (a new
temporary one, removed by delete(), when the manifest keeps the SDK's default root). Install
with `pip install 'sandboxctl[agents]'`.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from agents.sandbox.errors import (
    ExecTimeoutError,
    ExecTransportError,
    WorkspaceArchiveReadError,
    WorkspaceArchiveWriteError,
    WorkspaceReadNotFoundError,
    WorkspaceStartError,
)
from agents.sandbox.manifest import Manifest
from agents.sandbox.session.base_sandbox_session import BaseSandboxSession
from agents.sandbox.session.dependencies import Dependencies
from agents.sandbox.session.manager import Instrumentation
from agents.sandbox.session.sandbox_client import BaseSandboxClient, BaseSandboxClientOptions
from agents.sandbox.session.sandbox_session import SandboxSession
from agents.sandbox.session.sandbox_session_state import SandboxSessionState
from agents.sandbox.snapshot import SnapshotBase, SnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExecResult, User

from sandboxctl.api.sandbox import Sandbox
from sandboxctl.errors import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, SandboxError

BACKEND = "sandboxctl"
_DEFAULT_ROOT = str(Manifest.model_fields["root"].default)
_WORKSPACE_PREFIX = "sandboxctl-agent-"


class SandboxctlSandboxClientOptions(BaseSandboxClientOptions):
    """Per-session settings (the client's own are the defaults): a policy name or file, extra
    grants as `sandboxctl run` has them, and the session's limits."""

    type: Literal["sandboxctl"] = "sandboxctl"
    policy: str | None = None
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    allow_net: tuple[str, ...] = ()
    timeout: str | None = None
    idle_timeout: str | None = None


class SandboxctlSandboxSessionState(SandboxSessionState):
    type: Literal["sandboxctl"] = "sandboxctl"
    workspace_root_owned: bool = False
    policy: str | None = None
    allow_read: tuple[str, ...] = ()
    allow_write: tuple[str, ...] = ()
    allow_net: tuple[str, ...] = ()
    timeout: str | None = None
    idle_timeout: str | None = None


class SandboxctlSandboxSession(BaseSandboxSession):
    """One sandboxctl session (api/session.py) behind the SDK's session interface."""

    state: SandboxctlSandboxSessionState

    def __init__(self, *, state: SandboxctlSandboxSessionState, on_approval: Callable[..., str] | None = None,
                 yes: bool = False):
        self.state = state
        self.on_approval = on_approval
        self.yes = yes
        self.session: Any = None

    # ------------------------------------------------------------------ lifecycle
    async def _ensure_backend_started(self) -> None:
        if self.session is not None and self.session.running:
            return
        import asyncio

        root = Path(self.state.manifest.root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkspaceStartError(path=root, cause=exc) from exc
        try:
            box = Sandbox(policy=self.state.policy, workspace=root, on_approval=self.on_approval,
                          allow_read=self.state.allow_read, allow_write=self.state.allow_write,
                          allow_net=self.state.allow_net, yes=self.yes)
            session = box.session(timeout=self.state.timeout, idle_timeout=self.state.idle_timeout)
            await asyncio.get_running_loop().run_in_executor(None, session.start)
        except SandboxError as exc:
            raise WorkspaceStartError(path=root, message=f"sandboxctl: {exc}", cause=exc) from exc
        self.session = session

    async def _after_start(self) -> None:
        return

    async def running(self) -> bool:
        return self.session is not None and self.session.running

    async def _shutdown_backend(self) -> None:
        import asyncio

        if self.session is not None:
            session, self.session = self.session, None
            await asyncio.get_running_loop().run_in_executor(None, session.stop)

    # ------------------------------------------------------------------ commands
    async def _exec_internal(self, *command: str | Path, timeout: float | None = None) -> ExecResult:
        return await self._run([str(part) for part in command], timeout=timeout)

    async def _run(self, argv: list[str], *, timeout: float | None = None, input: bytes | None = None) -> ExecResult:
        if self.session is None:
            raise ExecTransportError(command=argv, message="the sandboxctl session is not started")
        try:
            result = await self.session.arun(argv, timeout=timeout, input=input, text=False)
        except SandboxError as exc:
            if exc.exit_code in (EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND):  # a shell would say the same
                return ExecResult(stdout=b"", stderr=f"{exc}\n".encode(), exit_code=exc.exit_code)
            raise ExecTransportError(command=argv, message=f"sandboxctl: {exc}", cause=exc) from exc
        if result.timed_out:
            raise ExecTimeoutError(command=argv, timeout_s=timeout)
        return ExecResult(stdout=bytes(result.stdout), stderr=bytes(result.stderr), exit_code=result.exit_code)

    def _prepare_exec_command(self, *command: str | Path, shell: bool | list[str], user: str | User | None
                              ) -> list[str]:
        if user:  # no sudo inside a sandbox: everything runs as the caller, confined
            raise ExecTransportError(command=[str(c) for c in command],
                                     message="sandboxctl sessions run as the calling user; run_as is not supported")
        return super()._prepare_exec_command(*command, shell=["sh", "-c"] if shell is True else shell, user=None)

    # ------------------------------------------------------------------ files, read and written inside
    async def read(self, path: Path, *, user: str | User | None = None) -> io.IOBase:
        target = self.normalize_path(path)
        result = await self._run(["cat", "--", str(target)])
        if result.exit_code != 0:
            message = result.stderr.decode(errors="replace")
            context = {"stderr": message[:2000], "exit_code": result.exit_code}
            if "No such file" in message:
                raise WorkspaceReadNotFoundError(path=Path(path), context=context)
            raise WorkspaceArchiveReadError(path=Path(path), context=context)
        return io.BytesIO(result.stdout)

    async def write(self, path: Path, data: io.IOBase, *, user: str | User | None = None) -> None:
        target = self.normalize_path(path, for_write=True)
        payload = data.read()
        if isinstance(payload, str):
            payload = payload.encode()
        result = await self._run(["sh", "-c", 'cat > "$1"', "sh", str(target)], input=bytes(payload or b""))
        if result.exit_code != 0:
            raise WorkspaceArchiveWriteError(path=target, context={"stderr": result.stderr.decode(errors="replace")
                                                                    [:2000], "exit_code": result.exit_code})

    async def persist_workspace(self) -> io.IOBase:
        root = str(self._workspace_root_path())
        result = await self._run(["tar", "-C", root, "-cf", "-", "."])
        if result.exit_code != 0:
            raise WorkspaceArchiveReadError(path=Path(root), context={"stderr": result.stderr.decode(errors="replace")})
        return io.BytesIO(result.stdout)

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        root = str(self._workspace_root_path())
        payload = data.read()
        result = await self._run(["tar", "-C", root, "--no-same-owner", "-xf", "-"],
                                 input=payload if isinstance(payload, bytes) else str(payload).encode())
        if result.exit_code != 0:
            stderr = result.stderr.decode(errors="replace")
            raise WorkspaceArchiveWriteError(path=Path(root), context={"stderr": stderr})


class SandboxctlSandboxClient(BaseSandboxClient[SandboxctlSandboxClientOptions | None]):
    """Sessions for the SDK's Runner, each one sandboxctl session under the client's policy.

    policy: a built-in name or a YAML file (default: the workspace's trusted .sandboxctl.yaml,
    else `default`); allow_*: extra grants (like --allow-read/--allow-write/--allow-net);
    on_approval: the library's approval function (file writes and network escapes); yes: accept
    options that widen the policy (like --yes)."""

    backend_id = BACKEND
    supports_default_options = True

    def __init__(self, *, policy: str | None = None, allow_read: Iterable[str] = (), allow_write: Iterable[str] = (),
                 allow_net: Iterable[str] = (), timeout: str | None = None, idle_timeout: str | None = None,
                 on_approval: Callable[..., str] | None = None, yes: bool = False,
                 instrumentation: Instrumentation | None = None, dependencies: Dependencies | None = None):
        self.defaults = SandboxctlSandboxClientOptions(policy=policy, allow_read=tuple(allow_read),
                                                       allow_write=tuple(allow_write), allow_net=tuple(allow_net),
                                                       timeout=timeout, idle_timeout=idle_timeout)
        self.on_approval = on_approval
        self.yes = yes
        self._instrumentation = instrumentation or Instrumentation()
        self._dependencies = dependencies

    async def create(self, *, snapshot: SnapshotSpec | SnapshotBase | None = None, manifest: Manifest | None = None,
                     options: SandboxctlSandboxClientOptions | None = None) -> SandboxSession:
        chosen = options or self.defaults
        manifest = manifest if manifest is not None else Manifest()
        if any(grant.host_path is not None for grant in manifest.extra_path_grants):
            raise ValueError("the sandboxctl client takes host grants from its policy (allow_read/allow_write), "
                             "not from manifest path grants with host_path")
        self._validate_manifest_for_create(manifest)
        owned = False
        if manifest.root == _DEFAULT_ROOT:
            manifest = manifest.model_copy(update={"root": tempfile.mkdtemp(prefix=_WORKSPACE_PREFIX)}, deep=True)
            owned = True
        session_id = uuid.uuid4()
        state = SandboxctlSandboxSessionState(
            session_id=session_id, manifest=manifest, snapshot=resolve_snapshot(snapshot, str(session_id)),
            workspace_root_owned=owned, policy=chosen.policy or self.defaults.policy,
            allow_read=chosen.allow_read or self.defaults.allow_read,
            allow_write=chosen.allow_write or self.defaults.allow_write,
            allow_net=chosen.allow_net or self.defaults.allow_net,
            timeout=chosen.timeout or self.defaults.timeout,
            idle_timeout=chosen.idle_timeout or self.defaults.idle_timeout)
        return self._wrap_session(self._session(state), instrumentation=self._instrumentation)

    def _session(self, state: SandboxctlSandboxSessionState) -> SandboxctlSandboxSession:
        return SandboxctlSandboxSession(state=state, on_approval=self.on_approval, yes=self.yes)

    async def delete(self, session: SandboxSession) -> SandboxSession:
        """Stop the sandbox, and remove the workspace if this client made it."""
        inner = session._inner
        if not isinstance(inner, SandboxctlSandboxSession):
            raise TypeError("SandboxctlSandboxClient.delete expects a sandboxctl session")
        await inner._shutdown_backend()
        if inner.state.workspace_root_owned:
            shutil.rmtree(inner.state.manifest.root, ignore_errors=True)
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        if not isinstance(state, SandboxctlSandboxSessionState):
            raise TypeError("SandboxctlSandboxClient.resume expects a SandboxctlSandboxSessionState")
        if not os.path.isdir(state.manifest.root):
            state.workspace_root_ready = False
        return self._wrap_session(self._session(state), instrumentation=self._instrumentation)

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, SandboxctlSandboxSessionState)


__all__ = ["SandboxctlSandboxClient", "SandboxctlSandboxClientOptions", "SandboxctlSandboxSession",
           "SandboxctlSandboxSessionState"]
