"""`sandboxctl export k8s`: a policy as kubernetes-sigs agent-sandbox manifests.

Pure: Policy + K8sOptions -> K8sExport (manifests, a header comment, warnings). Nothing here reads
the environment, the host or a secret's source, so the output is the same wherever it is produced
and can never carry a secret's value. A cluster running these manifests enforces less than
`sandboxctl run` does (no approvals, no action log, no Landlock, no masks), so everything that is
lost is listed in the header, derived from the policy at hand, instead of being dropped silently.

API version: the CRDs (tests/data/k8s-crds) serve v1beta1 (storage) and v1alpha1 (deprecated).
In v1beta1 a SandboxClaim names a SandboxWarmPool (`spec.warmPoolRef`, required) and the claim
controller finds the template through that pool, so a pool is always emitted: `--warm-pool N`
sets its replicas, and 0 (the default) means every claim starts its sandbox cold.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sandboxctl.export import k8s_sidecar
from sandboxctl.export.k8s_network import cilium_policy, export_network
from sandboxctl.export.k8s_options import RUNTIME_CLASSES, K8sOptions, check_options, proxy_image
from sandboxctl.export.k8s_pod import SANDBOX_UID, SECURITY, Notes, lost_locally_enforced, pod_spec
from sandboxctl.record import Record

if TYPE_CHECKING:
    from sandboxctl.policy.model import Policy

API_VERSION = "extensions.agents.x-k8s.io/v1beta1"
MANAGED_BY = ("app.kubernetes.io/managed-by", "sandboxctl")
POLICY_LABEL = "sandboxctl.dev/policy"
TEMPLATE_LABEL = "sandboxctl.dev/template"  # on the pods: what the CiliumNetworkPolicy selects
SHA_ANNOTATION = "sandboxctl.dev/policy-sha256"
MAX_NAME = 50  # room for the controller's suffixes (-network-policy, pod name suffixes)


class Manifest(Record):
    body: dict[str, Any]
    comment: tuple[str, ...] = ()  # comment lines printed above the document


class K8sExport(Record):
    header: tuple[str, ...]
    manifests: tuple[Manifest, ...]
    warnings: tuple[str, ...]

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [m.body for m in self.manifests]


def object_name(text: str) -> str:
    """A DNS-1123 name (and label value) from a policy name, which may hold capitals, dots and '_'."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:MAX_NAME].strip("-")
    return name or "sandbox"


def _header(policy: Policy, options: K8sOptions, notes: Notes, kinds: list[str]) -> tuple[str, ...]:
    import textwrap

    def wrap(text: str, first: str = "", rest: str = "") -> list[str]:
        return textwrap.wrap(text, width=100, initial_indent=first, subsequent_indent=rest,
                             break_long_words=False, break_on_hyphens=False) or [""]

    chain = " <- ".join(policy.chain) if policy.chain else policy.source or policy.name
    runtime_class = RUNTIME_CLASSES[options.runtime_class]
    needs = ["the agent-sandbox controller and its CRDs", f"the RuntimeClass {runtime_class}"]
    if "ConfigMap" in kinds:
        needs.append(f"the proxy image {proxy_image(options)} (see Relies on)")
    if "CiliumNetworkPolicy" in kinds:
        needs.append("Cilium as the CNI")
    lines = wrap(f"sandboxctl export k8s: policy {policy.name} ({chain})", rest="  ")
    if policy.sha256:
        lines.append(f"policy sha256 {policy.sha256}")
    lines += wrap(f"kubernetes-sigs/agent-sandbox manifests: {', '.join(kinds)}.")
    lines += wrap(f"Apply with kubectl apply -f FILE; needs {', '.join(needs[:-1])} and {needs[-1]}.")
    lines += ["", "Mapped:"]
    for item in (f"runtimeClassName {runtime_class}; {SECURITY}", *notes.mapped):
        lines += wrap(item, "  - ", "    ")
    if notes.relies:
        lines += ["", "Relies on (without these, the pod does not start or reaches nothing by name):"]
        for item in notes.relies:
            lines += wrap(item, "  - ", "    ")
    lines += ["", "NOT expressed (`sandboxctl run` enforces these; this cluster will not):"]
    for item in notes.lost:
        lines += wrap(item, "  - ", "    ")
    return tuple(lines)


def export_k8s(policy: Policy, options: K8sOptions = K8sOptions()) -> K8sExport:
    """The manifests for one policy, with the header that says what they do not cover."""
    check_options(options)
    notes = Notes()
    name = object_name(policy.name)
    labels = {MANAGED_BY[0]: MANAGED_BY[1], POLICY_LABEL: name}

    def metadata(meta_name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": meta_name}
        if options.namespace:
            meta["namespace"] = options.namespace
        meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = annotations
        return meta

    sidecar = None
    config_map = f"{name}-proxy-policy"
    if k8s_sidecar.wanted(policy, options):
        sidecar = k8s_sidecar.sidecar(policy, options, config_map, SANDBOX_UID, notes)
    lost_locally_enforced(policy, notes, proxy_logs=sidecar is not None)
    pod, claims = pod_spec(policy, options, RUNTIME_CLASSES[options.runtime_class], notes, sidecar)
    network = export_network(policy.network, options.fqdn_policy, options.egress_lock if sidecar else None)
    notes.mapped += network.mapped
    notes.lost += network.lost
    notes.relies += network.relies
    notes.warnings += network.warnings

    spec: dict[str, Any] = {
        "podTemplate": {"metadata": {"labels": {**labels, TEMPLATE_LABEL: name}}, "spec": pod},
    }
    if claims:
        spec["volumeClaimTemplates"] = claims
    spec["networkPolicyManagement"] = "Managed"
    spec["networkPolicy"] = network.network_policy
    spec["envVarsInjectionPolicy"] = "Disallowed"  # a claim may not change the environment
    spec["volumeClaimTemplatesPolicy"] = "Disallowed"  # nor the volumes
    template = {"apiVersion": API_VERSION, "kind": "SandboxTemplate",
                "metadata": metadata(name, {SHA_ANNOTATION: policy.sha256} if policy.sha256 else None),
                "spec": spec}
    pool = {"apiVersion": API_VERSION, "kind": "SandboxWarmPool", "metadata": metadata(name),
            "spec": {"replicas": options.warm_pool, "sandboxTemplateRef": {"name": name}}}
    claim = {"apiVersion": API_VERSION, "kind": "SandboxClaim", "metadata": metadata(f"{name}-example"),
             "spec": {"warmPoolRef": {"name": name},
                      "lifecycle": {"shutdownPolicy": "Delete", "ttlSecondsAfterFinished": 0}}}
    if options.warm_pool:
        pool_comment = (f"{options.warm_pool} sandbox(es) started ahead and waiting for claims.",)
    else:
        pool_comment = ("replicas: 0: no sandbox waits; each claim starts its own (pass --warm-pool N to keep N",
                        "ready). v1beta1 claims always name a pool, so the pool is here even without one.")
    documents = []
    if sidecar is not None:
        documents.append(Manifest(
            {"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": metadata(config_map, {SHA_ANNOTATION: policy.sha256} if policy.sha256 else None),
             "data": {k8s_sidecar.POLICY_FILE: sidecar.policy_text}},
            ("The sandboxctl-proxy sidecar's policy: the network section and the proxy secrets (read from the",
             "Secret's files); no value.")))
    documents += [
        Manifest(template, ("The policy as a template: pod, volumes and network policy.",)),
        Manifest(pool, pool_comment),
        Manifest(claim, ("An example claim: one sandbox from the pool, deleted as soon as it finishes",
                         "(each run starts clean and leaves nothing behind). kubectl create -f a copy per run.")),
    ]
    if network.fqdn_rules:
        selector = {TEMPLATE_LABEL: name}
        documents.append(Manifest(cilium_policy(metadata(f"{name}-fqdn"), selector, network.fqdn_rules),
                                  ("Egress by host name, which a Kubernetes NetworkPolicy cannot express.",
                                   "Cilium adds these allows to the template's NetworkPolicy.")))
    kinds = [m.body["kind"] for m in documents]
    header = _header(policy, options, notes, kinds)
    return K8sExport(header, tuple(documents), tuple(notes.warnings))


def manifests(policy: Policy, options: K8sOptions = K8sOptions()) -> list[dict[str, Any]]:
    """Just the documents: policy -> list of manifests."""
    return export_k8s(policy, options).documents


def render(export: K8sExport) -> str:
    """Multi-document YAML: the header, then each document after `---` with its comment. Key order is
    the order the dicts were built in (apiVersion, kind, metadata, spec), so output is stable."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors for dicts used twice
            return True

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:  # a script or a file: as a block, readable
        style = "|" if "\n" in data.rstrip("\n") else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)

    out = [f"# {line}".rstrip() + "\n" for line in export.header]
    for manifest in export.manifests:
        out.append("---\n")
        out += [f"# {line}\n" for line in manifest.comment]
        out.append(yaml.dump(manifest.body, Dumper=Dumper, sort_keys=False, default_flow_style=False,
                             width=4096, allow_unicode=True))
    return "".join(out)
