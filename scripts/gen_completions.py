#!/usr/bin/env python3
"""Write completions/ (bash, zsh, fish) from `sandboxctl completion SHELL`.

The scripts are generated, never edited by hand: they are what the CLI itself prints, so packagers
can ship the files and users get the same text as `sandboxctl completion SHELL > …`.
`--check` exits 1 when a committed file is stale (for CI and the test suite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "completions"


def render() -> dict[str, str]:
    """File name -> content, for every supported shell."""
    from sandboxctl.cli.completion import FILES, SHELLS, script

    return {FILES[shell]: script(shell) for shell in SHELLS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed completion script is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = TARGET / name
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        names = ", ".join(str(path.relative_to(ROOT)) for path in stale)
        print(f"{names}: stale; run: python scripts/gen_completions.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the checkout's CLI, even if another sandboxctl is installed
    sys.exit(main())
