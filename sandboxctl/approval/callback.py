"""The library's front end: each request goes to the caller's `on_approval(request)` function.

The same requests the terminal prompt shows (file writes outside the writable set, connections
to destinations not allowed), one at a time on a thread of their own, so the sandbox's supervisor
never waits on the caller's code. The function answers "once", "run", "always" or "deny";
anything else, an exception, or no answer before the request's deadline is a denial (fail closed).
"""

from __future__ import annotations

import select
from collections.abc import Callable

from sandboxctl.approval.frontend import ThreadedFrontEnd
from sandboxctl.record import Record

ANSWERS = ("once", "run", "always", "deny")


class ApprovalRequest(Record):
    """What the command tried: `kind` is "file" (target: the path as the sandbox sees it) or
    "network" (target: host:port); `rule` is why the policy does not allow it."""

    id: str
    kind: str
    target: str
    rule: str
    pid: int | None
    command: str
    detail: str
    run_id: str
    expires_in_s: float


class CallbackFrontEnd(ThreadedFrontEnd):
    name = "library"

    def __init__(self, decide: Callable[[ApprovalRequest], str]):
        super().__init__()
        self.decide = decide

    def _open(self) -> None:
        return

    def _close(self) -> None:
        return

    def _serve(self) -> None:
        while not self.stopping:
            pending = self.broker.pending()
            if not pending:
                select.select([self.wake_r], [], [])
                self.drain_wakeups()
                continue
            request = pending[0]
            answer, via = self._ask(request)
            self.broker.answer(request.id, answer, via)

    def _ask(self, request) -> tuple[str, str]:
        public = ApprovalRequest(request.id, request.kind, request.target, request.rule, request.pid,
                                 request.command, request.detail, self.broker.run_id,
                                 request.to_dict()["expires_in_s"])
        try:
            answer = self.decide(public)
        except Exception as exc:  # the caller's bug denies, it does not stop the supervisor
            return "deny", f"library: on_approval raised {type(exc).__name__}"
        if answer not in ANSWERS:
            return "deny", f"library: on_approval answered {str(answer)[:40]!r}, not one of {', '.join(ANSWERS)}"
        return answer, "library"
