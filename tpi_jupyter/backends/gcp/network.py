"""No inbound traffic: a firewall rule that denies every ingress to the task's machines (by
network tag), above GCP's default rules (`default-allow-ssh` has priority 65534)."""

from __future__ import annotations

import json
from typing import Any

from .common import Clients, GcpState, not_found

PRIORITY = 900  # lower wins: before any default allow rule


def firewall_body(state: GcpState, task_id: str) -> dict[str, Any]:
    """compute/v1 firewalls.insert."""
    return {
        "name": state.name, "network": "global/networks/default", "direction": "INGRESS", "priority": PRIORITY,
        "denied": [{"IPProtocol": "all"}], "sourceRanges": ["0.0.0.0/0"], "targetTags": [state.name],
        "description": f"tpi-jupyter task {task_id}: no inbound traffic",
    }  # fmt: skip


def create_firewall(clients: Clients, state: GcpState, task_id: str) -> None:
    from google.cloud import compute_v1

    resource = compute_v1.Firewall.from_json(
        json.dumps(firewall_body(state, task_id)), ignore_unknown_fields=False
    )
    operation = clients("FirewallsClient").insert(project=state.project, firewall_resource=resource)
    state.firewall = state.name
    operation.result()


def delete_firewall(clients: Clients, state: GcpState) -> None:
    if state.firewall:
        try:
            clients("FirewallsClient").delete(project=state.project, firewall=state.firewall).result()
        except Exception as error:
            if not not_found(error):
                raise
        state.firewall = ""
