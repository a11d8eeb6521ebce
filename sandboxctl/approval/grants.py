"""Remembered approvals ("always"): kept in the user's state dir, never in the workspace or policy.

A grant is scoped to the policy (name and content hash: an edited policy starts with none) and to
the workspace, so an approval given for one project never leaks to another. The state dir is
masked inside every sandbox and is never approvable for writing, so a sandbox cannot add grants.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from sandboxctl.paths import ensure_private_dir, join, state_dir
from sandboxctl.record import Record

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

FILE_NAME = "approvals.json"


class Scope(Record):
    policy: str
    policy_sha256: str
    workspace: str


class Grant(Record):
    scope: Scope
    kind: str  # network | file
    target: str
    granted: str  # RFC 3339 UTC

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.scope.policy, "policy_sha256": self.scope.policy_sha256,
                "workspace": self.scope.workspace, "kind": self.kind, "target": self.target,
                "granted": self.granted}


def _from_dict(item: dict[str, Any]) -> Grant | None:
    try:
        scope = Scope(str(item["policy"]), str(item["policy_sha256"]), str(item["workspace"]))
        return Grant(scope, str(item["kind"]), str(item["target"]), str(item.get("granted", "")))
    except (KeyError, TypeError):
        return None


class GrantStore:
    """One JSON file, rewritten atomically under an flock so parallel runs never lose a grant."""

    def __init__(self, directory: str | PathLike[str] | None = None):
        self.directory = directory or state_dir()
        self.path = join(self.directory, FILE_NAME)

    def all(self) -> list[Grant]:
        import json  # not at import: the json package compiles regular expressions (~2 ms of every run)

        try:
            with open(self.path) as handle:
                data = json.loads(handle.read())
        except (OSError, ValueError):
            return []
        items = data.get("grants", []) if isinstance(data, dict) else []
        return [g for g in (_from_dict(i) for i in items if isinstance(i, dict)) if g is not None]

    def allows(self, scope: Scope, kind: str, target: str) -> bool:
        return any(g.scope == scope and g.kind == kind and g.target == target for g in self.all())

    def for_policy(self, name: str) -> list[Grant]:
        return [g for g in self.all() if g.scope.policy == name]

    def add(self, scope: Scope, kind: str, target: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def change(grants: list[Grant]) -> list[Grant]:
            if any(g.scope == scope and g.kind == kind and g.target == target for g in grants):
                return grants
            return [*grants, Grant(scope, kind, target, stamp)]

        self._update(change)

    def revoke(self, policy: str, target: str | None = None, workspace: str | None = None) -> list[Grant]:
        """Remove a policy's grants (all, or those matching target/workspace); returns the removed."""
        removed: list[Grant] = []

        def change(grants: list[Grant]) -> list[Grant]:
            kept = []
            for grant in grants:
                if grant.scope.policy == policy and target in (None, grant.target) \
                        and workspace in (None, grant.scope.workspace):
                    removed.append(grant)
                else:
                    kept.append(grant)
            return kept

        self._update(change)
        return removed

    def _update(self, change) -> None:
        ensure_private_dir(self.directory)
        lock_fd = os.open(join(self.directory, f".{FILE_NAME}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            grants = change(self.all())
            tmp = join(self.directory, f".{FILE_NAME}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            import json

            with os.fdopen(fd, "w") as handle:
                json.dump({"version": 1, "grants": [g.to_dict() for g in grants]}, handle, indent=1)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
