"""The plan of an inspecting run (network.inspect, as: proxy): the CA files, the variables, the walls."""

from __future__ import annotations

import pytest

from sandboxctl.errors import SandboxError
from sandboxctl.launch import bwrap, oci
from sandboxctl.plan.build import CA_BUNDLE_VARIABLES, TLS_BUNDLE, TLS_CA
from tests.unit.test_plan import HOME, plan_for, policy_from_text

POLICY = """version: 1
extends: default
network:
  mode: proxy
  allow: [api.github.com]
  upstream_ca: ["{home}/corp-ca.pem"]
  inspect:
    api.github.com:
      allow: ["GET /repos/acme/**"]
secrets:
  GITHUB_TOKEN:
    from: env:GH
    as: proxy
    hosts: [api.github.com, uploads.github.com]
"""
FILES = {"/etc/ssl": "dir", "/etc/ssl/certs": "dir", "/etc/ssl/certs/ca-certificates.crt": "file",
         "/etc/ssl/cert.pem": "symlink:/etc/ssl/certs/ca-certificates.crt", f"{HOME}/corp-ca.pem": "file"}


def test_the_sandbox_trusts_the_run_ca_through_files_made_at_launch(tmp_path) -> None:
    plan = plan_for(policy_from_text(POLICY, tmp_path), files=FILES)
    assert plan.inspecting
    data = [(m.target, m.source) for m in plan.mounts if m.kind == "data-file"]
    # the symlink's target once, not the link; the absent RHEL path not at all
    assert data == [(TLS_CA, "tls:ca"), (TLS_BUNDLE, "tls:bundle"),
                    ("/etc/ssl/certs/ca-certificates.crt", "tls:bundle")]
    env = dict(plan.env)
    assert all(env[name] == TLS_BUNDLE for name in CA_BUNDLE_VARIABLES) and env["NODE_EXTRA_CA_CERTS"] == TLS_CA
    assert "GITHUB_TOKEN" not in env  # the placeholder arrives at launch, the value never
    assert any("GITHUB_TOKEN holds a per-run placeholder" in note for note in plan.notes)
    assert any("uploads.github.com is inspected but not in network.allow" in note for note in plan.notes)
    rules = {rule.path: rule.access for rule in plan.landlock.paths}
    assert all(rules[target] == ("read",) for target, _ in data)
    assert plan.network.inspect == (("api.github.com", ("GET /repos/acme/**",)),)
    assert plan.network.upstream_ca == (f"{HOME}/corp-ca.pem",)
    (secret,) = plan.secrets
    assert secret.deliver_as == "proxy" and secret.hosts == ("api.github.com", "uploads.github.com")
    argv = bwrap.render(plan, bwrap.LaunchFds(seccomp=3, control=4, stderr=5, empty_file="/e"))
    at = argv.index("/etc/ssl/certs/ca-certificates.crt")
    assert argv[at - 4: at] == ["--perms", "0444", "--ro-bind-data", "{fd:tls:bundle}"]
    real = bwrap.render(plan, bwrap.LaunchFds(seccomp=3, control=4, stderr=5, empty_file="/e",
                                              data={TLS_CA: 7, TLS_BUNDLE: 8, "/etc/ssl/certs/ca-certificates.crt": 9}))
    assert real[real.index(TLS_CA) - 1] == "7" and real[real.index("/etc/ssl/certs/ca-certificates.crt") - 1] == "9"


def test_gvisor_binds_the_same_files_from_the_run_directory(tmp_path) -> None:
    plan = plan_for(policy_from_text(POLICY + "backend: gvisor\n", tmp_path), files=FILES)
    paths = oci.dry_paths(plan, "/run-dir")
    binds = {m["destination"]: m["source"] for m in oci.mounts(plan, paths) if m["type"] == "bind"}
    assert binds[TLS_BUNDLE] == "/run-dir/data/" + oci.data_file_name(TLS_BUNDLE)
    assert binds["/etc/ssl/certs/ca-certificates.crt"].startswith("/run-dir/data/")


def test_nothing_changes_for_a_run_that_inspects_nothing() -> None:
    plan = plan_for(files=FILES)
    assert not plan.inspecting
    assert not [m for m in plan.mounts if m.kind == "data-file"]
    assert "SSL_CERT_FILE" not in dict(plan.env) and plan.network.inspect == ()


def test_a_proxy_secret_needs_the_proxy_and_a_ca_file_must_exist(tmp_path) -> None:
    policy = policy_from_text(POLICY, tmp_path)
    with pytest.raises(SandboxError, match="as: proxy needs network mode proxy"):
        plan_for(policy, files=FILES, net="none")
    with pytest.raises(SandboxError, match=r"network.upstream_ca: .*corp-ca.pem is not a file"):
        plan_for(policy, files={k: v for k, v in FILES.items() if not k.endswith("corp-ca.pem")})


def test_inspect_entries_merge_by_host(tmp_path) -> None:
    policy = policy_from_text(POLICY.replace("    api.github.com:\n", "    API.GitHub.com:\n      allow: ['POST /x']\n"
                                             "    api.github.com:\n"), tmp_path)
    assert policy.network.inspect == (("api.github.com", ("POST /x", "GET /repos/acme/**")),)
