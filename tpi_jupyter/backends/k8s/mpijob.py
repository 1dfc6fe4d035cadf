"""A `launch=mpi` task as a kubeflow MPIJob (mpi-operator, kubeflow.org/v2beta1), when the
cluster has its CRD; without it the task stays an Indexed Job with a headless Service.

The launcher is rank 0 and also one of the machines (`runLauncherAsWorker`): it runs the script,
which calls mpirun with the hostfile and SSH keys the operator provides; the N-1 workers are
ranks 1..N-1 (with `runLauncherAsWorker` the operator labels worker-i with replica index i + 1,
which the downward API hands the agent as its rank). Both run the same agent container as a
Job's pods. `runPolicy` carries the task's deadline
(`activeDeadlineSeconds`), `cleanPodPolicy: Running` (the pods of a finished job go) and starts
suspended, as the Job does, until `start` resumes it.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

from ...spec import TaskSpec
from ..base import GroupState, Machine
from ..kit.multinode import refuse_placement
from ..kit.tags import TASK
from .job import ALIVE_PHASES, Api, create_once, not_found, pods
from .job import _pod_events as pod_events
from .manifests import _MACHINE, INDEX

GROUP, VERSION, PLURAL = "kubeflow.org", "v2beta1", "mpijobs"
CRD = f"{PLURAL}.{GROUP}"
REPLICA_INDEX = "training.kubeflow.org/replica-index"
ROLE = "training.kubeflow.org/job-role"


def check(spec: TaskSpec) -> None:
    """Before anything exists: a Kubernetes task has no placement to ask for."""
    refuse_placement(spec, "k8s", "the scheduler places pods; region=label=value chooses nodes")


def wanted(spec: TaskSpec) -> bool:
    return spec.launch == "mpi"


def installed(api: Api) -> bool:
    """Whether the cluster serves MPIJobs (the CRD, found by discovery)."""
    from kubernetes import client

    try:
        found = client.CustomObjectsApi(api.core.api_client).get_api_resources(GROUP, VERSION)
    except Exception as error:
        if not_found(error):
            return False
        raise
    return any(item.name == PLURAL for item in found.resources)


def plan(spec: TaskSpec) -> list[str]:
    headless = f"headless service {spec.id}: rank i answers as {spec.id}-i.{spec.id}"
    if wanted(spec):
        return [f"launch=mpi: an MPIJob (kubeflow.org/v2beta1; launcher = rank 0, {spec.parallelism - 1} "
                f"worker(s), slotsPerWorker {slots(spec)}) when the cluster serves its CRD, else the job "
                f"below and a {headless}"]  # fmt: skip
    return [headless] if spec.parallelism > 1 else []


def slots(spec: TaskSpec) -> int:
    """Processes per machine: its GPUs when it has some, else its whole CPUs (at least 1)."""
    found = _MACHINE.fullmatch(spec.native_machine)
    if found is None:
        return 1
    return int(found["count"]) if found["accelerator"] else max(1, int(float(found["cpu"])))


def _replica(template: dict[str, Any], replicas: int, rank_env: list[dict[str, Any]]) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    main = pod["spec"]["containers"][0]
    main["env"] = [*main.get("env", []), *rank_env]
    pod["spec"].pop("restartPolicy", None)  # the replica's restartPolicy decides
    return {"replicas": replicas, "restartPolicy": "Never", "template": pod}


def manifest(job: dict[str, Any], spec: TaskSpec) -> dict[str, Any]:
    """The MPIJob for the task, from the Indexed Job manifest the backend would send."""
    template = job["spec"]["template"]
    launcher = _replica(template, 1, [{"name": INDEX, "value": "0"}])
    worker_env: list[dict[str, Any]] = [
        {"name": INDEX, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{REPLICA_INDEX}']"}}}
    ]
    replicas = {"Launcher": launcher}
    if spec.parallelism > 1:
        replicas["Worker"] = _replica(template, spec.parallelism - 1, worker_env)
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "MPIJob", "metadata": job["metadata"],
        "spec": {
            "slotsPerWorker": slots(spec), "runLauncherAsWorker": True, "mpiImplementation": "OpenMPI",
            "runPolicy": {"activeDeadlineSeconds": job["spec"]["activeDeadlineSeconds"],
                          "cleanPodPolicy": "Running", "backoffLimit": 0, "suspend": True},
            "mpiReplicaSpecs": replicas,
        },
    }  # fmt: skip


def workload(spec: TaskSpec, meta: dict[str, Any], job: dict[str, Any], mpi: bool) -> list[dict[str, Any]]:
    """What runs the ranks: an MPIJob (`mpi`: launch=mpi and the CRD installed); else the Job,
    behind a headless Service when there are several ranks."""
    from . import service

    if mpi:
        return [manifest(job, spec)]
    if service.wanted(spec):
        return [service.manifest(meta), service.attach(job, meta["name"])]
    return [job]


def send(api: Api, item: dict[str, Any]) -> None:
    from . import job, service

    sent = {"MPIJob": create, "Service": service.create, "Job": job.create_job}
    sent[item["kind"]](api, item)


def rank(pod: Any) -> int:
    """An MPIJob pod's rank from the operator's labels: the launcher 0, worker-i i + 1; -1 else."""
    labels = pod.metadata.labels or {}
    if labels.get(ROLE) == "launcher":
        return 0
    found = labels.get(REPLICA_INDEX, "")
    return int(found) if labels.get(ROLE) == "worker" and found.isdigit() else -1


def _objects(api: Api) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api.core.api_client)


def create(api: Api, manifest_: dict[str, Any]) -> None:
    objects = _objects(api)

    def read_back(name: str, namespace: str) -> Any:  # shaped as the client's objects, for job.ours
        found = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return SimpleNamespace(metadata=SimpleNamespace(labels=found["metadata"].get("labels")))

    create_once(lambda namespace, body: objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body),
                read_back, api.namespace, manifest_)  # fmt: skip


def set_suspended(api: Api, name: str, suspended: bool) -> None:
    patch = {"spec": {"runPolicy": {"suspend": suspended}}}
    _objects(api).patch_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, name, patch)


def listing(api: Api, label_selector: str) -> list[dict[str, Any]]:
    """MPIJobs with the label; none when the cluster has no MPIJob CRD."""
    try:
        found = _objects(api).list_namespaced_custom_object(
            GROUP, VERSION, api.namespace, PLURAL, label_selector=label_selector
        )
    except Exception as error:
        if not_found(error):
            return []
        raise
    return list(found.get("items", []))


def lister(api: Api) -> Any:
    """A lister shaped as the kubernetes client's (`.items` of objects with `.metadata`), for sweep."""

    def listed(namespace: str, label_selector: str) -> Any:
        items = [SimpleNamespace(metadata=SimpleNamespace(
            name=item["metadata"]["name"], labels=item["metadata"].get("labels"),
            annotations=item["metadata"].get("annotations"))) for item in listing(api, label_selector)]  # fmt: skip
        return SimpleNamespace(items=items)

    return listed


def read(api: Api, name: str, task_id: str) -> GroupState:
    """As job.read, from the MPIJob's conditions and its pods (ranks from the operator's labels)."""
    try:
        found = _objects(api).get_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, name)
    except Exception as error:
        if not_found(error):
            return GroupState(exists=False)
        raise
    conditions = found.get("status", {}).get("conditions", [])
    finished = any(c["type"] in ("Succeeded", "Failed") and c["status"] == "True" for c in conditions)
    machines: list[Machine] = []
    events: list[dict[str, Any]] = []
    for pod in pods(api, task_id):
        phase = pod.status.phase if pod.status else "Pending"
        alive = phase in ALIVE_PHASES and pod.metadata.deletion_timestamp is None
        address = (pod.status.pod_ip or "") if pod.status else ""
        machines.append(Machine(rank=rank(pod), boot=0, alive=alive, address=address))
        events += pod_events(pod, rank(pod), 0)
    suspended = bool(found.get("spec", {}).get("runPolicy", {}).get("suspend"))
    return GroupState(exists=(not finished and not suspended) or any(m.alive for m in machines),
                      machines=machines, events=sorted(events, key=lambda e: e["time"]))  # fmt: skip


def delete(api: Api, name: str, task_id: str) -> None:
    """The MPIJob first: its operator would recreate pods deleted under it."""
    objects = _objects(api)
    try:
        found = objects.get_namespaced_custom_object(GROUP, VERSION, api.namespace, PLURAL, name)
        if (found.get("metadata", {}).get("labels") or {}).get(TASK) == task_id:
            objects.delete_namespaced_custom_object(
                GROUP, VERSION, api.namespace, PLURAL, name, propagation_policy="Background"
            )
    except Exception as error:
        if not not_found(error):
            raise
