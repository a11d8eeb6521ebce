"""The `sandboxctl` command as scripts/setup installs it: the interpreter started without `site`.

pip's console script starts `python` the usual way: `site` reads every .pth file of the venv
(setuptools' distutils hack, the editable install's path) and the system's sitecustomize, and
the script itself imports `re` before sandboxctl; together ~3-4 ms of every run, before
bubblewrap can even be started (README, Performance). The script written here starts the
same interpreter with -I -S and puts on sys.path exactly the directories `site` would have
added for sandboxctl and its dependencies, and the venv's sys.prefix (which `site` sets, and the
plan protects: plan/facts.py). -I also means that no PYTHON* variable of the
caller (PYTHONPATH, PYTHONSTARTUP, PYTHONINSPECT …) can put code into the supervisor, and no
directory of the caller's (the current one, the user's site-packages) is searched for modules.

    python -m sandboxctl.console_script PATH   # writes the script at PATH (atomically, mode 0755)
"""

from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -IS
# sandboxctl, written by scripts/setup (sandboxctl/console_script.py) in place of pip's script:
# the interpreter starts isolated (-I) and without site (-S); this is what site would have set.
import sys
sys.prefix, sys.exec_prefix = {prefixes!r}
sys.path += {paths!r}
{finder}from sandboxctl.cli.main import main
main()
"""
# an editable install: `sandboxctl` from the clone, and no other name (the clone's other files are
# a workspace's, which a sandbox may write)
# (importlib.machinery's PathFinder from the module that defines it, loaded at start: importing
# the importlib package and warnings for it costs ~0.4 ms of every run)
FINDER = """from _frozen_importlib_external import PathFinder
class OnlySandboxctl:
    find_spec = staticmethod(lambda name, path=None, target=None:
                             PathFinder.find_spec(name, [{clone!r}]) if name == "sandboxctl" else None)
sys.meta_path.insert(0, OnlySandboxctl)
"""


def module_paths() -> tuple[list[str], str | None]:
    """Where this interpreter's `site` finds sandboxctl's dependencies, and the directory that
    holds sandboxctl itself when it is not one of those (an editable install: the clone, which
    the .pth file names; a wheel: None, it is in site-packages)."""
    import sysconfig

    paths = []
    for key in ("purelib", "platlib"):
        directory = sysconfig.get_paths()[key]
        if directory not in paths:
            paths.append(directory)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return paths, None if package_parent in paths else package_parent


def render(python: str, paths: list[str], prefixes: tuple[str, str], clone: str | None = None) -> str:
    if any(c in python for c in " \t\n") or not os.path.isabs(python):
        raise ValueError(f"cannot name {python!r} on a #! line")
    finder = FINDER.format(clone=clone) if clone else ""
    return TEMPLATE.format(python=python, paths=paths, prefixes=prefixes, finder=finder)


def write(target: str, python: str | None = None) -> None:
    """Write the script at target, replacing what is there (pip's) in one rename."""
    paths, clone = module_paths()
    text = render(python or sys.executable, paths, (sys.prefix, sys.exec_prefix), clone)
    temporary = f"{target}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o755)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o755)  # whatever the umask
        os.replace(temporary, target)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m sandboxctl.console_script PATH", file=sys.stderr)
        sys.exit(2)
    write(sys.argv[1])
