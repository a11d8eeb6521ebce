"""`sandboxctl export k8s`: load a policy, translate it (sandboxctl/export/k8s.py), print or write it.

Thin on purpose: the translation is pure and tested on its own; here are only the options, the
warnings on stderr, and the output file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sandboxctl.errors import SandboxError
from sandboxctl.export.k8s_options import (
    DEFAULT_PROXY_IMAGE,
    DEFAULT_RUNTIME_CLASS,
    DEFAULT_SECRET_NAME,
    EGRESS_LOCKS,
    FQDN_POLICIES,
    PROXY_MODES,
    RUNTIME_CLASSES,
)

app = typer.Typer(help="Express a policy for other systems: Kubernetes agent-sandbox manifests.",
                  no_args_is_help=True)


def _complete(choices: tuple[str, ...]):
    def complete(incomplete: str) -> list[str]:
        return [choice for choice in choices if choice.startswith(incomplete)]

    return complete


@app.command("k8s")
def k8s(
    policy: str = typer.Option(..., "-p", "--policy", metavar="NAME|PATH",
                               help="Built-in policy name or a YAML file."),
    workspace_claim: str = typer.Option(None, "--workspace-claim", metavar="NAME",
                                        help="Mount this existing PersistentVolumeClaim at /workspace "
                                             "(default: a new 10Gi volume per sandbox)."),
    runtime_class: str = typer.Option(DEFAULT_RUNTIME_CLASS, "--runtime-class", metavar="gvisor|kata",
                                      autocompletion=_complete(tuple(RUNTIME_CLASSES)),
                                      help="RuntimeClass of the sandbox pods. Default gvisor: a cluster "
                                           "shares nodes, so the pods should not share the node's kernel."),
    warm_pool: int = typer.Option(0, "--warm-pool", metavar="N", min=0,
                                  help="Sandboxes to keep started for claims (default 0: each claim "
                                       "starts its own)."),
    namespace: str = typer.Option(None, "--namespace", metavar="NS", help="Namespace of every object."),
    secret_name: str = typer.Option(DEFAULT_SECRET_NAME, "--secret-name", metavar="NAME",
                                    help="The Secret holding the policy's secrets, one key per secret name "
                                         "(you create it; no value is ever written)."),
    fqdn_policy: str = typer.Option(None, "--fqdn-policy", metavar="cilium",
                                    autocompletion=_complete(FQDN_POLICIES),
                                    help="Also emit a CiliumNetworkPolicy allowing network.allow host names "
                                         "(a Kubernetes NetworkPolicy matches addresses only)."),
    image: str = typer.Option(None, "--image", metavar="IMAGE",
                              help="The container image (default: debian:stable-slim, idling)."),
    proxy: str = typer.Option("sidecar", "--proxy", metavar="sidecar|none", autocompletion=_complete(PROXY_MODES),
                              help="network: proxy policies: sandboxctl's proxy as a sidecar, so host names, "
                                   "request rules and phantom secrets hold (default), or none (a NetworkPolicy "
                                   "of addresses only)."),
    proxy_image: str = typer.Option(None, "--proxy-image", metavar="IMAGE",
                                    help="The sidecar's image; it must contain sandboxctl (and iptables for the "
                                         "egress lock). Default: "
                                         + DEFAULT_PROXY_IMAGE.format(version="VERSION")
                                         + ", built from examples/proxy.Containerfile."),
    egress_lock: str = typer.Option("iptables", "--egress-lock", metavar="iptables|none",
                                    autocompletion=_complete(EGRESS_LOCKS),
                                    help="How the agent's container is kept from going around the sidecar: an "
                                         "init container's iptables rule on its uid (default; needs NET_ADMIN), "
                                         "or none."),
    output_file: str = typer.Option(None, "-o", "--output", metavar="FILE",
                                    help="Write the manifests here instead of stdout."),
) -> None:
    """Print the policy as kubernetes-sigs agent-sandbox manifests: a SandboxTemplate, a SandboxWarmPool
    and an example SandboxClaim (plus a CiliumNetworkPolicy with --fqdn-policy cilium). A network: proxy
    policy gets sandboxctl's proxy as a sidecar (its policy in a ConfigMap). What a pod cannot express
    (approvals, Landlock, masks, ...) is listed in the header comment."""
    from sandboxctl.cli.output import warn
    from sandboxctl.export.k8s import K8sOptions, export_k8s, render
    from sandboxctl.policy.discover import load_named

    options = K8sOptions(runtime_class=runtime_class, warm_pool=warm_pool, namespace=namespace,
                         workspace_claim=workspace_claim, secret_name=secret_name, fqdn_policy=fqdn_policy,
                         image=image, proxy=proxy, proxy_image=proxy_image, egress_lock=egress_lock)
    result = export_k8s(load_named(policy).policy, options)
    text = render(result)
    if output_file is None:
        sys.stdout.write(text)
    else:
        try:
            Path(output_file).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise SandboxError(f"{output_file}: cannot write: {exc.strerror}", "choose another -o FILE") from None
    for message in result.warnings:
        warn(f"warning: {message}")
    if output_file is not None:
        warn(f"wrote {output_file}")
