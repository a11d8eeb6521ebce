"""The malformed-policy corpus (tests/data/bad_policies) and the valid ones, through the engine,
the CLI (`sandboxctl policy validate`) and the generated JSON Schema.

Every `*.yaml` directly in bad_policies/ is an entry point that must be refused; files under
bad_policies/helpers/ are only reached through `extends`. Each entry point is listed in EXPECT
with the line, key path and message of its first problem, so the corpus and the messages are
reviewed together.
"""

from __future__ import annotations

import importlib.util
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from sandboxctl.policy.definition import json_schema
from sandboxctl.policy.errors import PolicyError
from sandboxctl.policy.load import load_source, read_source
from sandboxctl.policy.yamlpos import MAX_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parents[2]
BAD = ROOT / "tests" / "data" / "bad_policies"
GOOD = ROOT / "tests" / "data" / "good_policies"
SCHEMA_FILE = ROOT / "sandboxctl" / "policy" / "policy.schema.json"

BAD_FILES = sorted(p.name for p in BAD.glob("*.yaml"))
BUILTIN_FILES = sorted((ROOT / "policies").glob("*.yaml"))
EXAMPLE_FILES = sorted((ROOT / "examples").glob("**/*.yaml"))
GOOD_FILES = sorted(GOOD.glob("**/*.yaml"))

# name -> (line, key path, fragment of the message) of the first problem reported.
EXPECT: dict[str, tuple[int | None, str, str]] = {
    # YAML itself
    "tab_indent.yaml": (3, "", "invalid YAML: found character '\\t'"),
    "dup_key.yaml": (4, "name", "duplicate key"),
    "dup_key_nested.yaml": (5, "network.mode", "duplicate key"),
    "python_object_tag.yaml": (2, "name", "unsupported YAML tag !!python/object/apply:os.system"),
    "python_name_tag.yaml": (2, "description", "unsupported YAML tag or type !!python/name:os.system"),
    "custom_tag.yaml": (2, "workspace", "unsupported YAML tag or type !mode"),
    "binary_tag.yaml": (2, "description", "unsupported YAML tag or type !!binary"),
    "set_tag.yaml": (3, "env.pass", "unsupported YAML tag !!set"),
    "timestamp_value.yaml": (2, "description", "unsupported YAML tag or type !!timestamp"),
    "alias_bomb.yaml": (4, "", "YAML aliases (*name) are not allowed"),
    "alias_reuse.yaml": (5, "", "YAML aliases (*name) are not allowed"),
    "merge_key.yaml": (3, "network", "YAML merge keys (<<) are not allowed; use 'extends'"),
    "multi_document.yaml": (3, "", "invalid YAML: but found another document"),
    "unclosed_bracket.yaml": (4, "", "invalid YAML: expected ',' or ']'"),
    "bad_indent.yaml": (4, "", "invalid YAML: mapping values are not allowed here"),
    "mapping_in_scalar.yaml": (2, "", "invalid YAML: mapping values are not allowed here"),
    "complex_key.yaml": (2, "", "map keys must be plain strings"),
    "non_string_key.yaml": (2, "", "map key 1 must be a string"),
    "bool_key.yaml": (2, "", "map key True must be a string"),
    "null_key.yaml": (2, "", "map key None must be a string"),
    "yaml_2_directive.yaml": (1, "", "invalid YAML: found incompatible YAML document"),
    "unterminated_string.yaml": (4, "", "invalid YAML: found unexpected end of stream"),
    "deep_nesting.yaml": (3, "", "nested deeper than 32 levels"),
    # bytes
    "null_byte.yaml": (2, "", "file contains NUL bytes"),
    "bad_utf8.yaml": (2, "", "file is not valid UTF-8"),
    "binary_junk.yaml": (3, "", "file contains NUL bytes"),
    "utf16.yaml": (1, "", "file contains NUL bytes"),
    # document shape and keys
    "empty_file.yaml": (1, "", "file is empty"),
    "only_comment.yaml": (1, "", "file is empty"),
    "top_level_list.yaml": (1, "", "expected a map, got a list"),
    "top_level_scalar.yaml": (1, "", "expected a map, got a string"),
    "version_missing.yaml": (1, "", "missing required key 'version'"),
    "version_2.yaml": (1, "version", "2: unknown policy version"),
    "version_string.yaml": (1, "version", "'1': unknown policy version"),
    "version_bool.yaml": (1, "version", "True: unknown policy version"),
    "unknown_top_key.yaml": (2, "netwrok", "unknown key"),
    "unknown_nested_key.yaml": (4, "filesystem.raed", "unknown key"),
    "unknown_key_no_close_match.yaml": (2, "frobnicate", "unknown key"),
    "name_bad_chars.yaml": (2, "name", "'my agent!': does not match"),
    "name_too_long.yaml": (2, "name", "does not match"),
    "description_too_long.yaml": (2, "description", "string longer than 500 characters"),
    # wrong types
    "string_where_list.yaml": (3, "filesystem.read", "expected a list, got a string"),
    "list_where_map.yaml": (2, "network", "expected a map, got a list"),
    "map_where_list.yaml": (3, "env.pass", "expected a list, got a map"),
    "bool_where_string.yaml": (2, "name", "expected a string, got a boolean"),
    "map_where_string.yaml": (2, "description", "expected a string, got a map"),
    "number_where_bool.yaml": (3, "network.allow_private", "expected true or false, got a number"),
    "string_where_bool.yaml": (3, "network.allow_private", "expected true or false, got a string"),
    "null_section.yaml": (2, "filesystem", "expected a map, got empty"),
    "number_where_path.yaml": (3, "filesystem.write[1]", "expected a string, got a number"),
    "env_set_number.yaml": (4, "env.set.PIP_NO_INPUT", "expected a string, got a number"),
    "pids_string.yaml": (3, "limits.pids", "expected a whole number, got a string"),
    "pids_float.yaml": (3, "limits.pids", "expected a whole number"),
    "workspace_bool.yaml": (2, "workspace", "expected one of rw, ro, none, overlay, got a boolean"),
    "choice_wrong.yaml": (3, "network.mode", "'maybe': must be one of none, proxy, host"),
    "landlock_wrong.yaml": (2, "landlock", "'optional': must be one of required, best-effort"),
    "backend_wrong.yaml": (2, "backend", "'docker': must be one of bwrap, gvisor"),
    "approval_via_wrong.yaml": (3, "approval.via", "'email': must be one of tty, socket"),
    "file_events_wrong.yaml": (3, "log.file_events", "'some': must be one of none, write, all"),
    "secrets_not_map.yaml": (2, "secrets", "expected a map, got a list"),
    "extends_wrong_type.yaml": (2, "extends", "expected a name or a list of names, got a map"),
    # value languages: durations, sizes, numbers, paths, hosts, names
    "bad_duration.yaml": (3, "limits.timeout", "'30 minutes': not a duration"),
    "bad_duration_unit.yaml": (3, "approval.timeout", "'2w': not a duration"),
    "duration_bare_number.yaml": (3, "limits.timeout", "expected a string, got a number"),
    "zero_duration.yaml": (3, "limits.timeout", "'0s': a duration must be longer than zero"),
    "bad_ttl.yaml": (5, "secrets.TOKEN.ttl", "'forever': not a duration"),
    "bad_size.yaml": (3, "limits.memory", "'4 gigabytes': not a size"),
    "zero_size.yaml": (3, "limits.memory", "0: a size must be larger than zero"),
    "zero_size_unit.yaml": (3, "limits.file_size", "'0M': a size must be larger than zero"),
    "negative_size.yaml": (3, "limits.memory", "-512: a size must be larger than zero"),
    "negative_pids.yaml": (3, "limits.pids", "-5: must be between 1 and"),
    "pids_too_large.yaml": (3, "limits.pids", "99999999: must be between 1 and"),
    "open_files_too_small.yaml": (3, "limits.open_files", "3: must be between 16 and"),
    "relative_path.yaml": (5, "filesystem.read[1]", "'usr/lib': relative path; write it as {workspace}/usr/lib"),
    "unknown_variable.yaml": (3, "filesystem.write[0]", "unknown variable {foo}"),
    "dotdot_path.yaml": (3, "filesystem.read[0]", "'..' is not allowed"),
    "tilde_user.yaml": (3, "filesystem.read[0]", "only ~ and ~/ are supported (not ~user)"),
    "variable_mid_path.yaml": (3, "filesystem.tmpfs[0]", "{workspace} may only start a path"),
    "unbalanced_brace.yaml": (3, "filesystem.read[0]", "unbalanced braces"),
    "empty_path.yaml": (3, "filesystem.read[0]", "empty path"),
    "control_char_path.yaml": (3, "filesystem.read[0]", "control characters in a path"),
    "glob_in_read.yaml": (3, "filesystem.read[0]", "wildcards are only allowed in filesystem.deny"),
    "glob_in_exec.yaml": (3, "exec.allow[0]", "wildcards are only allowed in filesystem.deny"),
    "log_path_relative.yaml": (3, "log.path", "'actions.jsonl': relative path"),
    "bad_host_pattern.yaml": (5, "network.allow[0]", "'*.': not a host pattern"),
    "bad_host_wildcard_mid.yaml": (3, "network.deny[0]", "'pypi.*.org': not a host pattern"),
    "bad_ipv6_bracket.yaml": (3, "network.allow[0]", "'[::1': unclosed '['"),
    "bad_env_pattern.yaml": (3, "env.pass[1]", "'LC-*': not a variable name or a PREFIX_* pattern"),
    "env_set_bad_name.yaml": (4, "env.set.1BAD", "not an environment variable name"),
    "bad_secret_source.yaml": (4, "secrets.TOKEN.from", "a secret source is env:NAME, file:PATH or command:CMD"),
    "secret_env_bad_name.yaml": (4, "secrets.TOKEN.from", "'not-a-name' is not a variable name"),
    "secret_file_relative.yaml": (4, "secrets.TOKEN.from", "'token.txt': relative path"),
    "secret_missing_from.yaml": (3, "secrets.TOKEN", "missing required key 'from'"),
    "secret_bad_as.yaml": (5, "secrets.TOKEN.as", "'stdin': must be one of file, env"),
    "secret_name_bad.yaml": (3, "secrets.my-token", "not an environment variable name"),
    "syscall_name_bad.yaml": (3, "syscalls.deny[0]", "'PTRACE': does not match"),
    "too_many_list_items.yaml": (3, "filesystem.deny", "more than 512 entries"),
    # extends
    "extends_absolute.yaml": (2, "extends", "extends takes a built-in name or a path relative to this file"),
    "extends_too_many.yaml": (2, "extends", "more than 16 entries"),
    "extends_unknown_builtin.yaml": (3, "extends", "'nosuchpolicy': no built-in policy of that name"),
    "missing_parent.yaml": (4, "extends[1]", "'./nope/parent.yaml': no such file"),
    "cycle_a.yaml": (3, "extends", "extends cycle: cycle_a.yaml -> cycle_b.yaml -> cycle_a.yaml"),
    "cycle_b.yaml": (3, "extends", "extends cycle: cycle_b.yaml -> cycle_a.yaml -> cycle_b.yaml"),
    "self_extends.yaml": (2, "extends", "extends cycle: self_extends.yaml -> self_extends.yaml"),
    "bad_parent.yaml": (5, "network.mode", "'sometimes': must be one of none, proxy, host"),
    # several at once
    "many_problems.yaml": (3, "workspace", "'rwx': must be one of rw, ro, none"),
}

# The problem is in a file the entry point extends, and the message names that file.
NAMED_FILE = {"bad_parent.yaml": "broken_parent.yaml"}

# What the JSON Schema cannot judge, and why. Everything else in the corpus must be invalid under
# the JSON Schema too; these must not be (so the lists stay exact when the schema grows).
#
# YAML level: the schema sees data, not text. yaml.safe_load refuses some of these outright, and
# quietly "fixes" the others: a duplicate key keeps its last value, aliases and merge keys are
# expanded, UTF-16 is decoded. (alias_bomb.yaml is never expanded for the schema at all.)
YAML_LEVEL = {
    "tab_indent.yaml", "dup_key.yaml", "dup_key_nested.yaml", "python_object_tag.yaml",
    "python_name_tag.yaml", "custom_tag.yaml", "alias_bomb.yaml", "alias_reuse.yaml", "merge_key.yaml",
    "multi_document.yaml", "unclosed_bracket.yaml", "bad_indent.yaml", "mapping_in_scalar.yaml",
    "complex_key.yaml", "yaml_2_directive.yaml", "unterminated_string.yaml", "null_byte.yaml",
    "bad_utf8.yaml", "binary_junk.yaml", "utf16.yaml",
}
# Value level: the schema types these as plain strings; only the engine parses paths, host
# patterns, environment patterns, secret sources, extends targets, and zero durations or sizes.
VALUE_LEVEL = {
    "zero_duration.yaml", "zero_size_unit.yaml", "relative_path.yaml", "unknown_variable.yaml",
    "dotdot_path.yaml", "tilde_user.yaml", "variable_mid_path.yaml", "unbalanced_brace.yaml",
    "empty_path.yaml", "control_char_path.yaml", "glob_in_read.yaml", "glob_in_exec.yaml",
    "log_path_relative.yaml", "bad_host_pattern.yaml", "bad_host_wildcard_mid.yaml",
    "bad_ipv6_bracket.yaml", "bad_env_pattern.yaml", "bad_secret_source.yaml",
    "secret_env_bad_name.yaml", "secret_file_relative.yaml", "extends_absolute.yaml",
}
# Across files: each file is fine on its own; the problem is what `extends` leads to.
EXTENDS_LEVEL = {
    "extends_unknown_builtin.yaml", "missing_parent.yaml", "cycle_a.yaml", "cycle_b.yaml",
    "self_extends.yaml", "bad_parent.yaml",
}
ENGINE_ONLY = YAML_LEVEL | VALUE_LEVEL | EXTENDS_LEVEL


# Time budgets are in CPU seconds: a busy shared machine stretches the wall clock, not the work
# done. The wall clock still bounds hangs (waiting on something), with room for that load.
BUDGET = 1.0
HANG = 5.0


class Stopwatch:
    """CPU seconds of this process (children=False) or of its waited-for children, and wall seconds."""

    def __init__(self, children: bool = False):
        self.children = children

    def _cpu(self) -> float:
        if not self.children:
            return time.process_time()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> Stopwatch:
        self.cpu, self.wall = self._cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = self._cpu() - self.cpu, time.perf_counter() - self.wall

    def within(self, budget: float = BUDGET, hang: float = HANG) -> bool:
        return self.cpu < budget and self.wall < hang

    def __str__(self) -> str:
        return f"{self.cpu:.2f}s CPU, {self.wall:.2f}s wall"


def first_line_pattern(name: str) -> re.Pattern[str]:
    """`sandboxctl: error: PATH/NAME[:LINE]: ...` with the file's name and, if it has one, its line."""
    return re.compile(rf"^sandboxctl: error: (?:.*/)?{re.escape(name)}(?::(\d+))?: ")


def validate_cli(*paths: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxctl", "policy", "validate", *map(str, paths)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


@pytest.fixture(scope="module")
def schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# One process imports the CLI once, then forks a child per file that runs `sandboxctl policy
# validate FILE` with its own stdout and stderr: each file gets the whole command as a process
# (its exit code, what it prints, os._exit), at the cost of one interpreter and one import of
# typer instead of ~50 (24 s of the suite on a loaded 2-core machine; ~1 s like this).
FORKED_CLI = r"""
import json, os, sys
from sandboxctl.cli import main as cli
out, warm, files = sys.argv[1], sys.argv[2], sys.argv[3:]
# one validation here first, of a good policy, so that what typer imports while it parses
# (pydantic, its adapters: ~0.1 s) is imported once, before the forks
saved, real_exit = [os.dup(1), os.dup(2)], os._exit
for fd in (1, 2):
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
def _no_exit(code):
    raise SystemExit(code)
os._exit = _no_exit
try:
    cli.main(["policy", "validate", warm])
except SystemExit:
    pass
os._exit = real_exit
sys.stdout.flush(), sys.stderr.flush()
for fd, copy in zip((1, 2), saved):
    os.dup2(copy, fd)
codes = {}
for index, path in enumerate(files):
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, suffix in ((1, "out"), (2, "err")):
            os.dup2(os.open(f"{out}/{index}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        code = 0
        try:
            cli.main(["policy", "validate", path])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os._exit(code)
    codes[index] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
json.dump(codes, open(f"{out}/codes.json", "w"))
"""


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """`policy validate` of each bad file, each in a process of its own (FORKED_CLI)."""
    out = tmp_path_factory.mktemp("validate")
    paths = [str(BAD / name) for name in BAD_FILES]
    driver = subprocess.run([sys.executable, "-c", FORKED_CLI, str(out), str(GOOD / "minimal.yaml"), *paths],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert driver.returncode == 0, driver.stderr
    codes = json.loads((out / "codes.json").read_text())
    return {name: subprocess.CompletedProcess(["sandboxctl", "policy", "validate", path], codes[str(index)],
                                              (out / f"{index}.out").read_text(), (out / f"{index}.err").read_text())
            for index, (name, path) in enumerate(zip(BAD_FILES, paths, strict=True))}


# --- the corpus itself ---------------------------------------------------------------------------


def test_corpus_is_large_and_listed() -> None:
    assert len(BAD_FILES) >= 45
    assert set(BAD_FILES) == set(EXPECT), "every bad policy needs an EXPECT entry, and only those"
    assert set(EXPECT) >= ENGINE_ONLY
    assert not (YAML_LEVEL & VALUE_LEVEL or YAML_LEVEL & EXTENDS_LEVEL or VALUE_LEVEL & EXTENDS_LEVEL)


# --- in process: the engine ---------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_policy_raises_policy_error(name: str) -> None:
    path = BAD / name
    with Stopwatch() as clock:
        try:
            load_source(read_source(path, str(path)))
        except PolicyError as exc:
            problems = exc.problems
        except Exception as exc:  # anything else is a bug: it would surface as "internal error"
            pytest.fail(f"{name}: {type(exc).__name__} instead of PolicyError: {exc}")
        else:
            pytest.fail(f"{name}: accepted")
    assert clock.within(), f"{name}: {clock}"

    line, key, fragment = EXPECT[name]
    first = problems[0]
    assert Path(first.source).name == NAMED_FILE.get(name, name)
    assert (first.line, first.key) == (line, key), str(first)
    assert fragment in first.message
    for problem in problems:
        assert problem.message and "\n" not in str(problem)
        assert problem.line is None or problem.line >= 1


def test_policy_error_is_one_line_with_hint() -> None:
    path = BAD / "unknown_top_key.yaml"
    with pytest.raises(PolicyError) as info:
        load_source(read_source(path, "unknown_top_key.yaml"))
    assert str(info.value) == "unknown_top_key.yaml:2: netwrok: unknown key"
    assert info.value.hint == "did you mean 'network'?"
    assert info.value.exit_code == 125


# --- the CLI, one subprocess per file ------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_FILES)
def test_validate_cli_rejects(name: str, cli_results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    result = cli_results[name]
    assert result.returncode == 125, result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    assert result.stdout == ""
    first = result.stderr.splitlines()[0]
    match = first_line_pattern(NAMED_FILE.get(name, name)).match(first)
    assert match, first
    line = EXPECT[name][0]
    assert match.group(1) == (None if line is None else str(line)), first
    for text in result.stderr.splitlines():
        assert text.startswith(("sandboxctl: error: ", "  hint: ")), text


@pytest.mark.parametrize("name", ["alias_bomb.yaml", "deep_nesting.yaml", "too_many_list_items.yaml",
                                  "cycle_a.yaml", "binary_junk.yaml"])
def test_validate_cli_is_quick(name: str) -> None:
    """The whole command, interpreter start-up included, within the budget."""
    with Stopwatch(children=True) as clock:
        result = validate_cli(BAD / name, timeout=30)
    assert result.returncode == 125
    assert clock.within(), f"{name}: {clock}"


def test_validate_reports_every_file(tmp_path: Path) -> None:
    names = ["tab_indent.yaml", "unknown_top_key.yaml", "cycle_a.yaml", "bad_utf8.yaml", "empty_file.yaml"]
    missing = tmp_path / "not_there.yaml"
    result = validate_cli(*(BAD / n for n in names), GOOD / "minimal.yaml", missing)
    assert result.returncode == 125
    assert "Traceback" not in result.stderr
    errors = [t for t in result.stderr.splitlines() if t.startswith("sandboxctl: error: ")]
    for name in names:
        assert any(first_line_pattern(name).match(t) for t in errors), (name, result.stderr)
    assert f"sandboxctl: error: {missing}: no such policy file" in errors
    assert result.stdout.strip() == f"{GOOD / 'minimal.yaml'}: ok"


def test_validate_reports_every_problem_in_a_file() -> None:
    result = validate_cli(BAD / "many_problems.yaml")
    assert result.returncode == 125
    errors = [t for t in result.stderr.splitlines() if t.startswith("sandboxctl: error: ")]
    pattern = first_line_pattern("many_problems.yaml")
    found = [(m.group(1), t[m.end():].split(": ", 1)[0]) for t in errors if (m := pattern.match(t))]
    assert found == [("3", "workspace"), ("5", "filesystem.read[0]"), ("7", "limits.pids"),
                     ("8", "limits.timeout"), ("9", "netwrok")]
    assert "  hint: did you mean 'network'?" in result.stderr.splitlines()


@pytest.mark.parametrize(("name", "count"), [("bad_host_pattern.yaml", 5), ("bad_ipv6_bracket.yaml", 3),
                                             ("bad_env_pattern.yaml", 3), ("syscall_name_bad.yaml", 2),
                                             ("many_problems.yaml", 5)])
def test_every_problem_in_a_file_is_collected(name: str, count: int) -> None:
    with pytest.raises(PolicyError) as info:
        load_source(read_source(BAD / name, name))
    assert len(info.value.problems) == count
    keys = [p.key for p in info.value.problems]
    assert len(set(keys)) == count, keys


# --- generated files: too big, too many values, too deep ----------------------------------------


def _generated(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    many = "version: 1\nfilesystem:\n  read:\n" + "".join(f"    - /a{i}\n" for i in range(MAX_NODES + 10))
    flow = "version: 1\nenv:\n  pass: [" + ",".join("A" for _ in range(MAX_NODES + 10)) + "]\n"
    return {
        "huge.yaml": (b"version: 1\n" + b"# padding\n" * (MAX_BYTES // 10 + 1), "larger than 256 KiB"),
        "huge_one_line.yaml": (b"version: 1\ndescription: " + b"x" * (2 * MAX_BYTES), "larger than 256 KiB"),
        "too_many_values.yaml": (many.encode(), "too many values"),
        "too_many_flow_values.yaml": (flow.encode(), "too many values"),
        "deep_brackets.yaml": (b"version: 1\nname: " + b"[" * (MAX_BYTES - 20), "nested deeper than"),
        "deep_maps.yaml": (b"version: 1\nname: " + b"{a: " * (MAX_BYTES // 4 - 10), "nested deeper than"),
        "deep_blocks.yaml": (b"".join(b" " * i + b"- \n" for i in range(300)), "nested deeper than"),
    }


def test_generated_limits(tmp_path: Path) -> None:
    for name, (content, fragment) in _generated(tmp_path).items():
        path = tmp_path / name
        path.write_bytes(content)
        with Stopwatch() as clock, pytest.raises(PolicyError) as info:
            load_source(read_source(path, name))
        assert clock.within(), f"{name}: {clock}"
        assert fragment in str(info.value), (name, str(info.value))
        assert str(info.value).startswith(f"{name}")


def test_generated_limits_cli(tmp_path: Path) -> None:
    paths = []
    for name, (content, _fragment) in _generated(tmp_path).items():
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    with Stopwatch(children=True) as clock:
        result = validate_cli(*paths, timeout=30)
    assert clock.within(BUDGET * len(paths), HANG * len(paths)), str(clock)
    assert result.returncode == 125
    assert "Traceback" not in result.stderr
    for path in paths:
        assert any(first_line_pattern(path.name).match(t) for t in result.stderr.splitlines()), path.name


# --- the JSON Schema against the engine ---------------------------------------------------------


@pytest.mark.parametrize("name", sorted(set(BAD_FILES) - YAML_LEVEL))
def test_json_schema_agrees_on_bad_policies(name: str, schema_validator) -> None:
    data = yaml.safe_load((BAD / name).read_bytes())
    errors = list(schema_validator.iter_errors(data))
    if name in ENGINE_ONLY:
        assert not errors, f"{name} is listed as engine-only, but the JSON Schema catches it: move it"
    else:
        assert errors, f"{name}: the engine refuses it, the JSON Schema accepts it"


@pytest.mark.parametrize("name", sorted(YAML_LEVEL - {"alias_bomb.yaml"}))
def test_json_schema_cannot_see_yaml_level_problems(name: str, schema_validator) -> None:
    try:
        data = yaml.safe_load((BAD / name).read_bytes())
    except yaml.YAMLError:
        return  # the JSON Schema never gets to judge
    assert schema_validator.is_valid(data), f"{name}: the JSON Schema catches it; it is not YAML-level"


GOOD_SET = [*BUILTIN_FILES, *EXAMPLE_FILES, *GOOD_FILES]


@pytest.mark.parametrize("path", GOOD_SET, ids=[str(p.relative_to(ROOT)) for p in GOOD_SET])
def test_good_policies_validate(path: Path, schema_validator) -> None:
    with Stopwatch() as clock:
        loaded = load_source(read_source(path, str(path)))
    assert clock.within(), str(clock)
    assert loaded.policy.name
    data = yaml.safe_load(path.read_bytes())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator.iter_errors(data)]
    assert not errors


def test_good_policies_validate_cli() -> None:
    result = validate_cli(*GOOD_SET)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == len(GOOD_SET)


def test_builtins_point_editors_at_the_schema() -> None:
    for path in BUILTIN_FILES:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        if first.startswith("# yaml-language-server: $schema="):
            target = (path.parent / first.split("=", 1)[1]).resolve()
            assert target == SCHEMA_FILE, path


# --- the committed schema ------------------------------------------------------------------------


def _gen_script():
    spec = importlib.util.spec_from_file_location("gen_schema", ROOT / "scripts" / "gen_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_schema_is_not_stale() -> None:
    expected = json.dumps(json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == expected, "run: python scripts/gen_schema.py"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_schema.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_gen_schema_check_detects_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _gen_script()
    target = tmp_path / "sandboxctl" / "policy" / "policy.schema.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}\n")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "TARGET", target)
    assert module.main(["--check"]) == 1
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0
    assert target.read_text(encoding="utf-8") == SCHEMA_FILE.read_text(encoding="utf-8")
