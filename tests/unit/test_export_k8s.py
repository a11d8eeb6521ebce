"""`sandboxctl export k8s`: every manifest validated against the agent-sandbox CRDs, and what it says.

The CRDs (tests/data/k8s-crds, with their provenance) carry OpenAPI v3 schemas; jsonschema checks the
generated documents against the version each document names. The API server prunes or, with
kubectl's default strict field validation, refuses fields a structural schema does not list, while
JSON Schema lets them pass; so `strict()` closes every object schema that lists its properties and
does not ask to keep unknown fields, and a misspelt field fails here as it would on a cluster.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from sandboxctl.errors import SandboxError
from sandboxctl.export import k8s
from sandboxctl.export.k8s import K8sOptions, export_k8s, render
from sandboxctl.policy.discover import load_named
from sandboxctl.policy.load import builtin_names
from sandboxctl.protect.names import ROOT_NAMES

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "data" / "k8s-crds"
AGENT_SANDBOX_GROUPS = ("agents.x-k8s.io", "extensions.agents.x-k8s.io")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

OPTION_SETS = {
    "defaults": K8sOptions(),
    "warm-pool": K8sOptions(warm_pool=3),
    "kata": K8sOptions(runtime_class="kata"),
    "cilium": K8sOptions(fqdn_policy="cilium"),
    "workspace-claim": K8sOptions(workspace_claim="team-work", namespace="agents"),
    "everything": K8sOptions(runtime_class="kata", warm_pool=2, namespace="agents", workspace_claim="ws.data",
                             secret_name="agent-keys", fqdn_policy="cilium", image="ghcr.io/example/agent:1.0",
                             proxy_image="ghcr.io/example/sandboxctl-proxy:1.0"),
    "no-sidecar": K8sOptions(proxy="none"),
    "no-sidecar-cilium": K8sOptions(proxy="none", fqdn_policy="cilium"),
    "no-egress-lock": K8sOptions(egress_lock="none"),
}

# A policy that uses every section the export maps: literal addresses and names, a wildcard, a deny,
# secrets both ways (one with a ttl), exec.allow, syscalls, every limit, a read-only workspace.
FULL_POLICY = """\
version: 1
name: Full_Export.Test
extends: default
workspace: ro
filesystem:
  tmpfs: [/var/cache/app, "{workspace}/build", ~/.npm]
  protect: ["{workspace}/Makefile"]
exec:
  allow: [/usr/bin]
network:
  mode: proxy
  allow: [203.0.113.7:443, "[2001:db8::1]:8443", 198.51.100.9, pypi.org:443, "*.github.com:443", evil.example]
  deny: [evil.example, gist.github.com]
env:
  pass: [LANG]
  set: {PIP_NO_INPUT: "1", MODE: "true"}
secrets:
  API_TOKEN: {from: "env:SBX_EXPORT_TEST_SECRET", as: env}
  DEPLOY_KEY: {from: "command:printf %s never-print-this-command", as: file, ttl: 30m}
syscalls:
  deny: [ptrace]
limits: {timeout: 90m, memory: 512M, pids: 256, file_size: 1G, open_files: 2048}
"""


# --- the validator -----------------------------------------------------------------------------------


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, for every version every CRD file serves."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema: Any) -> Any:
    """The schema with additionalProperties: false wherever the API server would not keep unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) if key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not")
              else value for key, value in schema.items()}
    if "properties" in schema:
        result["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
    return result


@functools.cache
def validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = crd_schemas()[(api_version, kind)]
    jsonschema.Draft4Validator.check_schema(schema)  # OpenAPI v3.0 schemas are draft 4 with extensions
    return jsonschema.Draft4Validator(strict(schema))


def metadata_problems(document: dict[str, Any]) -> list[str]:
    """What the CRD schemas leave to the API server: `metadata` is only `type: object` there."""
    meta = document.get("metadata", {})
    problems = []
    name = meta.get("name", "")
    if not (len(name) <= 63 and DNS_SUBDOMAIN.fullmatch(name)):
        problems.append(f"metadata.name {name!r}")
    if "namespace" in meta and not DNS_LABEL.fullmatch(meta["namespace"]):
        problems.append(f"metadata.namespace {meta['namespace']!r}")
    for where, labels in (("metadata", meta.get("labels", {})),
                          ("podTemplate", document.get("spec", {}).get("podTemplate", {})
                           .get("metadata", {}).get("labels", {}))):
        for key, value in labels.items():
            prefix, _, label = key.rpartition("/")
            if (prefix and not DNS_SUBDOMAIN.fullmatch(prefix)) or not LABEL_NAME.fullmatch(label) \
                    or not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.fullmatch(value):
                problems.append(f"{where} label {key}={value!r}")
    if not all(isinstance(v, str) for v in meta.get("annotations", {}).values()):
        problems.append("annotation values must be strings")
    return problems


def schema_errors(document: dict[str, Any]) -> list[str]:
    errors = validator(document["apiVersion"], document["kind"]).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def check_cilium(document: dict[str, Any], pod_labels: dict[str, str]) -> None:
    """No CRD here for Cilium: its shape, by hand."""
    assert document["apiVersion"] == "cilium.io/v2" and document["kind"] == "CiliumNetworkPolicy"
    assert not metadata_problems(document)
    spec = document["spec"]
    assert set(spec) == {"endpointSelector", "egress"}
    selector = spec["endpointSelector"]["matchLabels"]
    assert selector and selector.items() <= pod_labels.items(), "the policy must select the template's pods"
    dns, *rules = spec["egress"]
    assert dns.get("toEndpoints") == [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "kube-system",
                                                       "k8s:k8s-app": "kube-dns"}}]
    assert dns.get("toPorts") == [{"ports": [{"port": "53", "protocol": "ANY"}],
                                   "rules": {"dns": [{"matchPattern": "*"}]}}]
    assert rules
    for rule in rules:
        assert set(rule) <= {"toFQDNs", "toPorts"} and rule["toFQDNs"]
        for selector_ in rule["toFQDNs"]:
            (key, value), = selector_.items()
            assert key in ("matchName", "matchPattern") and (key == "matchPattern") == value.startswith("*.")
        for port_rule in rule.get("toPorts", []):
            for port in port_rule["ports"]:
                assert isinstance(port["port"], str) and port["port"].isdigit() and port["protocol"] == "TCP"


CONFIG_MAP_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def check_config_map(document: dict[str, Any], pod: dict[str, Any], tmp: Path) -> None:
    """No CRD here for a core ConfigMap: its shape by hand; the sidecar's policy in it must load, and the
    pod must mount it by this name."""
    assert document["apiVersion"] == "v1" and document["kind"] == "ConfigMap"
    assert set(document) == {"apiVersion", "kind", "metadata", "data"} and not metadata_problems(document)
    data = document["data"]
    assert data and all(CONFIG_MAP_KEY.fullmatch(k) and isinstance(v, str) for k, v in data.items())
    (policy_file := tmp / "sidecar-policy.yaml").write_text(data["policy.yaml"])
    loaded = load_named(str(policy_file)).policy
    assert loaded.network.mode == "proxy" and loaded.approval.mode == "deny"
    assert {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v} == {document["metadata"]["name"]}


def check_all(documents: list[dict[str, Any]], tmp: Path | None = None) -> None:
    """Every document: agent-sandbox kinds against their CRD schema, Cilium and ConfigMaps by shape,
    nothing else."""
    import tempfile

    template = next(d for d in documents if d["kind"] == "SandboxTemplate")
    pod_labels = template["spec"]["podTemplate"]["metadata"]["labels"]
    for document in documents:
        group = document["apiVersion"].rpartition("/")[0]
        if group in AGENT_SANDBOX_GROUPS:
            assert not schema_errors(document), (document["kind"], schema_errors(document))
            assert not metadata_problems(document), metadata_problems(document)
        elif document["kind"] == "ConfigMap":
            with tempfile.TemporaryDirectory() as directory:
                check_config_map(document, template["spec"]["podTemplate"]["spec"], tmp or Path(directory))
        else:
            check_cilium(document, pod_labels)


# --- loading ------------------------------------------------------------------------------------------


@functools.cache
def builtin(name: str):
    return load_named(name).policy


@pytest.fixture
def full_policy(tmp_path: Path):
    path = tmp_path / "full.yaml"
    path.write_text(FULL_POLICY)
    return load_named(str(path)).policy


def export(policy, **options: Any):
    return export_k8s(policy, K8sOptions(**options))


def kind(result, name: str) -> dict[str, Any]:
    return next(d for d in result.documents if d["kind"] == name)


def pod(result) -> dict[str, Any]:
    return kind(result, "SandboxTemplate")["spec"]["podTemplate"]["spec"]


def container(result) -> dict[str, Any]:
    (only,) = pod(result)["containers"]
    return only


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandboxctl", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)


# --- validation against the CRDs -----------------------------------------------------------------------


def test_the_crds_are_here_and_v1beta1_is_their_storage_version() -> None:
    storage = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        stored = [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
        storage[crd["spec"]["names"]["kind"]] = f"{crd['spec']['group']}/{stored[0]}"
    assert storage == {"Sandbox": "agents.x-k8s.io/v1beta1", "SandboxTemplate": k8s.API_VERSION,
                       "SandboxClaim": k8s.API_VERSION, "SandboxWarmPool": k8s.API_VERSION}
    assert (CRDS / "README.md").read_text().count("Apache-2.0") == 1


@pytest.mark.parametrize("options", OPTION_SETS.values(), ids=OPTION_SETS.keys())
@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_policy_exports_valid_manifests(name: str, options: K8sOptions) -> None:
    result = export_k8s(builtin(name), options)
    kinds = [d["kind"] for d in result.documents]
    sidecar = builtin(name).network.mode == "proxy" and options.proxy == "sidecar"
    assert [k for k in kinds if k != "CiliumNetworkPolicy"] == \
        ["ConfigMap"] * sidecar + ["SandboxTemplate", "SandboxWarmPool", "SandboxClaim"]
    assert all(d["apiVersion"] == k8s.API_VERSION for d in result.documents if d["kind"].startswith("Sandbox"))
    check_all(result.documents)
    # what is printed is what was validated, and it parses back the same
    parsed = list(yaml.safe_load_all(render(result)))
    assert parsed == result.documents
    check_all(parsed)


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "policies").glob("*.yaml"))
                         + sorted((ROOT / "tests" / "data" / "good_policies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_and_test_policies_export_valid_manifests(path: Path) -> None:
    for options in (K8sOptions(), OPTION_SETS["everything"]):
        check_all(export_k8s(load_named(str(path)).policy, options).documents)


def test_a_policy_using_every_section_exports_valid_manifests(full_policy) -> None:
    for options in OPTION_SETS.values():
        result = export_k8s(full_policy, options)
        check_all(result.documents)
        check_all(list(yaml.safe_load_all(render(result))))


def _break(documents: list[dict[str, Any]], kind_: str, path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(next(d for d in documents if d["kind"] == kind_))
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return document


@pytest.mark.parametrize(("kind_", "path", "value"), [
    ("SandboxTemplate", "spec.podTemplate.spec.activeDeadlineSeconds", "90m"),  # wrong type
    ("SandboxTemplate", "spec.podTemplate.spec.containers", KeyError),  # a required field missing
    ("SandboxTemplate", "spec.podTemplate.spec.containers.0.securityContext.runAsUser", "1000"),
    ("SandboxTemplate", "spec.podTemplate.spec.runtimeClass", "gvisor"),  # misspelt: pruned by the server
    ("SandboxTemplate", "spec.networkPolicyManagement", "Sometimes"),  # not in the enum
    ("SandboxTemplate", "spec.networkPolicy.egress", {"to": []}),  # an object for a list
    ("SandboxWarmPool", "spec.replicas", -1),  # below the minimum
    ("SandboxWarmPool", "spec.sandboxTemplateRef", KeyError),
    ("SandboxClaim", "spec.warmPoolRef", KeyError),
    ("SandboxClaim", "spec.lifecycle.shutdownPolicy", "Never"),
])
def test_the_validator_rejects_broken_manifests(kind_: str, path: str, value: Any) -> None:
    documents = export(builtin("default")).documents
    broken = _break(documents, kind_, path, value)
    assert schema_errors(broken)
    with pytest.raises(AssertionError):
        check_all([broken if d["kind"] == kind_ else d for d in documents])


def test_metadata_checks_catch_bad_names_and_labels() -> None:
    document = export(builtin("default")).documents[0]
    assert metadata_problems(document) == []
    for path, value in (("metadata.name", "Claude_Code"), ("metadata.namespace", "a.b"),
                        ("metadata.labels.app.kubernetes.io/managed-by", "-x-")):
        broken = copy.deepcopy(document)
        if path.startswith("metadata.labels."):
            broken["metadata"]["labels"][path.removeprefix("metadata.labels.")] = value
        else:
            broken["metadata"][path.split(".")[1]] = value
        assert metadata_problems(broken), path


def test_a_cilium_policy_without_the_dns_rule_is_caught() -> None:
    result = export(builtin("claude-code"), fqdn_policy="cilium")
    broken = copy.deepcopy(kind(result, "CiliumNetworkPolicy"))
    del broken["spec"]["egress"][0]
    with pytest.raises(AssertionError):
        check_all([*(d for d in result.documents if d["kind"] != "CiliumNetworkPolicy"), broken])


# --- what the manifests say ----------------------------------------------------------------------------


def test_hardened_security_context() -> None:
    result = export(builtin("default"))
    spec = pod(result)
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    context = container(result)["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 1000 and context["runAsGroup"] == 1000
    assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(key in spec for key in ("hostNetwork", "hostPID", "hostIPC", "serviceAccountName"))


def test_runtime_class_warm_pool_and_namespace() -> None:
    result = export(builtin("default"), runtime_class="kata", warm_pool=4, namespace="agents")
    assert pod(result)["runtimeClassName"] == "kata"
    pool = kind(result, "SandboxWarmPool")
    assert pool["spec"] == {"replicas": 4, "sandboxTemplateRef": {"name": "default"}}
    assert kind(result, "SandboxClaim")["spec"]["warmPoolRef"] == {"name": "default"}
    assert {d["metadata"]["namespace"] for d in result.documents} == {"agents"}
    assert kind(export(builtin("default")), "SandboxWarmPool")["spec"]["replicas"] == 0


def test_active_deadline_is_the_timeout_and_memory_the_limit(full_policy) -> None:
    ci = builtin("ci")
    assert pod(export(ci))["activeDeadlineSeconds"] == ci.limits.timeout == 3600
    assert "activeDeadlineSeconds" not in pod(export(builtin("base")))  # no timeout: no deadline
    assert pod(export(full_policy))["activeDeadlineSeconds"] == 90 * 60
    assert container(export(full_policy))["resources"] == {"limits": {"memory": "512Mi"}}
    assert "resources" not in container(export(builtin("default")))


def test_workspace_volume_claim_template_existing_claim_and_none(full_policy) -> None:
    result = export(builtin("default"))
    template = kind(result, "SandboxTemplate")["spec"]
    (claim,) = template["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "workspace"
    mounts = {m["mountPath"]: m for m in container(result)["volumeMounts"]}
    assert mounts["/workspace"] == {"name": "workspace", "mountPath": "/workspace"}
    assert not any(v["name"] == "workspace" for v in pod(result)["volumes"])  # the controller adds it
    assert container(result)["workingDir"] == "/workspace"

    ro = export(full_policy, workspace_claim="team-work")
    assert "volumeClaimTemplates" not in kind(ro, "SandboxTemplate")["spec"]
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "team-work", "readOnly": True}} \
        in pod(ro)["volumes"]
    assert {"name": "workspace", "mountPath": "/workspace", "readOnly": True} in container(ro)["volumeMounts"]
    assert any("empty, read-only" in w for w in export(full_policy).warnings)

    none = export(builtin("base"), workspace_claim="ignored")
    assert "volumeClaimTemplates" not in kind(none, "SandboxTemplate")["spec"]
    assert not any(m["mountPath"] == "/workspace" for m in container(none)["volumeMounts"])
    assert container(none)["workingDir"] == "/home/sandbox"
    assert any("--workspace-claim ignored" in w for w in none.warnings)


def test_tmpfs_entries_become_memory_emptydirs(full_policy) -> None:
    result = export(full_policy)
    volumes = {v["name"]: v for v in pod(result)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(result)["volumeMounts"]}
    for path in ("/tmp", "/var/tmp", "/home/sandbox", "/var/cache/app", "/workspace/build"):
        assert volumes[mounts[path]]["emptyDir"] == {"medium": "Memory"}, path
    assert "/home/sandbox/.npm" not in mounts and "/home/sandbox/.cache" not in mounts  # HOME is fresh already
    assert len(volumes) == len({v["name"] for v in pod(result)["volumes"]})
    # /tmp is writable even when a policy forgets it: the root file system is read-only
    bare = load_named(str(ROOT / "tests" / "data" / "good_policies" / "minimal.yaml")).policy
    assert "/tmp" in {m["mountPath"] for m in container(export(bare))["volumeMounts"]}


def test_env_set_values_and_secrets_by_reference_only(full_policy) -> None:
    result = export(full_policy, secret_name="agent-keys")
    env = {e["name"]: e for e in container(result)["env"]}
    assert env["PIP_NO_INPUT"] == {"name": "PIP_NO_INPUT", "value": "1"}
    assert env["MODE"]["value"] == "true"
    assert env["HOME"]["value"] == "/home/sandbox"
    assert env["API_TOKEN"] == {"name": "API_TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": "agent-keys", "key": "API_TOKEN"}}}
    assert env["DEPLOY_KEY_FILE"]["value"] == "/run/secrets/DEPLOY_KEY"
    assert "DEPLOY_KEY" not in env and "LANG" not in env  # a file secret and a passed name: no variable
    assert [e["name"] for e in container(result)["env"]] == sorted(env)
    (secrets,) = [v for v in pod(result)["volumes"] if "secret" in v]
    assert secrets["secret"] == {"secretName": "agent-keys", "defaultMode": 0o400,
                                 "items": [{"key": "DEPLOY_KEY", "path": "DEPLOY_KEY", "mode": 0o400}]}
    assert {"name": secrets["name"], "mountPath": "/run/secrets", "readOnly": True} in container(result)["volumeMounts"]
    text = render(result)
    assert "never-print-this-command" not in text and "SBX_EXPORT_TEST_SECRET" not in text
    assert "mode: 256" in text  # 0400, as YAML writes an integer


def test_no_secret_value_anywhere_in_the_cli_output(tmp_path: Path) -> None:
    value = "s3cr3t-VALUE-that-must-not-leak-7f3a"
    policy = tmp_path / "secret.yaml"
    policy.write_text(FULL_POLICY)
    result = cli("export", "k8s", "-p", str(policy), "--fqdn-policy", "cilium",
                 env={"SBX_EXPORT_TEST_SECRET": value}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert value not in result.stdout and value not in result.stderr
    assert "never-print-this-command" not in result.stdout + result.stderr
    assert "secretKeyRef" in result.stdout


def test_egress_rules_for_literal_addresses_and_what_deny_removes(full_policy) -> None:
    result = export(full_policy, proxy="none")
    network = kind(result, "SandboxTemplate")["spec"]["networkPolicy"]
    assert network["egress"] == [
        {"to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}], "ports": [{"protocol": "TCP", "port": 443}]},
        {"to": [{"ipBlock": {"cidr": "2001:db8::1/128"}}], "ports": [{"protocol": "TCP", "port": 8443}]},
        {"to": [{"ipBlock": {"cidr": "198.51.100.9/32"}}], "ports": [{"protocol": "TCP"}]},
    ]
    assert network["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}]
    header = "\n".join(result.header)
    assert "evil.example" in header and "left out" in header  # fully denied: dropped, and said so
    assert any("gist.github.com within *.github.com:443" in w for w in result.warnings)  # cannot subtract


def test_network_none_and_host() -> None:
    none = kind(export(builtin("offline")), "SandboxTemplate")["spec"]["networkPolicy"]
    assert none["egress"] == []
    # the default policy asks for everything locally; nothing asks in a cluster: no egress
    assert kind(export(builtin("default")), "SandboxTemplate")["spec"]["networkPolicy"]["egress"] == []
    host_policy = builtin("default")._replace(network=builtin("default").network._replace(mode="host"))
    host = export(host_policy)
    assert kind(host, "SandboxTemplate")["spec"]["networkPolicy"]["egress"] == [{}]
    assert any("allow-all" in w for w in host.warnings)
    assert "ALL destinations" in "\n".join(host.header)


def test_host_names_go_to_cilium_only_when_asked(full_policy) -> None:
    plain = export(full_policy, proxy="none")
    assert [d["kind"] for d in plain.documents] == ["SandboxTemplate", "SandboxWarmPool", "SandboxClaim"]
    assert any("cannot match host names" in w and "pypi.org:443" in w for w in plain.warnings)
    assert "pypi.org" not in str(kind(plain, "SandboxTemplate"))

    result = export(full_policy, fqdn_policy="cilium", namespace="agents", proxy="none")
    policy = kind(result, "CiliumNetworkPolicy")
    assert policy["metadata"]["namespace"] == "agents"
    template_labels = kind(result, "SandboxTemplate")["spec"]["podTemplate"]["metadata"]["labels"]
    check_cilium(policy, template_labels)
    assert policy["spec"]["egress"][1:] == [
        {"toFQDNs": [{"matchName": "pypi.org"}, {"matchPattern": "*.github.com"}],
         "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
    ]  # evil.example is denied outright, so it is not allowed by name either
    assert any("cannot match host names" in w for w in result.warnings)
    assert "one label" in "\n".join(result.header)
    # nothing by name (offline, or addresses only): no Cilium policy
    assert "CiliumNetworkPolicy" not in [d["kind"] for d in export(builtin("offline"), fqdn_policy="cilium").documents]


def test_header_lists_what_cannot_be_expressed(full_policy) -> None:
    header = "\n".join(export(builtin("default")).header)
    for words in ("approvals (approval: ask", "the action log", "Landlock", "seccomp", "filesystem.deny",
                  "protected paths (.git, .gitmodules", "env.pass: LANG, LANGUAGE, LC_*", "limits.pids 1024",
                  "limits.open_files 4096", "limits.file_size 16G"):
        assert words in header, words
    full = "\n".join(export(full_policy).header)
    for words in ("exec.allow (/usr/bin)", "syscalls.deny ptrace", "secrets ttl: DEPLOY_KEY (30m)",
                  "network.deny (evil.example, gist.github.com)",
                  "limits.pids 256", "activeDeadlineSeconds 5400"):
        assert words in full, words
    assert "protected paths" not in full  # workspace: ro, nothing to protect in it
    assert "{workspace}/Makefile" in "\n".join(export(full_policy._replace(workspace="rw")).header)
    assert "limits.timeout in a warm pool" in "\n".join(export(full_policy, warm_pool=1).header)
    assert all(len(line) <= 120 for line in export(full_policy).header)


def test_paths_and_protected_names_are_the_local_ones() -> None:
    from sandboxctl.export import k8s_pod
    from sandboxctl.plan import build

    assert k8s_pod.SECRETS_DIR == build.SECRETS_DIR
    header = "\n".join(export(builtin("default")).header)
    assert all(name in header for name in ROOT_NAMES)


def test_object_names_and_option_checks() -> None:
    assert k8s.object_name("Full_Export.Test") == "full-export-test"
    assert k8s.object_name("___") == "sandbox"
    assert len(k8s.object_name("a" * 64)) == k8s.MAX_NAME
    for options in (K8sOptions(runtime_class="runc"), K8sOptions(fqdn_policy="calico"), K8sOptions(warm_pool=-1),
                    K8sOptions(namespace="Agents"), K8sOptions(workspace_claim="a_b"), K8sOptions(secret_name=""),
                    K8sOptions(image="has space:1"), K8sOptions(proxy_image=""), K8sOptions(proxy="envoy"),
                    K8sOptions(egress_lock="nft")):
        with pytest.raises(SandboxError):
            k8s.check_options(options)


def test_output_is_deterministic(tmp_path: Path, full_policy) -> None:
    assert render(export(full_policy, fqdn_policy="cilium")) == render(export(full_policy, fqdn_policy="cilium"))
    first = cli("export", "k8s", "-p", "claude-code", "--fqdn-policy", "cilium")
    second = cli("export", "k8s", "-p", "claude-code", "--fqdn-policy", "cilium",
                 env={"HOME": str(tmp_path), "LANG": "C", "PYTHONHASHSEED": "123"}, cwd=tmp_path)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout


# --- the command line ----------------------------------------------------------------------------------


def test_cli_prints_manifests_and_warns_about_host_names(tmp_path: Path) -> None:
    result = cli("export", "k8s", "-p", "claude-code", "--proxy", "none")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# sandboxctl export k8s: policy claude-code")
    check_all(list(yaml.safe_load_all(result.stdout)))
    assert "sandboxctl: warning: Kubernetes NetworkPolicy cannot match host names" in result.stderr
    assert "api.anthropic.com:443" in result.stderr
    result = cli("export", "k8s", "-p", "claude-code")  # the sidecar allows them by name: no such warning
    assert result.returncode == 0 and "cannot match host names" not in result.stderr
    assert "sandboxctl: warning: the sidecar's image localhost/sandboxctl-proxy:" in result.stderr
    out = tmp_path / "agent.yaml"
    written = cli("export", "k8s", "-p", "claude-code", "-o", str(out))
    assert written.returncode == 0 and written.stdout == ""
    assert out.read_text(encoding="utf-8") == result.stdout


def test_cli_options_reach_the_manifests() -> None:
    result = cli("export", "k8s", "-p", "default", "--runtime-class", "kata", "--warm-pool", "2",
                 "--namespace", "agents", "--workspace-claim", "ws", "--image", "ghcr.io/x/agent:1")
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    check_all(documents)
    by_kind = {d["kind"]: d for d in documents}
    spec = by_kind["SandboxTemplate"]["spec"]["podTemplate"]["spec"]
    assert spec["runtimeClassName"] == "kata" and spec["containers"][0]["image"] == "ghcr.io/x/agent:1"
    assert "command" not in spec["containers"][0]  # the image's own entrypoint
    assert by_kind["SandboxWarmPool"]["spec"]["replicas"] == 2
    assert [c["image"] for c in spec["initContainers"]] == ["localhost/sandboxctl-proxy:0.1.0"] * 2
    result = cli("export", "k8s", "-p", "default", "--proxy-image", "registry.example/proxy:2", "--egress-lock",
                 "none")
    spec = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}["SandboxTemplate"]["spec"]["podTemplate"]["spec"]
    assert [(c["name"], c["image"]) for c in spec["initContainers"]] == \
        [("sandboxctl-proxy", "registry.example/proxy:2")]
    assert "--egress-lock none: the agent's container can reach" in result.stderr
    result = cli("export", "k8s", "-p", "default", "--proxy", "none")
    spec = {d["kind"]: d for d in yaml.safe_load_all(result.stdout)}["SandboxTemplate"]["spec"]["podTemplate"]["spec"]
    assert "initContainers" not in spec and "ConfigMap" not in result.stdout


@pytest.mark.parametrize("args", [
    ["-p", "no-such-policy"],
    ["-p", "default", "--runtime-class", "runc"],
    ["-p", "default", "--warm-pool", "-1"],
    ["-p", "default", "--namespace", "Not_A_Name"],
    ["-p", "default", "--fqdn-policy", "calico"],
    ["-p", "default", "-o", "/nonexistent-dir/out.yaml"],
    ["-p", "default", "--proxy", "envoy"],
    ["-p", "default", "--egress-lock", "nftables"],
    ["-p", "default", "--proxy-image", "has space"],
    [],
])
def test_cli_user_errors_are_one_line_and_125(args: list[str]) -> None:
    result = cli("export", "k8s", *args)
    assert result.returncode == 125, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("sandboxctl: error: "), result.stderr
    assert all(line.startswith("  hint: ") for line in lines[1:]) and len(lines) <= 2, result.stderr
    assert "Traceback" not in result.stderr


def test_export_k8s_policy_option_completes_policy_names() -> None:
    from typer.main import get_command

    from sandboxctl.cli.main import build_app

    command = get_command(build_app()).commands["export"].commands["k8s"]
    params = {p.name: p for p in command.params}
    assert params["policy"]._custom_shell_complete is not None
    assert params["runtime_class"]._custom_shell_complete is not None


def test_a_phantom_secret_and_request_rules_are_not_exported_as_if_enforced(tmp_path: Path) -> None:
    """The value of an as: proxy secret must never reach the pod; request rules need the proxy."""
    path = tmp_path / "phantom.yaml"
    path.write_text("version: 1\nextends: default\nnetwork:\n  mode: proxy\n  allow: [api.github.com]\n"
                    "  inspect:\n    api.github.com: {allow: ['GET /repos/**']}\n"
                    "secrets:\n  GH:\n    from: env:GH\n    as: proxy\n    hosts: [api.github.com]\n")
    result = export(load_named(str(path)).policy, secret_name="keys", proxy="none")
    env = {e["name"] for e in container(result)["env"]}
    assert "GH" not in env and "GH_FILE" not in env
    assert not [v for v in pod(result)["volumes"] if "secret" in v]
    text = render(result)
    assert "secrets.GH (as: proxy)" in text and "not exported" in text
    assert "network.inspect (api.github.com)" in text and "request rules" in text
