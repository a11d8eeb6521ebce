"""`sandboxctl proxy -p POLICY [--listen ADDR:PORT]`: the policy's network proxy on its own.

Thin: options, the launch-time confirmation, signals and the exit code; the proxy itself is
sandboxctl/network/standalone.py.
"""

from __future__ import annotations

import sys

import typer

LISTEN_DEFAULT = "127.0.0.1:3128"  # network/standalone_setup.py DEFAULT_LISTEN (not imported: --help stays light)
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def _complete(choices: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [choice for choice in choices if choice.startswith(incomplete)]

    return complete


def register(app: typer.Typer) -> None:
    @app.command("proxy")
    def proxy(
        policy: str = typer.Option(None, "-p", "--policy", metavar="NAME|PATH",
                                   help="Built-in policy name or a YAML file (network.mode: proxy)."),
        listen: str = typer.Option(LISTEN_DEFAULT, "--listen", metavar="ADDR:PORT",
                                   help="Where to listen (port 0: one the kernel picks). Not a loopback address: "
                                        "a confirmation (--yes), the proxy is then open to the network."),
        approve: str = typer.Option("deny", "--approve", metavar="deny|allow|ask",
                                    autocompletion=_complete(("deny", "allow", "ask")),
                                    help="Destinations and requests the policy does not list: deny (default), "
                                         "allow (and log), or ask through `sandboxctl approve` (never a prompt "
                                         "here)."),
        log: str = typer.Option(None, "--log", metavar="PATH", help="Action log file (default: the policy's)."),
        client_dir: str = typer.Option(None, "--client-dir", metavar="DIR",
                                       help="Write the clients' files here: env (the proxy and CA variables, "
                                            "phantom placeholders), ca-bundle.pem, ca.pem, ready. Default: a "
                                            "private directory, and the environment on stdout."),
        phantom_id: str = typer.Option(None, "--phantom-id", metavar="ID",
                                       help="Placeholders sbx-phantom-ID-<hash of the name> instead of random ones, "
                                            "for clients whose environment is set before the proxy starts (a "
                                            "pod's UID); loopback addresses only."),
        log_stdout: bool = typer.Option(False, "--log-stdout",
                                        help="Also print every log record on stdout (a container's log; "
                                             "needs --client-dir)."),
        yes: bool = typer.Option(False, "--yes", help="Accept launch-time confirmations."),
        probe: str = typer.Option(None, "--probe", metavar="DIR",
                                  help="Only check: exit 0 when the proxy writing DIR is serving, 1 when not "
                                       "(a container's startup probe)."),
    ) -> None:
        """Run the policy's network proxy without a sandbox, for containers and sidecars: its allowlist,
        private-address refusal, request rules and phantom secrets, with `net` and `http` events in the
        action log. It stops cleanly on SIGTERM, SIGINT or SIGHUP. Nothing keeps its clients from going
        around it: see the README."""
        if probe is not None:
            from sandboxctl.network.clientfiles import probe as is_serving

            raise typer.Exit(0 if is_serving(probe) else 1)
        raise typer.Exit(run_proxy(policy, listen=listen, approve=approve, log=log, client_dir=client_dir,
                                   phantom_id=phantom_id, log_stdout=log_stdout, yes=yes))


def run_proxy(policy_spec: str | None, *, listen: str, approve: str, log: str | None, client_dir: str | None,
              phantom_id: str | None, log_stdout: bool, yes: bool) -> int:
    import signal

    from sandboxctl.cli import output
    from sandboxctl.cli.run import _confirm
    from sandboxctl.errors import SandboxError
    from sandboxctl.inert import inert
    from sandboxctl.network.standalone import StandaloneProxy
    from sandboxctl.network.standalone_setup import ProxyOptions, check
    from sandboxctl.policy.discover import load_named

    if not policy_spec:
        raise SandboxError("sandboxctl proxy needs a policy", "pass -p NAME|PATH (a policy with network.mode: proxy)")
    loaded = load_named(policy_spec)
    options = ProxyOptions(listen=listen, approve=approve, log_path=log, client_dir=client_dir,
                           phantom_id=phantom_id, log_stdout=log_stdout)
    confirmations = check(loaded.policy, options)
    _confirm(tuple(confirmations), yes)

    def notice(message: str) -> None:
        if not output.QUIET:
            print(f"sandboxctl: {inert(message)}", file=sys.stderr)

    def out(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    args = sys.argv[1:]
    argv_for_log = ["sandboxctl", *args[args.index("proxy"):]] if "proxy" in args else ["sandboxctl", "proxy"]
    server = StandaloneProxy(loaded.policy, options, argv_for_log, notice=notice,
                             out=out, confirmed=tuple(confirmations))
    previous = {}
    for name in STOP_SIGNALS:  # before start: a signal meanwhile is a clean stop, not a traceback
        signum = getattr(signal, name)
        previous[signum] = signal.signal(signum, lambda number, _frame: server.request_stop(
            signal.Signals(number).name))
    try:
        server.start()
        host, port = server.address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        notice(f"proxy for policy {loaded.policy.name} listening on {where} (run {server.run_id}); clients: "
               f"{server.files.directory}/env; stop with Ctrl-C or SIGTERM")
        server.serve()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    notice(f"proxy stopped ({server.stop_reason or 'done'}): {server.connections} connection(s), "
           f"{server.denied} denied; see sandboxctl log --run {server.run_id}")
    return 0
