"""The policy's proxy beside the agent in its pod: what makes host names, request rules and phantom
secrets hold on a cluster, where a NetworkPolicy matches only addresses and ports.

The pod of a `network: proxy` policy, as exported (`--proxy sidecar`, the default):

- init container `egress-lock` (`--egress-lock iptables`, the default): as root with NET_ADMIN and
  NET_RAW and nothing else, it adds one rule per IP version to the pod's network namespace —
  drop every packet of the agent's uid that does not leave on the loopback — checks it is there,
  and exits; until it has, no other container starts, and if it cannot, the pod never starts.
  NetworkPolicy is per pod: it cannot tell the sidecar's connections from the agent's, the uid can.
- native sidecar `sandboxctl-proxy` (an init container with restartPolicy: Always, uid 1001 in the
  pod's fsGroup 1000, which a Secret volume's files are readable by): runs
  `sandboxctl proxy -p /etc/sandboxctl/proxy/policy.yaml --listen 127.0.0.1:3128`. Its policy comes
  from a ConfigMap: the network section and the proxy secrets, whose values it reads from files of
  the Secret mounted into this container only. It writes the CA bundle and the clients'
  environment into a memory volume the agent mounts read-only, and its startup probe (`sandboxctl
  proxy --probe`) holds the agent's container back until they exist. Its action log goes to its
  stdout (kubectl logs) and to a file in its own volume.
- the agent's container (uid 1000): HTTP(S)_PROXY/ALL_PROXY at 127.0.0.1:3128, NO_PROXY its loopback,
  the CA variables at the shared volume, and for each phantom secret `$NAME` = a placeholder derived
  from the pod's UID (`sbx-phantom-$(SANDBOXCTL_POD_UID)-…`, the downward API; the sidecar is given
  the same UID with --phantom-id), never the value: the pod spec is written before the proxy runs,
  so the placeholders cannot be the proxy's random ones.

Pure, like the rest of the export: the manifests name a Secret's keys, never read a value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sandboxctl import units
from sandboxctl.export.k8s_options import proxy_image
from sandboxctl.network.clientenv import LOOPBACK_NAMES, ca_variables, proxy_variables
from sandboxctl.network.clientfiles import BUNDLE_FILE, CA_FILE
from sandboxctl.network.phantoms import derived_placeholder
from sandboxctl.record import Record

if TYPE_CHECKING:
    from sandboxctl.export.k8s_options import K8sOptions
    from sandboxctl.export.k8s_pod import Notes
    from sandboxctl.policy.model import Policy

PROXY_CONTAINER = "sandboxctl-proxy"
LOCK_CONTAINER = "egress-lock"
PROXY_UID = 1001  # not the agent's: the egress lock tells their packets apart by uid, and neither can signal the other
PROXY_PORT = 3128
POLICY_DIR = "/etc/sandboxctl/proxy"
POLICY_FILE = "policy.yaml"
CLIENT_DIR = "/run/sandboxctl/proxy"  # the CA bundle and the clients' env: written by the sidecar, read by the agent
PHANTOM_DIR = "/run/sandboxctl/proxy-secrets"  # the phantom secrets' values: the sidecar's volume only
STATE_DIR = "/var/lib/sandboxctl"  # the sidecar's HOME, state and action log
LOG_FILE = f"{STATE_DIR}/actions.jsonl"
POD_UID_VARIABLE = "SANDBOXCTL_POD_UID"
VOLUMES = {"policy": "proxy-policy", "secrets": "proxy-secrets", "client": "proxy-client", "state": "proxy-state",
           "lock": "egress-lock-run"}
STARTUP_SECONDS = 120  # the probe's patience: a slow node pulling the image, a slow first start


class Sidecar(Record):
    init_containers: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    agent_env: list[dict[str, Any]]  # added to the agent's env; the pod UID first, it is referred to
    agent_mounts: list[dict[str, Any]]
    policy_text: str  # the ConfigMap's policy.yaml


def wanted(policy: Policy, options: K8sOptions) -> bool:
    return policy.network.mode == "proxy" and options.proxy == "sidecar"


def proxy_secrets(policy: Policy) -> list:
    return [s for s in policy.secrets if s.deliver_as == "proxy"]


def inspecting(policy: Policy) -> bool:
    return bool(policy.network.inspect) or bool(proxy_secrets(policy))


def sidecar_policy(policy: Policy) -> dict[str, Any]:
    """What the sidecar's `sandboxctl proxy` needs of the policy, with the secrets read from the
    Secret's files: the network section (extends already merged) and the proxy secrets."""
    net = policy.network
    network: dict[str, Any] = {"mode": "proxy", "allow": [str(p) for p in net.allow],
                               "deny": [str(p) for p in net.deny], "allow_private": net.allow_private}
    if net.upstream_ca:
        network["upstream_ca"] = list(net.upstream_ca)
    if net.inspect:
        network["inspect"] = {host: None if rules is None else {"allow": list(rules)} for host, rules in net.inspect}
    data: dict[str, Any] = {
        "version": 1,
        "name": policy.name,
        "description": f"the network part of {policy.name} for its sandboxctl-proxy sidecar "
                       "(written by sandboxctl export k8s)",
        "network": network,
    }
    secrets = {}
    for secret in proxy_secrets(policy):
        entry: dict[str, Any] = {"from": f"file:{PHANTOM_DIR}/{secret.name}", "as": "proxy",
                                 "hosts": list(secret.hosts)}
        if secret.ttl is not None:
            entry["ttl"] = units.format_duration(secret.ttl)
        secrets[secret.name] = entry
    if secrets:
        data["secrets"] = secrets
    data["approval"] = {"mode": "deny"}
    return data


def policy_text(policy: Policy) -> str:
    import yaml

    header = [f"# The policy of the sandboxctl-proxy sidecar: the network section of {policy.name} and its",
              f"# proxy secrets, whose values it reads from the Secret's files in {PHANTOM_DIR}."]
    if policy.sha256:
        header.append(f"# From the policy with sha256 {policy.sha256}.")
    return "\n".join(header) + "\n" + yaml.safe_dump(sidecar_policy(policy), sort_keys=False,
                                                      default_flow_style=False, width=4096, allow_unicode=True)


def lock_script(uid: int) -> str:
    """The egress lock: one rule per IP version, checked after it is added. The legacy iptables comes
    first (gVisor implements only that interface), the nft one when the legacy one cannot be used.
    No IPv6 rule is needed only where the pod has no IPv6 address at all."""
    rule = f"OUTPUT -m owner --uid-owner {uid} ! -o lo -j DROP"
    return "\n".join([
        "set -u",
        "lock() {",
        '  for tool in "$1-legacy" "$1"; do',
        '    command -v "$tool" >/dev/null 2>&1 || continue',
        f'    if "$tool" -w -A {rule} && "$tool" -w -C {rule}; then',
        f'      echo "egress-lock: $tool: uid {uid} may send only on the loopback"; return 0',
        "    fi",
        "  done",
        "  return 1",
        "}",
        'lock iptables || { echo "egress-lock: no IPv4 rule could be added: the pod does not start" >&2; exit 1; }',
        "if ! lock ip6tables; then",
        "  if [ -s /proc/net/if_inet6 ]; then",
        '    echo "egress-lock: no IPv6 rule could be added and the pod has IPv6: it does not start" >&2; exit 1',
        "  fi",
        '  echo "egress-lock: the pod has no IPv6 address: no IPv6 rule needed"',
        "fi",
    ]) + "\n"


def _security(uid: int, gid: int) -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "privileged": False,
            "readOnlyRootFilesystem": True, "runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _lock_container(image: str, agent_uid: int) -> dict[str, Any]:
    return {
        "name": LOCK_CONTAINER,
        "image": image,
        "command": ["/bin/sh", "-c", lock_script(agent_uid)],
        "securityContext": {"allowPrivilegeEscalation": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                            "privileged": False, "readOnlyRootFilesystem": True, "runAsNonRoot": False,
                            "runAsUser": 0, "runAsGroup": 0, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": VOLUMES["lock"], "mountPath": "/run"}],  # iptables' lock file
    }


def _proxy_container(policy: Policy, image: str, fs_group: int) -> dict[str, Any]:
    """The sidecar runs as its own uid but in the pod's fsGroup: the kubelet gives a Secret volume's
    files to that group, mode 0440 whatever defaultMode says (kubernetes/kubernetes#57923), so another
    gid could not read the phantom secrets. The agent never mounts that volume; the uids stay apart
    (the egress lock, signals)."""
    args = ["proxy", "-p", f"{POLICY_DIR}/{POLICY_FILE}", "--listen", f"127.0.0.1:{PROXY_PORT}",
            "--client-dir", CLIENT_DIR, "--log", LOG_FILE, "--log-stdout"]
    env = [{"name": "HOME", "value": STATE_DIR}, {"name": "XDG_STATE_HOME", "value": f"{STATE_DIR}/state"},
           {"name": "TMPDIR", "value": STATE_DIR},  # the root is read-only
           {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    if proxy_secrets(policy):
        env.insert(0, {"name": POD_UID_VARIABLE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}})
        args += ["--phantom-id", f"$({POD_UID_VARIABLE})"]
    mounts = [{"name": VOLUMES["policy"], "mountPath": POLICY_DIR, "readOnly": True},
              {"name": VOLUMES["client"], "mountPath": CLIENT_DIR},
              {"name": VOLUMES["state"], "mountPath": STATE_DIR}]
    if proxy_secrets(policy):
        mounts.append({"name": VOLUMES["secrets"], "mountPath": PHANTOM_DIR, "readOnly": True})
    return {
        "name": PROXY_CONTAINER,
        "image": image,
        "restartPolicy": "Always",  # a native sidecar: started, and probed, before the agent's container
        "command": ["sandboxctl"],
        "args": args,
        "env": env,
        "startupProbe": {"exec": {"command": ["sandboxctl", "proxy", "--probe", CLIENT_DIR]},
                         "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": STARTUP_SECONDS},
        "securityContext": _security(PROXY_UID, fs_group),
        "volumeMounts": mounts,
    }


def sidecar(policy: Policy, options: K8sOptions, config_map: str, agent_uid: int, notes: Notes) -> Sidecar:
    """The containers, volumes and agent environment of the sidecar design (see the module docstring)."""
    from sandboxctl.plan.network import names_host_loopback

    image = proxy_image(options)
    containers = [_proxy_container(policy, image, agent_uid)]
    if options.egress_lock == "iptables":
        containers.insert(0, _lock_container(image, agent_uid))
    volumes: list[dict[str, Any]] = [
        {"name": VOLUMES["policy"], "configMap": {"name": config_map, "defaultMode": 0o444,
                                                  "items": [{"key": POLICY_FILE, "path": POLICY_FILE}]}},
        {"name": VOLUMES["client"], "emptyDir": {"medium": "Memory"}},
        {"name": VOLUMES["state"], "emptyDir": {}},
    ]
    phantoms = proxy_secrets(policy)
    if phantoms:
        volumes.append({"name": VOLUMES["secrets"], "secret": {
            "secretName": options.secret_name, "defaultMode": 0o400,
            "items": [{"key": s.name, "path": s.name, "mode": 0o400} for s in phantoms]}})
    if options.egress_lock == "iptables":
        volumes.append({"name": VOLUMES["lock"], "emptyDir": {"medium": "Memory"}})

    env: dict[str, str] = {}
    no_proxy = "" if names_host_loopback([p.host for p in policy.network.allow]) else LOOPBACK_NAMES
    env.update(proxy_variables("127.0.0.1", PROXY_PORT, no_proxy))
    if inspecting(policy):
        env.update(ca_variables(f"{CLIENT_DIR}/{BUNDLE_FILE}", f"{CLIENT_DIR}/{CA_FILE}"))
    env.update({s.name: derived_placeholder(f"$({POD_UID_VARIABLE})", s.name) for s in phantoms})
    agent_env = [{"name": name, "value": value} for name, value in sorted(env.items())]
    if phantoms:
        agent_env.insert(0, {"name": POD_UID_VARIABLE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}})
    mounts = [{"name": VOLUMES["client"], "mountPath": CLIENT_DIR, "readOnly": True}]
    _notes(policy, options, image, config_map, agent_uid, notes)
    return Sidecar(containers, volumes, agent_env, mounts, policy_text(policy))


def _notes(policy: Policy, options: K8sOptions, image: str, config_map: str, agent_uid: int, notes: Notes) -> None:
    phantoms = proxy_secrets(policy)
    notes.mapped.append(
        f"network: proxy -> the native sidecar {PROXY_CONTAINER} (image {image}, uid {PROXY_UID}) runs `sandboxctl "
        f"proxy` on 127.0.0.1:{PROXY_PORT} with the policy's network section (the ConfigMap {config_map}): "
        "network.allow by name, network.deny, the refusal of private addresses"
        + (" and network.inspect request rules" if policy.network.inspect else "")
        + " hold as locally; the agent's container gets HTTP(S)_PROXY, ALL_PROXY and NO_PROXY (its loopback)")
    if inspecting(policy):
        notes.mapped.append(f"TLS inspection: the sidecar's CA, made when it starts (its key in its memory), in "
                            f"{CLIENT_DIR}/{BUNDLE_FILE} with the proxy image's system CAs (SSL_CERT_FILE and the "
                            f"other CA variables) and alone in {CA_FILE} (NODE_EXTRA_CA_CERTS), read-only for the "
                            "agent")
    if phantoms:
        names = ", ".join(s.name for s in phantoms)
        notes.mapped.append(
            f"secrets as: proxy ({names}) -> keys of the Secret {options.secret_name}, mounted only into the "
            f"sidecar ({PHANTOM_DIR}); the agent's variables hold placeholders derived from the pod's UID "
            "(downward API), which the sidecar replaces with the values toward each secret's hosts only")
        timed = [f"{s.name} ({units.format_duration(s.ttl)})" for s in phantoms if s.ttl is not None]
        if timed:
            notes.mapped.append(f"proxy secrets ttl: {', '.join(timed)}: counted from the sidecar's start (a "
                                 "restarted sidecar starts them again)")
    notes.mapped.append(f"net and http events: the sidecar's action log on its stdout (kubectl logs POD -c "
                        f"{PROXY_CONTAINER}) and in {LOG_FILE}, chained; unmatched destinations and requests are "
                        "refused (approval deny), and it goes with the pod unless the cluster keeps container logs")
    per_pod = ("the pod's networkPolicy applies to the whole pod (Kubernetes has no per-container egress): it "
               "allows what the sidecar must reach, and cannot tell the sidecar's connections from the agent's")
    if options.egress_lock == "iptables":
        notes.mapped.append(
            f"the agent's egress is the sidecar and nothing else: {per_pod}, but the uid can: the init container "
            f"{LOCK_CONTAINER} drops every packet of uid {agent_uid} (the agent's) not sent on the loopback "
            "(iptables owner match, IPv4 and IPv6) before any other container starts; the agent cannot undo it (no "
            "capabilities) or change its uid (no privilege escalation), so it reaches the network only through "
            f"127.0.0.1:{PROXY_PORT}, DNS included")
        notes.relies.append(
            "for the egress lock: an init container as root with NET_ADMIN and NET_RAW (the namespace's Pod "
            "Security level must be privileged), iptables in the proxy image, and under gVisor runsc with "
            "--net-raw (gVisor implements the legacy iptables interface); without them the lock fails and the pod "
            "does not start")
    else:
        notes.lost.append(
            f"--egress-lock none: {per_pod}, and NOTHING keeps the agent's container from going around the "
            "sidecar: a program that ignores HTTP(S)_PROXY reaches what the pod's egress allows directly, "
            "without the request rules, network.deny or a log record (it has only placeholders of phantom "
            "secrets, never their values)")
        notes.warnings.append("--egress-lock none: the agent's container can reach the pod's allowed egress "
                              "directly, around the sidecar")
    notes.relies.append(f"the proxy image {image} with sandboxctl"
                        + (" and iptables" if options.egress_lock == "iptables" else "")
                        + " in it (examples/proxy.Containerfile builds one), and native sidecars (Kubernetes 1.29 "
                        "or later)")
    if inspecting(policy):
        notes.lost.append("a restarted sidecar makes a new CA and writes it into the bundle file; a client that "
                          "loaded the old one fails TLS to inspected hosts until it reads the file again")
    if options.proxy_image is None:
        notes.warnings.append(f"the sidecar's image {image} does not exist until you build it "
                              "(examples/proxy.Containerfile) and load or push it; or pass --proxy-image")
