"""Fixtures and workloads of bench/compare: what "real work" means, built once per run.

Every workload is a command run with the workspace as its current directory, the same for every
sandbox (and for no sandbox at all), plus a `prepare` step run outside any sandbox before each
round (a fresh target directory, a file to commit), so that each round does the same work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from base64 import urlsafe_b64encode
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


class Workload(NamedTuple):
    name: str
    argv: Callable[[str], list[str]]  # round tag (unique per tool and round) -> the command
    prepare: Callable[[str], None] = lambda tag: None  # outside any sandbox, before the timed run
    env: dict[str, str] = {}  # noqa: RUF012 (never mutated)
    repeat: int = 1  # runs inside one sandbox (the median is taken): short commands are noisy
    touch: str | None = None  # a file (relative to the workspace) appended to before each run


def build_repository(root: Path, files: int) -> None:
    """A git repository of `files` small files in directories of 100, committed."""
    root.mkdir(parents=True)
    for i in range(files):
        directory = root / f"d{i // 100:03d}"
        if i % 100 == 0:
            directory.mkdir()
        (directory / f"f{i % 100:02d}.txt").write_text(f"file {i}\n")
    env = {**os.environ, **GIT_ENV}
    for argv in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "fixture"]):
        subprocess.run(argv, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)


def build_test_suite(root: Path, tests: int) -> None:
    """`tests` trivial pytest tests in files of 20 (collection and assertion rewriting dominate)."""
    root.mkdir(parents=True)
    for file_number in range(max(1, tests // 20)):
        body = "\n".join(f"def test_{file_number}_{i}():\n    assert sum(range({i})) == {i * (i - 1) // 2}\n"
                         for i in range(20))
        (root / f"test_bench_{file_number:02d}.py").write_text(body)


def build_wheel(directory: Path, modules: int = 40) -> Path:
    """A pure-Python wheel of `modules` modules, written by hand (no build backend, no network)."""
    name, version = "benchpkg", "1.0"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": b"VERSION = '1.0'\n"}
    for i in range(modules):
        files[f"{name}/module_{i:02d}.py"] = "".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(50)).encode()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for member, data in files.items():
        digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{member},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


def build_npm_tarball(directory: Path, npm: str, modules: int = 30) -> Path:
    """`npm pack` of a local package of `modules` files."""
    source = directory / "npm-source"
    source.mkdir()
    (source / "package.json").write_text(json.dumps({"name": "benchpkg", "version": "1.0.0", "main": "index.js"}))
    (source / "index.js").write_text("module.exports = {};\n")
    for i in range(modules):
        (source / f"lib{i:02d}.js").write_text("".join(f"exports.f{j} = (x) => x + {j};\n" for j in range(50)))
    subprocess.run([npm, "pack", "--silent", "--pack-destination", str(directory)], cwd=source, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "npm_config_cache":
                                                                               str(directory / "npm-pack-cache")})
    shutil.rmtree(directory / "npm-pack-cache", ignore_errors=True)
    return directory / "benchpkg-1.0.0.tgz"


def write_c_source(path: Path, functions: int = 300) -> None:
    path.write_text("#include <string.h>\n" + "".join(
        f"int f{i}(const char *s, int n) {{ int t = 0; for (int k = 0; k < n; k++) t += s[k] * {i + 1}"
        f" ^ (int)strlen(s + k); return t; }}\n" for i in range(functions)))


def workloads(workspace: Path, python: str, *, files: int, tests: int) -> list[Workload]:
    """The issue's real work, in `workspace` (built here): git status and commit in a repository of
    `files` files, pytest of `tests` tests, pip install of a local wheel, npm install of a local
    tarball (where npm is installed), a C compile (where cc is)."""
    found: list[Workload] = []
    if shutil.which("git"):
        build_repository(workspace / "repo", files)
        found.append(Workload(f"git status ({files} files)", lambda tag: ["git", "-C", "repo", "status", "--porcelain"],
                              env=GIT_ENV, repeat=5))
        found.append(Workload(f"git commit ({files} files)",
                              lambda tag: ["git", "-C", "repo", "commit", "-q", "-a", "-m", tag], env=GIT_ENV,
                              repeat=3, touch="repo/d000/f00.txt"))
    probe = subprocess.run([python, "-c", "import pytest, pip"], capture_output=True)
    if probe.returncode == 0:
        build_test_suite(workspace / "suite", tests)
        found.append(Workload(f"pytest ({tests} tests)",
                              lambda tag: [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "suite"],
                              env={"PYTHONDONTWRITEBYTECODE": "1"}))
        wheel = build_wheel(workspace)
        found.append(Workload("pip install (local wheel)", lambda tag: [
            python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir",
            "--disable-pip-version-check", "--no-compile", "--target", f"pip-{tag}", wheel.name]))
    npm = shutil.which("npm")
    if npm:
        tarball = build_npm_tarball(workspace, npm)

        def project(tag: str) -> None:
            (workspace / f"npm-{tag}").mkdir()
            (workspace / f"npm-{tag}" / "package.json").write_text('{"name": "p", "version": "1.0.0"}')

        found.append(Workload("npm install (local tarball)", lambda tag: [
            npm, "install", "--offline", "--no-audit", "--no-fund", "--silent", "--prefix", f"npm-{tag}",
            "--cache", f"npm-{tag}/.cache", f"./{tarball.name}"], project))
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        write_c_source(workspace / "big.c")
        found.append(Workload("cc -O2 (300 functions)", lambda tag: [cc, "-O2", "-c", "big.c", "-o", f"big-{tag}.o"]))
    return found
