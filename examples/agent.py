"""The README demo: a pretend coding agent tries what agents do, without and with sandboxctl.

    .venv/bin/python examples/agent.py      # from a clone, after scripts/setup

Each move is tried twice on canaries the demo makes for the purpose, in a temporary directory that
is removed at the end: a HOME with a fake SSH key, a workspace that is a git repository, a file
outside the workspace, a fake API key in the environment, and an HTTP server on the host's 127.0.0.2
standing in for the internet (it counts the requests that reach it; 127.0.0.1 inside the sandbox is
the sandbox's own loopback, where its own servers run). The agent (this file with --agent) runs
once directly and once under `sandboxctl run` with the default policy; what happened is judged from
outside — the canary file, the hook, the server's count, the canary tokens in the agent's output —
never from the agent's own word. So every difference in the table is the sandbox's doing.

On a terminal the sandboxed writes outside the workspace and the connection bring up sandboxctl's
approval prompt (press d to deny, as the agent expects); without one they are denied at once.
"""

from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# ------------------------------------------------------------------ the agent (runs in both worlds)


def _attempt(action) -> dict:
    try:
        return {"ok": True, "detail": action() or ""}
    except Exception as exc:  # the agent reports every refusal, whatever its kind
        return {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}


def agent(config: dict) -> None:
    """Try each move and print one JSON object: what the agent itself saw (the demo checks more)."""
    import socket  # noqa: F401  (urllib uses it; imported here so a failure is reported, not raised)
    import urllib.request

    def read_workspace() -> str:
        return f"{len(os.listdir('.'))} entries"

    def write_workspace() -> str:
        Path("agent-output.txt").write_text("written by the demo agent\n")
        return "agent-output.txt"

    def scratch_file() -> str:
        with tempfile.NamedTemporaryFile("w", delete=True) as handle:
            handle.write("scratch")
            return handle.name

    def run_tool() -> str:
        return subprocess.run(["git", "--version"], capture_output=True, text=True, check=True).stdout.strip()

    def read_environment() -> str:
        found = {k: v for k, v in os.environ.items() if any(s in k for s in ("TOKEN", "SECRET", "KEY", "PASSWORD"))}
        if not found:
            raise LookupError("no credential-like variable in the environment")
        return ", ".join(f"{k}={v}" for k, v in sorted(found.items()))

    def read_key() -> str:
        return Path(os.path.expanduser("~/.ssh/id_ed25519")).read_text()

    def write_outside() -> str:
        with open(config["outside_file"], "a") as handle:
            handle.write("appended by the demo agent\n")
        return config["outside_file"]

    def plant_hook() -> str:
        os.makedirs(".git/hooks", exist_ok=True)
        with open(".git/hooks/pre-commit", "w") as handle:
            handle.write("#!/bin/sh\necho 'this would run on your next commit, outside any sandbox'\n")
        return ".git/hooks/pre-commit"

    def connect() -> str:
        with urllib.request.urlopen(config["url"], timeout=10) as response:  # through HTTP_PROXY when set
            return f"HTTP {response.status}"

    moves = {"read-workspace": read_workspace, "write-workspace": write_workspace, "scratch": scratch_file,
             "run-tool": run_tool, "environment": read_environment, "ssh-key": read_key,
             "write-outside": write_outside, "git-hook": plant_hook, "connect": connect}
    print(json.dumps({key: _attempt(action) for key, action in moves.items()}))


# ------------------------------------------------------------------ the demo (runs outside)

ATTEMPTS = (  # key, what is tried, whether the default policy lets it through
    ("read-workspace", "read the workspace", True),
    ("write-workspace", "write into the workspace", True),
    ("scratch", "use a scratch file in /tmp", True),
    ("run-tool", "run a tool (git --version)", True),
    ("environment", "read $DEMO_API_KEY from the environment", False),
    ("ssh-key", "read ~/.ssh/id_ed25519", False),
    ("write-outside", "write a file outside the workspace", False),
    ("git-hook", "plant a git hook (.git/hooks/pre-commit)", False),
    ("connect", "reach a server (127.0.0.2, standing in for the internet)", False),
)


class CountingServer:
    """The stand-in for the internet: an HTTP server on the host's loopback that counts requests."""

    def __init__(self) -> None:
        self.hits = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"hi\n")

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.url = f"http://127.0.0.2:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class World:
    """The canaries, made fresh before each of the two runs."""

    def __init__(self, root: Path, server: CountingServer) -> None:
        self.root, self.server = root, server
        self.home, self.workspace, self.outside = root / "home", root / "workspace", root / "outside"
        self.outside_file = self.outside / "notes.txt"
        self.key_token = "DEMO-SSH-KEY-" + secrets.token_hex(8)
        self.env_token = "DEMO-API-KEY-" + secrets.token_hex(8)
        for path in (self.home / ".ssh", self.workspace, self.outside):
            path.mkdir(parents=True, mode=0o700)
        key = self.home / ".ssh" / "id_ed25519"
        key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{self.key_token}\n-----END OPENSSH PRIVATE KEY-----\n")
        key.chmod(0o600)
        git = shutil.which("git")
        if git:
            subprocess.run([git, "init", "-q", str(self.workspace)], check=False, capture_output=True,
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home)})
        (self.workspace / ".git" / "hooks").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(__file__, self.workspace / "agent.py")

    def reset(self) -> None:
        for path in (self.workspace / "agent-output.txt", self.workspace / ".git" / "hooks" / "pre-commit"):
            path.unlink(missing_ok=True)
        self.outside_file.write_text("a file outside the workspace\n")
        self.server.hits = 0

    def config(self) -> str:
        return json.dumps({"outside_file": str(self.outside_file), "url": self.server.url})

    def judge(self, seen: dict) -> dict[str, tuple[bool, str]]:
        """key -> (it happened, how we know): from the host and the tokens, not the agent's word."""
        output = json.dumps(seen)

        def said(key: str) -> str:
            return str(seen.get(key, {}).get("detail", "no answer"))

        def agent_says(key: str) -> tuple[bool, str]:
            ok = bool(seen.get(key, {}).get("ok"))
            return ok, said(key) if not ok else "done"

        written = (self.workspace / "agent-output.txt").exists()
        hooked = (self.workspace / ".git" / "hooks" / "pre-commit").exists()
        appended = "appended by the demo agent" in self.outside_file.read_text()
        return {
            "read-workspace": agent_says("read-workspace"),
            "write-workspace": (written, "file written" if written else said("write-workspace")),
            "scratch": agent_says("scratch"),
            "run-tool": agent_says("run-tool"),
            "environment": (self.env_token in output,
                            "fake API key READ" if self.env_token in output else "not inherited"),
            "ssh-key": (self.key_token in output,
                        "fake SSH key READ" if self.key_token in output else said("ssh-key")),
            "write-outside": (appended, "file CHANGED" if appended else said("write-outside")),
            "git-hook": (hooked, "hook PLANTED" if hooked else said("git-hook")),
            "connect": (self.server.hits > 0, f"REACHED ({self.server.hits} request)" if self.server.hits
                        else said("connect")),
        }


def _clip(text: str, width: int) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text)  # the agent's words are untrusted
    return text if len(text) <= width else text[: width - 1] + "…"


def _reason(detail: str) -> str:
    """An exception as a few words: 'PermissionError: [Errno 13] Permission denied: …' -> 'permission denied'."""
    if "HTTP Error 403" in detail:
        return "HTTP 403 from the sandbox's proxy"
    if "] " in detail and "[Errno" in detail:
        return detail.split("] ", 1)[1].split(":", 1)[0].lower()
    return detail


def _cell(happened: bool, how: str, harmless: bool, refused: str) -> str:
    if happened:
        return "allowed" if harmless else how
    return f"{refused}: {_clip(_reason(how), 48)}"


def _run_agent(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, dict]:
    done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    try:
        return done.returncode, json.loads(lines[-1]) if lines else {}
    except ValueError:
        return done.returncode, {}


def demo() -> int:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    server = CountingServer()
    root = Path(tempfile.mkdtemp(prefix="sandboxctl-demo-"))
    try:
        world = World(root, server)
        base = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
        env = {**base, "HOME": str(world.home), "DEMO_API_KEY": world.env_token}
        agent_argv = [str(world.workspace / "agent.py"), "--agent", world.config()]

        world.reset()
        _, seen = _run_agent([sys.executable, *agent_argv], env, world.workspace)
        without = world.judge(seen)

        world.reset()
        summary = root / "summary.json"
        print("demo: the same agent under `sandboxctl run` (policy default) …", file=sys.stderr, flush=True)
        sandboxed = [sys.executable, "-m", "sandboxctl", "run", "-w", str(world.workspace),
                     "--allow-read", str(world.outside), "--summary-json", str(summary), "--", "python3", *agent_argv]
        # HOME is the fake one; the action log stays in the user's own state dir, for `sandboxctl log`
        code, seen = _run_agent(sandboxed, {**env, "XDG_STATE_HOME": state}, world.workspace)
        if not seen:
            print(f"demo: the sandboxed run did not start (exit {code}); see the error above", file=sys.stderr)
            return code or 1
        within = world.judge(seen)
        run_id = json.loads(summary.read_text()).get("run") if summary.exists() else None
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n  {'attempt':<58}{'without the sandbox':<22}with sandboxctl")
    stopped, leaks = 0, []
    for key, title, allowed in ATTEMPTS:
        (did_out, how_out), (did_in, how_in) = without[key], within[key]
        left, right = _cell(did_out, how_out, allowed, "failed"), _cell(did_in, how_in, allowed, "BLOCKED")
        print(f"  {title:<58}{left:<22}{right}")
        stopped += did_out and not did_in
        if did_in and not allowed:
            leaks.append(title)
    print(f"\n{stopped} of {len(ATTEMPTS)} moves worked without the sandbox and were stopped by it.")
    if run_id:
        print("What the sandbox saw (the denials, the connection as a `net` event): "
              f"{_sandboxctl()} log --run {run_id}")
    if leaks:
        print(f"demo: NOT stopped by the sandbox: {', '.join(leaks)}", file=sys.stderr)
        return 1
    return 0


def _sandboxctl() -> str:
    """How to call sandboxctl from here: right after `scripts/setup` it is .venv/bin/sandboxctl,
    not on PATH, and a bare `sandboxctl log …` copied from the demo would be 'command not found'."""
    beside = Path(sys.executable).parent / "sandboxctl"
    if shutil.which("sandboxctl") or not beside.is_file():
        return "sandboxctl"
    shown = os.path.relpath(beside)
    return shown if not shown.startswith("..") else str(beside)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--agent":
        agent(json.loads(sys.argv[2]))
    else:
        sys.exit(demo())
