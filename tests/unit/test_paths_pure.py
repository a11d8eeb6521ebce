"""sandboxctl/paths.py's string helpers give what pathlib gave: the same strings, the same answers,
the same errors (the run path stopped importing pathlib: ~4 ms of CPU a run; what a path resolves
to must not move with it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import pytest

from sandboxctl import paths

SPELLINGS = ["", ".", "..", "/", "//", "///", "a", "a/", "a//b", "./a", "a/./b", "a/.", "a/..", "/a/../b",
             "//a/b/", "///a", "~", "~/", "~/x/", "~root/x", "a.b.c", ".bashrc", "a.", "..yaml", ".yaml", "x.yaml",
             "a/b.tar.gz/", "/tmp//sandboxctl-0/", "{workspace}/x/./y", "a b/c\tD", "/é/ü.ÿ"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_pure_helpers_are_purepaths(spelling):
    path = PurePosixPath(spelling)
    assert paths.pure(spelling) == str(path)
    assert paths.parent(spelling) == str(path.parent)
    assert paths.name(spelling) == path.name
    assert paths.suffix(spelling) == path.suffix
    assert paths.stem(spelling) == path.stem
    for name in ("x", "x/y/", "/abs", "//abs", ".", "", "../up"):
        assert paths.join(spelling, name) == str(path / name)
    assert paths.join(spelling, "a", "b") == str(path / "a" / "b")


@pytest.mark.parametrize("spelling", ["~", "~/", "~/a//b/", "~root", "~root/x", "~nobody-here-at-all/x", "a/~",
                                      "/~", "~~"])
def test_expand_user_is_pathlibs(spelling, monkeypatch, tmp_path):
    for home in (str(tmp_path / "h") + "/", "/", ""):
        monkeypatch.setenv("HOME", home)
        try:
            expected: str | type = str(Path(spelling).expanduser())
        except RuntimeError:
            expected = RuntimeError
        if expected is RuntimeError:
            with pytest.raises(RuntimeError):
                paths.expand_user(spelling)
        else:
            assert paths.expand_user(spelling) == expected


def _tree(root: Path) -> list[str]:
    """Directories, files, symlinks (to each, dangling, a loop), a name too long for the kernel."""
    (root / "d" / "e").mkdir(parents=True)
    (root / "f").write_text("x")
    (root / "to-d").symlink_to("d")
    (root / "to-f").symlink_to("f")
    (root / "dangling").symlink_to("nowhere")
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    names = ["d", "d/", "d/e", "d/../f", "f", "f/", "to-d", "to-d/", "to-d/e", "to-f", "to-f/", "dangling",
             "dangling/", "loop-a", "loop-a/x", "missing", "f/under-a-file", "x" * 300, "d/" + "y" * 300]
    return [str(root / n) if not n.endswith("/") else str(root / n) + "/" for n in names] + \
        [str(root) + "/" + n for n in names]


def _outcome(call, *args):
    try:
        return call(*args)
    except (OSError, RuntimeError) as exc:
        return type(exc), getattr(exc, "errno", None)


def test_the_file_tests_and_resolve_are_pathlibs(tmp_path):
    """Also where os.path differs: pathlib raises on an error other than "not there" (here
    ENAMETOOLONG) where os.path.isdir says False, and resolve() names a symlink loop."""
    for spelling in _tree(tmp_path):
        path = Path(spelling)
        assert _outcome(paths.is_dir, spelling) == _outcome(path.is_dir), spelling
        assert _outcome(paths.is_file, spelling) == _outcome(path.is_file), spelling
        assert _outcome(paths.exists, spelling) == _outcome(path.exists), spelling
        assert _outcome(paths.is_symlink, spelling) == _outcome(path.is_symlink), spelling
        assert _outcome(paths.resolve, spelling) == _outcome(lambda p: str(p.resolve()), path), spelling
    assert _outcome(paths.resolve, str(tmp_path / "loop-a")) == (RuntimeError, None)


def _made(root: Path, spelling: str, make) -> tuple:
    outcome = _outcome(make, spelling)
    found = sorted((str(p.relative_to(root)), stat.S_IMODE(p.lstat().st_mode), p.is_symlink()) for p in root.rglob("*"))
    return outcome, found


@pytest.mark.parametrize("name", ["new", "new/", "a/b/c", "a//b/./c/", "d", "d/new", "f", "f/new", "to-d",
                                  "to-d/new/deeper", "to-f", "dangling", "dangling/new", "loop-a/x"])
def test_make_dirs_is_mkdir_with_parents(tmp_path, name):
    """The same directories, modes (the missing parents by the umask alone) and errors."""
    results = []
    for side, make in (("pathlib", lambda s: Path(s).mkdir(mode=0o700, parents=True, exist_ok=True)),
                       ("paths", lambda s: paths.make_dirs(s, 0o700))):
        root = tmp_path / side
        root.mkdir()
        _tree(root)
        results.append(_made(root, str(root / name) + ("/" if name.endswith("/") else ""), make))
    assert results[0] == results[1]


def test_ensure_private_dir_names_the_directory_as_pathlib_did(tmp_path):
    """A trailing slash must not make the symlink test follow the link (planted in a shared dir)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (tmp_path / "mine").mkdir(mode=0o700)
    (shared / "link").symlink_to(tmp_path / "mine")
    from sandboxctl.errors import SandboxError

    for spelling in (str(shared / "link"), str(shared / "link") + "/", shared / "link"):
        with pytest.raises(SandboxError, match="is a symlink in a directory anyone may write"):
            paths.ensure_private_dir(spelling)
    made = tmp_path / "state" / "sandboxctl"
    assert paths.ensure_private_dir(str(made) + "//") == str(made) + "//"  # given back as given
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700


@pytest.mark.parametrize("env", [{"HOME": "/h//x/"}, {"HOME": "relative"}, {"XDG_STATE_HOME": "/s//t/./"},
                                 {"XDG_STATE_HOME": "relative", "HOME": "/h"}, {"TMPDIR": "/t//"}])
def test_the_state_and_runtime_dirs_are_spelt_as_before(monkeypatch, env):
    """What the planner masks and the sockets live in: the spelling pathlib gave them."""
    for name in ("HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    home = os.environ.get("HOME")
    import pwd

    before_home = Path(home) if home and os.path.isabs(home) else Path(pwd.getpwuid(os.getuid()).pw_dir)
    base = os.environ.get("XDG_STATE_HOME")
    before_state = (Path(base) if base and os.path.isabs(base) else before_home / ".local" / "state") / "sandboxctl"
    assert paths.home_dir() == str(before_home)
    assert paths.state_dir() == str(before_state)
    assert paths.runtime_dir() == str(Path(os.environ.get("TMPDIR") or "/tmp") / f"sandboxctl-{os.getuid()}")


def test_builtin_names_are_the_globs(tmp_path, monkeypatch):
    from sandboxctl.policy import load

    assert load.builtin_names() == sorted(p.stem for p in Path(load.builtin_dir()).glob("*.yaml"))
    for name in ("a.yaml", ".yaml", "..yaml", "b.yml", "c.yaml.bak", "d.YAML", ".hidden.yaml"):
        (tmp_path / name).write_text("")
    (tmp_path / "dir.yaml").mkdir()
    monkeypatch.setattr(load, "builtin_dir", lambda: str(tmp_path))
    assert load.builtin_names() == sorted(p.stem for p in tmp_path.glob("*.yaml"))
    monkeypatch.setattr(load, "builtin_dir", lambda: str(tmp_path / "missing"))
    assert load.builtin_names() == []


def test_the_workspace_is_found_as_before(tmp_path, monkeypatch):
    """api/options.workspace_dir: ~ expanded, a symlink resolved, a file refused, the same message."""
    from sandboxctl.api.options import workspace_dir
    from sandboxctl.errors import SandboxError

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "link")
    for given in ("~/link", "~/link/", "~/link/sub/..", str(tmp_path / "link") + "//sub/.", None, ".", "sub"):
        expected = Path(given or os.getcwd()).expanduser().resolve()
        assert workspace_dir(given) == str(expected), given
    for given in ("~/file", "~/missing", "~/file/"):
        with pytest.raises(SandboxError, match=f"workspace {Path(given).expanduser()} is not a directory"):
            workspace_dir(given)
    with pytest.raises(RuntimeError):
        workspace_dir("~no-such-user-here/x")
