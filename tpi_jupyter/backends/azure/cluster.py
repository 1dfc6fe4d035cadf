"""Multi-node tasks on Azure (issue 16): one placement group, and ranks that reach each other.

- The scale set keeps all its machines in one placement group (`singlePlacementGroup`), which
  Azure caps at 100 machines; more is refused in one line before anything exists.
- The security group states the ranks' traffic instead of leaning on Azure's default
  AllowVnetInBound: every protocol and port from the task's subnet to the task's subnet, then a
  deny of every other inbound source (the VirtualNetwork tag also covers peerings and VPNs).
"""

from __future__ import annotations

from typing import Any

from ...spec import SpecError, TaskSpec
from ..kit.multinode import multi_node, refuse_placement
from .common import AzState

SUBNET = "10.70.0.0/20"  # network.py's one subnet
RANKS_PRIORITY = 200  # below the optional SSH rule (100); lower wins
DENY_PRIORITY = 4096  # the last a user rule may take: above Azure's defaults (65000+)
MAX_PLACEMENT_GROUP = 100  # Azure's limit for a scale set with singlePlacementGroup


def check(spec: TaskSpec) -> None:
    refuse_placement(spec, "az", "a multi-node scale set is one placement group already")
    if multi_node(spec) and spec.parallelism > MAX_PLACEMENT_GROUP:
        raise SpecError(
            f"parallelism: {spec.parallelism} machines do not fit one Azure placement group; accepted: "
            f"1 to {MAX_PLACEMENT_GROUP} on az"
        )


def ranks_prefix(spec: TaskSpec) -> str:
    """What AzState.ranks_prefix holds: the subnet the ranks talk across, "" for one machine."""
    return SUBNET if multi_node(spec) else ""


def rules(state: AzState) -> list[Any]:
    from azure.mgmt.network import models

    if not state.ranks_prefix:
        return []

    def rule(name: str, access: str, priority: int, source: str, destination: str, text: str) -> Any:
        return models.SecurityRule(name=name, properties=models.SecurityRulePropertiesFormat(
            description=text, protocol="*", access=access, direction="Inbound", priority=priority,
            source_address_prefix=source, source_port_range="*", destination_address_prefix=destination,
            destination_port_range="*",
        ))  # fmt: skip

    return [
        rule("ranks", "Allow", RANKS_PRIORITY, state.ranks_prefix, state.ranks_prefix,
             "traffic between the task's own machines (MPI, NCCL, torch.distributed)"),
        rule("deny-other-inbound", "Deny", DENY_PRIORITY, "*", "*", "nothing else comes in"),
    ]  # fmt: skip


def plan(spec: TaskSpec) -> list[str]:
    if not multi_node(spec):
        return []
    return [
        f"multi-node: the {spec.parallelism} machines in one placement group (singlePlacementGroup); "
        f"security group allows all traffic within subnet {SUBNET} and denies every other inbound source"
    ]
