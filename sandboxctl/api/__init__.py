"""sandboxctl as a library: Sandbox (one policy, many runs), sessions, results, approvals.

See api/sandbox.py; `sandboxctl run` and `sandboxctl session` are clients of these classes.
Names are imported on first use: the CLI imports api.sandbox and pays for nothing else.
"""

from __future__ import annotations

TYPE_CHECKING = False
__all__ = ["ApprovalRequest", "Result", "Sandbox", "SandboxError", "Session"]
_WHERE = {"Result": "sandboxctl.api.sandbox", "Sandbox": "sandboxctl.api.sandbox",
          "Session": "sandboxctl.api.session", "ApprovalRequest": "sandboxctl.approval.callback",
          "SandboxError": "sandboxctl.errors"}

if TYPE_CHECKING:
    from sandboxctl.api.sandbox import Result, Sandbox
    from sandboxctl.api.session import Session
    from sandboxctl.approval.callback import ApprovalRequest
    from sandboxctl.errors import SandboxError


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sandboxctl.api' has no attribute {name!r}")
