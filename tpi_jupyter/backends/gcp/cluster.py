"""Multi-node tasks on GCP (issue 16): the machines reach each other, nobody else reaches them.

The managed instance group is zonal (group.py inserts it in `state.zone`), so every rank is in
one zone already. The task's deny-all ingress rule (network.py) would also stop rank-to-rank
traffic (MPI over SSH, NCCL, gloo); a multi-node task gets one more rule, above the deny, that
allows every protocol from the task's own network tag to the same tag, and from nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from ...spec import TaskSpec
from ..kit.multinode import multi_node, refuse_placement
from .common import Clients, GcpState, not_found

RANKS_PRIORITY = 850  # lower wins: above the task's deny (900), below the SSH allow (800)


def check(spec: TaskSpec) -> None:
    refuse_placement(spec, "gcp", "a zonal group keeps the ranks in one zone already")


def rule_name(state: GcpState) -> str:
    return f"{state.name}-ranks"


def bodies(spec: TaskSpec, state: GcpState) -> list[dict[str, Any]]:
    """compute/v1 firewalls.insert for a multi-node task; none for one machine."""
    if not multi_node(spec):
        return []
    return [{
        "name": rule_name(state), "network": "global/networks/default", "direction": "INGRESS",
        "priority": RANKS_PRIORITY, "allowed": [{"IPProtocol": "all"}],
        "sourceTags": [state.name], "targetTags": [state.name],
        "description": f"tpi-jupyter task {spec.id}: traffic between its own machines (ranks)",
    }]  # fmt: skip


def plan(spec: TaskSpec, state: GcpState, base: str) -> list[str]:
    if not multi_node(spec):
        return []
    return [
        f"multi-node: all {spec.parallelism} machines in zone {spec.native_region} (the group is zonal); "
        f"rule {base}-ranks allows all traffic between machines tagged {base}, from nothing else"
    ]


def create_rule(clients: Clients, spec: TaskSpec, state: GcpState) -> None:
    from google.cloud import compute_v1

    for body in bodies(spec, state):
        resource = compute_v1.Firewall.from_json(json.dumps(body), ignore_unknown_fields=False)
        operation = clients("FirewallsClient").insert(project=state.project, firewall_resource=resource)
        state.ranks_firewall = body["name"]  # recorded once asked for: rollback deletes it
        operation.result()


def delete_rule(clients: Clients, state: GcpState) -> None:
    if not state.ranks_firewall:
        return
    try:
        clients("FirewallsClient").delete(project=state.project, firewall=state.ranks_firewall).result()
    except Exception as error:
        if not not_found(error):
            raise
    state.ranks_firewall = ""
