"""The machines: an instance template and a zonal managed instance group (MIG); reading,
resizing, preempting and deleting them."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from ..base import GroupState, Machine
from .common import Clients, GcpState, not_found

ALIVE_STATUSES = ("PROVISIONING", "STAGING", "RUNNING")


def _message(kind: str, data: dict[str, Any]) -> Any:
    from google.cloud import compute_v1

    return getattr(compute_v1, kind).from_json(json.dumps(data), ignore_unknown_fields=False)


def create_template(clients: Clients, state: GcpState, template: dict[str, Any]) -> None:
    operation = clients("InstanceTemplatesClient").insert(
        project=state.project, instance_template_resource=_message("InstanceTemplate", template)
    )
    state.template = state.name  # before waiting: a rollback must find it
    operation.result()


def group_body(state: GcpState) -> dict[str, Any]:
    """compute/v1 instanceGroupManagers.insert: size 0, resized after the upload."""
    return {
        "name": state.name,
        "baseInstanceName": state.name,
        "instanceTemplate": f"projects/{state.project}/global/instanceTemplates/{state.template}",
        "targetSize": 0,
        "description": "tpi-jupyter task group",
    }


def create_group(clients: Clients, state: GcpState) -> None:
    operation = clients("InstanceGroupManagersClient").insert(
        project=state.project, zone=state.zone,
        instance_group_manager_resource=_message("InstanceGroupManager", group_body(state)),
    )  # fmt: skip
    state.group = state.name
    operation.result()


def resize(clients: Clients, state: GcpState, size: int) -> None:
    clients("InstanceGroupManagersClient").resize(
        project=state.project, zone=state.zone, instance_group_manager=state.group, size=size
    ).result()


def managed(clients: Clients, state: GcpState) -> list[Any]:
    pages = clients("InstanceGroupManagersClient").list_managed_instances(
        project=state.project, zone=state.zone, instance_group_manager=state.group
    )
    return list(pages)


def get(clients: Clients, state: GcpState) -> Any:
    """The group manager, or None when it is gone."""
    try:
        return clients("InstanceGroupManagersClient").get(
            project=state.project, zone=state.zone, instance_group_manager=state.group
        )
    except Exception as error:
        if not_found(error):
            return None
        raise


def exists(clients: Clients, state: GcpState) -> bool:
    return get(clients, state) is not None


def _name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def read(clients: Clients, state: GcpState, owners: dict[str, tuple[int, int]]) -> GroupState:
    manager = get(clients, state)
    if manager is None:
        return GroupState(exists=False)
    now, machines = time.time(), []
    events = [*_group_events(manager, now)]
    for item in managed(clients, state):
        name = _name(item.instance)
        rank, boot = owners.get(name, (-1, 0))
        alive = item.instance_status in ALIVE_STATUSES or item.current_action in ("CREATING", "VERIFYING")
        machines.append(Machine(rank=rank, boot=boot, alive=alive))
        status, action = item.instance_status or "no VM yet", item.current_action or "NONE"
        if (status, action) != ("RUNNING", "NONE"):  # only what is in motion: a steady group is quiet
            events.append({"time": now, "kind": "instance", "rank": rank if rank >= 0 else None,
                           "detail": f"{name}: {status}, action {action}"})  # fmt: skip
    errors = clients("InstanceGroupManagersClient").list_errors(
        project=state.project, zone=state.zone, instance_group_manager=state.group
    )
    for error in errors:
        detail = f"{error.error.code}: {error.error.message}" if error.error else "error"
        events.append(
            {"time": _epoch(error.timestamp), "kind": "group-error", "rank": None, "detail": detail}
        )
    return GroupState(exists=True, machines=machines, events=events)


def _group_events(manager: Any, now: float) -> list[dict[str, Any]]:
    """The group's own status while it is not stable: its target and what it is doing."""
    if "status" not in manager or "is_stable" not in manager.status or manager.status.is_stable:
        return []  # stable, or a status GCP did not report
    actions = manager.current_actions
    doing = [f"{count} {word}" for word in ("creating", "recreating", "deleting", "restarting", "verifying")
             if (count := getattr(actions, word, 0))]  # fmt: skip
    detail = f"{manager.name} not stable: target {manager.target_size}" + (
        f", {', '.join(doing)}" if doing else ""
    )
    return [{"time": now, "kind": "group", "rank": None, "detail": detail}]


def _epoch(stamp: str) -> float:
    """An RFC 3339 time as epoch seconds (events are ordered by it); now when it is missing."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def delete_instance(clients: Clients, state: GcpState, name: str) -> None:
    """The cloud taking one machine: the group recreates it (its target size is unchanged)."""
    clients("InstancesClient").delete(project=state.project, zone=state.zone, instance=name).result()


def delete_group(clients: Clients, state: GcpState) -> None:
    if state.group:
        try:
            clients("InstanceGroupManagersClient").delete(
                project=state.project, zone=state.zone, instance_group_manager=state.group
            ).result()
        except Exception as error:
            if not not_found(error):
                raise
        state.group = ""


def delete_template(clients: Clients, state: GcpState) -> None:
    if state.template:
        try:
            clients("InstanceTemplatesClient").delete(
                project=state.project, instance_template=state.template
            ).result()
        except Exception as error:
            if not not_found(error):
                raise
        state.template = ""
