"""examples/: the policies validate and do what they say; the CI files run what they claim.

The package-manager tests serve a tiny registry on the host's loopback and install from it through
the sandbox's proxy (the sandbox has no network of its own, so there is no other way through): a
test-written variant of each example extends the example file itself and only adds that address
(with allow_private, since loopback is private). The plain example refuses the same address.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
POLICIES = sorted((EXAMPLES / "policies").glob("*.yaml"))
PREFIX = os.path.realpath(sys.prefix)  # this Python's packages (pytest, pip): not visible unless granted

REGISTRIES = {
    "python-pip": {"pypi.org:443", "files.pythonhosted.org:443"},
    "node-npm": {"registry.npmjs.org:443"},
    "rust-cargo": {"index.crates.io:443", "static.crates.io:443", "crates.io:443"},
    "github-api": {"api.github.com:443"},
}
CACHES = {
    "python-pip": {"~/.cache/pip"},
    "node-npm": {"~/.npm"},
    "rust-cargo": {"~/.cargo/registry", "~/.cargo/git"},
    "github-api": set(),
}


# --- the policies -------------------------------------------------------------------------------------


def test_every_example_policy_validates() -> None:
    assert {p.stem for p in POLICIES} == set(REGISTRIES)
    result = subprocess.run([sys.executable, "-m", "sandboxctl", "policy", "validate", *map(str, POLICIES)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{p}: ok" for p in POLICIES]


@pytest.mark.parametrize("path", POLICIES, ids=[p.stem for p in POLICIES])
def test_example_policy_allows_exactly_its_registry(path: Path) -> None:
    from sandboxctl.policy.load import load_source, read_source

    policy = load_source(read_source(path, str(path))).policy
    assert policy.name == path.stem
    assert yaml.safe_load(path.read_text())["extends"] == "default"
    assert policy.chain[1:] == ("builtin:default", "builtin:base")
    assert policy.network.mode == "proxy"
    assert {str(h) for h in policy.network.allow} == REGISTRIES[path.stem]
    assert not policy.network.allow_private
    assert CACHES[path.stem] <= set(policy.filesystem.tmpfs)
    assert not set(policy.filesystem.write), "a writable host cache could be poisoned for unsandboxed runs"


# --- the CI files ---------------------------------------------------------------------------------


def _ci_example(name: str) -> tuple[str, list[str], list[str]]:
    """(install text, the sandboxctl command, artifact paths) of one CI example."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    if name == "github-actions.yml":
        steps = next(iter(data["jobs"].values()))["steps"]
        lines = [line for step in steps for line in str(step.get("run", "")).splitlines()]
        uploads = [step["with"]["path"] for step in steps if "upload-artifact" in str(step.get("uses", ""))]
        assert all(step.get("if") == "always()" for step in steps if "upload-artifact" in str(step.get("uses")))
        artifacts = [p for upload in uploads for p in upload.split()]
    else:
        job = next(iter(data.values()))
        lines = [str(line) for line in job["before_script"] + job["script"]]
        assert job["artifacts"]["when"] == "always"
        artifacts = job["artifacts"]["paths"]
    commands = [shlex.split(line) for line in lines if line.strip().startswith("sandboxctl run")]
    assert len(commands) == 1, commands
    return "\n".join(lines), commands[0], artifacts


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_example_installs_runs_under_ci_and_uploads_the_summary(name: str) -> None:
    install, command, artifacts = _ci_example(name)
    assert re.search(r"apt-get install\b.*\bbubblewrap\b", install)
    assert 'pip" install "agent-sandboxctl @ git+${SANDBOXCTL_GIT}@${SANDBOXCTL_COMMIT}"' in install \
        or 'pip install "agent-sandboxctl @ git+${SANDBOXCTL_GIT}@${SANDBOXCTL_COMMIT}"' in install
    assert "sandboxctl doctor" in install
    options = command[2:command.index("--")]
    assert options[options.index("-p") + 1] == "ci"
    assert "--fail-on-denial" in options  # the CI gate: a passing suite that was denied something fails
    summary = options[options.index("--summary-json") + 1]
    assert summary in artifacts


def _pin_guard(name: str) -> str:
    """The example's first shell command: the check that the sandboxctl source is pinned."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    if name == "github-actions.yml":
        steps = next(iter(data["jobs"].values()))["steps"]
        script = next(s["run"] for s in steps if "Install bubblewrap" in s.get("name", ""))
        return script.split("\nsudo apt-get", 1)[0].replace("::error::", "")
    return next(iter(data.values()))["before_script"][0]


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_example_stops_until_the_source_is_pinned(name: str) -> None:
    """As shipped (OWNER, a zero SHA) the job stops before installing anything; a branch name is no pin."""
    guard = _pin_guard(name)
    data = yaml.safe_load((EXAMPLES / name).read_text())
    shipped = data["env"] if name == "github-actions.yml" else next(iter(data.values()))["variables"]

    def run(git: str, commit: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", guard], capture_output=True, text=True, timeout=10,
                              env={"PATH": "/usr/bin:/bin", "SANDBOXCTL_GIT": git, "SANDBOXCTL_COMMIT": commit})

    as_shipped = run(shipped["SANDBOXCTL_GIT"], str(shipped["SANDBOXCTL_COMMIT"]))
    assert as_shipped.returncode == 1 and "a full commit SHA" in as_shipped.stdout
    assert run("https://github.com/acme/sandboxctl", "main").returncode == 1
    assert run("https://github.com/acme/sandboxctl", "0123456789abcdef0123456789abcdef01234567").returncode == 0


def test_no_instruction_installs_the_other_projects_name() -> None:
    """PyPI's `sandboxctl` is another project: no README line or example may `pip install sandboxctl`."""
    texts = {path: path.read_text() for path in [ROOT / "README.md", *EXAMPLES.glob("*.yml")]}
    for path, text in texts.items():
        for line in text.splitlines():
            if re.search(r"\bpip\S*\s+install\b", line) and "never" not in line.lower():  # not a warning
                assert not re.search(r"install\s+(-\S+\s+)*[\"']?sandboxctl\b", line), f"{path.name}: {line}"
    assert 'name = "agent-sandboxctl"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_example_command_really_runs_the_tests(sandbox, name: str) -> None:
    _install, command, _artifacts = _ci_example(name)
    ws = sandbox.workspace
    (ws / "test_inside.py").write_text("import os\n\ndef test_inside():\n    assert os.environ['SANDBOXCTL'] == '1'\n")
    venv_python = ws / ".venv" / "bin" / "python"  # what the example's install step would have made
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
    venv_python.chmod(0o755)
    # as written, plus this Python's prefix read-only (the example's .venv would be in the workspace)
    # (and no .pyc written there: each would be a denied write in the summary)
    argv = [sys.executable, "-m", "sandboxctl", "run", "--allow-read", PREFIX, "--env", "PYTHONDONTWRITEBYTECODE=1",
            *command[2:]]
    result = subprocess.run(argv, cwd=ws, env=sandbox.env(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    options = command[2:command.index("--")]
    summary = json.loads((ws / options[options.index("--summary-json") + 1]).read_text())
    assert summary["policy"] == "ci" and summary["exit_code"] == 0 and summary["denials"] == []
    assert summary["command"] == command[command.index("--") + 1:]


# --- a registry on the host's loopback --------------------------------------------------------------


class Registry:
    """A tiny HTTP server on 127.0.0.1: path -> (content type, body), and the paths asked for."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.seen: list[str] = []
        registry = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.seen.append(self.path)
                route = registry.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", route[0])
                self.send_header("Content-Length", str(len(route[1])))
                self.end_headers()
                self.wfile.write(route[1])

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = Registry()
    try:
        yield server
    finally:
        server.close()


def variant(tmp_path: Path, example: str, port: int, extra: dict | None = None) -> tuple[Path, Path]:
    """The example copied next to a variant that extends it and adds 127.0.0.1:PORT (and `extra`)."""
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    plain = folder / f"{example}.yaml"
    shutil.copy(EXAMPLES / "policies" / f"{example}.yaml", plain)
    data = {"version": 1, "name": f"{example}-local", "extends": plain.name,
            "network": {"allow": [f"127.0.0.1:{port}"], "allow_private": True}}
    for key, value in (extra or {}).items():
        data.setdefault(key, {}).update(value)
    path = folder / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return plain, path


def net_records(sandbox, port: int) -> list[tuple[str, str]]:
    return [(r["decision"], r["host"]) for r in sandbox.records() if r["event"] == "net" and r.get("port") == port]


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --- pip ----------------------------------------------------------------------------------------------


def _wheel(name: str, version: str) -> bytes:
    """A minimal pure-Python wheel, zipped by hand (PEP 427: module, METADATA, WHEEL, RECORD)."""
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: sandboxctl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return buffer.getvalue()


def test_python_pip_downloads_through_the_proxy(sandbox, registry: Registry, tmp_path: Path) -> None:
    wheel = _wheel("tinypkg", "0.1")
    filename = "tinypkg-0.1-py3-none-any.whl"
    page = f'<!DOCTYPE html><html><body><a href="/files/{filename}#sha256={hashlib.sha256(wheel).hexdigest()}">' \
           f"{filename}</a></body></html>"
    registry.routes = {"/simple/tinypkg/": ("text/html", page.encode()),
                       f"/files/{filename}": ("application/octet-stream", wheel)}
    plain, local = variant(tmp_path, "python-pip", registry.port, {"filesystem": {"read": [PREFIX]}})
    pip = ["--", sys.executable, "-m", "pip", "download", "--index-url", f"{registry.url}/simple/", "--no-deps",
           "--retries", "0", "--timeout", "20", "-d", "dl", "tinypkg"]

    result = sandbox.run(*pip, policy=str(local), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (sandbox.workspace / "dl" / filename).read_bytes() == wheel
    assert registry.seen == ["/simple/tinypkg/", f"/files/{filename}"]
    assert set(net_records(sandbox, registry.port)) == {("allow", "127.0.0.1")}

    # the example as it is: PyPI only, so the same address is unreachable. 127.0.0.1 is then the
    # sandbox's own loopback (NO_PROXY names it when no rule names the host's), where nothing listens
    registry.seen.clear()
    (sandbox.workspace / "dl" / filename).unlink()
    before = net_records(sandbox, registry.port)
    result = sandbox.run("--allow-read", PREFIX, *pip, policy=str(plain), timeout=180)
    assert result.returncode != 0
    assert registry.seen == [] and not (sandbox.workspace / "dl" / filename).exists()
    assert ("allow", "127.0.0.1") not in net_records(sandbox, registry.port)[len(before):]


# --- npm ----------------------------------------------------------------------------------------------


def _visible_tool(name: str) -> str | None:
    """The tool's path if it (and what it resolves to) lies where every policy shows the system."""
    found = shutil.which(name)
    if found is None:
        return None
    real = os.path.realpath(found)
    return found if real.startswith(("/usr/", "/bin/")) and found.startswith(("/usr/", "/bin/")) else None


def _skip_without(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {package}); this example test needs it")
    tool = _visible_tool(name)
    if tool is None:
        pytest.skip(f"{name} is {os.path.realpath(found)}, outside /usr: the test's private HOME cannot show it")
    return tool


def test_node_npm_installs_through_the_proxy(sandbox, registry: Registry, tmp_path: Path) -> None:
    _skip_without("npm", "npm")
    tarball = _tar_gz({"package/package.json": b'{"name": "tinypkg", "version": "1.0.0", "main": "index.js"}\n',
                       "package/index.js": b"module.exports = 42;\n"})
    packument = {"name": "tinypkg", "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": {
        "name": "tinypkg", "version": "1.0.0", "main": "index.js",
        "dist": {"tarball": f"{registry.url}/tinypkg/-/tinypkg-1.0.0.tgz",
                 "shasum": hashlib.sha1(tarball).hexdigest(),
                 "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()}}}}
    registry.routes = {"/tinypkg": ("application/json", json.dumps(packument).encode()),
                       "/tinypkg/-/tinypkg-1.0.0.tgz": ("application/octet-stream", tarball)}
    (sandbox.workspace / "package.json").write_text('{"name": "ws", "version": "1.0.0", "private": true}\n')
    _plain, local = variant(tmp_path, "node-npm", registry.port)
    result = sandbox.run("--", "npm", "install", "tinypkg", "--registry", f"{registry.url}/", "--no-audit",
                         policy=str(local), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (sandbox.workspace / "node_modules" / "tinypkg" / "index.js").read_text() == "module.exports = 42;\n"
    assert registry.seen == ["/tinypkg", "/tinypkg/-/tinypkg-1.0.0.tgz"]
    assert set(net_records(sandbox, registry.port)) == {("allow", "127.0.0.1")}


# --- cargo --------------------------------------------------------------------------------------------


def _cargo() -> tuple[str, dict, dict[str, str]]:
    """cargo's path, the filesystem grants it needs, and its env (a rustup proxy needs RUSTUP_HOME)."""
    found = shutil.which("cargo")
    if found is None:
        pytest.skip("cargo is not installed (rustup, or apt-get install cargo); this example test needs it")
    bin_dir = str(Path(found).parent)
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin"}  # so cargo finds rustc next to it
    read = [] if _visible_tool("cargo") else [bin_dir]
    if Path(os.path.realpath(found)).name == "rustup":  # a rustup proxy: the toolchains live in RUSTUP_HOME
        real_home = pwd.getpwuid(os.getuid()).pw_dir  # HOME is the test's own by now
        rustup_home = os.environ.get("RUSTUP_HOME") or os.path.join(real_home, ".rustup")
        read.append(rustup_home)
        env["RUSTUP_HOME"] = rustup_home
        if os.environ.get("RUSTUP_TOOLCHAIN"):
            env["RUSTUP_TOOLCHAIN"] = os.environ["RUSTUP_TOOLCHAIN"]
    probe = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, **env})
    match = re.match(r"cargo (\d+)\.(\d+)", probe.stdout)
    if not match:
        pytest.skip(f"`cargo --version` does not answer: {(probe.stderr.strip() or 'no output')[:200]}")
    if (int(match[1]), int(match[2])) < (1, 68):
        pytest.skip(f"{probe.stdout.strip()} is older than 1.68: no sparse registries")
    return found, {"read": read}, env


def test_rust_cargo_fetches_through_the_proxy(sandbox, registry: Registry, tmp_path: Path) -> None:
    cargo, grants, env = _cargo()
    crate = _tar_gz({"tinycrate-0.1.0/Cargo.toml":
                     b'[package]\nname = "tinycrate"\nversion = "0.1.0"\nedition = "2021"\n',
                     "tinycrate-0.1.0/src/lib.rs": b"pub const VALUE: u32 = 42;\n"})
    entry = {"name": "tinycrate", "vers": "0.1.0", "deps": [], "cksum": hashlib.sha256(crate).hexdigest(),
             "features": {}, "yanked": False}
    config = {"dl": f"{registry.url}/dl/{{crate}}/{{version}}/download", "api": None}
    registry.routes = {  # a sparse registry (RFC 2789): config.json, index files by name, downloads
        "/index/config.json": ("application/json", json.dumps(config).encode()),
        "/index/ti/ny/tinycrate": ("text/plain", (json.dumps(entry) + "\n").encode()),
        "/dl/tinycrate/0.1.0/download": ("application/octet-stream", crate),
    }
    ws = sandbox.workspace
    (ws / "src").mkdir()
    (ws / "src" / "lib.rs").write_text("pub fn value() -> u32 { tinycrate::VALUE }\n")
    (ws / "Cargo.toml").write_text('[package]\nname = "ws"\nversion = "0.1.0"\nedition = "2021"\n\n'
                                   '[dependencies]\ntinycrate = { version = "0.1", registry = "local" }\n')
    env["CARGO_REGISTRIES_LOCAL_INDEX"] = f"sparse+{registry.url}/index/"
    _plain, local = variant(tmp_path, "rust-cargo", registry.port, {"filesystem": grants, "env": {"set": env}})
    result = sandbox.run("--", cargo, "fetch", policy=str(local), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert registry.seen == ["/index/config.json", "/index/ti/ny/tinycrate", "/dl/tinycrate/0.1.0/download"]
    lock = (ws / "Cargo.lock").read_text()
    assert 'name = "tinycrate"' in lock and entry["cksum"] in lock
    assert set(net_records(sandbox, registry.port)) == {("allow", "127.0.0.1")}
