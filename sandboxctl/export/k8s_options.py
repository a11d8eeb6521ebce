"""The options of `sandboxctl export k8s`, and their checks.

Apart from k8s.py so that the CLI can name its defaults and choices without importing the exporter
(every `sandboxctl` command builds the whole typer app, `--help` included).
"""

from __future__ import annotations

import re

from sandboxctl.errors import SandboxError
from sandboxctl.record import Record

RUNTIME_CLASSES = {"gvisor": "gvisor", "kata": "kata"}  # --runtime-class -> RuntimeClass name
DEFAULT_RUNTIME_CLASS = "gvisor"  # the point of moving to a cluster is not to share the node's kernel
FQDN_POLICIES = ("cilium",)
DEFAULT_SECRET_NAME = "sandboxctl-secrets"
PROXY_MODES = ("sidecar", "none")  # --proxy: network: proxy policies get sandboxctl's proxy beside the agent, or not
EGRESS_LOCKS = ("iptables", "none")  # --egress-lock: how the agent container is kept from going around it
# No registry that someone else could publish under: the image is built from examples/proxy.Containerfile and
# loaded or pushed by whoever deploys (a pull of this name can only reach a registry on the node itself).
DEFAULT_PROXY_IMAGE = "localhost/sandboxctl-proxy:{version}"

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(_LABEL)
DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class K8sOptions(Record):
    runtime_class: str = DEFAULT_RUNTIME_CLASS
    warm_pool: int = 0  # replicas of the SandboxWarmPool; 0: every claim starts its sandbox cold
    namespace: str | None = None
    workspace_claim: str | None = None  # an existing PersistentVolumeClaim instead of a volume per sandbox
    secret_name: str = DEFAULT_SECRET_NAME
    fqdn_policy: str | None = None
    image: str | None = None  # None: the default image, idling
    proxy: str = "sidecar"  # network: proxy policies: sandboxctl's proxy as a sidecar (export/k8s_sidecar.py)
    proxy_image: str | None = None  # None: DEFAULT_PROXY_IMAGE
    egress_lock: str = "iptables"


def proxy_image(options: K8sOptions) -> str:
    from sandboxctl import __version__

    return options.proxy_image or DEFAULT_PROXY_IMAGE.format(version=__version__)


def check_options(options: K8sOptions) -> None:
    """Refuse what the API server would refuse later, naming the option (exit 125 at the CLI)."""
    if options.runtime_class not in RUNTIME_CLASSES:
        raise SandboxError(f"--runtime-class {options.runtime_class!r}: unknown runtime class",
                           f"choose one of: {', '.join(RUNTIME_CLASSES)}")
    if options.fqdn_policy is not None and options.fqdn_policy not in FQDN_POLICIES:
        raise SandboxError(f"--fqdn-policy {options.fqdn_policy!r}: unknown",
                           f"choose one of: {', '.join(FQDN_POLICIES)}")
    if options.warm_pool < 0:
        raise SandboxError(f"--warm-pool {options.warm_pool}: must be 0 or more")
    checks = (("--namespace", options.namespace, DNS_LABEL, 63),
              ("--workspace-claim", options.workspace_claim, DNS_SUBDOMAIN, 253),
              ("--secret-name", options.secret_name, DNS_SUBDOMAIN, 253))
    for option, value, pattern, limit in checks:
        if value is not None and (len(value) > limit or not pattern.fullmatch(value)):
            raise SandboxError(f"{option} {value!r}: not a valid Kubernetes name",
                               "lower-case letters, digits and '-' (and '.' between parts), e.g. my-agent")
    for option, image in (("--image", options.image), ("--proxy-image", options.proxy_image)):
        if image is not None and (not image or any(c.isspace() for c in image)):
            raise SandboxError(f"{option} {image!r}: not an image reference", "e.g. ghcr.io/org/agent:1.2")
    for option, value, choices in (("--proxy", options.proxy, PROXY_MODES),
                                   ("--egress-lock", options.egress_lock, EGRESS_LOCKS)):
        if value not in choices:
            raise SandboxError(f"{option} {value!r}: unknown", f"choose one of: {', '.join(choices)}")
