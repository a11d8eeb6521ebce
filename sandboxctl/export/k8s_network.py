"""The policy's `network` section as the SandboxTemplate's `networkPolicy`, and as Cilium FQDN rules.

Why a module of its own: this is where the export loses the most. sandboxctl's proxy decides per
connection, by name, and can ask a human; a Kubernetes NetworkPolicy matches only addresses and
ports, decided once. So literal addresses become ipBlock rules, names become nothing (or, with
`--fqdn-policy cilium`, CiliumNetworkPolicy `toFQDNs` rules), and everything lost on the way is
said in the header and, for names, on stderr. Pure: no look-ups, no sockets.

The agent-sandbox controller turns `networkPolicy` into one NetworkPolicy per template with both
policy types set, so an empty `egress` list denies all egress and an omitted `ingress` denies all
ingress (extensions/controllers/sandboxtemplate_controller.go).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from sandboxctl.policy.model import Network
from sandboxctl.record import Record
from sandboxctl.units import HostPattern

# The controller's own default lets the sandbox router reach the pods; keep that one door open, or
# the usual way of talking to a sandbox (router -> pod) stops working.
ROUTER_INGRESS = {"from": [{"podSelector": {"matchLabels": {"app": "sandbox-router"}}}]}
# Cilium's toFQDNs learns addresses from the DNS answers its proxy sees: DNS must go through it.
KUBE_DNS = {"k8s:io.kubernetes.pod.namespace": "kube-system", "k8s:k8s-app": "kube-dns"}
CILIUM_API_VERSION = "cilium.io/v2"
# A NetworkPolicy's way to the cluster's DNS (the sidecar resolves allowed names itself).
KUBE_DNS_EGRESS = {
    "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


class NetworkExport(Record):
    network_policy: dict[str, Any]  # the SandboxTemplate's spec.networkPolicy
    fqdn_rules: tuple[dict[str, Any], ...]  # CiliumNetworkPolicy egress rules; () when nothing is by name
    names: tuple[HostPattern, ...]  # allowed by name: no NetworkPolicy can say them
    mapped: tuple[str, ...]  # header lines: what became what
    lost: tuple[str, ...]  # header lines: what could not be expressed
    warnings: tuple[str, ...]  # stderr
    relies: tuple[str, ...] = ()  # header lines: what the cluster must provide for the mapped to hold


def is_address(pattern: HostPattern) -> bool:
    try:
        ipaddress.ip_address(pattern.host)
    except ValueError:
        return False
    return True


def _cidr(pattern: HostPattern) -> str:
    """One address as a CIDR; an IPv4-mapped IPv6 address is its IPv4 one (as the proxy judges it)."""
    address = ipaddress.ip_address(pattern.host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return f"{address}/{address.max_prefixlen}"


def _covers(deny: HostPattern, allow: HostPattern) -> bool:
    """Every connection `allow` permits is one `deny` refuses: the allow entry can simply go."""
    if deny.port is not None and deny.port != allow.port:
        return False
    return HostPattern(deny.host).matches(allow.host, 0)


def _overlaps(deny: HostPattern, allow: HostPattern) -> bool:
    if deny.port is not None and allow.port is not None and deny.port != allow.port:
        return False
    return HostPattern(deny.host).matches(allow.host, 0) or HostPattern(allow.host).matches(deny.host, 0)


def _address_rule(pattern: HostPattern) -> dict[str, Any]:
    # the proxy carries TCP only (HTTP CONNECT, SOCKS5 connect): no UDP, whatever the port
    port: dict[str, Any] = {"protocol": "TCP"}
    if pattern.port is not None:
        port["port"] = pattern.port
    return {"to": [{"ipBlock": {"cidr": _cidr(pattern)}}], "ports": [port]}


def _fqdn_rules(names: tuple[HostPattern, ...]) -> tuple[dict[str, Any], ...]:
    """toFQDNs rules, one per port (in the order the policy names them), after the DNS rule."""
    dns = {
        "toEndpoints": [{"matchLabels": dict(KUBE_DNS)}],
        "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "*"}]}}],
    }
    by_port: dict[int | None, list[dict[str, str]]] = {}
    for pattern in names:
        selector = {"matchPattern": pattern.host} if pattern.wildcard else {"matchName": pattern.host}
        if selector not in by_port.setdefault(pattern.port, []):
            by_port[pattern.port].append(selector)
    rules: list[dict[str, Any]] = [dns]
    for port, selectors in by_port.items():
        rule: dict[str, Any] = {"toFQDNs": selectors}
        if port is not None:
            rule["toPorts"] = [{"ports": [{"port": str(port), "protocol": "TCP"}]}]
        rules.append(rule)
    return tuple(rules)


def _joined(patterns: tuple[HostPattern, ...] | list[HostPattern]) -> str:
    return ", ".join(str(p) for p in patterns)


def _kept(network: Network) -> tuple[list[HostPattern], list[HostPattern], list[str]]:
    """(allow entries kept, those a deny entry covers entirely, 'deny within allow' overlaps)."""
    kept: list[HostPattern] = []
    dropped: list[HostPattern] = []
    narrowed: list[str] = []
    for allow in network.allow:
        if any(_covers(deny, allow) for deny in network.deny):
            dropped.append(allow)
            continue
        if allow not in kept:
            kept.append(allow)
            narrowed += [f"{deny} within {allow}" for deny in network.deny if _overlaps(deny, allow)]
    return kept, dropped, narrowed


def _public_rules(names: tuple[HostPattern, ...], allow_private: bool) -> list[dict[str, Any]]:
    """TCP to every address the names might resolve to (a NetworkPolicy cannot know which): the public
    internet, or everything with allow_private; on the ports the names are allowed on."""
    from sandboxctl.network.addresses import non_public_networks

    blocks = []
    for version, everything in ((4, "0.0.0.0/0"), (6, "::/0")):
        block: dict[str, Any] = {"cidr": everything}
        if not allow_private:
            block["except"] = [str(net) for net in non_public_networks(version)]
        blocks.append({"ipBlock": block})
    rule: dict[str, Any] = {"to": blocks}
    if all(p.port is not None for p in names):
        rule["ports"] = [{"protocol": "TCP", "port": port} for port in sorted({p.port for p in names})]
    else:
        rule["ports"] = [{"protocol": "TCP"}]
    return [rule]


def _ports(names: tuple[HostPattern, ...]) -> str:
    ports = {p.port for p in names}
    return "any port" if None in ports else "ports " + ", ".join(str(p) for p in sorted(ports))


def _sidecar_network(network: Network, fqdn_policy: str | None, lock: str, mapped: list[str],
                     ingress: list[dict[str, Any]]) -> NetworkExport:
    """The pod's egress when sandboxctl's proxy runs beside the agent (export/k8s_sidecar.py): what the
    sidecar must reach. Names are decided by the sidecar; the NetworkPolicy is a second wall around it."""
    lost: list[str] = []
    warnings: list[str] = []
    kept, dropped, _narrowed = _kept(network)
    addresses = tuple(p for p in kept if is_address(p))
    names = tuple(p for p in kept if not is_address(p))
    egress: list[dict[str, Any]] = []
    rules: tuple[dict[str, Any], ...] = ()
    if not network.allow:
        mapped.append("network: proxy with an empty allow list -> the sidecar refuses every destination (locally "
                      "each would ask) and the pod's egress is []")
    if names:
        egress.append(KUBE_DNS_EGRESS)
    egress += [_address_rule(p) for p in addresses]
    if addresses:
        mapped.append(f"network.allow addresses -> also ipBlock egress rules (TCP) for the sidecar's dials: "
                      f"{_joined(addresses)}")
    if names and fqdn_policy == "cilium":
        rules = _fqdn_rules(names)
        mapped.append(f"network.allow host names ({_joined(names)}) -> decided by the sidecar; and the "
                      "CiliumNetworkPolicy lets the pod reach only their addresses (toFQDNs), with DNS through "
                      "kube-dns")
        if any(p.wildcard for p in names):
            lost.append("Cilium's '*' matches one label: *.example.com lets the pod reach a.example.com, not "
                        "a.b.example.com, which the sidecar would allow")
    elif names:
        egress += _public_rules(names, network.allow_private)
        scope = ("any address, cluster-internal ones included (allow_private: true)" if network.allow_private
                 else "public addresses (private, loopback, link-local, CGNAT and metadata ranges left out)")
        mapped.append(f"network.allow host names ({_joined(names)}) -> decided by the sidecar, which resolves "
                      f"them itself; the pod's egress: DNS to kube-dns, and TCP to {scope} on {_ports(names)}, "
                      "because a NetworkPolicy cannot know what the names resolve to (--fqdn-policy cilium "
                      "narrows it to their addresses)")
    relies = []
    if names:
        relies.append("DNS at kube-dns (k8s-app: kube-dns in kube-system), which the pod's egress allows for the "
                      "sidecar's look-ups; another resolver (NodeLocal DNSCache) is not allowed, and then nothing "
                      "by name is reachable")
    if network.deny:
        text = f"network.deny ({_joined(network.deny)}) -> refused by the sidecar"
        if dropped:
            text += f"; allow entries it covers entirely are left out of the egress: {_joined(dropped)}"
        mapped.append(text)
    if network.allow_private:
        mapped.append("allow_private: true -> the sidecar dials private addresses the names resolve to")
    else:
        mapped.append("allow_private: false -> the sidecar refuses private, loopback, link-local and metadata "
                      "addresses a name resolves to (addresses listed literally excepted), as locally")
    if lock == "none" and egress:
        lost.append("with --egress-lock none the pod's egress above is the agent's too: it may reach those "
                    "destinations directly")
    lost.append("approvals of other destinations at run time: none; what is not listed is refused (and logged "
                "by the sidecar)")
    return NetworkExport({"ingress": ingress, "egress": egress}, rules, names, tuple(mapped), tuple(lost),
                         tuple(warnings), tuple(relies))


def export_network(network: Network, fqdn_policy: str | None, sidecar: str | None = None) -> NetworkExport:
    """The template's networkPolicy; `sidecar`: the egress lock (iptables | none) when sandboxctl's proxy
    runs beside the agent, None when it does not (the NetworkPolicy is then all there is)."""
    mapped: list[str] = []
    lost: list[str] = []
    warnings: list[str] = []
    ingress = [ROUTER_INGRESS]
    mapped.append("ingress: only from the agent-sandbox router (pods labelled app: sandbox-router), as the "
                  "controller's own default; nothing else may connect in")
    if network.mode == "none":
        mapped.append("network: none -> egress: [] (nothing leaves the pod; loopback only)")
        return NetworkExport({"ingress": ingress, "egress": []}, (), (), tuple(mapped), tuple(lost), ())
    if network.mode == "host":
        mapped.append("network: host -> one egress rule without peers or ports: ALL destinations, "
                      "cluster-internal and cloud metadata addresses included")
        warnings.append("network: host is exported as allow-all egress (cluster services and metadata included)")
        return NetworkExport({"ingress": ingress, "egress": [{}]}, (), (), tuple(mapped), tuple(lost),
                             tuple(warnings))

    if sidecar is not None:
        return _sidecar_network(network, fqdn_policy, sidecar, mapped, ingress)
    kept, dropped, narrowed = _kept(network)
    addresses = tuple(p for p in kept if is_address(p))
    names = tuple(p for p in kept if not is_address(p))
    egress = [_address_rule(p) for p in addresses]

    if not network.allow:
        mapped.append("network: proxy with an empty allow list -> egress: []; locally every destination "
                      "asks, here none is allowed")
    if addresses:
        mapped.append(f"network.allow addresses -> ipBlock egress rules (TCP): {_joined(addresses)}")
    elif network.allow:
        mapped.append("network.allow has no literal addresses: the NetworkPolicy allows no egress")
    rules: tuple[dict[str, Any], ...] = ()
    if names:
        lost.append(f"network.allow host names: {_joined(names)} -- Kubernetes NetworkPolicy matches addresses, "
                    "not names, so the networkPolicy does NOT allow them")
        if fqdn_policy == "cilium":
            rules = _fqdn_rules(names)
            mapped.append("host names -> the CiliumNetworkPolicy (toFQDNs; needs Cilium as the CNI); DNS to "
                          "kube-dns is allowed for any name, which Cilium needs to learn the addresses")
            lost.append("DNS: any name may be looked up through kube-dns (a look-up can carry data out; "
                        "sandboxctl's proxy resolves only allowed names)")
            if any(p.wildcard for p in names):
                lost.append("Cilium's '*' matches one label: *.example.com allows a.example.com, not "
                            "a.b.example.com (sandboxctl's matches any depth)")
            warnings.append(f"Kubernetes NetworkPolicy cannot match host names ({_joined(names)}): they are "
                            "allowed only by the CiliumNetworkPolicy, which needs Cilium")
        else:
            lost[-1] += "; pass --fqdn-policy cilium for a CiliumNetworkPolicy that allows them by name"
            warnings.append(f"Kubernetes NetworkPolicy cannot match host names; not allowed by the exported "
                            f"networkPolicy: {_joined(names)} (pass --fqdn-policy cilium to allow them by name)")
    elif fqdn_policy == "cilium":
        mapped.append("--fqdn-policy cilium: no host names to allow, so no CiliumNetworkPolicy")

    if network.inspect:
        lost.append(f"network.inspect ({', '.join(host for host, _ in network.inspect)}): request rules and TLS "
                    "inspection need sandboxctl's proxy; the networkPolicy allows or blocks whole destinations")
        warnings.append("network.inspect request rules are not enforced by the exported manifests")
    if network.allow_private:
        lost.append("allow_private: true opens nothing by itself here: only the destinations listed are reachable")
    else:
        mapped.append("allow_private: false -> no private, loopback, link-local or metadata range is opened "
                      "(addresses listed literally are, as locally)")
        if rules:
            lost.append("allow_private: false is not checked on what the names resolve to: a listed name "
                        "that resolves to a private address is reachable")
    if network.deny:
        text = (f"network.deny ({_joined(network.deny)}): NetworkPolicy and toFQDNs only allow, they cannot "
                "subtract")
        if dropped:
            text += f"; allow entries it covers entirely were left out: {_joined(dropped)}"
        if narrowed:
            text += f"; NOT enforced inside the allowed: {', '.join(narrowed)}"
            warnings.append(f"network.deny cannot be expressed; still allowed: {', '.join(narrowed)}")
        lost.append(text)
    lost.append("approvals of other destinations at run time: none; what is not listed is refused")
    return NetworkExport({"ingress": ingress, "egress": egress}, rules, names, tuple(mapped), tuple(lost),
                         tuple(warnings))


def cilium_policy(metadata: dict[str, Any], selector: dict[str, str],
                  rules: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """A CiliumNetworkPolicy for the pods of one template. Cilium adds up the allows of every policy
    that selects a pod, so this widens the template's NetworkPolicy by exactly these rules."""
    return {
        "apiVersion": CILIUM_API_VERSION,
        "kind": "CiliumNetworkPolicy",
        "metadata": metadata,
        "spec": {"endpointSelector": {"matchLabels": dict(selector)}, "egress": [dict(r) for r in rules]},
    }
