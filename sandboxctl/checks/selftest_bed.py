"""The throwaway world of one `sandboxctl selftest`, and how the probe is run in it.

A fresh temporary directory holds a fake HOME (with credential canaries), a fake state dir, a
`git init`ed workspace (with a `.env` canary) and a host directory next to it; a TCP listener on
the host's loopback is the target of the network escape. Nothing of the user's is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from sandboxctl import paths
from sandboxctl.errors import SandboxError
from sandboxctl.supervise.spawn import which  # absolute PATH entries only: never the workspace

ENV_CANARY = "SANDBOXCTL_SELFTEST_CANARY"
RUN_TIMEOUT_S = 120  # a hung probe ends here (unless the policy's own timeout is shorter)
OUTER_TIMEOUT_S = 180.0
HOME_CANARIES = (("read-ssh-key", "~/.ssh/id_rsa"), ("read-aws", "~/.aws/credentials"), ("read-netrc", "~/.netrc"))


class Listener:
    """A TCP server on the host's loopback: the target of the network escape; counts arrivals."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.thread = threading.Thread(target=self._serve, name="selftest-listener", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with contextlib.suppress(OSError):
                conn.sendall(b"selftest\n")
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(2)



class Bed:
    """The temporary world of one selftest: fake HOME and state, workspace, host-side targets."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.state = root / "state"
        self.workspace = root / "workspace"
        self.outside = root / "outside"
        self.tokens: dict[str, str] = {}
        self.canary = secrets.token_hex(16)  # the value of $SANDBOXCTL_SELFTEST_CANARY
        for path in (self.home, self.state, self.workspace, self.outside):
            path.mkdir(mode=0o700)

    def expand(self, raw: str) -> str:
        return paths.expand(raw, workspace=str(self.workspace), home=str(self.home),
                            state=str(self.state / "sandboxctl"))

    def plant(self, key: str, path: Path, template: str) -> None:
        token = f"SBX-SELFTEST-{key.upper()}-{secrets.token_hex(8)}"
        self.tokens[key] = token
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(template.format(token=token))
        path.chmod(0o600)

    def populate(self, policy) -> None:
        self.plant("read-ssh-key", self.home / ".ssh" / "id_rsa",
                   "-----BEGIN OPENSSH PRIVATE KEY-----\n{token}\n-----END OPENSSH PRIVATE KEY-----\n")
        self.plant("read-aws", self.home / ".aws" / "credentials",
                   "[default]\naws_access_key_id = AKIASELFTEST\naws_secret_access_key = {token}\n")
        self.plant("read-netrc", self.home / ".netrc", "machine example.com login me password {token}\n")
        self.plant("read-dotenv", self.workspace / ".env", "OPENAI_API_KEY={token}\n")
        self._git_init()
        self._create_write_grants(policy)
        probe = Path(__file__).with_name("selftest_probe.py")
        shutil.copyfile(probe, self.workspace / "probe.py")
        binary = self.workspace / "selftest-true"
        shutil.copyfile(os.path.realpath(which("true") or "/bin/true"), binary)
        binary.chmod(0o755)

    def _git_init(self) -> None:
        git = which("git")
        done = None
        if git:
            done = subprocess.run([git, "init", "-q", str(self.workspace)], capture_output=True,
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                                       "GIT_CONFIG_NOSYSTEM": "1"}, check=False)
        if done is None or done.returncode != 0:  # no git here: the same layout by hand
            (self.workspace / ".git" / "hooks").mkdir(parents=True)
            (self.workspace / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
        self.git_config = (self.workspace / ".git" / "config").read_text()
        self.git_hooks = sorted(os.listdir(self.workspace / ".git" / "hooks"))

    def _create_write_grants(self, policy) -> None:
        """A policy's `filesystem.write` paths must exist; create those that fall in the fake HOME or
        workspace (a file when the real one is a file or the name has a suffix, else a directory)."""
        real_home = os.path.expanduser("~")
        for raw in policy.filesystem.write:
            target = Path(self.expand(raw))
            if target.exists() or not any(target.is_relative_to(p) for p in (self.home, self.workspace)):
                continue
            relative = target.relative_to(self.home) if target.is_relative_to(self.home) else None
            real = Path(real_home) / relative if relative else None
            is_file = real.is_file() if real is not None and real.exists() else bool(target.suffix)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if is_file:
                target.touch(mode=0o600)
            else:
                target.mkdir(mode=0o700)

    def env(self, canary: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("SANDBOXCTL_DEBUG",):
            env.pop(name, None)
        env.update({"HOME": str(self.home), "XDG_STATE_HOME": str(self.state)})
        if canary:
            env[ENV_CANARY] = canary
        return env


def run_argv(spec: str, workspace: Path, *tail: str) -> list[str]:
    # isolated (-I): run from the bed's workspace, which the probes' sandboxes write
    return [sys.executable, "-I", "-m", "sandboxctl", "run", "-q", "-p", spec, "-w", str(workspace), *tail]


def timeout_args(plan: dict[str, Any]) -> list[str]:
    """`--timeout` only to narrow: a policy's own shorter timeout is part of what is tested."""
    own = plan["limits"].get("timeout")
    return [] if own and own <= RUN_TIMEOUT_S else ["--timeout", f"{RUN_TIMEOUT_S}s"]


def first_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("selftest-probe:")]
    errors = [line for line in lines if line.startswith("sandboxctl: error:")]
    text = (errors or lines or ["no output"])[0]
    return text.removeprefix("sandboxctl: error: ").strip()


def policy_spec(spec: str | None, cwd: Path) -> tuple[Any, str]:
    """The policy `run` would use here, and how to name it from the temporary workspace."""
    from sandboxctl.policy.discover import choose_policy

    loaded, _how = choose_policy(spec, cwd)
    first = loaded.files[0]
    return loaded, (first.label.removeprefix("builtin:") if first.builtin else paths.resolve(first.path))


def dry_run(bed: Bed, spec: str) -> dict[str, Any]:
    done = subprocess.run(run_argv(spec, bed.workspace, "--dry-run", "--json", "--", "python3", "probe.py"),
                          cwd=bed.workspace, env=bed.env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SandboxError(f"cannot plan a run with policy {spec}: {first_error(done.stderr)}",
                           f"check it with: sandboxctl run -p {spec} --dry-run -- true")
    return json.loads(done.stdout)



def last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return None



def remove_tree(root: Path) -> None:
    """Remove the temporary tree, even the read-only parts a sandbox may have left."""
    def unlock(function, path, _exc) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
            function(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=unlock)
    else:
        shutil.rmtree(root, onerror=unlock)

