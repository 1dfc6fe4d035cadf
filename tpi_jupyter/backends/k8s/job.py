"""The task's objects in the cluster: create, read as the core's GroupState, evict, delete.

Machines are the Job's pods: a pod's rank is its completion index, its boot its place among the
pods of that index (oldest first). Events come from the pods (started, disrupted, failed with
an exit code) and the Job's conditions (failed indexes, deadline).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..base import GroupState, Machine
from ..kit.tags import TASK
from . import backoff
from .manifests import ENV_KEY, INDEX_ANNOTATION, ROLE

ALIVE_PHASES = ("Pending", "Running")


class Api:
    """The two API groups a task uses, on one client."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.core, self.batch, self.namespace = (
            client.CoreV1Api(api_client),
            client.BatchV1Api(api_client),
            namespace,
        )


def not_found(error: BaseException) -> bool:
    return getattr(error, "status", None) == 404


def describe(error: BaseException) -> str:
    """An API error as one line: its status, reason and the server's message."""
    body = getattr(error, "body", None)
    if getattr(error, "status", None) and body:
        try:
            found = json.loads(body)
            return (
                f"{error.status} {found.get('reason', '')}: {' '.join(str(found.get('message', '')).split())}"  # type: ignore[attr-defined]
            )
        except ValueError:
            pass
    cause = getattr(error, "reason", None)  # urllib3's MaxRetryError: the last failure, not the URL
    if isinstance(cause, BaseException):
        error = cause
    text = f"{error.__class__.__name__}: {error}"
    return " ".join(text.split())


def create_once(create: Callable[[str, Any], object], read: Callable[[str, str], Any], namespace: str,
                manifest: dict[str, Any]) -> None:  # fmt: skip
    """`create(namespace, manifest)`, which the client's retry policy may send twice (its answer
    lost on the way): `409 AlreadyExists` on an object labelled with this task is that earlier
    attempt's, read back with `read(name, namespace)`."""
    try:
        create(namespace, manifest)
    except Exception as error:
        meta = manifest["metadata"]
        if getattr(error, "status", None) != 409 or not ours(
            read(meta["name"], namespace), meta["labels"][TASK]
        ):
            raise


def create_secret(api: Api, manifest: dict[str, Any]) -> None:
    create_once(api.core.create_namespaced_secret, api.core.read_namespaced_secret, api.namespace, manifest)


def set_environment(api: Api, name: str, values: dict[str, str]) -> None:
    encoded = base64.b64encode(json.dumps(values).encode()).decode()
    api.core.patch_namespaced_secret(name, api.namespace, {"data": {ENV_KEY: encoded}})


def create_job(api: Api, manifest: dict[str, Any]) -> None:
    create_once(api.batch.create_namespaced_job, api.batch.read_namespaced_job, api.namespace, manifest)


def set_suspended(api: Api, name: str, suspended: bool) -> None:
    api.batch.patch_namespaced_job(name, api.namespace, {"spec": {"suspend": suspended}})


def create_claim(api: Api, manifest: dict[str, Any]) -> None:
    core = api.core
    create_once(core.create_namespaced_persistent_volume_claim, core.read_namespaced_persistent_volume_claim,
                api.namespace, manifest)  # fmt: skip


def create_pod(api: Api, manifest: dict[str, Any]) -> None:
    create_once(api.core.create_namespaced_pod, api.core.read_namespaced_pod, api.namespace, manifest)


def pod_phase(api: Api, name: str) -> str:
    found = api.core.read_namespaced_pod(name, api.namespace)
    return str(found.status.phase) if found.status and found.status.phase else "Pending"


def selector(task_id: str) -> str:
    return f"{TASK}={task_id}"


def pods(api: Api, task_id: str, transfer: bool = False) -> list[Any]:
    """The Job's pods (the ranks); with `transfer`, the transfer pod too."""
    chosen = selector(task_id) + ("" if transfer else f",{ROLE}!=transfer")
    return list(api.core.list_namespaced_pod(api.namespace, label_selector=chosen).items)


def rank_of(pod: Any) -> int:
    return int((pod.metadata.annotations or {}).get(INDEX_ANNOTATION, -1))


def _stamp(value: datetime | None) -> float:
    return value.timestamp() if value else time.time()


def _pod_events(pod: Any, rank: int, boot: int, after: str = "") -> list[dict[str, Any]]:
    """`after`: what follows an eviction (the Job's replacement wait), added to its event."""
    found = [{"time": _stamp(pod.metadata.creation_timestamp), "kind": "machine-started", "rank": rank,
              "detail": f"pod {pod.metadata.name}"}]  # fmt: skip
    for condition in (pod.status.conditions or []) if pod.status else []:
        if condition.type == "DisruptionTarget" and condition.status == "True":
            detail = f"pod {pod.metadata.name}: {condition.reason}: {condition.message or ''}".strip()
            found.append({"time": _stamp(condition.last_transition_time), "kind": "preempted", "rank": rank,
                          "detail": f"{detail}; {after}" if after else detail})  # fmt: skip
    for status in (pod.status.container_statuses or []) if pod.status else []:
        ended = status.state.terminated if status.state else None
        if ended is not None and ended.exit_code:
            found.append({"time": _stamp(ended.finished_at), "kind": "machine-failed", "rank": rank,
                          "detail": f"pod {pod.metadata.name}: {status.name} exited {ended.exit_code} ({ended.reason})"})  # fmt: skip
    return found


def read(api: Api, name: str, task_id: str) -> GroupState:
    try:
        job = api.batch.read_namespaced_job(name, api.namespace)
    except Exception as error:
        if not_found(error):
            return GroupState(exists=False)
        raise
    conditions = list(job.status.conditions or []) if job.status else []
    finished = any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)
    events = [
        {"time": _stamp(c.last_transition_time), "kind": f"job-{c.type.lower()}", "rank": None,
         "detail": f"{c.reason or ''}: {c.message or ''}".strip(": ")}
        for c in conditions if c.status == "True" and c.type not in ("Suspended",)
    ]  # fmt: skip
    machines: list[Machine] = []
    by_rank: dict[int, int] = {}
    for pod in sorted(pods(api, task_id), key=lambda p: _stamp(p.metadata.creation_timestamp)):
        rank = rank_of(pod)
        boot = by_rank[rank] = by_rank.get(rank, -1) + 1
        phase = pod.status.phase if pod.status else "Pending"
        alive = phase in ALIVE_PHASES and pod.metadata.deletion_timestamp is None
        machines.append(
            Machine(
                rank=rank, boot=boot, alive=alive, address=(pod.status.pod_ip or "") if pod.status else ""
            )
        )
        events += _pod_events(pod, rank, boot, backoff.note(pod))
    suspended = bool(job.spec.suspend)
    return GroupState(exists=(not finished and not suspended) or any(m.alive for m in machines),
                      machines=machines, events=sorted(events, key=lambda e: e["time"]))  # fmt: skip


def evict(api: Api, pod_name: str) -> None:
    """The Eviction API, as a node drain or a spot reclaim's controller asks (DisruptionTarget)."""
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod_name, "namespace": api.namespace},
    }
    api.core.create_namespaced_pod_eviction(pod_name, api.namespace, body)


def ours(found: Any, task_id: str) -> bool:
    return bool((found.metadata.labels or {}).get(TASK) == task_id)


def delete_all(api: Api, name: str, task_id: str, wait: float, poll: float) -> None:
    """Job, its pods, the transfer pod, the Secret and the claim; idempotent; waits until no pod
    of the task is left (the claim's volume goes when no pod uses it)."""
    actions: list[Callable[[], object]] = [
        lambda: (
            ours(api.batch.read_namespaced_job(name, api.namespace), task_id)
            and api.batch.delete_namespaced_job(name, api.namespace, propagation_policy="Background")
        ),
        lambda: api.core.delete_collection_namespaced_pod(api.namespace, label_selector=selector(task_id)),
        lambda: (
            ours(api.core.read_namespaced_secret(name, api.namespace), task_id)
            and api.core.delete_namespaced_secret(name, api.namespace)
        ),
        lambda: (
            ours(api.core.read_namespaced_persistent_volume_claim(name, api.namespace), task_id)
            and api.core.delete_namespaced_persistent_volume_claim(name, api.namespace)
        ),
    ]  # an object of that name without the task's label is someone else's: left alone
    for action in actions:
        try:
            action()
        except Exception as error:
            if not not_found(error):
                raise
    limit = time.monotonic() + wait
    while pods(api, task_id, transfer=True):
        if time.monotonic() > limit:
            left = ", ".join(pod.metadata.name for pod in pods(api, task_id, transfer=True))
            raise RuntimeError(f"pods still terminating after {wait:.0f} s: {left}")
        time.sleep(poll)
