#!/usr/bin/env python3
"""Write sandboxctl/policy/policy.schema.json from the schema the engine validates with.

The JSON Schema is generated, never edited by hand, so editors and the engine cannot drift apart.
`--check` exits 1 when the committed file is stale (for CI and the test suite).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "sandboxctl" / "policy" / "policy.schema.json"


def render() -> str:
    from sandboxctl.policy.definition import json_schema

    return json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed schema is stale")
    args = parser.parse_args(argv)
    text = render()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else None
    if args.check:
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is stale; run: python scripts/gen_schema.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        TARGET.write_text(text, encoding="utf-8")
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the checkout's schema, even if another sandboxctl is installed
    sys.exit(main())
