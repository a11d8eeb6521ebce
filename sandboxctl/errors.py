"""Errors that end in one readable line, a hint, and an exit code (SPEC: 125 for our own failures)."""

from __future__ import annotations

EXIT_DENIED = 123  # the command succeeded, but the sandbox denied something and the run fails on denials
EXIT_TIMEOUT = 124
EXIT_SANDBOX_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class SandboxError(Exception):
    """A failure of sandboxctl itself: shown as one line plus a hint, never a traceback."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = EXIT_SANDBOX_FAILED):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
