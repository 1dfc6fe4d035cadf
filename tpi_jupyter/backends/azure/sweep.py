"""Finding what forgotten tasks left on Azure: resource groups tagged `tpi-task` (a task's
resources all live in its group, so deleting the group deletes them)."""

from __future__ import annotations

from ..kit.sweep import Orphan
from ..kit.tags import CREATOR, TASK
from .clients import Clients
from .common import AzState


def orphans(clients: Clients, region: str | None) -> list[Orphan]:
    found = []
    for group in clients("resource").resource_groups.list(filter=f"tagName eq '{TASK}'"):
        labels = dict(group.tags or {})
        if TASK not in labels or (region not in (None, "all") and group.location != region):
            continue
        handle = {
            "group": group.name,
            "group_asked": True,
            "creator": labels.get(CREATOR, ""),
            "subscription": clients.subscription,
            "region": group.location,
        }
        found.append(Orphan(labels[TASK], str(group.location), labels.get(CREATOR, ""),
                            {"resource group": str(group.name)}, handle))  # fmt: skip
    return found


def storage_of(clients: Clients, state: AzState) -> tuple[str, str]:
    """The task's own storage account in the group (its container is always `tpi`), or none."""
    for account in clients("storage").storage_accounts.list_by_resource_group(state.group):
        return str(account.name), "tpi"
    return "", ""
