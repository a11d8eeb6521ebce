"""The files a standalone proxy leaves for its clients, and the probe that says it is serving.

A client of `sandboxctl proxy` needs three things the proxy only knows once it runs: the address it
listens on (a port the kernel picked, say), the CA bundle to trust (the proxy's CA exists only from
its start), and the placeholders of phantom secrets. They go into one directory:

    env            NAME=value lines (sh-quoted when needed): the proxy variables, the CA variables,
                   the placeholders — never a secret's value. 0640: a placeholder is worth nothing
                   away from this proxy, but lets whoever reaches the proxy use the secret.
    ca-bundle.pem  the proxy's CA, then the system's CAs (when something is inspected), 0644
    ca.pem         the proxy's CA alone (NODE_EXTRA_CA_CERTS), 0644
    ready          written last, once the proxy serves: {"pid", "run", "listen"} (what `--probe` reads)

Each file is written under a temporary name and renamed into place (a reader never sees half a
bundle; a symlink planted at the name is replaced, never followed), and every one is removed when
the proxy stops, with the directory if the proxy made it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
from pathlib import Path

ENV_FILE = "env"
BUNDLE_FILE = "ca-bundle.pem"
CA_FILE = "ca.pem"
READY_FILE = "ready"


def env_text(env: dict[str, str], header: str) -> str:
    """`NAME=value` lines a shell can source (`set -a; . FILE`); plain values stay unquoted, so the
    usual file also reads as a container runtime's env file."""
    lines = [f"# {header}"]
    lines += [f"{name}={shlex.quote(value) if value else ''}" for name, value in env.items()]
    return "\n".join(lines) + "\n"


class ClientFiles:
    """The client directory of one proxy: written at start, removed at stop."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self.made_directory = False
        self.written: list[Path] = []

    def prepare(self) -> None:
        """The directory, made 0700 when missing (an existing one is used as it is: a volume shared with
        the clients, say). OSError when it cannot be."""
        try:
            self.directory.mkdir(mode=0o700)
            self.made_directory = True
        except FileExistsError:
            if not self.directory.is_dir() or self.directory.is_symlink():
                raise NotADirectoryError(20, "not a directory", str(self.directory)) from None
            # a `ready` left by a proxy killed before it could remove it (a sidecar restarted after
            # SIGKILL) must not vouch for this one before it serves
            with contextlib.suppress(FileNotFoundError):
                (self.directory / READY_FILE).unlink()

    def write(self, name: str, data: bytes, mode: int) -> Path:
        target = self.directory / name
        temporary = self.directory / f".{name}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        try:
            os.replace(temporary, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        self.written.append(target)
        return target

    def write_ready(self, pid: int, run_id: str, listen: str) -> None:
        self.write(READY_FILE, json.dumps({"pid": pid, "run": run_id, "listen": listen}).encode() + b"\n", 0o644)

    def remove(self) -> None:
        """Every file written, `ready` first (a probe then fails at once), and the directory if made here."""
        for path in sorted(self.written, key=lambda p: p.name != READY_FILE):
            with contextlib.suppress(OSError):
                path.unlink()
        self.written.clear()
        if self.made_directory:
            with contextlib.suppress(OSError):
                self.directory.rmdir()
            self.made_directory = False


def probe(directory: str) -> bool:
    """Is the proxy that writes this directory serving? (Its `ready` names a process that is alive.)
    For a startup probe: the clients start only once their CA bundle and environment exist."""
    try:
        with open(Path(directory) / READY_FILE, encoding="utf-8") as handle:
            pid = int(json.load(handle)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, another user's
    except OSError:
        return False
    return True
