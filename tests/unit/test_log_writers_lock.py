"""Every writer of a run's log takes the run's log lock, and run.end's `head` is the run's head
when run.end is written: with other threads writing all the while, `log --verify` finds the chain
whole and `--against` finds run.end's head right (a head read before the call missed what another
thread wrote in between: a false alarm of removed records)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from sandboxctl.log import against, verify
from sandboxctl.log.writer import RUN_HEAD, ActionLog

ROOT = Path(__file__).resolve().parents[2] / "sandboxctl"
WRITES = {"write", "write_soon", "write_last"}
# the writers themselves, each documented as holding the lock (or taking it) where it writes
HOLDERS = {("supervise/run_log.py", "_write_log"), ("supervise/run_log.py", "_write_log_soon"),
           ("supervise/run_log.py", "_write_record"), ("supervise/run_log.py", "_check_flood"),
           ("supervise/run_log.py", "flush_throttled"), ("supervise/lifecycle.py", "_log_changes")}


def _log_writes(tree: ast.AST):
    """(function name, call, locked) for each call of log.write*/self.log.write*."""
    def visit(node: ast.AST, function: str, locked: bool):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function, locked = node.name, False
        if isinstance(node, ast.With):
            locked = locked or any(isinstance(item.context_expr, ast.Attribute)
                                   and item.context_expr.attr.endswith("log_lock") for item in node.items)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in WRITES:
            target = node.func.value
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
            if name == "log":
                yield function, node, locked
        for child in ast.iter_child_nodes(node):
            yield from visit(child, function, locked)
    yield from visit(tree, "", False)


def test_every_writer_of_a_run_log_holds_the_log_lock() -> None:
    """The supervisor's and the standalone proxy's writers: a direct write (run.start, secret
    injections, the OOM record, the end's records) could come between another thread's record's
    `ts` and its place in the file, and between the end's head and run.end."""
    files = [*sorted((ROOT / "supervise").glob("*.py")), ROOT / "network" / "standalone.py"]
    unlocked, heads = [], []
    for path in files:
        relative = str(path.relative_to(ROOT))
        for function, call, locked in _log_writes(ast.parse(path.read_text())):
            if not locked and (relative, function) not in HOLDERS:
                unlocked.append(f"{relative}:{call.lineno} in {function}")
            if call.func.attr == "write_last":
                head = next((k.value for k in call.keywords if k.arg == "head"), None)
                if not (isinstance(head, ast.Name) and head.id == "RUN_HEAD"):
                    heads.append(f"{relative}:{call.lineno}")
    assert not unlocked, f"log writes without log_lock: {unlocked}"
    assert not heads, f"run.end's head read before write_last (not RUN_HEAD): {heads}"


def test_concurrent_writers_keep_the_chain_and_run_ends_head(tmp_path: Path) -> None:
    path = tmp_path / "actions.jsonl"
    for round_ in range(5):
        run = f"20260101T00000{round_}-abcdef"
        log = ActionLog(str(path), run)
        log.write("run.start", argv=["true"])
        stop = threading.Event()

        def writer(kind: str, log: ActionLog = log, stop: threading.Event = stop) -> None:
            n = 0
            while not stop.is_set():
                (log.write if kind == "now" else log.write_soon)("net", host=f"{kind}{n}.example", port=443,
                                                                 decision="allow", rule="x" * 200)
                n += 1

        threads = [threading.Thread(target=writer, args=(kind,)) for kind in ("now", "soon", "now", "soon")]
        for thread in threads:
            thread.start()
        while log.seq < 300:
            pass
        log.write_last("run.end", exit_code=0, head=RUN_HEAD)  # while the others still write
        stop.set()
        for thread in threads:
            thread.join(10)
        log.close()
    result = verify.verify(path)
    assert result.ok, result.reason
    copy = tmp_path / "copy.jsonl"  # what a collector has: every line
    shutil.copy(path, copy)
    checked = against.check(path, copy)
    assert checked.ok and checked.heads == 5, checked.problems
    ends = [json.loads(line) for line in copy.read_text().splitlines() if '"run.end"' in line]
    assert ends and all(isinstance(end["head"], str) and len(end["head"]) == 64 for end in ends)


def test_the_cli_verifies_it_too(tmp_path: Path) -> None:
    """`sandboxctl log --verify --against`: the same answer through the command line."""
    xdg = tmp_path / "xdg"
    path = xdg / "sandboxctl" / "actions.jsonl"
    log = ActionLog(str(path), "20260101T000000-abcdef")
    log.write("run.start", argv=["true"])
    done = threading.Event()

    def writer() -> None:
        n = 0
        while not done.is_set() and n < 5000:
            log.write_soon("exec", pid=n, path="/bin/true", argv=["true"])
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    while log.seq < 100:
        pass
    log.write_last("run.end", exit_code=0, head=RUN_HEAD)
    done.set()
    thread.join(10)
    log.close()
    copy = tmp_path / "copy.jsonl"
    shutil.copy(path, copy)
    env = {**os.environ, "XDG_STATE_HOME": str(xdg)}
    result = subprocess.run([sys.executable, "-m", "sandboxctl", "log", "--verify", "--against", str(copy)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
