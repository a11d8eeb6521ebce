"""What a client of the proxy needs in its environment: where the proxy is, which CAs to trust.

One list for the three kinds of clients: the sandboxed command (plan/build.py), the clients of a
standalone `sandboxctl proxy` (network/standalone.py) and the agent container beside the
Kubernetes sidecar (export/k8s_sidecar.py), so that they all get the same variables. Pure.
"""

from __future__ import annotations

LOOPBACK_NAMES = "localhost,127.0.0.1,::1"
# What common tools read to find their CA bundle (Python ssl, requests, curl, git, pip, AWS, cargo, Deno);
# Node adds NODE_EXTRA_CA_CERTS to its own store.
CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "PIP_CERT",
                       "AWS_CA_BUNDLE", "CARGO_HTTP_CAINFO", "DENO_CERT")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy")


def proxy_variables(host: str, port: int, no_proxy: str = LOOPBACK_NAMES) -> dict[str, str]:
    """HTTP(S)_PROXY for HTTP clients, ALL_PROXY as SOCKS5 with names resolved by the proxy (socks5h),
    NO_PROXY for what the client should reach directly (its own loopback, by default)."""
    where = f"[{host}]" if ":" in host else host
    env = {name: f"http://{where}:{port}" for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env["ALL_PROXY"] = env["all_proxy"] = f"socks5h://{where}:{port}"
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


def ca_variables(bundle: str, ca: str) -> dict[str, str]:
    """The CA variables: the combined bundle (the proxy's CA, then the system's) for most tools, the
    proxy's CA alone for Node (which adds it to its own store)."""
    env = dict.fromkeys(CA_BUNDLE_VARIABLES, bundle)
    env["NODE_EXTRA_CA_CERTS"] = ca
    return env
