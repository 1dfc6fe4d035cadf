"""No inbound traffic unless asked: a firewall rule that denies every ingress to the task's
machines (by network tag), above GCP's default rules (`default-allow-ssh` has priority 65534);
with `TPI_GCP_SSH_CIDR` set, a second rule allows tcp:22 from that range only, above the deny."""

from __future__ import annotations

import json
from typing import Any

from ..kit import network as kit_network
from .common import Clients, GcpState, not_found

SSH_ENV = "TPI_GCP_SSH_CIDR"  # set to a CIDR (e.g. 203.0.113.7/32) to open port 22 from it
DENY_PRIORITY = 900  # lower wins: before any default allow rule
SSH_PRIORITY = 800  # before the task's own deny (on a tie, GCP lets the deny win)


def ssh_cidr() -> str:
    """The range asked for with TPI_GCP_SSH_CIDR, normalised; "" when unset (no SSH)."""
    return kit_network.ssh_cidr(SSH_ENV)


def firewall_body(state: GcpState, task_id: str) -> dict[str, Any]:
    """compute/v1 firewalls.insert: the deny-all."""
    return {
        "name": state.name, "network": "global/networks/default", "direction": "INGRESS", "priority": DENY_PRIORITY,
        "denied": [{"IPProtocol": "all"}], "sourceRanges": ["0.0.0.0/0"], "targetTags": [state.name],
        "description": f"tpi-jupyter task {task_id}: no inbound traffic",
    }  # fmt: skip


def ssh_name(state: GcpState) -> str:
    return f"{state.name}-ssh"


def ssh_body(state: GcpState, task_id: str, cidr: str) -> dict[str, Any]:
    """compute/v1 firewalls.insert: port 22 from the asked range, to this task's machines only."""
    return {
        "name": ssh_name(state), "network": "global/networks/default", "direction": "INGRESS",
        "priority": SSH_PRIORITY, "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
        "sourceRanges": [cidr], "targetTags": [state.name],
        "description": f"tpi-jupyter task {task_id}: ssh, asked for with {SSH_ENV}",
    }  # fmt: skip


def bodies(state: GcpState, task_id: str) -> list[dict[str, Any]]:
    """Every rule the task gets: the deny, and the SSH allow when state.ssh_from is set."""
    found = [firewall_body(state, task_id)]
    if state.ssh_from:
        found.append(ssh_body(state, task_id, state.ssh_from))
    return found


def _insert(clients: Clients, state: GcpState, body: dict[str, Any]) -> Any:
    from google.cloud import compute_v1

    resource = compute_v1.Firewall.from_json(json.dumps(body), ignore_unknown_fields=False)
    return clients("FirewallsClient").insert(project=state.project, firewall_resource=resource)


def create_firewall(clients: Clients, state: GcpState, task_id: str) -> None:
    """The deny first: the SSH rule never exists without it. Each is recorded once asked for."""
    deny, *allow = bodies(state, task_id)
    operation = _insert(clients, state, deny)
    state.firewall = state.name
    operation.result()
    for body in allow:
        operation = _insert(clients, state, body)
        state.ssh_firewall = body["name"]
        operation.result()


def _delete(clients: Clients, state: GcpState, name: str) -> None:
    try:
        clients("FirewallsClient").delete(project=state.project, firewall=name).result()
    except Exception as error:
        if not not_found(error):
            raise


def delete_firewall(clients: Clients, state: GcpState) -> None:
    """The SSH allow first, so the port is never open without the deny."""
    if state.ssh_firewall:
        _delete(clients, state, state.ssh_firewall)
        state.ssh_firewall = ""
    if state.firewall:
        _delete(clients, state, state.firewall)
        state.firewall = ""
