"""The pod of the SandboxTemplate: volumes, environment, limits and a hardened security context.

Also the list of what `sandboxctl run` enforces and a pod cannot (Landlock, masks, approvals, the
log, ...), worded from the policy at hand. Pure, like the rest of the export: no environment, no
host, no secret source is read here.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from sandboxctl import paths, units
from sandboxctl.paths import within

if TYPE_CHECKING:
    from sandboxctl.export.k8s_options import K8sOptions
    from sandboxctl.export.k8s_sidecar import Sidecar
    from sandboxctl.policy.model import Policy

DEFAULT_IMAGE = "docker.io/library/debian:stable-slim"
IDLE_COMMAND = ["sleep", "infinity"]  # the default image has no server: idle, to be `kubectl exec`ed into
SANDBOX_UID = 1000
HOME = "/home/sandbox"  # a private empty HOME, as locally (an emptyDir)
WORKSPACE = "/workspace"
WORKSPACE_SIZE = "10Gi"
SECRETS_DIR = "/run/secrets"  # as locally (plan/build.py)
SECRET_FILE_MODE = 0o400
CONTAINER = "sandbox"


class Notes:
    """What the header says: what each part of the policy became, and what it could not become."""

    def __init__(self) -> None:
        self.mapped: list[str] = []
        self.lost: list[str] = []
        self.relies: list[str] = []  # what must hold on the cluster for what is mapped to hold
        self.warnings: list[str] = []


def _quantity(size: int) -> str:
    """Bytes as a Kubernetes quantity in binary units (the policy's 4G is 4 GiB)."""
    for suffix, factor in (("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


def _volume_name(path: str, taken: set[str]) -> str:
    base = ("tmpfs-" + re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-"))[:60].strip("-")
    name, number = base, 2
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    taken.add(name)
    return name


def _scratch_dirs(policy: Policy, notes: Notes) -> list[str]:
    """HOME and filesystem.tmpfs as fresh writable directories; one already under another is skipped."""
    wanted = [HOME] + [paths.expand(p, workspace=WORKSPACE, home=HOME) for p in policy.filesystem.tmpfs]
    if "/tmp" not in wanted:
        wanted.append("/tmp")
        notes.mapped.append("/tmp -> an emptyDir too (not in filesystem.tmpfs, but the root file system is "
                            "read-only)")
    kept: list[str] = []
    for path in sorted(set(wanted), key=lambda p: (p.count("/"), p)):
        if path == "/" or (policy.workspace != "none" and path == WORKSPACE):
            notes.lost.append(f"filesystem.tmpfs {path}: not mounted (it would hide "
                              f"{'the root' if path == '/' else 'the workspace'})")
        elif not any(within(path, parent) for parent in kept):
            kept.append(path)
    return kept


def _volumes(policy: Policy, options: K8sOptions, notes: Notes) -> tuple[list, list, list]:
    """(pod volumes, container mounts, volumeClaimTemplates), in a stable order."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    read_only = policy.workspace == "ro"
    if policy.workspace == "none":
        notes.mapped.append("workspace: none -> no workspace volume")
        if options.workspace_claim:
            notes.warnings.append(f"--workspace-claim {options.workspace_claim}: ignored, the policy has "
                                  "workspace: none")
    else:
        mounts.append({"name": "workspace", "mountPath": WORKSPACE, **({"readOnly": True} if read_only else {})})
        if options.workspace_claim:
            source: dict[str, Any] = {"claimName": options.workspace_claim}
            if read_only:
                source["readOnly"] = True
            volumes.append({"name": "workspace", "persistentVolumeClaim": source})
            notes.mapped.append(f"workspace: {policy.workspace} -> the existing claim {options.workspace_claim} at "
                                f"{WORKSPACE}{' (read-only)' if read_only else ''}")
        else:
            # the controller adds the pod volume itself: <name>-<sandbox> per sandbox, mounted by name
            claims.append({"metadata": {"name": "workspace"},
                           "spec": {"accessModes": ["ReadWriteOnce"],
                                    "resources": {"requests": {"storage": WORKSPACE_SIZE}}}})
            notes.mapped.append(f"workspace: {policy.workspace} -> a new {WORKSPACE_SIZE} volume per sandbox "
                                f"(volumeClaimTemplates) at {WORKSPACE}{' (read-only)' if read_only else ''}; "
                                "it goes with the sandbox: use --workspace-claim to keep the work")
            if read_only:
                notes.warnings.append("workspace: ro with a new volume mounts an empty, read-only directory; "
                                      "pass --workspace-claim NAME to mount existing work")
    taken = {"workspace", "home", "secrets"}
    scratch = _scratch_dirs(policy, notes)
    for path in scratch:
        name = "home" if path == HOME else _volume_name(path, taken)
        volumes.append({"name": name, "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": name, "mountPath": path})
    notes.mapped.append(f"HOME {HOME} and filesystem.tmpfs -> emptyDir volumes in memory (they count as "
                        f"the pod's memory): {', '.join(scratch)}")
    file_secrets = [s for s in policy.secrets if s.deliver_as == "file"]
    if file_secrets:
        items = [{"key": s.name, "path": s.name, "mode": SECRET_FILE_MODE} for s in file_secrets]
        volumes.append({"name": "secrets", "secret": {"secretName": options.secret_name,
                                                      "defaultMode": SECRET_FILE_MODE, "items": items}})
        mounts.append({"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True})
    mounts.sort(key=lambda m: (m["mountPath"].count("/"), m["mountPath"]))
    return volumes, mounts, claims


def _environment(policy: Policy, options: K8sOptions, notes: Notes, sidecar: Sidecar | None) -> list[dict[str, Any]]:
    """HOME, env.set, and secrets by reference (secretKeyRef) or by file path: never a value. With the
    proxy's sidecar, its variables (they win over env.set, as locally) and the phantoms' placeholders."""
    entries: dict[str, dict[str, Any]] = {
        "HOME": {"name": "HOME", "value": HOME},
        "SANDBOXCTL": {"name": "SANDBOXCTL", "value": "1"},
    }
    entries.update({name: {"name": name, "value": value} for name, value in policy.env.set})
    if policy.env.set:
        notes.mapped.append(f"env.set -> env: {', '.join(name for name, _ in policy.env.set)}")
    for secret in policy.secrets:
        entries.pop(secret.name, None)
        if secret.deliver_as == "proxy":  # the value must never reach the agent's container
            if sidecar is None:
                notes.lost.append(f"secrets.{secret.name} (as: proxy): needs sandboxctl's proxy to put the value "
                                  "into requests; not exported (the pod gets neither the value nor a placeholder)")
            continue
        if secret.deliver_as == "env":
            entries[secret.name] = {"name": secret.name, "valueFrom": {"secretKeyRef": {
                "name": options.secret_name, "key": secret.name}}}
        else:
            entries[f"{secret.name}_FILE"] = {"name": f"{secret.name}_FILE", "value": f"{SECRETS_DIR}/{secret.name}"}
    exported = [s for s in policy.secrets if s.deliver_as != "proxy"]
    if exported:
        kinds = ", ".join(f"{s.name} (as {s.deliver_as}, from {s.source_kind}:...)" for s in exported)
        notes.mapped.append(f"secrets -> keys of the Secret {options.secret_name}, which you create "
                            f"(no value is written here): {kinds}; files at {SECRETS_DIR}/NAME, mode 0400 "
                            "(the kubelet adds group read for fsGroup 1000, so the non-root user can read them)")
        timed = [f"{s.name} ({units.format_duration(s.ttl)})" for s in exported if s.ttl is not None]
        if timed:
            notes.lost.append(f"secrets ttl: {', '.join(timed)}: a Secret stays mounted while the pod runs")
    if policy.env.passthrough:
        notes.lost.append(f"env.pass: {', '.join(policy.env.passthrough)}: there is no caller to copy from; put "
                          "values in env.set or the image")
    notes.lost.append("an empty environment: the container also has the image's ENV and KUBERNETES_SERVICE_* "
                      "(service links are off)")
    first: list[dict[str, Any]] = []
    if sidecar is not None:
        for entry in sidecar.agent_env:
            entries.pop(entry["name"], None)
        first = [e for e in sidecar.agent_env if "valueFrom" in e]  # referred to by $(NAME): defined before
        entries.update({e["name"]: e for e in sidecar.agent_env if "valueFrom" not in e})
    return first + [entries[name] for name in sorted(entries)]


def _limits(policy: Policy, options: K8sOptions, notes: Notes) -> tuple[dict[str, Any], int | None]:
    """(container resources, activeDeadlineSeconds)."""
    limits = policy.limits
    resources: dict[str, Any] = {}
    if limits.memory is not None:
        resources = {"limits": {"memory": _quantity(limits.memory)}}
        notes.mapped.append(f"limits.memory -> resources.limits.memory {_quantity(limits.memory)}")
    deadline = None
    if limits.timeout is not None:
        deadline = max(1, math.ceil(limits.timeout))
        notes.mapped.append(f"limits.timeout -> activeDeadlineSeconds {deadline}")
        if options.warm_pool:
            notes.lost.append("limits.timeout in a warm pool: activeDeadlineSeconds counts from the pod's start, "
                              "so time spent waiting in the pool is taken from the run")
    if limits.pids is not None:
        notes.lost.append(f"limits.pids {limits.pids}: no per-container setting (the kubelet's podPidsLimit is "
                          "per node)")
    if limits.file_size is not None:
        notes.lost.append(f"limits.file_size {units.format_size(limits.file_size)}: no pod setting (rlimits come "
                          "from the container runtime)")
    if limits.open_files is not None:
        notes.lost.append(f"limits.open_files {limits.open_files}: no pod setting (rlimits come from the "
                          "container runtime)")
    return resources, deadline


SECURITY = ("uid/gid 1000 (runAsNonRoot), allowPrivilegeEscalation: false, capabilities: drop ALL, "
            "readOnlyRootFilesystem: true, seccompProfile: RuntimeDefault, no service account token, no "
            "service links")


def pod_spec(policy: Policy, options: K8sOptions, runtime_class: str, notes: Notes,
             sidecar: Sidecar | None = None) -> tuple[dict[str, Any], list]:
    """(the podTemplate's spec, volumeClaimTemplates): non-root, nothing to escalate with, a read-only
    root, and only the volumes the policy's workspace, tmpfs and file secrets call for; with the proxy's
    sidecar (export/k8s_sidecar.py), its init containers and volumes too."""
    volumes, mounts, claims = _volumes(policy, options, notes)
    if sidecar is not None:
        volumes += sidecar.volumes
        mounts = sorted(mounts + sidecar.agent_mounts, key=lambda m: (m["mountPath"].count("/"), m["mountPath"]))
    env = _environment(policy, options, notes, sidecar)
    resources, deadline = _limits(policy, options, notes)
    seccomp = {"type": "RuntimeDefault"}
    container: dict[str, Any] = {"name": CONTAINER, "image": options.image or DEFAULT_IMAGE}
    if options.image is None:
        container["command"] = list(IDLE_COMMAND)
        notes.mapped.append(f"image: {DEFAULT_IMAGE}, idling ({' '.join(IDLE_COMMAND)}) to be exec'ed into; "
                            "pass --image for your agent's image (its own entrypoint then runs)")
    else:
        notes.mapped.append(f"image: {options.image} with its own entrypoint")
    container["workingDir"] = WORKSPACE if policy.workspace != "none" else HOME
    container["env"] = env
    if resources:
        container["resources"] = resources
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": SANDBOX_UID,
        "runAsGroup": SANDBOX_UID,
        "seccompProfile": dict(seccomp),
    }
    container["volumeMounts"] = mounts
    spec: dict[str, Any] = {
        "runtimeClassName": runtime_class,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": SANDBOX_UID, "runAsGroup": SANDBOX_UID,
                            "fsGroup": SANDBOX_UID, "seccompProfile": dict(seccomp)},
    }
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    if sidecar is not None:
        spec["shareProcessNamespace"] = False  # the agent sees neither the sidecar's processes nor its memory
        spec["initContainers"] = sidecar.init_containers
    spec["containers"] = [container]
    if volumes:
        spec["volumes"] = volumes
    return spec, claims


def lost_locally_enforced(policy: Policy, notes: Notes, proxy_logs: bool = False) -> None:
    """The layers and guards of `sandboxctl run` that have no pod equivalent, as this policy sets them
    (proxy_logs: the proxy's sidecar logs the network events)."""
    approval = policy.approval
    notes.lost.append(f"approvals (approval: {approval.mode}, via {approval.via}): nothing asks a human; what "
                      "is not allowed here is refused")
    log = policy.log
    log_path = log.path.replace("{state}", "~/.local/state/sandboxctl")
    what = ("file events or executed programs" if proxy_logs
            else "denials, connections, executed programs or injected secrets")
    notes.lost.append(f"the action log ({log_path}; file events: {log.file_events}, exec events: "
                      f"{'on' if log.exec_events else 'off'}): no JSONL log of {what}"
                      + (" (the sidecar logs connections, requests and secrets)" if proxy_logs else "")
                      + "; use the cluster's audit log and the runtime's logs")
    if log.forward:
        notes.lost.append(f"log.forward ({', '.join(log.forward)}): not set up in the pod")
    notes.lost.append(f"Landlock (landlock: {policy.landlock}): not applied; the pod's file access is its "
                      "volumes and a read-only root")
    if policy.exec_allow is not None:
        notes.lost.append(f"exec.allow ({', '.join(policy.exec_allow)}): any file in the image may be executed")
    seccomp = "seccomp: the runtime's default profile (RuntimeDefault), not sandboxctl's baseline"
    if policy.syscalls_deny:
        seccomp += f"; syscalls.deny {', '.join(policy.syscalls_deny)} is not applied"
    if policy.syscalls_allow:
        seccomp += f"; syscalls.allow {', '.join(policy.syscalls_allow)} is moot"
    notes.lost.append(seccomp)
    fs = policy.filesystem
    if fs.read or fs.write:
        granted = ", ".join((*fs.read, *fs.write))
        notes.lost.append(f"filesystem.read/write host paths ({granted}): nothing of the host is mounted; the "
                          f"image provides the system, and paths under HOME start empty")
    in_workspace = [p for p in fs.deny if p.startswith("{workspace}")]
    if fs.deny:
        text = f"filesystem.deny ({len(fs.deny)} masks): not applied; the host's files are not mounted anyway"
        if in_workspace and policy.workspace != "none":
            text += f", but these stay visible in the workspace volume: {', '.join(in_workspace)}"
        notes.lost.append(text)
    if policy.workspace == "rw":
        from sandboxctl.protect.names import ROOT_NAMES as PROTECTED_NAMES

        protected = ", ".join((*PROTECTED_NAMES, *fs.protect))
        notes.lost.append(f"protected paths ({protected}): not held read-only; whatever a volume makes "
                          "writable stays writable")
