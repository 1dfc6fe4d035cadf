"""The headless Service of a multi-node Indexed Job: stable names for the ranks.

The Job controller names each pod's host `<job>-<index>`; with `subdomain: <service>` on the
pod template and a headless Service of that name selecting the task's pods, cluster DNS answers
`<job>-<index>.<service>` with the rank's pod address (what MPI hostfiles and MASTER_ADDR can
use). The Service carries the task's labels, so destroy and `sweep k8s` find it.
"""

from __future__ import annotations

from typing import Any

from ...spec import TaskSpec
from ..kit.tags import TASK
from .job import Api, create_once, not_found, ours
from .manifests import ROLE


def wanted(spec: TaskSpec) -> bool:
    return spec.parallelism > 1


def manifest(meta: dict[str, Any]) -> dict[str, Any]:
    """No cluster address, every port; publishes pods before they are ready (ranks look each
    other up while starting)."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {TASK: meta["labels"][TASK], ROLE: "rank"}},
    }  # fmt: skip


def attach(job: dict[str, Any], name: str) -> dict[str, Any]:
    """The Job's pods join the Service's subdomain, and carry the label it selects them by."""
    template = job["spec"]["template"]
    template["spec"]["subdomain"] = name
    template["metadata"]["labels"] = {**template["metadata"]["labels"], ROLE: "rank"}
    return job


def create(api: Api, manifest_: dict[str, Any]) -> None:
    create_once(
        api.core.create_namespaced_service, api.core.read_namespaced_service, api.namespace, manifest_
    )


def delete(api: Api, name: str, task_id: str) -> None:
    try:
        if ours(api.core.read_namespaced_service(name, api.namespace), task_id):
            api.core.delete_namespaced_service(name, api.namespace)
    except Exception as error:
        if not not_found(error):
            raise
