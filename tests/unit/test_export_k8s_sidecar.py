"""`sandboxctl export k8s` with sandboxctl's proxy as a sidecar (export/k8s_sidecar.py).

The pod cannot run here, so the test runs what the pod would: the sidecar's own command line, environment
and ConfigMap policy as exported (the pod's paths moved under tmp_path, $(VAR) expanded as the kubelet
does), and a client with the agent container's exported environment. What reached an upstream is judged
by the upstream's own record. The pod-level wiring (who mounts what, which uid the egress lock drops, what
the NetworkPolicy lets out) is checked on the manifests; tests/integration/test_k8s_egress_lock.py runs
the lock's script in a real network namespace.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import re
import shlex
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandboxctl.export import k8s_sidecar
from sandboxctl.export.k8s import K8sOptions, export_k8s, render
from sandboxctl.log.verify import verify
from sandboxctl.network.phantoms import derived_placeholder
from sandboxctl.policy.discover import load_named
from tests.tlsfixtures import RecordingServer, UpstreamCA
from tests.unit.test_export_k8s import check_all

REAL = "real-sidecar-token-9f8e7d6c5b4a"
POD_UID = "0f1e2d3c-4b5a-6978-8a9b-abcdef012345"
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> UpstreamCA:
    return UpstreamCA(tmp_path_factory.mktemp("sidecar-ca"))


@pytest.fixture
def upstreams(test_ca: UpstreamCA) -> Iterator[tuple[RecordingServer, RecordingServer]]:
    bound, other = RecordingServer(test_ca.server_context()), RecordingServer(test_ca.server_context())
    yield bound, other
    bound.close()
    other.close()


def write_policy(path: Path, test_ca: UpstreamCA, bound: RecordingServer, other: RecordingServer) -> Path:
    path.write_text(f"""version: 1
name: sidecar-test
extends: default
network:
  mode: proxy
  allow: ["localhost:{bound.port}", "localhost:{other.port}", "203.0.113.9:443", "api.example.com"]
  deny: ["denied.localhost"]
  allow_private: true
  upstream_ca: ["{test_ca.ca_file}"]
  inspect:
    localhost:{bound.port}:
      allow: ["GET /api/**"]
    localhost:{other.port}:
secrets:
  TOKEN:
    from: env:REAL_TOKEN
    as: proxy
    hosts: ["localhost:{bound.port}"]
  FILE_ONE:
    from: env:ALSO_NOT_READ
    as: file
""")
    return path


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind)


def pod_of(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(documents, "SandboxTemplate")["spec"]["podTemplate"]["spec"]


def named(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(c for c in containers if c["name"] == name)


def expand_env(entries: list[dict[str, Any]], field_values: dict[str, str]) -> dict[str, str]:
    """A container's env as the kubelet makes it: the downward API's fields, then $(NAME) replaced by the
    value of a variable defined EARLIER in the list (a later or unknown one stays literal, which the test
    treats as the bug it would be)."""
    env: dict[str, str] = {}
    for entry in entries:
        if "valueFrom" in entry:
            env[entry["name"]] = field_values[entry["valueFrom"]["fieldRef"]["fieldPath"]]
            continue
        value = entry["value"]
        for reference in REFERENCE.findall(value):
            assert reference in env, f"{entry['name']} refers to $({reference}) before it is defined"
        env[entry["name"]] = REFERENCE.sub(lambda m: env[m.group(1)], value)
    return env


class PodPaths:
    """The pod's fixed paths, moved under tmp_path for a run on this machine."""

    def __init__(self, tmp: Path) -> None:
        self.moves = {k8s_sidecar.POLICY_DIR: tmp / "policy", k8s_sidecar.CLIENT_DIR: tmp / "client",
                      k8s_sidecar.PHANTOM_DIR: tmp / "phantoms", k8s_sidecar.STATE_DIR: tmp / "state"}
        for directory in self.moves.values():
            directory.mkdir(mode=0o700)

    def local(self, text: str) -> str:
        for pod_path, here in sorted(self.moves.items(), key=lambda item: -len(item[0])):
            text = text.replace(pod_path, str(here))
        return text


def export(path: Path, **options: Any) -> list[dict[str, Any]]:
    result = export_k8s(load_named(str(path)).policy, K8sOptions(**options))
    check_all(result.documents)  # the CRDs accept the template with the sidecar in it
    return list(yaml.safe_load_all(render(result)))  # what is printed, parsed back


def test_the_exported_sidecar_enforces_the_policy_for_the_agent(tmp_path, home, test_ca, upstreams) -> None:
    bound, other = upstreams
    documents = export(write_policy(tmp_path / "policy.yaml", test_ca, bound, other), secret_name="keys")
    pod = pod_of(documents)
    sidecar = named(pod["initContainers"], k8s_sidecar.PROXY_CONTAINER)
    (agent,) = pod["containers"]
    paths = PodPaths(tmp_path)

    # the sidecar's files, as the kubelet would project them: the ConfigMap's policy, the Secret's key
    config_map = by_kind(documents, "ConfigMap")
    (policy_volume,) = [v for v in pod["volumes"]
                        if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    (item,) = policy_volume["configMap"]["items"]
    (paths.moves[k8s_sidecar.POLICY_DIR] / item["path"]).write_text(paths.local(config_map["data"][item["key"]]))
    (secret_volume,) = [v for v in pod["volumes"] if v["name"] == k8s_sidecar.VOLUMES["secrets"]]
    assert secret_volume["secret"]["secretName"] == "keys"
    assert [i["key"] for i in secret_volume["secret"]["items"]] == ["TOKEN"]  # the file secret is the agent's
    (paths.moves[k8s_sidecar.PHANTOM_DIR] / "TOKEN").write_text(REAL + "\n")

    # the sidecar's own command line and environment, exactly, but on a port the kernel picks
    assert sidecar["command"] == ["sandboxctl"] and sidecar["restartPolicy"] == "Always"
    sidecar_env = expand_env(sidecar["env"], {"metadata.uid": POD_UID})
    args = [paths.local(REFERENCE.sub(lambda m: sidecar_env[m.group(1)], a)) for a in sidecar["args"]]
    listen = args.index("--listen") + 1
    assert args[listen] == f"127.0.0.1:{k8s_sidecar.PROXY_PORT}"
    args[listen] = "127.0.0.1:0"
    env = {name: paths.local(value) for name, value in sidecar_env.items()}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    process = subprocess.Popen([sys.executable, "-m", "sandboxctl", *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        probe = [paths.local(a) for a in sidecar["startupProbe"]["exec"]["command"]]
        assert probe[0] == "sandboxctl"
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, "-m", "sandboxctl", *probe[1:]], env=env).returncode != 0:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the sidecar never became ready"
            time.sleep(0.1)

        # the agent's environment as exported, with the pod's UID: its placeholder is the sidecar's
        agent_env = expand_env(agent["env"], {"metadata.uid": POD_UID})
        assert REAL not in json.dumps(agent) and REAL not in render_text(documents)
        assert agent_env["TOKEN"] == derived_placeholder(POD_UID, "TOKEN")
        written = dict(shlex.split(line)[0].split("=", 1) for line in
                       (paths.moves[k8s_sidecar.CLIENT_DIR] / "env").read_text().splitlines()
                       if line and not line.startswith("#"))
        assert written["TOKEN"] == agent_env["TOKEN"]
        assert agent_env["HTTPS_PROXY"] == f"http://127.0.0.1:{k8s_sidecar.PROXY_PORT}"
        port = int(written["HTTPS_PROXY"].rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=paths.local(agent_env["SSL_CERT_FILE"]))

        def request(host: str, method: str, path: str) -> int:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=20)
            conn.set_tunnel(host)
            try:
                conn.request(method, path, headers={"Authorization": f"Bearer {agent_env['TOKEN']}"})
                response = conn.getresponse()
                response.read()
                return response.status
            except OSError as exc:  # a refused CONNECT
                match = re.search(r"\b(\d{3})\b", str(exc))
                return int(match.group(1)) if match else -1
            finally:
                conn.close()

        # a listed request to the secret's host: the upstream gets the value, never the agent
        assert request(f"localhost:{bound.port}", "GET", "/api/repos") == 200
        assert bound.headers_of()["authorization"] == f"Bearer {REAL}"
        # a request the rules do not list; the placeholder toward another host; unlisted and denied hosts
        assert request(f"localhost:{bound.port}", "DELETE", "/api/repos") == 403
        assert request(f"localhost:{other.port}", "GET", "/leak") == 403
        assert request(f"not-listed.localhost:{bound.port}", "GET", "/") == 403
        assert request(f"denied.localhost:{bound.port}", "GET", "/") == 403
        assert [s["path"] for s in bound.seen] == ["/api/repos"] and other.seen == []
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err

    log = paths.local(k8s_sidecar.LOG_FILE)
    assert verify(Path(log)).ok
    text = Path(log).read_text()
    assert out.splitlines() == text.splitlines()  # kubectl logs shows the same chained records
    assert REAL not in text + out + err
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["path"], r["decision"], r.get("secrets"), r.get("leak")) for r in records if r["event"] == "http"] \
        == [("/api/repos", "allow", ["TOKEN"], None), ("/api/repos", "deny", None, None),
            ("/leak", "deny", None, "TOKEN")]
    net_denied = {r["host"] for r in records if r["event"] == "net" and r["decision"] == "deny"}
    assert net_denied == {"not-listed.localhost", "denied.localhost"}
    assert [(r["name"], r["placeholder"]) for r in records if r["event"] == "secret"] == [("TOKEN", "derived")]


def render_text(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents)


def test_the_agent_reaches_the_network_only_through_the_sidecar(tmp_path, test_ca, upstreams) -> None:
    bound, other = upstreams
    documents = export(write_policy(tmp_path / "policy.yaml", test_ca, bound, other))
    pod = pod_of(documents)
    (agent,) = pod["containers"]
    lock, sidecar = pod["initContainers"]  # in this order: nothing starts before the lock holds
    assert lock["name"] == k8s_sidecar.LOCK_CONTAINER and "restartPolicy" not in lock  # runs to completion
    agent_uid = agent["securityContext"]["runAsUser"]
    rule = f"OUTPUT -m owner --uid-owner {agent_uid} ! -o lo -j DROP"
    script = lock["command"][-1]
    assert lock["command"][:2] == ["/bin/sh", "-c"] and script.count(rule) == 2 and "exit 1" in script
    assert lock["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert lock["securityContext"]["allowPrivilegeEscalation"] is False
    assert not lock.get("volumeMounts") or all(m["name"] == "egress-lock-run" for m in lock["volumeMounts"])

    # the agent cannot undo the rule, change its uid, or look into the sidecar
    context = agent["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"]} and context["allowPrivilegeEscalation"] is False
    assert context["runAsNonRoot"] is True and context["privileged"] is False
    assert pod["shareProcessNamespace"] is False
    assert not any(key in pod for key in ("hostNetwork", "hostPID", "hostIPC"))
    proxy_uid = sidecar["securityContext"]["runAsUser"]
    assert proxy_uid != agent_uid and proxy_uid != 0
    # the sidecar is readable by the pod's fsGroup (Secret files are 0440 root:fsGroup), the agent never
    # mounts its Secret, policy or state
    assert sidecar["securityContext"]["runAsGroup"] == pod["securityContext"]["fsGroup"]
    sidecar_only = {m["name"] for m in sidecar["volumeMounts"]} - {m["name"] for m in agent["volumeMounts"]}
    assert {"proxy-secrets", "proxy-policy", "proxy-state"} <= sidecar_only
    shared = [m for m in agent["volumeMounts"] if m["name"] in {x["name"] for x in sidecar["volumeMounts"]}]
    assert shared == [{"name": "proxy-client", "mountPath": k8s_sidecar.CLIENT_DIR, "readOnly": True}]

    # the agent's clients point at the sidecar's loopback listener, and names are resolved by it
    env = {e["name"]: e.get("value") for e in agent["env"]}
    listen = sidecar["args"][sidecar["args"].index("--listen") + 1]
    assert listen == f"127.0.0.1:{k8s_sidecar.PROXY_PORT}"
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == f"http://{listen}" and env["ALL_PROXY"] == f"socks5h://{listen}"

    # the pod's NetworkPolicy: DNS to kube-dns, the literal address, TCP to public addresses; nothing
    # inside the cluster unless the policy allows private addresses (this one does: see below)
    egress = by_kind(documents, "SandboxTemplate")["spec"]["networkPolicy"]["egress"]
    assert egress[0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {"to": [{"ipBlock": {"cidr": "203.0.113.9/32"}}], "ports": [{"protocol": "TCP", "port": 443}]} in egress
    assert egress[-1]["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]  # allow_private


def test_without_allow_private_the_pod_egress_leaves_out_every_private_range() -> None:
    documents = list(yaml.safe_load_all(render(export_k8s(load_named("claude-code").policy))))
    egress = by_kind(documents, "SandboxTemplate")["spec"]["networkPolicy"]["egress"]
    public = egress[-1]["to"]
    excepted = [ipaddress.ip_network(n) for block in public for n in block["ipBlock"]["except"]]
    for address in ("10.0.0.1", "172.16.3.4", "192.168.1.1", "169.254.169.254", "127.0.0.1", "100.64.0.1",
                    "fd00::1", "fe80::1", "::ffff:10.0.0.1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in net for net in excepted if net.version == ip.version), address
    assert not any(ipaddress.ip_address("140.82.112.3") in net for net in excepted if net.version == 4)
    assert all(set(rule) == {"to", "ports"} for rule in egress)  # no rule without a destination


def test_egress_lock_none_says_nothing_keeps_the_agent_in(tmp_path, test_ca, upstreams) -> None:
    bound, other = upstreams
    result = export_k8s(load_named(str(write_policy(tmp_path / "p.yaml", test_ca, bound, other))).policy,
                        K8sOptions(egress_lock="none"))
    check_all(result.documents)
    pod = next(d for d in result.documents if d["kind"] == "SandboxTemplate")["spec"]["podTemplate"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == [k8s_sidecar.PROXY_CONTAINER]
    header = " ".join(line.strip() for line in result.header)  # wrapped at 100 columns
    assert "NOTHING keeps the agent's container from going around the sidecar" in header
    assert any("--egress-lock none" in w for w in result.warnings)
    assert "the agent's egress is the sidecar and nothing else" not in header


def test_the_sidecar_policy_keeps_only_the_network_and_proxy_secrets(tmp_path, test_ca, upstreams) -> None:
    bound, other = upstreams
    documents = export(write_policy(tmp_path / "p.yaml", test_ca, bound, other))
    text = by_kind(documents, "ConfigMap")["data"][k8s_sidecar.POLICY_FILE]
    data = yaml.safe_load(text)
    assert set(data) == {"version", "name", "description", "network", "secrets", "approval"}
    assert data["approval"] == {"mode": "deny"}  # nobody to ask on a cluster
    assert data["secrets"] == {"TOKEN": {"from": f"file:{k8s_sidecar.PHANTOM_DIR}/TOKEN", "as": "proxy",
                                         "hosts": [f"localhost:{bound.port}"]}}
    assert data["network"]["deny"] == ["denied.localhost"]
    assert data["network"]["inspect"][f"localhost:{bound.port}"] == {"allow": ["GET /api/**"]}
    assert "env:REAL_TOKEN" not in text  # where the value came from locally is not the sidecar's business


def test_a_policy_without_proxy_secrets_or_inspection_gets_no_ca_variables() -> None:
    documents = list(yaml.safe_load_all(render(export_k8s(load_named("default").policy))))
    pod = pod_of(documents)
    (agent,) = pod["containers"]
    names = {e["name"] for e in agent["env"]}
    assert "HTTPS_PROXY" in names and "SSL_CERT_FILE" not in names and "SANDBOXCTL_POD_UID" not in names
    sidecar = named(pod["initContainers"], k8s_sidecar.PROXY_CONTAINER)
    assert "--phantom-id" not in sidecar["args"] and not [v for v in pod["volumes"] if "secret" in v]
