"""sandboxctl: run AI coding agents and their commands inside a layered Linux sandbox.

    from sandboxctl import Sandbox
    result = Sandbox(policy="default", workspace=".").run(["pytest", "-q"])

The library's names are imported on first use, so `import sandboxctl` (and the CLI's start-up)
stays cheap.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing costs start-up time; type checkers read the block below
__version__ = "0.1.0"
__all__ = ["ApprovalRequest", "Result", "Sandbox", "SandboxError", "Session"]

if TYPE_CHECKING:
    from sandboxctl.api import ApprovalRequest, Result, Sandbox, Session
    from sandboxctl.errors import SandboxError


def __getattr__(name: str):
    if name == "SandboxError":
        from sandboxctl.errors import SandboxError

        return SandboxError
    if name in __all__:
        from sandboxctl import api

        return getattr(api, name)
    raise AttributeError(f"module 'sandboxctl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
