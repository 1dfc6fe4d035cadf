"""What forgotten tasks left: instance templates, buckets and map runs' Pub/Sub topics labelled
`tpi-task`, the groups and service accounts named after them. Groups carry no labels in GCP: a group is found by its
template's name (the same `tpi-<short id>`), in any zone, through aggregatedList."""

from __future__ import annotations

import json
from typing import Any

from ...fanout.pubsub import labelled_queues
from ..kit.sweep import Orphan
from ..kit.tags import CREATOR, TASK
from .common import Clients
from .storage import gcs


def _groups(clients: Clients, project: str) -> dict[str, str]:
    """group name -> zone."""
    found = {}
    for scope, listing in clients("InstanceGroupManagersClient").aggregated_list(project=project):
        for manager in listing.instance_group_managers:
            found[manager.name] = scope.rsplit("/", 1)[-1]
    return found


def _buckets(project: str) -> list[dict[str, Any]]:
    answer = gcs(project).call("GET", "b", project=project, json_out=False)
    return list(json.loads(answer[1] or b"{}").get("items", []))


def orphans(clients: Clients, region: str | None) -> list[Orphan]:
    project = clients.project()
    groups = _groups(clients, project)
    by_task: dict[str, Orphan] = {}

    def orphan(task_id: str, creator: str, name: str) -> Orphan:
        return by_task.setdefault(
            task_id, Orphan(task_id, "global", creator, handle={"project": project, "name": name})
        )

    for item in clients("InstanceTemplatesClient").list(project=project):
        found = dict(item.properties.labels)
        if TASK not in found:
            continue
        entry = orphan(found[TASK], found.get(CREATOR, ""), item.name)
        entry.resources["instance template"] = item.name
        # deleting a missing rule is a no-op
        entry.handle.update(
            template=item.name,
            firewall=item.name,
            ssh_firewall=f"{item.name}-ssh",
            ranks_firewall=f"{item.name}-ranks",
        )
        if item.name in groups and (region is None or groups[item.name] == region):
            entry.where = entry.handle["zone"] = groups[item.name]
            entry.resources["managed instance group"] = entry.handle["group"] = item.name
        if not item.properties.service_accounts:
            continue
        email = item.properties.service_accounts[0].email
        if email.startswith(f"{item.name}@"):
            entry.resources["service account"] = email
            entry.handle.update(service_account=email, service_account_created=True)
    for name, task_id in labelled_queues(project).items():
        entry = orphan(task_id, "", name)
        entry.resources["Pub/Sub queue"] = entry.handle["queue"] = name
    by_name = {entry.handle["name"]: entry for entry in by_task.values()}
    for bucket in _buckets(project):
        found = dict(bucket.get("labels") or {})
        if TASK in found:
            entry = orphan(found[TASK], found.get(CREATOR, ""), bucket["name"])
        elif bucket["name"] in by_name:  # our bucket is named as the template (labels may be missing)
            entry = by_name[bucket["name"]]
        else:
            continue
        entry.resources["bucket"] = bucket["name"]
        entry.handle.update(bucket=bucket["name"], prefix=entry.task_id, bucket_created=True)
    return list(by_task.values())
