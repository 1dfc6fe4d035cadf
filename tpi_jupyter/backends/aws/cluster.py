"""Multi-node tasks on AWS (issue 16): what N machines that talk to each other need.

- one availability zone: the group's subnets are cut to the first zone (by name) that offers the
  instance type, so ranks never cross zones (latency, and inter-zone transfer is billed);
- a cluster placement group when `placement=cluster`, created as a step and deleted after the
  group (AWS refuses while instances are in it);
- the task's security group admits all traffic from itself (MPI over SSH, NCCL, gloo) and still
  nothing from anywhere else.
"""

from __future__ import annotations

from typing import Any

from ...spec import SpecError, TaskSpec
from ..kit.multinode import multi_node
from .common import AwsState, Clients, code, retry_busy, tag_list

STRATEGY = "cluster"
PLACEMENT_GONE = ("InvalidPlacementGroup.Unknown", "InvalidPlacementGroup.NotFound")
OWN_TRAFFIC = "tpi-jupyter: the task's own machines (MPI, NCCL, torch.distributed)"


def check(spec: TaskSpec) -> None:
    """What the spec alone can refuse, before any call."""
    if spec.placement == STRATEGY and not multi_node(spec):
        raise SpecError(
            "placement: cluster packs the machines of a multi-node task; accepted: none when parallelism=1"
        )


def plan(spec: TaskSpec, base: str) -> list[str]:
    if not multi_node(spec):
        return []
    lines = [
        f"multi-node: all {spec.parallelism} machines in one availability zone of {spec.native_region} "
        f"that offers {spec.native_machine} (chosen at launch)",
        f"multi-node: security group {base} admits all traffic from its own members (rank to rank), "
        "nothing else inbound",
    ]
    if spec.placement == STRATEGY:
        lines.append(f"multi-node: cluster placement group {base} (machines packed close in that zone)")
    return lines


def pin_zone(clients: Clients, spec: TaskSpec, state: AwsState) -> None:
    """Keep the subnets of one zone (preflight kept only zones offering the type); for
    `placement=cluster`, refuse a type without the cluster strategy. Nothing is created."""
    if not multi_node(spec):
        return
    ec2 = clients("ec2", state.region)
    if spec.placement == STRATEGY:
        _check_strategy(ec2, spec)
    subnets = ec2.describe_subnets(SubnetIds=state.subnets)["Subnets"]
    state.zone = min(item["AvailabilityZone"] for item in subnets)
    state.subnets = sorted(item["SubnetId"] for item in subnets if item["AvailabilityZone"] == state.zone)


def _check_strategy(ec2: Any, spec: TaskSpec) -> None:
    found = ec2.describe_instance_types(InstanceTypes=[spec.native_machine])["InstanceTypes"]
    strategies = found[0].get("PlacementGroupInfo", {}).get("SupportedStrategies", []) if found else []
    if STRATEGY not in strategies:
        raise SpecError(
            f"placement: {spec.native_machine} cannot join a cluster placement group (it supports "
            f"{', '.join(strategies) or 'none'}); accepted: none, or a machine type that supports cluster"
        )


def create_placement_group(clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str]) -> None:
    if spec.placement != STRATEGY or not multi_node(spec):
        return
    state.placement_group = state.name  # recorded first: a lost answer must still be rolled back
    clients("ec2", state.region).create_placement_group(
        GroupName=state.name, Strategy=STRATEGY,
        TagSpecifications=[{"ResourceType": "placement-group", "Tags": tag_list(tags)}],
    )  # fmt: skip


def allow_own_traffic(clients: Clients, spec: TaskSpec, state: AwsState) -> None:
    """Self-referencing ingress: members of the group reach each other on every port."""
    if not multi_node(spec):
        return
    clients("ec2", state.region).authorize_security_group_ingress(
        GroupId=state.security_group,
        IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [
            {"GroupId": state.security_group, "Description": OWN_TRAFFIC}]}],
    )  # fmt: skip


def delete_placement_group(clients: Clients, state: AwsState, wait: float, poll: float) -> None:
    """Terminating instances keep the group in use for a while: retry until `wait`."""
    if not state.placement_group:
        return
    ec2 = clients("ec2", state.region)
    try:
        retry_busy(lambda: ec2.delete_placement_group(GroupName=state.placement_group),
                   "InvalidPlacementGroup.InUse", wait, poll)  # fmt: skip
    except Exception as error:
        if code(error) not in PLACEMENT_GONE:
            raise
