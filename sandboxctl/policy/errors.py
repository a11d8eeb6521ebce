"""Policy problems carry file, line and key path so every message points at the exact spot."""

from __future__ import annotations

from sandboxctl.errors import SandboxError
from sandboxctl.record import Record


class Problem(Record):
    source: str
    line: int | None
    key: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class PolicyError(SandboxError):
    """One or more problems in policy files; the first is the headline, all are listed by `validate`."""

    def __init__(self, problems: list[Problem]):
        first = problems[0]
        hint = first.hint or "check the file against `sandboxctl policy show base` or the policy reference"
        super().__init__(str(first), hint)
        self.problems = problems


def format_key(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
