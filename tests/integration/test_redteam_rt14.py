"""Red team rt14: more project files that the host's tools read on their own and that make them
run a program (mise's environment configs, asdf's and rustup's version files, cargo's config,
yarn's release and plugins, JetBrains' file-based project), judged from outside: the host's own
rustup and cargo where they are installed, the bytes on the host's disk, and what the git
history check says about a commit bringing such a name in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.test_protected_paths import git, repo


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "CANARY"


def _user_home() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_dir  # the tests' HOME may be a private one


def _rust_tool(name: str) -> str | None:
    """The host's rustup proxy or cargo, if this user can run it."""
    for directory in (*os.environ.get("PATH", "").split(os.pathsep), os.path.join(_user_home(), ".cargo", "bin")):
        candidate = os.path.join(directory, name)
        if directory and os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    return None


def _rust_env(cargo: str) -> dict[str, str]:
    home = _user_home()
    return {"PATH": f"{os.path.dirname(cargo)}:/usr/bin:/bin", "HOME": home,
            "RUSTUP_HOME": os.environ.get("RUSTUP_HOME", os.path.join(home, ".rustup")),
            "CARGO_HOME": os.environ.get("CARGO_HOME", os.path.join(home, ".cargo"))}


PLANTED = ["mise.dev.toml", ".mise.ci.toml", "mise.dev.local.toml", "mise/config.dev.toml",
           ".mise/config.dev.toml", ".mise/conf.d/x.toml", "mise/conf.d/x.toml", ".config/mise.dev.toml",
           ".tool-versions", "rust-toolchain", "rust-toolchain.toml", ".cargo/config.toml", ".cargo/config",
           ".yarn/releases/yarn-4.0.0.cjs", ".yarn/plugins/plugin.cjs", "app.iml", "app.ipr", "app.iws",
           ".run/Dev.run.xml", "MISE.DEV.TOML", ".envrc.local", ".envrc.private"]


@pytest.mark.parametrize("name", PLANTED)
def test_tool_config_that_runs_programs_cannot_be_planted(sandbox, name: str) -> None:
    """mise loads mise.<env>.toml (MISE_ENV) and every conf.d file, not only the names rt10
    protected; a `path:` version in .tool-versions puts a directory's programs behind asdf's and
    mise's shims; rustup's toolchain file `path` runs the project's cargo for `cargo --version`;
    cargo's rustc-wrapper runs in a build; yarn runs yarnPath's release and loads its plugins for
    any command; JetBrains' file-based project (.ipr, .iws, .iml) and .run/ hold run
    configurations a startup task runs. Judged by the host's disk."""
    ws = sandbox.workspace
    result = sandbox.sh(f"mkdir -p \"$(dirname '{name}')\"; echo x > '{name}'; echo end")
    assert "end" in result.stdout, result.stderr
    assert not (ws / name).exists()


@pytest.mark.skipif(not shutil.which("direnv"), reason="direnv is not installed (apt-get install direnv)")
def test_an_envrcs_local_file_does_not_run_at_the_hosts_next_cd(sandbox, canary) -> None:
    """direnv's allow is a hash of the .envrc alone: one that sources .envrc.local (a common local
    override) ran what the sandbox wrote there at the host's next cd (proven with the host's direnv)."""
    ws = sandbox.workspace
    (ws / ".envrc").write_text("source_env_if_exists .envrc.local\n")
    home = sandbox.home
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_CACHE_HOME": str(home / ".cache")}
    subprocess.run(["direnv", "allow", str(ws)], cwd=ws, env=env, capture_output=True, timeout=30, check=True)
    result = sandbox.sh(f"echo 'touch {canary}' > .envrc.local; echo end")
    assert "end" in result.stdout, result.stderr
    loaded = subprocess.run(["direnv", "exec", str(ws), "true"], cwd=ws, env=env, capture_output=True, text=True,
                            timeout=30)
    assert loaded.returncode == 0, loaded.stderr  # the .envrc itself is allowed and ran
    assert not canary.exists()


def test_the_same_names_below_the_root_and_yarns_cache_stay_writable(sandbox) -> None:
    """Only at the root (dependency trees ship such files); yarn install writes .yarn/cache."""
    ws = sandbox.workspace
    result = sandbox.sh("mkdir -p pkg .yarn/cache && echo x > pkg/mise.dev.toml && echo x > pkg/app.iml && "
                        "echo x > pkg/rust-toolchain.toml && echo x > .yarn/cache/a.zip && echo x > mise.dev.txt && "
                        "echo end")
    assert "end" in result.stdout, result.stderr
    assert (ws / "pkg" / "mise.dev.toml").exists() and (ws / ".yarn" / "cache" / "a.zip").exists()
    assert (ws / "pkg" / "rust-toolchain.toml").exists() and (ws / "mise.dev.txt").exists()


@pytest.mark.skipif(not _rust_tool("rustup"), reason="rustup is not installed for this user")
def test_a_toolchain_file_cannot_make_the_hosts_cargo_run_the_sandboxs(sandbox, canary) -> None:
    """rust-toolchain.toml's `path` makes rustup's cargo proxy exec PATH/bin/cargo: the host's
    `cargo --version` in the workspace ran the sandbox's program (proven on the host's rustup)."""
    ws = sandbox.workspace
    fake = f"#!/bin/sh\\ntouch {canary}\\n"
    result = sandbox.sh(f"mkdir -p tc/bin && printf '{fake}' > tc/bin/cargo && cp tc/bin/cargo tc/bin/rustc && "
                        f"chmod +x tc/bin/* && printf '[toolchain]\\npath = \"{ws}/tc\"\\n' > rust-toolchain.toml; "
                        "echo end")
    assert "end" in result.stdout, result.stderr
    cargo = _rust_tool("cargo") or "cargo"
    env = _rust_env(cargo)
    subprocess.run([cargo, "--version"], cwd=ws, env=env, capture_output=True, timeout=60)
    assert not canary.exists()


@pytest.mark.skipif(not _rust_tool("cargo"), reason="cargo is not installed for this user")
def test_cargo_config_cannot_wrap_the_hosts_next_build(sandbox, canary) -> None:
    """A crate without build scripts runs nothing of its own when built: cargo's rustc-wrapper
    from the workspace's .cargo/config.toml made the host's `cargo build` run the sandbox's program."""
    ws = sandbox.workspace
    (ws / "src").mkdir()
    (ws / "Cargo.toml").write_text('[package]\nname = "x"\nversion = "0.1.0"\nedition = "2021"\n')
    (ws / "src" / "main.rs").write_text("fn main() {}\n")
    wrapper = f"#!/bin/sh\\ntouch {canary}\\nexec \"$@\"\\n"
    result = sandbox.sh(f"printf '{wrapper}' > w.sh && chmod +x w.sh && mkdir -p .cargo && "
                        f"printf '[build]\\nrustc-wrapper = \"{ws}/w.sh\"\\n' > .cargo/config.toml; echo end")
    assert "end" in result.stdout, result.stderr
    cargo = _rust_tool("cargo") or "cargo"
    env = {**_rust_env(cargo), "CARGO_TARGET_DIR": str(canary.parent / "target")}
    built = subprocess.run([cargo, "build", "--offline", "-q"], cwd=ws, env=env, capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0 or canary.exists(), built.stderr  # a build that never ran proves nothing
    assert not canary.exists()


COMMIT = """set -e
export GIT_INDEX_FILE=/tmp/idx GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
blob=$(echo '[hooks]' | git hash-object -w --stdin)
git read-tree HEAD
git update-index --add --cacheinfo 100644,$blob,mise.dev.toml --cacheinfo 100644,$blob,team.code-workspace
git update-ref refs/heads/master $(git commit-tree $(git write-tree) -p HEAD -m 'fix a typo')
echo end
"""


def test_a_commit_bringing_a_name_held_by_its_pattern_is_reported(sandbox) -> None:
    """The history check listed only ROOT_NAMES: a commit holding team.code-workspace (VS Code
    offers to open it, and runs its folderOpen tasks) or mise.dev.toml went unsaid, and the
    host's `git reset --hard` wrote both into the workspace."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh(COMMIT)
    assert "end" in result.stdout, result.stderr
    for name in ("mise.dev.toml", "team.code-workspace"):
        assert f"{ws}/{name} (in refs/heads/master) was committed or staged" in result.stderr, result.stderr
    git(ws, "reset", "-q", "--hard", home=sandbox.home)
    assert (ws / "mise.dev.toml").exists()  # what the report is for: the host's git writes it


def test_an_index_entry_held_by_its_pattern_is_reported(sandbox) -> None:
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.sh("blob=$(echo '{}' | git hash-object -w --stdin) && "
                        "git update-index --add --cacheinfo 100644,$blob,App.IML && echo end")
    assert "end" in result.stdout, result.stderr
    assert f"{ws}/App.IML (in the index) was committed or staged" in result.stderr, result.stderr


@pytest.mark.skipif(not shutil.which("git"), reason="git is not installed")
def test_an_overlay_run_cannot_apply_a_pattern_name(sandbox, tmp_path: Path) -> None:
    """Under workspace: overlay the layer is the sandbox's own; `apply` must refuse to bring
    mise.dev.toml onto the host (it judges by the same names)."""
    ws = sandbox.workspace
    result = sandbox.run("--overlay", "--", "/bin/sh", "-c", "echo x > mise.dev.toml; echo x > ok.txt; echo end")
    assert "end" in result.stdout, result.stderr
    applied = subprocess.run([*sandbox.argv()[:3], "apply"], cwd=ws, env=sandbox.env(), capture_output=True,
                             text=True, timeout=60)
    assert not (ws / "mise.dev.toml").exists(), applied.stderr


# ------------------------------------------------------------------ git config the host changes meanwhile
def _husky(ws: Path, home: Path) -> None:
    """What `npm install` on the host does where package.json's prepare runs husky 9."""
    (ws / ".husky" / "_").mkdir(parents=True)
    (ws / ".husky" / "pre-commit").write_text("#!/bin/sh\ntrue\n")
    (ws / ".husky" / "_" / "pre-commit").write_text('#!/bin/sh\n. "$(dirname "$0")/../pre-commit"\n')
    for hook in (ws / ".husky" / "pre-commit", ws / ".husky" / "_" / "pre-commit"):
        hook.chmod(0o755)
    git(ws, "config", "core.hooksPath", ".husky/_", home=home)


EVIL_HOOK = "printf '#!/bin/sh\\ntouch {canary}\\n' > .husky/pre-commit; echo rc=$?"


def test_a_hooks_path_the_host_sets_during_a_run_is_held_from_then_on(sandbox, canary) -> None:
    """The planner read core.hooksPath at launch only: the host set it while the command ran (the
    user's `npm install` running husky), and the sandbox, watching its read-only view of
    .git/config, rewrote .husky/pre-commit at once; the host's next commit ran it."""
    ws = repo(sandbox.workspace, sandbox.home)
    script = ("echo > ready; i=0; while ! grep -q hooksPath .git/config; do i=$((i+1)); [ $i -gt 400 ] && exit 3; "
              f"sleep 0.05; done; {EVIL_HOOK.format(canary=canary)}")
    process = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=ws, env=sandbox.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):
        if (ws / "ready").exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    _husky(ws, sandbox.home)
    out, err = process.communicate(timeout=60)
    assert "rc=" in out, err  # the sandbox saw the change and tried
    git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists(), out + err
    assert (ws / ".husky" / "pre-commit").read_text() == "#!/bin/sh\ntrue\n"


def test_a_hooks_path_the_host_sets_during_a_session_is_held(sandbox, canary, tmp_path: Path) -> None:
    """Judged by the host's git: a session outlives many host commands."""
    runtime = Path(tempfile.mkdtemp(prefix="sbx-rt-"))
    runtime.chmod(0o700)
    env = {**sandbox.env(), "XDG_RUNTIME_DIR": str(runtime)}
    ws = repo(sandbox.workspace, sandbox.home)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*sandbox.argv()[:3], *args], cwd=ws, env=env, capture_output=True, text=True,
                              timeout=60)

    started = cli("session", "start", "-p", "default", "--name", "rt14")
    assert started.returncode == 0, started.stderr
    try:
        _husky(ws, sandbox.home)
        result = cli("exec", "rt14", "--", "/bin/sh", "-c", EVIL_HOOK.format(canary=canary) + "; echo x > ok")
        assert "rc=" in result.stdout, result.stderr
        assert (ws / "ok").exists()  # the rest of the workspace stays the command's
        git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
        assert not canary.exists(), result.stderr
    finally:
        cli("session", "stop", "rt14")
        shutil.rmtree(runtime, ignore_errors=True)


def test_apply_holds_back_what_the_hosts_git_config_came_to_run(sandbox, canary) -> None:
    """An overlay run wrote .husky/pre-commit while nothing ran it; the host's npm install then set
    core.hooksPath (husky), and `apply` judged by names only: it wrote the sandbox's hook, which the
    host's next commit ran. Judged by the host's git."""
    ws = repo(sandbox.workspace, sandbox.home)
    result = sandbox.run("--overlay", "--", "/bin/sh", "-c", "mkdir -p .husky && " + EVIL_HOOK.format(canary=canary)
                         + " && chmod +x .husky/pre-commit && echo ok > fine.txt")
    assert "rc=0" in result.stdout, result.stderr
    (ws / ".husky" / "_").mkdir(parents=True)
    (ws / ".husky" / "_" / "pre-commit").write_text('#!/bin/sh\n. "$(dirname "$0")/../pre-commit"\n')
    (ws / ".husky" / "_" / "pre-commit").chmod(0o755)
    git(ws, "config", "core.hooksPath", ".husky/_", home=sandbox.home)
    applied = subprocess.run([*sandbox.argv()[:3], "apply"], cwd=ws, env=sandbox.env(), capture_output=True,
                             text=True, timeout=60)
    assert (ws / "fine.txt").exists(), applied.stderr + applied.stdout
    assert "core.hooksPath" in applied.stdout + applied.stderr
    git(ws, "commit", "-q", "--allow-empty", "-m", "x", home=sandbox.home, check=False)
    assert not canary.exists()


# ------------------------------------------------------------------ a session's findings reach the user
ENVRC_COMMIT = """set -e
export GIT_INDEX_FILE=/tmp/idx GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@t GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@t
envrc=$(echo 'touch CANARY' | git hash-object -w --stdin)
git read-tree HEAD
git update-index --add --cacheinfo 100644,$envrc,.envrc
git update-ref refs/heads/master $(git commit-tree $(git write-tree) -p HEAD -m 'fix a typo')
echo end
"""


def _session_cli(sandbox, runtime: Path):
    env = {**sandbox.env(), "XDG_RUNTIME_DIR": str(runtime)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*sandbox.argv()[:3], *args], cwd=sandbox.workspace, env=env, capture_output=True,
                              text=True, timeout=60)
    return cli


@pytest.mark.parametrize("ending", ["stop", "idle"])
def test_a_sessions_git_history_finding_is_said_not_only_logged(sandbox, ending: str) -> None:
    """A session's end-of-run check runs in its detached process: a commit bringing .envrc in was a
    `protect` record in the log and nothing else — `session stop` said only "stopped", and the
    user's next `git reset --hard` on the host wrote the sandbox's .envrc. Now `stop` says it (and
    a session that ended by itself says it to the next command naming it)."""
    runtime = Path(tempfile.mkdtemp(prefix="sbx-rt-"))
    runtime.chmod(0o700)
    cli = _session_cli(sandbox, runtime)
    ws = repo(sandbox.workspace, sandbox.home)
    idle = ["--idle-timeout", "2s"] if ending == "idle" else []
    try:
        assert cli("session", "start", "-p", "default", "--name", "rt14h", *idle).returncode == 0
        result = cli("exec", "rt14h", "--", "/bin/sh", "-c", ENVRC_COMMIT)
        assert "end" in result.stdout, result.stderr
        if ending == "idle":
            ended = runtime / "sandboxctl" / "sessions" / "rt14h.ended"
            for _ in range(200):
                if ended.exists():
                    break
                time.sleep(0.05)
            late = cli("exec", "rt14h", "--", "true")
            assert late.returncode == 125 and "1 protected path(s)" in late.stderr, late.stderr
            return
        stopped = cli("session", "stop", "rt14h")
        assert f"{ws}/.envrc (in refs/heads/master) was committed or staged" in stopped.stderr, stopped.stderr
    finally:
        cli("session", "stop", "rt14h")
        shutil.rmtree(runtime, ignore_errors=True)


# ------------------------------------------------------------------ gVisor: nothing mediates
@pytest.mark.skipif(not shutil.which("runsc"), reason="runsc (gVisor) is not installed")
def test_under_gvisor_pattern_names_are_held_and_new_ones_removed(sandbox) -> None:
    """gVisor has no mediation: the end-of-run check removes protected names that appeared, but it
    listed ROOT_NAMES only, so a new team.code-workspace or mise.dev.toml stayed on the host,
    unsaid, and an existing one was not even read-only. Judged by the host's disk."""
    ws = sandbox.workspace
    (ws / "old.code-workspace").write_text("{}\n")
    script = ("echo x > mise.dev.toml; echo x > team.code-workspace; echo evil > old.code-workspace; "
              "mkdir -p .config && echo x > .config/mise.ci.toml; echo x > fine.txt; echo end")
    result = sandbox.run("--backend", "gvisor", "--", "/bin/sh", "-c", script, timeout=120)
    assert "end" in result.stdout, result.stderr
    assert (ws / "fine.txt").exists()
    assert (ws / "old.code-workspace").read_text() == "{}\n"
    for name in ("mise.dev.toml", "team.code-workspace", ".config/mise.ci.toml"):
        assert not (ws / name).exists(), name
        assert f"{ws}/{name} was created during a run: removed" in result.stderr, result.stderr


def test_a_write_through_a_descriptor_opened_before_the_hooks_path_was_set_is_said(sandbox, canary) -> None:
    """A write on a descriptor opened while .husky/ was an ordinary directory is no call the
    supervisor sees: held from the config's change on, .husky/pre-commit was still rewritten
    through it. That cannot be refused; the run must say it."""
    ws = repo(sandbox.workspace, sandbox.home)
    (ws / ".husky").mkdir()
    (ws / ".husky" / "pre-commit").write_text("#!/bin/sh\ntrue\n")
    script = ("exec 3>>.husky/pre-commit; echo > ready; i=0; while ! grep -q hooksPath .git/config; do "
              "i=$((i+1)); [ $i -gt 400 ] && exit 3; sleep 0.05; done; "
              f"echo 'touch {canary}' >&3; echo wrote")
    process = subprocess.Popen(sandbox.argv("--", "/bin/sh", "-c", script), cwd=ws, env=sandbox.env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(400):
        if (ws / "ready").exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    git(ws, "config", "core.hooksPath", ".husky", home=sandbox.home)
    out, err = process.communicate(timeout=60)
    assert "wrote" in out, err
    assert f"{ws}/.husky/pre-commit was modified during a run: left as it is: it became protected" in err, err
