"""What `sandboxctl run -- /bin/true` imports: an import budget, so that start-up regressions fail.

Every module imported before bubblewrap is spawned is start-up time on the critical path of
every run (interpreter and imports are most of it: README, Performance). Recorded in a real
run (the CLI's own entry point, its second run: the policy cache and the head start as a
user has them) by snapshotting sys.modules at the first posix_spawn and at the exit.
"""

from __future__ import annotations

import json
import subprocess
import sys

RECORD = r"""
import gc, os, sys
seen, record = {}, sys.argv.pop(1)
real_spawn, real_exit = os.posix_spawn, os._exit
def posix_spawn(*args, **kwargs):
    seen.setdefault("spawn", sorted(sys.modules))
    seen.setdefault("gc_at_spawn", gc.isenabled())
    return real_spawn(*args, **kwargs)
def _exit(code):
    seen["exit"] = sorted(sys.modules)
    seen["gc_at_exit"], seen["gc_frozen"] = gc.isenabled(), gc.get_freeze_count()
    import json  # only now: a run itself never imports json (log/writer.py calls its C encoder)
    with open(record, "w") as out:
        json.dump(seen, out)
    real_exit(code)
os.posix_spawn, os._exit = posix_spawn, _exit
sys.argv = ["sandboxctl", *sys.argv[1:]]
from sandboxctl.cli.main import main
main()
"""

# Never in such a run: the typer CLI (~100 ms), rich, argparse, YAML (the policy cache has it),
# the proxy (started by the first connection), typing (~2 ms: sandboxctl.record, TYPE_CHECKING),
# socket and signal (their enums, ~2.5 ms: the runner uses _socket and _signal).
# json and glob (regular expressions compiled at import, ~2 and ~1 ms: log/writer.py calls json's C
# encoder, plan/facts.py imports glob for a grant with a wildcard).
# pathlib, and the urllib.parse, ipaddress and ntpath it imports (~4 ms of CPU: paths.py does what it
# did with strings); ipaddress only for a host pattern that is an address literal (units.may_be_address).
# re, and the enum it imports, and fnmatch (~2.5 ms of import and ~1 ms of compiles: sandboxctl/lazyre.py
# compiles a pattern at its first use, and answers literal and PREFIX* globs; units.py parses by hand).
NEVER = ("typer", "click", "rich", "argparse", "yaml", "typing", "socket", "signal", "sandboxctl.network.proxy",
         "sandboxctl.policy.yamlpos", "sandboxctl.cli.planview", "subprocess", "dataclasses", "inspect", "json",
         "glob", "pathlib", "urllib", "ipaddress", "ntpath", "re", "enum", "fnmatch")
# What a run imports before bubblewrap may start, with a little room. Measured (`run -q`):
# without a head start 65 of sandboxctl's modules and 151 in all (before perf-b: 64 and 156,
# typing among them; plan/mount_limits.py is a split of plan/build.py, cachedir.py the cache's
# pruning); with one, bubblewrap is spawned after 15 and 75 (launch/config_frames.py); 78 and 166
# by the exit. perf-start: + gc (built in: cli.main pauses the collector while a run starts), and
# neither socket nor signal any more (the runner uses _socket and _signal): 153, 77 and 168 now.
# tidy: runner.py's Supervisor split into one module per step (startup, handshake, loop, listener,
# escapes, run_log, result) and plan/build.py into layout, mounts and landlock: the same code in 10
# more files (+0.37 ms to import the run path, measured interleaved): 163, 77 and 178 now.
# tidy2: supervise/mediate.py split into judge, opens, changes and answers: 4 more modules by the
# exit (imported with mediate, after bubblewrap is spawned; none before it). protect/snapshot.py
# split into store and restore: 2 more before bubblewrap without a head start (handshake.py and
# loop.py import snapshot), none with one: 165, 77 and 185 now.
# lead (stop 25): record_arity.py holds every Record arity's __new__ written out (a module of
# bytecode instead of ~1.3 ms of compile() at start-up): one more everywhere.
# perf-start (2026-12-02): this recording imports json only at the exit now (it counted json and
# its four modules as the run's; with it, main was 79/166, 16/65 and 96/186); the run no longer
# imports json, glob, importlib and importlib.machinery; bubblewrap is spawned before contextlib
# (and the collections, functools, operator, reprlib it imports): 79/157, 16/55 and 96/177 now.
# perf-cold (2026-12-02): no pathlib on the run path, nor the urllib, urllib.parse, ipaddress, ntpath
# and warnings it imported: 79/151, 16/55 and 96/171; nor re (its 5 modules, enum, copyreg) and fnmatch,
# with sandboxctl.lazyre: 80/143, 16/55 and 97/163 now.
# perf (2026-12-02): exec_facts.py and exec_events.py split (exec_sharing.py: the memory map and kcmp;
# exec_sharers.py: the vfork parents), imported with the listener at "ready", not before bubblewrap
# is spawned: 80/143, 16/55 and 99/165.
# lead (2026-12-02, evening): mediate_calls.py (452 lines with the resolution's walk budget) split,
# the Resolver in mediate_resolve.py, imported with the listener at "ready"; mediate_walk (the rare
# slow path) only when a walk is taken: 80/143, 16/55 and 100/166.
COLD = {"sandboxctl": 80, "all": 143}
HEAD_START = {"sandboxctl": 16, "all": 55}
WHOLE_RUN = {"sandboxctl": 100, "all": 166}


def _imports(sandbox, tmp_path, name: str, variant: str) -> dict[str, list[str]]:
    """One run through the CLI's entry point; `variant` is an environment variable (which is
    part of the head start's key: a new value is a first run, like hyperfine's runs)."""
    out = tmp_path / name
    result = subprocess.run([sys.executable, "-c", RECORD, str(out), "run", "-q", "-p", "default", "--", "/bin/true"],
                            cwd=sandbox.workspace, env=sandbox.env({"VARIANT": variant}), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def _within(modules: list[str], budget: dict[str, int]) -> None:
    ours = [m for m in modules if m.split(".")[0] == "sandboxctl"]
    assert len(ours) <= budget["sandboxctl"], ours
    assert len(modules) <= budget["all"], modules
    for name in NEVER:
        assert name not in modules, f"{name} is imported before bubblewrap is spawned"


def test_a_run_imports_within_its_budget(sandbox, tmp_path):
    _imports(sandbox, tmp_path, "warm.json", "a")  # fills the policy cache (YAML is parsed once)
    cold, head_start = _imports(sandbox, tmp_path, "cold.json", "b"), _imports(sandbox, tmp_path, "again.json", "b")
    assert [r.get("head_start") for r in sandbox.records() if r["event"] == "run.start"] == [None, None, True]
    _within(cold["spawn"], COLD)
    _within(head_start["spawn"], HEAD_START)
    for seen in (cold, head_start):
        assert not [m for m in seen["exit"] if m.split(".")[0] in NEVER or m in NEVER]  # nor after it
        assert len([m for m in seen["exit"] if m.split(".")[0] == "sandboxctl"]) <= WHOLE_RUN["sandboxctl"]
        assert len(seen["exit"]) <= WHOLE_RUN["all"], seen["exit"]


def test_the_garbage_collector_pauses_for_the_start_up_only(sandbox, tmp_path):
    """cli.main turns cycle collection off while a run starts and back on once the command is let
    go (the supervisor may run for hours): off when bubblewrap is spawned, on again at the exit,
    with what start-up made frozen."""
    for variant in ("first", "first"):  # a first run, then a head start
        seen = _imports(sandbox, tmp_path, f"gc-{variant}.json", variant)
        assert seen["gc_at_spawn"] is False
        assert seen["gc_at_exit"] is True and seen["gc_frozen"] > 10_000
