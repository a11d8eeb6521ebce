"""`sandboxctl policy list|show|validate|init|trust|revoke`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sandboxctl.errors import SandboxError

app = typer.Typer(help="List, show, validate, create and trust policies.", no_args_is_help=True)


@app.command("list")
def list_policies() -> None:
    """Built-in policies, and the workspace policy if there is one."""
    from rich.table import Table
    from rich.text import Text

    from sandboxctl.cli.output import console
    from sandboxctl.inert import inert
    from sandboxctl.policy.discover import WORKSPACE_POLICY, is_trusted
    from sandboxctl.policy.load import builtin_names, builtin_source, load_source, read_source

    def row(*values: str) -> None:
        # a workspace's .sandboxctl.yaml is anyone's text (a cloned repository's): shown inert, and as
        # Text, never as rich markup ('[/]' in it raised MarkupError)
        table.add_row(*(Text(inert(v)) for v in values))

    table = Table()
    for col in ("name", "description", "source"):
        table.add_column(col)
    for name in builtin_names():
        loaded = load_source(builtin_source(name))
        row(name, loaded.policy.description, "built-in")
    local = Path.cwd() / WORKSPACE_POLICY
    if local.is_file():
        try:
            loaded = load_source(read_source(local, str(local)))
            state = "workspace, trusted" if is_trusted(loaded) else "workspace, NOT trusted"
            row(loaded.policy.name, loaded.policy.description or "", state)
        except SandboxError as exc:
            row(WORKSPACE_POLICY, f"invalid: {exc.message}", "workspace")
    console().print(table)


@app.command("show")
def show(spec: str = typer.Argument(..., metavar="NAME|PATH")) -> None:
    """The merged policy (after extends), as YAML."""
    import yaml

    from sandboxctl.policy.discover import load_named

    loaded = load_named(spec)
    print(f"# {loaded.policy.name}: merged from {' <- '.join(loaded.policy.chain)}")
    print(f"# sha256 {loaded.policy.sha256}")
    data = {k: v for k, v in loaded.data.items() if k != "extends"}
    for secret in data.get("secrets", {}).values():
        secret["from"] = secret["from"].partition(":")[0] + ":…"
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False), end="")
    _show_grants(loaded.policy.name, loaded.policy.sha256)


def _show_grants(name: str, sha256: str) -> None:
    """Remembered "always" approvals, as comments so the output stays valid YAML."""
    from sandboxctl.approval.grants import GrantStore

    store = GrantStore()
    grants = store.for_policy(name)
    if not grants:
        print(f"# no remembered approvals (\"always\") for {name}")
        return
    print(f"# remembered approvals (\"always\") for {name}, kept in {store.path}:")
    for grant in grants:
        state = "" if grant.scope.policy_sha256 == sha256 else "  [inactive: for an earlier version of the policy]"
        print(f"#   {grant.kind} {grant.target}  in workspace {grant.scope.workspace}  since {grant.granted}{state}")
    print(f"# revoke with: sandboxctl policy revoke {name} [--target TARGET] [--workspace DIR]")


@app.command("revoke")
def revoke(name: str = typer.Argument(..., metavar="NAME", help="The policy's name (as `policy show` prints it)."),
           target: str = typer.Option(None, "--target", help="Only this destination or path."),
           workspace: str = typer.Option(None, "--workspace", "-w", help="Only grants for this workspace.")) -> None:
    """Forget remembered ("always") approvals of a policy."""
    import os

    from sandboxctl.approval.grants import GrantStore

    if workspace:
        workspace = os.path.realpath(os.path.expanduser(workspace))
    removed = GrantStore().revoke(name, target, workspace)
    if not removed:
        raise SandboxError(f"no remembered approvals of {name} match",
                           f"see them with: sandboxctl policy show {name}")
    for grant in removed:
        print(f"revoked: {grant.kind} {grant.target} (workspace {grant.scope.workspace})")


@app.command("validate")
def validate(files: list[str] = typer.Argument(..., metavar="PATH...")) -> None:
    """Check policy files; report every problem in every file; exit 0 or 125."""
    from sandboxctl.cli.output import error
    from sandboxctl.policy.errors import PolicyError
    from sandboxctl.policy.load import load_source, read_source

    failed = 0
    for name in files:
        try:
            load_source(read_source(Path(name).resolve(), name))
            print(f"{name}: ok")
        except PolicyError as exc:
            failed += 1
            for problem in exc.problems:  # they quote the file's own keys and values
                error(str(problem), problem.hint)
        except SandboxError as exc:
            failed += 1
            error(exc.message, exc.hint)
    if failed:
        raise typer.Exit(125)


STARTER = """\
# yaml-language-server: $schema=https://sandboxctl.dev/schema/policy-v1.json
# sandboxctl policy for this project. sandboxctl uses it only after you trust it:
#   sandboxctl policy trust
# and again after every change. Reference: `sandboxctl policy show default`.
version: 1
name: {name}
description: Project policy for {name}.
extends: default          # base system read-only, workspace read-write, network by approval

filesystem:
  read: []                # extra read-only paths, e.g. ~/.config/some-tool
  write: []               # extra writable paths (must exist)
  tmpfs: []               # fresh empty writable dirs, e.g. ~/.npm
  deny: []                # hidden even under a granted parent

network:
  mode: proxy
  allow: []               # e.g. pypi.org:443, files.pythonhosted.org:443

env:
  pass: []                # variables copied from your environment
  set: {{}}

limits:
  timeout: 2h
"""


@app.command("init")
def init(force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
         yes: bool = typer.Option(False, "--yes", "-y", help="Trust the new file without asking.")) -> None:
    """Write a commented starter .sandboxctl.yaml here, and offer to trust it."""
    import re

    from sandboxctl.policy.discover import WORKSPACE_POLICY, trust
    from sandboxctl.policy.load import load_source, read_source

    target = Path.cwd() / WORKSPACE_POLICY
    if target.exists() and not force:
        raise SandboxError(f"{target} already exists", "pass --force to overwrite it")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", Path.cwd().name).strip("-._") or "project"
    target.write_text(STARTER.format(name=name[:60]))
    print(f"wrote {target}")
    loaded = load_source(read_source(target, str(target)))
    if yes or (sys.stdin.isatty() and input("Trust it now? [y/N] ").strip().lower() in ("y", "yes")):
        trust(loaded)
        print(f"trusted {target}")
    else:
        print(f"review it, then run: sandboxctl policy trust {target}")


@app.command("trust")
def trust_cmd(path: str = typer.Argument(None, metavar="[PATH]",
                                         help="Default: ./.sandboxctl.yaml")) -> None:
    """Trust the exact current content of a workspace policy (and the files it extends)."""
    from sandboxctl.policy.discover import WORKSPACE_POLICY, trust
    from sandboxctl.policy.load import load_source, read_source

    target = Path(path) if path else Path.cwd() / WORKSPACE_POLICY
    loaded = load_source(read_source(target.resolve(), str(target)))
    trust(loaded)
    print(f"trusted {target} (sha256 {loaded.chain_sha256[:16]}…); a changed file must be trusted again")


@app.command("suggest")
def suggest_cmd(
    run: str = typer.Option(..., "--run", metavar="ID",
                            help="The run whose denials to answer (an id prefix is enough)."),
    log_path: str = typer.Option(None, "--log", metavar="PATH", help="The action log the run wrote to."),
    output: str = typer.Option(None, "-o", "--output", metavar="FILE",
                               help="Write the policy here (its `extends` is then relative to this file)."),
) -> None:
    """A policy that extends the run's own with the least grants its denials needed, each grant
    commented with the denial it answers; protected paths and masked credential stores are never
    suggested (listed as refused, with why). Review it before you use it: `-p FILE`."""
    from sandboxctl.cli.suggestcmd import suggest_for_run

    text = suggest_for_run(run, log_path, output)
    if text is None:
        return
    if output:
        Path(output).write_text(text, encoding="utf-8")
        from sandboxctl.inert import inert

        print(f"wrote {inert(output)}; review it, then: sandboxctl run -p {inert(output)} -- …", file=sys.stderr)
    else:
        print(text, end="")
