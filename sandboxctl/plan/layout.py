"""Where sandboxctl puts its own things inside the sandbox: its launcher, secrets, the run's CA, the proxy.

Fixed paths and ports the plan names and the launchers (launch/bwrap.py, oci.py, shim.py,
gvisor_init.py) rely on. Constants only, importable by everything in plan/ (build.py names
them too).
"""

from __future__ import annotations

SHIM_DIR = "/run/sandboxctl"
SHIM_ENTRY = f"{SHIM_DIR}/shim.pyc"  # launch/shim_code.py: the shim as the bubblewrap backend runs it
SESSION_SERVER = f"{SHIM_DIR}/session_server.py"  # a session's in-sandbox server (launch/session_server.py)
GVISOR_INIT = f"{SHIM_DIR}/init.py"  # the gvisor backend's in-sandbox launcher
GVISOR_NATIVE_MACHINES = ("x86_64",)  # launch/gvisor_exec.py: the launcher without python3 inside gVisor
SECRETS_DIR = "/run/secrets"
PROXY_PORT = 3128
TLS_DIR = f"{SHIM_DIR}/tls"  # the run's CA and the combined bundle, made at launch (network/certs.py)
TLS_BUNDLE = f"{TLS_DIR}/ca-bundle.pem"  # the run's CA followed by the system's
TLS_CA = f"{TLS_DIR}/run-ca.pem"  # the run's CA alone
# The system bundles the combined one replaces inside (where the host has them).
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


def gvisor_native_launcher(network_mode: str, machine: str) -> bool:
    """Under gVisor the command is started by a static program in the run directory
    (launch/gvisor_exec.py), not by python3 + gvisor_init.py, unless the proxy's forwarder must
    be started first or the machine has no such program."""
    return network_mode != "proxy" and machine in GVISOR_NATIVE_MACHINES
