"""The mediator's answers to the kernel, and the records of each: denials and performed calls.

Part of the Mediator (mediate.py). Every answer goes through here: a refusal (answered, kept
among the run's denials, logged), a call performed (its result answered, logged when allowed
calls are), a descriptor handed over (SECCOMP_IOCTL_NOTIF_ADDFD), the kernel left to decide,
or arguments that could not be read.
"""

from __future__ import annotations

import errno

from sandboxctl.supervise import fdops
from sandboxctl.supervise.notify import respond

TYPE_CHECKING = False  # typing costs start-up time; annotations are strings here
if TYPE_CHECKING:
    from typing import Any

    from sandboxctl.supervise.notify import Notification


class Answers:
    """Answers and their records (a mixin of mediate.Mediator)."""

    def _unreadable(self, n: Notification, name: str, exc: OSError) -> None:
        """The call's arguments could not be read: a bad pointer gets what the kernel would say;
        anything else (the supervisor short of descriptors) is refused and counted as a denial of
        the call, never logged with a guessed path."""
        from sandboxctl.supervise.notify import still_valid

        if exc.errno in (errno.ENOENT, errno.ESRCH) or not still_valid(self.listener, n.id):
            return  # the caller is gone
        if exc.errno in (errno.EFAULT, errno.EIO, errno.ENAMETOOLONG):  # what the kernel itself would answer
            respond(self.listener, n.id, error=errno.ENAMETOOLONG if exc.errno == errno.ENAMETOOLONG else errno.EFAULT)
            return
        respond(self.listener, n.id, error=errno.EPERM)
        rule = f"sandboxctl could not read the call's arguments ({errno.errorcode.get(exc.errno or 0, exc)})"
        self.denied.append({"kind": "syscall", "target": name, "rule": rule})
        self.log("syscall", pid=n.pid, name=name, decision="deny", rule=rule, errno="EPERM")

    def _refuse(self, n: Notification, op: str, path: str, why: str, error: int = errno.EACCES) -> None:
        """A refusal is recorded only once the kernel took it: the answer itself proves the call
        was pending, so what was read to refuse it was the caller's (no extra ioctl)."""
        if not respond(self.listener, n.id, error=error):
            return
        self.denied.append({"kind": "file", "target": f"{op} {path}", "rule": why})
        self.log("file", pid=n.pid, path=path, op=op, decision="deny", rule=why)

    def _done(self, n: Notification, op: str, path: str, result: int | OSError, **more: Any) -> None:
        if isinstance(result, OSError):
            respond(self.listener, n.id, error=result.errno or errno.EIO)
            if result.errno == errno.EOVERFLOW and self.plan.overlay is not None:
                self.not_copied.note(path)  # overlayfs could not copy it up: said at the run's end
            return
        respond(self.listener, n.id)
        if self.log_allowed:  # queued: the caller's next call is not kept waiting for the log
            self.log_soon("file", pid=n.pid, path=path, op=op, decision="allow",
                          rule="writable grant; carried out by the supervisor", **more)

    def _continue(self, n: Notification) -> None:
        respond(self.listener, n.id, allow=True)

    def _hand_over(self, n: Notification, op: str, path: str, fd: int, cloexec: bool) -> None:
        try:
            fdops.add_fd(self.listener, n.id, fd, cloexec)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return  # the caller died meanwhile
            respond(self.listener, n.id, error=errno.EACCES)
            why = "the kernel lacks SECCOMP_ADDFD_FLAG_SEND (Linux 5.14)" if exc.errno == errno.EINVAL \
                else f"the descriptor could not be handed over ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            self.denied.append({"kind": "file", "target": f"{op} {path}", "rule": why})
            self.log("file", pid=n.pid, path=path, op=op, decision="deny", rule=why)
            return
        if self.log_allowed:
            self.log_soon("file", pid=n.pid, path=path, op=op, decision="allow",
                          rule="writable grant; opened by the supervisor")
