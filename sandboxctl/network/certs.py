"""The run's certificate authority: what lets the proxy read HTTPS to inspected hosts.

Why per run, and why its key stays in memory: the sandbox is made to trust this CA (a bundle
with it and the system's CAs replaces the system bundle inside), so whoever holds its key can
impersonate any site to the sandbox. The key is generated when the run starts, lives only in
the supervisor's memory (never on disk, never in the sandbox), and dies with the run.

It is also constrained, so that even a leaked key could only mint certificates for the hosts
this run inspects: the CA certificate carries X.509 name constraints (critical) permitting
exactly those names (and, when no IP address is inspected, excluding every IP address); a
path length of 0 (no intermediate CAs); and a validity of a few days.

Leaf certificates are minted on first use per host, signed with ECDSA P-256 (fast to sign,
understood by every current TLS client), with the SAN (DNS name or IP address), serverAuth EKU,
basicConstraints CA:false, key identifiers (Python 3.13's strict verification needs the AKI),
and a validity of one day; they are cached per host (LRU, 256 hosts) and re-minted before expiry.
One key serves every leaf of the run, as in mitmproxy: a new host costs a signature, not a key.

Importing this module imports `cryptography`; only runs that inspect something do.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sandboxctl.units import HostPattern

CA_VALIDITY = datetime.timedelta(days=7)
LEAF_VALIDITY = datetime.timedelta(days=1)
BACKDATE = datetime.timedelta(hours=1)  # clocks inside and outside may disagree a little
RENEW_BEFORE = datetime.timedelta(hours=1)
LEAF_CACHE = 256


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name_constraints(patterns: Iterable[HostPattern]) -> x509.NameConstraints | None:
    dns: set[str] = set()
    ips: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for pattern in patterns:
        host = pattern.host[2:] if pattern.wildcard else pattern.host
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            dns.add(host)
            continue
        ips.add(ipaddress.ip_network(address))
    permitted: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(dns)]
    permitted += [x509.IPAddress(net) for net in sorted(ips, key=str)]
    if not permitted:
        return None
    excluded: list[x509.GeneralName] | None = None
    if not ips:  # no IP address is inspected: no leaf for one may ever verify
        excluded = [x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")), x509.IPAddress(ipaddress.ip_network("::/0"))]
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


class RunAuthority:
    """The per-run CA (see the module docstring). Thread-safe: proxy threads ask for contexts at once."""

    def __init__(self, patterns: Iterable[HostPattern], label: str = "sandboxctl run") -> None:
        patterns = list(patterns)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandboxctl"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{label[:40]} CA (this sandbox only)"),
        ])
        public = self._key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        constraints = _name_constraints(patterns)
        if constraints is not None:
            builder = builder.add_extension(constraints, critical=True)
        self.certificate = builder.sign(self._key, hashes.SHA256())
        self.pem = self.certificate.public_bytes(serialization.Encoding.PEM)
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
        self._leaf_key_pem = self._leaf_key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption())
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()
        self._lock = threading.Lock()
        self.minted = 0

    def __repr__(self) -> str:
        return "RunAuthority(<key in memory>)"

    def leaf(self, host: str) -> x509.Certificate:
        """A new leaf certificate for host (a DNS name or an IP address literal)."""
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
            # no CN: OpenSSL would hold an address in the CN against the DNS name constraints
            subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandboxctl")])
        except ValueError:
            san = x509.DNSName(host)
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
        now = _now()
        public = self._leaf_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + LEAF_VALIDITY, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self._aki, critical=False)
        )
        self.minted += 1
        return builder.sign(self._key, hashes.SHA256())

    def server_context(self, host: str) -> ssl.SSLContext:
        """The TLS server context that presents host's leaf (cached per host, renewed before it expires)."""
        with self._lock:
            cached = self._contexts.get(host)
            if cached is not None and cached[1] - _now() > RENEW_BEFORE:
                self._contexts.move_to_end(host)
                return cached[0]
        leaf = self.leaf(host)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])  # HTTP/2 is not offered: the proxy reads HTTP/1.1
        _load_chain(context, leaf.public_bytes(serialization.Encoding.PEM) + self.pem, self._leaf_key_pem)
        with self._lock:
            self._contexts[host] = (context, leaf.not_valid_after_utc)
            self._contexts.move_to_end(host)
            while len(self._contexts) > LEAF_CACHE:
                self._contexts.popitem(last=False)
        return context


def _load_chain(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """ssl loads certificates and keys only from files: hand it memfds, which never touch a disk
    and are closed at once (the key of the leaves, never the CA's, passes through them)."""
    cert_fd = os.memfd_create("sandboxctl-leaf", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("sandboxctl-leaf-key", os.MFD_CLOEXEC)
    try:
        os.write(cert_fd, chain_pem)
        os.write(key_fd, key_pem)
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        for fd in (cert_fd, key_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem")


def system_bundle() -> bytes:
    """The host's CA bundle (the first of the usual paths that can be read), or b'' if none."""
    for path in (ssl.get_default_verify_paths().cafile, *SYSTEM_BUNDLES):
        if not path:
            continue
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            continue
    return b""


def combined_bundle(ca_pem: bytes, system: bytes) -> bytes:
    """The run's CA first, then the system's: what the sandbox trusts."""
    head = b"# sandboxctl: this run's CA (inspected hosts only; its key never leaves the supervisor)\n" + ca_pem
    return head + (b"\n" + system if system else b"")
