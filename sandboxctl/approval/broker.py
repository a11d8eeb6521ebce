"""The approval broker: one queue for every boundary escape, answered by a human or by the mode.

Callers (proxy connection threads, file-escape workers) block in `decide` while the request waits;
front ends (the terminal prompt, the approval socket) read `pending()` and call `answer()`. The
sandbox has no path to either: the terminal prompt is read by the supervisor, and the socket lives
in a directory masked inside every sandbox and refuses peers that run inside this one.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from sandboxctl.approval.grants import GrantStore, Scope

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

CHOICES = ("once", "run", "always", "deny")
MAX_PENDING = 64  # a sandbox flooding the human with questions gets denials, not a longer queue
RECENT_SETTLED = 64  # answers front ends can still show ("answered in another window")
APPROVING = frozenset(("once", "run", "always"))


class Request:
    """One escape waiting for (or given) an answer."""

    def __init__(self, request_id: str, kind: str, target: str, rule: str, pid: int | None, command: str,
                 detail: str, timeout: float):
        self.id = request_id
        self.kind = kind  # network | file
        self.target = target  # host:port, or the path as the sandbox sees it
        self.rule = rule
        self.pid = pid
        self.command = command
        self.detail = detail  # e.g. the operation and the host path an approved open would use
        self.created = time.monotonic()
        self.deadline = self.created + timeout
        self.answer: str | None = None
        self.via: str | None = None
        self.done = threading.Event()
        self.scrub: Callable[[str], str] = lambda text: text  # what a human is shown holds no secret value

    @property
    def approved(self) -> bool:
        return self.answer in APPROVING

    def to_dict(self) -> dict[str, Any]:
        scrub = self.scrub
        return {"id": self.id, "kind": self.kind, "target": scrub(self.target), "rule": scrub(self.rule),
                "pid": self.pid, "command": scrub(self.command), "detail": scrub(self.detail),
                "expires_in_s": round(max(0.0, self.deadline - time.monotonic()), 1)}


if TYPE_CHECKING:  # what a front end is (approval/tty.py, socket_server.py, callback.py), for type checkers
    from typing import Protocol

    class FrontEnd(Protocol):
        name: str

        def start(self, broker: Broker) -> None: ...  # raises SandboxError when it cannot serve

        def changed(self) -> None: ...

        def stop(self) -> None: ...


class Broker:
    def __init__(self, mode: str, timeout: float, log: Callable[..., None], *, run_id: str = "",
                 scope: Scope | None = None, store: GrantStore | None = None,
                 describe: dict[str, Any] | None = None, scrub: Callable[[str], str] | None = None):
        self.mode = mode  # ask | deny | allow
        self.timeout = timeout
        self.log = log
        self.run_id = run_id
        self.scope = scope
        self.store = store
        self.describe = describe or {}  # run, policy, command, workspace: what front ends show
        self.scrub = scrub  # secret values out of what front ends show (sandboxctl.log.scrub)
        self.condition = threading.Condition()
        self.queue: list[Request] = []
        self.run_grants: set[tuple[str, str]] = set()
        self.front_ends: list[FrontEnd] = []
        self.unavailable: str | None = None  # why no human can be asked (then: deny)
        self.closed = False
        self.count = 0
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_SETTLED)  # the last answers, for front ends

    # ------------------------------------------------------------------ set-up
    def attach(self, front_end: FrontEnd) -> None:
        self.front_ends.append(front_end)
        front_end.start(self)

    def stop(self) -> None:
        """The run is over: every waiting request is denied, then the front ends go."""
        with self.condition:
            self.closed = True
            waiting = [r for r in self.queue if r.answer is None]
        for request in waiting:
            self._settle(request, "deny", "run ended")
        for front_end in self.front_ends:
            front_end.stop()

    @property
    def asks_human(self) -> bool:
        return self.mode == "ask"

    # ------------------------------------------------------------------ the question
    def decide(self, kind: str, target: str, rule: str, pid: int | None = None, command: str = "",
               detail: str = "") -> Request:
        """Block until the request is answered; the returned request says how (fail closed)."""
        with self.condition:
            self.count += 1
            request = Request(f"{self.run_id[-6:] or 'r'}-{self.count}", kind, target, rule, pid, command, detail,
                              self.timeout)
            if self.scrub is not None:
                request.scrub = self.scrub
        remembered = self._remembered(kind, target)
        if self.mode == "deny":
            self._settle(request, "deny", "mode:deny")
        elif self.mode == "allow":
            self._settle(request, "once", "mode:allow")
        elif remembered:
            self._settle(request, *remembered)
        elif self.closed:
            self._settle(request, "deny", "run ended")
        elif self.unavailable or not self.front_ends:
            self._settle(request, "deny", self.unavailable or "no approval front end")
        elif len(self.pending()) >= MAX_PENDING:
            self._settle(request, "deny", f"more than {MAX_PENDING} requests waiting")
        else:
            with self.condition:
                self.queue.append(request)
                self.condition.notify_all()
            self._changed()
            if not request.done.wait(max(0.0, request.deadline - time.monotonic())):
                self._settle(request, "timeout", "no answer in time")
        return request

    def _remembered(self, kind: str, target: str) -> tuple[str, str] | None:
        if self.mode != "ask":
            return None
        if (kind, target) in self.run_grants:
            return "run", "remembered for this run"
        if self.store is not None and self.scope is not None and self.store.allows(self.scope, kind, target):
            return "always", "remembered (always)"
        return None

    # ------------------------------------------------------------------ answers
    def pending(self) -> list[Request]:
        with self.condition:
            return [r for r in self.queue if r.answer is None]

    def settled(self) -> list[dict[str, Any]]:
        """The last answers given (id, answer, via): a front end that showed a request learns how
        it was settled elsewhere (another `sandboxctl approve`, the timeout, the end of the run)."""
        with self.condition:
            return list(self.recent)

    def answer(self, request_id: str, choice: str, via: str) -> str | None:
        """Answer a pending request; returns an error message, or None when it was taken."""
        if choice not in CHOICES:
            return f"unknown answer {choice!r}: one of {', '.join(CHOICES)}"
        with self.condition:
            request = next((r for r in self.queue if r.id == request_id), None)
        if request is None:
            return f"no pending request {request_id}"
        if not self._settle(request, choice, via):
            return f"request {request_id} was already answered ({request.answer})"
        if choice in ("run", "always"):
            # the same destination or file, queued meanwhile, needs no second question
            for other in self.pending():
                if (other.kind, other.target) == (request.kind, request.target):
                    self._settle(other, choice, f"{via}, with {request_id}")
        return None

    def _settle(self, request: Request, answer: str, via: str) -> bool:
        with self.condition:
            if request.answer is not None:
                return False
            request.answer, request.via = answer, via
            if request in self.queue:
                self.queue.remove(request)
                self.recent.append({"id": request.id, "answer": answer, "via": via})
            if answer == "run":
                self.run_grants.add((request.kind, request.target))
            self.condition.notify_all()
        if answer == "always" and via != "remembered (always)" and self.store and self.scope:
            try:
                self.store.add(self.scope, request.kind, request.target)
            except OSError as exc:  # the grant still holds for this run
                self.run_grants.add((request.kind, request.target))
                via = f"{via} (not remembered: {exc.strerror})"
        request.done.set()
        self.log("approval", request=request.id, kind=request.kind, target=request.target, answer=answer,
                 via=via, pid=request.pid, command=request.command or None, rule=request.rule,
                 waited_s=round(time.monotonic() - request.created, 3))
        self._changed()
        return True

    def _changed(self) -> None:
        for front_end in self.front_ends:
            front_end.changed()
