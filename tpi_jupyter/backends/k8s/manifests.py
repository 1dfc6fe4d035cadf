"""The objects a task sends to the cluster, as plain manifests (dicts), built without a cluster.

One Indexed Job runs the ranks; one Secret holds the environment values and the storage
credentials, mounted into the agent only. `tpi run cloud=k8s --dry-run --manifests` prints these.

Spot pools, as the clouds document them (the Job tolerates the taints and prefers the labels):

| cloud | node label | taint |
|---|---|---|
| GKE | `cloud.google.com/gke-spot=true` | `cloud.google.com/gke-spot=true:NoSchedule` (when the pool sets it) |
| EKS managed node groups | `eks.amazonaws.com/capacityType=SPOT` | none by default |
| EKS Karpenter | `karpenter.sh/capacity-type=spot` | none by default |
| AKS | `kubernetes.azure.com/scalesetpriority=spot` | `kubernetes.azure.com/scalesetpriority=spot:NoSchedule` |
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from ...spec import TaskSpec
from ..kit.tags import CREATOR, TASK, label_value

CONTAINER = "task"  # the container whose exit code fails an index
RUNTIME = "/tpi"  # the agent's runtime, copied in by the init container
SECRET_DIR = "/etc/tpi"  # environment values and storage credentials (0400)
MACHINE_DIR = "/var/lib/tpi"  # the agent's work and private directories
ENV_KEY = "env.json"
STORAGE_KEY = "storage.json"
TRANSFER_KEY = "transfer-token"  # the transfer pod's token (the client sends it through the proxy)
CLAIM_DIR = "/tpi-remote"  # where the PersistentVolumeClaim is mounted, in task and transfer pods
DEFAULT_CLAIM_GB = 10  # disk_size=-1 (automatic): the claim's size
TRANSFER_PORT = 8080
PROTOCOL = "tpi-k8s-pvc"  # the client's URL of a claim's remote (proxyfs.py)
ROLE = "tpi-jupyter/role"  # "transfer" on the transfer pod, which is not a rank
INDEX = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
ID_ANNOTATION = "tpi-jupyter/task-id"
REMOTE_ANNOTATION = "tpi-jupyter/remote"
BACKOFF_PER_INDEX = 3  # respawns of one rank after failures that are not disruptions
DEADLINE_GRACE = 300  # seconds past the task's deadline: the agent reports `timeout` first
TERMINATION_GRACE = 60  # an evicted pod's agent stops the script and syncs back
SPOT_TOLERATIONS = [
    {"key": "cloud.google.com/gke-spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
]  # fmt: skip
SPOT_LABELS = [
    ("cloud.google.com/gke-spot", "true"),
    ("eks.amazonaws.com/capacityType", "SPOT"),
    ("karpenter.sh/capacity-type", "spot"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
]
_MACHINE = re.compile(r"(?P<cpu>\d+(\.\d+)?)-(?P<memory>\d+)(\+(?P<accelerator>[a-z0-9-]+)\*(?P<count>\d+))?")


def labels(task_id: str, creator: str) -> dict[str, str]:
    return {TASK: task_id, CREATOR: label_value(creator) or "unknown"}


def metadata(spec: TaskSpec, name: str, namespace: str, creator: str, remote: str = "") -> dict[str, Any]:
    """Labels for finding (task, creator); the user's tags and the full id as annotations (any text)."""
    notes = {**{f"tpi-jupyter/tag.{key}": value for key, value in spec.tags.items()}, ID_ANNOTATION: spec.id}
    if remote:
        notes[REMOTE_ANNOTATION] = remote
    return {"name": name, "namespace": namespace, "labels": labels(spec.id, creator), "annotations": notes}


def resources(spec: TaskSpec) -> dict[str, dict[str, str]]:
    """machine `{cpu}-{memory MB}[+{accelerator}*{count}]` and disk_size, as requests = limits."""
    found = _MACHINE.fullmatch(spec.native_machine)
    if found is None:  # the spec validated the syntax already
        raise ValueError(f"machine: {spec.native_machine!r} is not {{cpu}}-{{memory}}[+{{gpu}}*{{n}}]")
    wanted = {"cpu": found["cpu"], "memory": f"{found['memory']}M"}
    if spec.disk_size > 0 and spec.container:  # without a container, disk_size sizes the claim
        wanted["ephemeral-storage"] = f"{spec.disk_size}Gi"
    limits = dict(wanted)
    if found["accelerator"]:
        limits["nvidia.com/gpu"] = found["count"]
    return {"requests": wanted, "limits": limits}


def node_selector(spec: TaskSpec) -> dict[str, str]:
    selected = dict(item.split("=", 1) for item in spec.native_region.split(",") if item)
    found = _MACHINE.fullmatch(spec.native_machine)
    if found is not None and found["accelerator"]:
        selected["accelerator"] = found["accelerator"]
    return selected


def spot_scheduling(spec: TaskSpec) -> dict[str, Any]:
    if spec.spot < 0:
        return {}
    preferred = [
        {"weight": 100, "preference": {"matchExpressions": [{"key": key, "operator": "In", "values": [value]}]}}
        for key, value in SPOT_LABELS
    ]  # fmt: skip
    return {
        "tolerations": SPOT_TOLERATIONS,
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}},
    }


def secret(
    meta: dict[str, Any], values: dict[str, str], storage: dict[str, str], token: str = ""
) -> dict[str, Any]:
    data = {ENV_KEY: json.dumps(values), STORAGE_KEY: json.dumps(storage)}
    if token:
        data[TRANSFER_KEY] = token
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque",
        "data": {key: base64.b64encode(text.encode()).decode() for key, text in data.items()},
    }  # fmt: skip


def claim(spec: TaskSpec, meta: dict[str, Any]) -> dict[str, Any]:
    """The remote's PersistentVolumeClaim: the default StorageClass, sized by disk_size; shared
    by every rank (ReadWriteMany) when there are several."""
    mode = "ReadWriteOnce" if spec.parallelism == 1 else "ReadWriteMany"
    size = spec.disk_size if spec.disk_size > 0 else DEFAULT_CLAIM_GB
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
        "spec": {"accessModes": [mode], "resources": {"requests": {"storage": f"{size}Gi"}}},
    }  # fmt: skip


def transfer_pod(meta: dict[str, Any], agent_image: str, agent_runtime: str) -> dict[str, Any]:
    """The pod that serves the claim to the client through the API server's pod proxy (transfer.py).

    It runs in the agent's runtime image (Python and this package), not the user's."""
    labels = {**meta["labels"], ROLE: "transfer"}
    server = {
        "name": "transfer", "image": agent_image,
        "command": [f"{agent_runtime}/bin/python", "-m", "tpi_jupyter.backends.k8s.transfer", "--root", CLAIM_DIR,
                    "--token-file", f"{SECRET_DIR}/{TRANSFER_KEY}", "--port", str(TRANSFER_PORT)],
        "ports": [{"containerPort": TRANSFER_PORT, "name": "transfer"}],
        "volumeMounts": [{"name": "tpi-remote", "mountPath": CLAIM_DIR},
                         {"name": "tpi-secret", "mountPath": SECRET_DIR, "readOnly": True}],
    }  # fmt: skip
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {**meta, "name": transfer_name(meta["name"]), "labels": labels},
        "spec": {
            "restartPolicy": "Always", "enableServiceLinks": False, "automountServiceAccountToken": False,
            "containers": [server],
            "volumes": [
                {"name": "tpi-remote", "persistentVolumeClaim": {"claimName": meta["name"]}},
                {"name": "tpi-secret", "secret": {"secretName": meta["name"], "defaultMode": 0o400,
                                                  "items": [{"key": TRANSFER_KEY, "path": TRANSFER_KEY}]}},
            ],
        },
    }  # fmt: skip


def transfer_name(name: str) -> str:
    return f"{name}-transfer"


def _containers(spec: TaskSpec, remote: str, agent_image: str, agent_runtime: str) -> dict[str, Any]:
    runtime_mount = {"name": "tpi-runtime", "mountPath": RUNTIME}
    init = {
        "name": "tpi-runtime", "image": agent_image,
        # Only /bin/sh and cp from the runtime image: it brings its own Python and the agent.
        "command": ["/bin/sh", "-c", 'cp -a "$1"/. "$2"/', "tpi-runtime", agent_runtime, RUNTIME],
        "volumeMounts": [runtime_mount],
    }  # fmt: skip
    main = {
        "name": CONTAINER, "image": spec.native_image,
        "command": [f"{RUNTIME}/bin/python", "-m", "tpi_jupyter.backends.k8s.pod",
                    "--remote", remote, "--secret-dir", SECRET_DIR, "--machine-dir", MACHINE_DIR],
        "env": [
            {"name": "TPI_PRIVATE_AGENT", "value": "1"},
            {"name": "TPI_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "resources": resources(spec),
        "volumeMounts": [
            runtime_mount,
            {"name": "tpi-secret", "mountPath": SECRET_DIR, "readOnly": True},
            {"name": "tpi-machine", "mountPath": MACHINE_DIR},
        ],
    }  # fmt: skip
    return {"initContainers": [init], "containers": [main]}


def job(
    spec: TaskSpec, meta: dict[str, Any], remote: str, seconds_left: int, agent_image: str, agent_runtime: str
) -> dict[str, Any]:
    """The Indexed Job, created suspended (`start` resumes it once the remote holds the task).

    A remote below CLAIM_DIR is the task's PersistentVolumeClaim, mounted there in every pod."""
    sized = spec.disk_size > 0 and spec.container  # else disk_size sizes the claim
    machine_dir: dict[str, Any] = {"sizeLimit": f"{spec.disk_size}Gi"} if sized else {}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE,
        "automountServiceAccountToken": bool(spec.permission_set),
        **_containers(spec, remote, agent_image, agent_runtime),
        "volumes": [
            {"name": "tpi-runtime", "emptyDir": {}},
            {"name": "tpi-machine", "emptyDir": machine_dir},
            {"name": "tpi-secret", "secret": {"secretName": meta["name"], "defaultMode": 0o400}},
        ],
        **spot_scheduling(spec),
    }
    if remote.startswith(f"{CLAIM_DIR}/"):
        pod["volumes"].append({"name": "tpi-remote", "persistentVolumeClaim": {"claimName": meta["name"]}})
        pod["containers"][0]["volumeMounts"].append({"name": "tpi-remote", "mountPath": CLAIM_DIR})
    if spec.permission_set:
        pod["serviceAccountName"] = spec.permission_set
    if node_selector(spec):
        pod["nodeSelector"] = node_selector(spec)
    rules = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailIndex", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn", "values": [0]}},
    ]  # fmt: skip
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "completionMode": "Indexed", "completions": spec.parallelism, "parallelism": spec.parallelism,
            "backoffLimitPerIndex": BACKOFF_PER_INDEX, "activeDeadlineSeconds": max(1, seconds_left) + DEADLINE_GRACE,
            "podFailurePolicy": {"rules": rules}, "suspend": True,
            "template": {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]}, "spec": pod},
        },
    }  # fmt: skip
