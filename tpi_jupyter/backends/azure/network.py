"""The task's network: a virtual network with one subnet behind a security group that has no
inbound rule (Azure's defaults deny inbound from the internet). Machines reach out through the
subnet's default outbound access: no public address, nothing listening."""

from __future__ import annotations

from typing import Any

from .clients import Clients
from .common import AzState


def security_group_body(state: AzState, labels: dict[str, str]) -> Any:
    from azure.mgmt.network import models

    return models.NetworkSecurityGroup(
        location=state.region,
        tags=labels,
        properties=models.NetworkSecurityGroupPropertiesFormat(security_rules=[]),
    )


def network_body(state: AzState, labels: dict[str, str], security_group_id: str) -> Any:
    from azure.mgmt.network import models

    subnet = models.Subnet(name="machines", properties=models.SubnetPropertiesFormat(
        address_prefix="10.70.0.0/20", default_outbound_access=True,
        network_security_group=models.NetworkSecurityGroup(id=security_group_id),
    ))  # fmt: skip
    return models.VirtualNetwork(
        location=state.region, tags=labels,
        properties=models.VirtualNetworkPropertiesFormat(
            address_space=models.AddressSpace(address_prefixes=["10.70.0.0/16"]), subnets=[subnet]),
    )  # fmt: skip


def create(clients: Clients, state: AzState, labels: dict[str, str]) -> None:
    network = clients("network")
    group = network.network_security_groups.begin_create_or_update(
        state.group, state.name, security_group_body(state, labels)
    ).result()
    made = network.virtual_networks.begin_create_or_update(
        state.group, state.name, network_body(state, labels, str(group.id))
    ).result()
    state.subnet_id = str(made.properties.subnets[0].id)
