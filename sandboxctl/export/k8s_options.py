"""The options of `sandboxctl export k8s`, and their checks.

Apart from k8s.py so that the CLI can name its defaults and choices without importing the exporter
(every `sandboxctl` command builds the whole typer app, `--help` included).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sandboxctl.errors import SandboxError

RUNTIME_CLASSES = {"gvisor": "gvisor", "kata": "kata"}  # --runtime-class -> RuntimeClass name
DEFAULT_RUNTIME_CLASS = "gvisor"  # the point of moving to a cluster is not to share the node's kernel
FQDN_POLICIES = ("cilium",)
DEFAULT_SECRET_NAME = "sandboxctl-secrets"

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
DNS_LABEL = re.compile(_LABEL)
DNS_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class K8sOptions(NamedTuple):
    runtime_class: str = DEFAULT_RUNTIME_CLASS
    warm_pool: int = 0  # replicas of the SandboxWarmPool; 0: every claim starts its sandbox cold
    namespace: str | None = None
    workspace_claim: str | None = None  # an existing PersistentVolumeClaim instead of a volume per sandbox
    secret_name: str = DEFAULT_SECRET_NAME
    fqdn_policy: str | None = None
    image: str | None = None  # None: the default image, idling


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
    if options.image is not None and (not options.image or any(c.isspace() for c in options.image)):
        raise SandboxError(f"--image {options.image!r}: not an image reference", "e.g. ghcr.io/org/agent:1.2")
