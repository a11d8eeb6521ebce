"""The exported egress lock (export/k8s_sidecar.py lock_script), run in a real network namespace.

A pod's NetworkPolicy cannot tell the sidecar's connections from the agent's; the init container's rule
does, by uid. Here the script runs in a new network namespace whose only way out is a TUN device held by
the test's helper: what the helper reads from it is what left the "pod", judged outside the processes
that try. Before the lock the agent's packets are seen (the judge works), after it none are (TCP, UDP as
DNS would use, IPv6), the agent still reaches a listener on the loopback (the sidecar's port), and, as
root, where a second uid exists, the proxy's uid still goes out. An unprivileged user gets a user
namespace with one uid: the lock is then made for that uid (the same function, another number).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sandboxctl.export import k8s_sidecar
from sandboxctl.export.k8s import export_k8s, render
from sandboxctl.policy.discover import load_named

HELPER = r'''
import fcntl, json, os, socket, struct, subprocess, sys, time

agent_uid, proxy_uid, script = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
V4, V6 = "10.213.0.2", "fd00:213::2"

def ip(*args):
    subprocess.run(["ip", *args], check=True)

ip("link", "set", "lo", "up")
tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
fcntl.ioctl(tun, 0x400454CA, struct.pack("16sH", b"sbxlock0", 0x0001 | 0x1000))  # TUNSETIFF, IFF_TUN|IFF_NO_PI
ip("addr", "add", "10.213.0.1/24", "dev", "sbxlock0")
ip("link", "set", "sbxlock0", "up")
six = os.path.exists("/proc/sys/net/ipv6")
if six:
    ip("-6", "addr", "add", "fd00:213::1/64", "dev", "sbxlock0", "nodad")
listener = socket.create_server(("127.0.0.1", 0))  # the sidecar's loopback port
listener.listen(8)

def drain():
    seen = []
    time.sleep(0.3)
    while True:
        try:
            packet = os.read(tun, 65536)
        except BlockingIOError:
            return seen
        if packet[0] >> 4 == 4 and socket.inet_ntop(socket.AF_INET, packet[16:20]) == V4:
            seen.append(("v4", packet[9]))
        elif packet[0] >> 4 == 6 and socket.inet_ntop(socket.AF_INET6, packet[24:40]) == V6:
            seen.append(("v6", packet[6]))

def attempt(uid):
    """In a child as uid: TCP and UDP out over v4 (and TCP over v6), TCP to the loopback listener."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        result = {}
        try:
            if uid != os.getuid():
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            for name, family, kind, address in (("tcp4", socket.AF_INET, socket.SOCK_STREAM, (V4, 443)),
                                                ("udp4", socket.AF_INET, socket.SOCK_DGRAM, (V4, 53)),
                                                ("tcp6", socket.AF_INET6, socket.SOCK_STREAM, (V6, 443))):
                if name == "tcp6" and not six:
                    continue
                with socket.socket(family, kind) as s:
                    s.settimeout(0.3)
                    try:
                        s.connect(address) if kind == socket.SOCK_STREAM else s.sendto(b"\0" * 12, address)
                        result[name] = "sent"
                    except OSError as exc:
                        result[name] = exc.errno or str(exc)
            with socket.create_connection(listener.getsockname(), timeout=5):
                result["loopback"] = "connected"
        except BaseException as exc:
            result["error"] = repr(exc)
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        result = json.loads(pipe.read())
    accepted, _ = listener.accept() if result.get("loopback") else (None, None)
    if accepted:
        accepted.close()
    result["left"] = sorted(set(map(tuple, drain())))
    return result

report = {"ipv6": six}
drain()  # whatever the kernel sent when the link came up
report["before"] = attempt(agent_uid)
lock = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
report["lock"] = {"rc": lock.returncode, "out": lock.stdout, "err": lock.stderr}
report["agent"] = attempt(agent_uid)
if proxy_uid >= 0:
    report["proxy"] = attempt(proxy_uid)
print(json.dumps(report))
'''

TCP, UDP = 6, 17
# ip and iptables live in sbin, which an unprivileged user's PATH often lacks
SEARCH = os.pathsep.join([os.environ.get("PATH", "/usr/bin:/bin"), "/usr/sbin", "/sbin"])


def _namespace_prefix() -> list[str]:
    if shutil.which("unshare", path=SEARCH) is None or shutil.which("ip", path=SEARCH) is None:
        pytest.skip("unshare(1) or ip(8) is not installed")
    if not (shutil.which("iptables", path=SEARCH) or shutil.which("iptables-legacy", path=SEARCH)):
        pytest.skip("iptables is not installed (the egress lock's tool)")
    unshare = str(shutil.which("unshare", path=SEARCH))
    return [unshare, "--net"] if os.geteuid() == 0 else [unshare, "--user", "--map-root-user", "--net"]


def _exported_lock() -> tuple[str, int, int]:
    documents = list(yaml.safe_load_all(render(export_k8s(load_named("claude-code").policy))))
    template = next(d for d in documents if d["kind"] == "SandboxTemplate")
    pod = template["spec"]["podTemplate"]["spec"]
    lock = next(c for c in pod["initContainers"] if c["name"] == k8s_sidecar.LOCK_CONTAINER)
    proxy = next(c for c in pod["initContainers"] if c["name"] == k8s_sidecar.PROXY_CONTAINER)
    agent_uid = pod["containers"][0]["securityContext"]["runAsUser"]
    assert lock["command"][:2] == ["/bin/sh", "-c"] and lock["command"][2] == k8s_sidecar.lock_script(agent_uid)
    return lock["command"][2], agent_uid, proxy["securityContext"]["runAsUser"]


def _run(tmp_path: Path, script: str, agent_uid: int, proxy_uid: int, path: str | None = None) -> dict:
    helper = tmp_path / "helper.py"
    helper.write_text(HELPER)
    env = {"PATH": path or SEARCH,
           "XTABLES_LOCKFILE": str(tmp_path / "xtables.lock")}  # the pod's /run is an emptyDir; here, our own
    result = subprocess.run([*_namespace_prefix(), sys.executable, str(helper), str(agent_uid), str(proxy_uid),
                             script], capture_output=True, text=True, timeout=120, env=env)
    if result.returncode != 0 and "Operation not permitted" in result.stderr and os.geteuid() != 0:
        pytest.skip(f"no user and network namespace for this user: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_lock_leaves_the_agent_only_the_loopback(tmp_path: Path) -> None:
    script, agent_uid, proxy_uid = _exported_lock()
    assert proxy_uid != agent_uid
    if os.geteuid() != 0:  # one uid in the user namespace: lock that one
        script, agent_uid, proxy_uid = k8s_sidecar.lock_script(0), 0, -1
    report = _run(tmp_path, script, agent_uid, proxy_uid)
    expected = {("v4", TCP), ("v4", UDP)} | ({("v6", TCP)} if report["ipv6"] else set())

    before = report["before"]
    assert "error" not in before, before
    assert {tuple(p) for p in before["left"]} == expected  # the judge sees the agent's packets

    assert report["lock"]["rc"] == 0, report["lock"]
    assert "may send only on the loopback" in report["lock"]["out"]
    after = report["agent"]
    assert "error" not in after, after
    assert after["left"] == [], after  # nothing of the agent's left the namespace: not TCP, not DNS, not v6
    assert after["loopback"] == "connected"  # the sidecar's 127.0.0.1 port is still reachable
    assert after["udp4"] == errno.EPERM and after["tcp4"] != "sent"  # the rule's DROP, not a lost packet

    if proxy_uid >= 0:
        proxy = report["proxy"]
        assert "error" not in proxy, proxy
        assert {tuple(p) for p in proxy["left"]} == expected  # the sidecar's uid still dials out


def test_without_iptables_the_lock_fails_and_the_pod_would_not_start(tmp_path: Path) -> None:
    script, agent_uid, _ = _exported_lock()
    if os.geteuid() != 0:
        script, agent_uid = k8s_sidecar.lock_script(0), 0
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("ip",):  # the helper's own tool; no iptables on this PATH
        os.symlink(str(shutil.which(tool, path=SEARCH)), tools / tool)
    report = _run(tmp_path, script, agent_uid, -1, path=str(tools))
    assert report["lock"]["rc"] == 1 and "the pod does not start" in report["lock"]["err"]
    assert {tuple(p) for p in report["agent"]["left"]}  # no rule was added: the agent's packets still go
