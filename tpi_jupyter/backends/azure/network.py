"""The task's network: a virtual network with one subnet behind a security group that has no
inbound rule (Azure's defaults deny inbound from the internet) unless `TPI_AZ_SSH_CIDR` asks for
one: tcp/22 from that range only. Machines reach out through the subnet's default outbound
access: no public address, so SSH needs a route into the network (VPN, peering, Bastion)."""

from __future__ import annotations

from typing import Any

from ..kit import network as kit_network
from . import cluster
from .clients import Clients
from .common import AzState

SSH_ENV = "TPI_AZ_SSH_CIDR"  # set to a CIDR (e.g. 10.0.0.0/8) to open port 22 from it
SSH_PRIORITY = 100  # above Azure's default rules (65000+); lower wins


def ssh_cidr() -> str:
    """The range asked for with TPI_AZ_SSH_CIDR, normalised; "" when unset (no SSH)."""
    return kit_network.ssh_cidr(SSH_ENV)


def _ssh_rules(state: AzState) -> list[Any]:
    from azure.mgmt.network import models

    if not state.ssh_from:
        return []
    return [models.SecurityRule(name="ssh", properties=models.SecurityRulePropertiesFormat(
        description=f"ssh, asked for with {SSH_ENV}", protocol="Tcp", access="Allow", direction="Inbound",
        priority=SSH_PRIORITY, source_address_prefix=state.ssh_from, source_port_range="*",
        destination_address_prefix="*", destination_port_range="22",
    ))]  # fmt: skip


def security_group_body(state: AzState, labels: dict[str, str]) -> Any:
    from azure.mgmt.network import models

    return models.NetworkSecurityGroup(
        location=state.region,
        tags=labels,
        properties=models.NetworkSecurityGroupPropertiesFormat(
            security_rules=[*_ssh_rules(state), *cluster.rules(state)]
        ),
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
