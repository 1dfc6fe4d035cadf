"""The Azure machine hooks the agent calls on a scale set instance (`--release az`).

`identity()` is the instance's name (`<scale set>_<instance id>`, from the instance metadata
service, or `TPI_INSTANCE_ID` when set: tests playing a machine). `release(name)` deletes this one
instance through the managed identity (`AZURE_CLIENT_ID`); deleting an instance lowers the set's
capacity by one, so no other rank is touched. `notice()` is a Scheduled Events `Preempt` (Spot
eviction) or `Terminate` for this instance; None while there is none. `TPI_IMDS_URL` moves the
metadata service (tests run a stand-in on 127.0.0.1).

Only the standard library at module level: this runs on bare machines.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

IMDS = "http://169.254.169.254"
TIMEOUT = 2.0
EVENTS = ("Preempt", "Terminate")


def _base() -> str:
    return (os.environ.get("TPI_IMDS_URL") or IMDS).rstrip("/")


def _get(path: str) -> Any:
    request = urllib.request.Request(f"{_base()}{path}", headers={"Metadata": "true"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return json.loads(response.read().decode())


def _compute() -> dict[str, Any]:
    found: dict[str, Any] = _get("/metadata/instance/compute?api-version=2021-02-01")
    return found


def identity() -> str:
    return os.environ.get("TPI_INSTANCE_ID") or str(_compute()["name"])


def notice() -> str | None:
    me = identity()
    found = _get("/metadata/scheduledevents?api-version=2020-07-01")
    for event in found.get("Events", []):
        if event.get("EventType") in EVENTS and (not event.get("Resources") or me in event["Resources"]):
            return f"scheduled event {event['EventType']} (not before {event.get('NotBefore', 'now')})"
    return None


def release(name: str) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.compute import ComputeManagementClient

    from .clients import client_options

    credential = ManagedIdentityCredential(client_id=os.environ.get("AZURE_CLIENT_ID"))
    subscription, group, scale_set = (
        os.environ.get(k, "") for k in ("TPI_AZ_SUBSCRIPTION", "TPI_AZ_GROUP", "TPI_AZ_SCALE_SET")
    )
    if not (subscription and group and scale_set):
        compute = _compute()
        subscription, group, scale_set = (
            compute["subscriptionId"],
            compute["resourceGroupName"],
            compute["vmScaleSetName"],
        )
    client = ComputeManagementClient(credential, subscription, **client_options(credential))
    client.virtual_machine_scale_set_vms.begin_delete(group, scale_set, name.rsplit("_", 1)[-1]).result()
