"""The task's machines: one Uniform scale set, created at capacity 0.

Uniform orchestration: instances get small ids the set's own `virtualMachines/{id}` API deletes
one at a time (a machine releases only itself), capacity is one number, and Spot with
`evictionPolicy: Delete` is supported as is. `overprovision: false`: extra machines Azure adds
and removes at will would claim ranks. Spot restore asks Azure to bring evicted capacity back;
`read` restores it too (an evicted, deleted instance lowers the capacity).
"""

from __future__ import annotations

import base64
import time
from typing import Any

from ...spec import TaskSpec
from ..base import GroupState, Machine
from ..kit.multinode import multi_node
from .clients import Clients
from .common import AzState

GONE_STATES = ("Deleting", "Failed")


def body(spec: TaskSpec, state: AzState, labels: dict[str, str], custom_data: str) -> Any:
    from azure.mgmt.compute import models as m

    publisher, offer, sku, version = state.image.split(":")
    profile = m.VirtualMachineScaleSetVMProfile(
        os_profile=m.VirtualMachineScaleSetOSProfile(
            computer_name_prefix=state.name, admin_username=state.user,
            custom_data=base64.b64encode(custom_data.encode()).decode(),
            linux_configuration=m.LinuxConfiguration(
                disable_password_authentication=True,
                ssh=m.SshConfiguration(public_keys=[m.SshPublicKey(
                    path=f"/home/{state.user}/.ssh/authorized_keys", key_data=state.ssh_public_key)]),
            ),
        ),
        storage_profile=m.VirtualMachineScaleSetStorageProfile(
            image_reference=m.ImageReference(publisher=publisher, offer=offer, sku=sku, version=version),
            os_disk=m.VirtualMachineScaleSetOSDisk(
                create_option="FromImage", delete_option="Delete",
                disk_size_gb=spec.disk_size if spec.disk_size > 0 else None,
                managed_disk=m.VirtualMachineScaleSetManagedDiskParameters(storage_account_type="StandardSSD_LRS"),
            ),
        ),
        network_profile=m.VirtualMachineScaleSetNetworkProfile(network_interface_configurations=[
            m.VirtualMachineScaleSetNetworkConfiguration(name=state.name, properties=m.VirtualMachineScaleSetNetworkConfigurationProperties(
                primary=True, ip_configurations=[m.VirtualMachineScaleSetIPConfiguration(
                    name=state.name, properties=m.VirtualMachineScaleSetIPConfigurationProperties(
                        subnet=m.ApiEntityReference(id=state.subnet_id)))]))]),
        scheduled_events_profile=m.ScheduledEventsProfile(
            terminate_notification_profile=m.TerminateNotificationProfile(enable=True, not_before_timeout="PT5M")),
        **_priority(spec, m),
    )  # fmt: skip
    properties = m.VirtualMachineScaleSetProperties(
        orchestration_mode="Uniform", overprovision=False, single_placement_group=multi_node(spec),
        upgrade_policy=m.UpgradePolicy(mode="Manual"), virtual_machine_profile=profile,
        spot_restore_policy=m.SpotRestorePolicy(enabled=True) if spec.spot >= 0 else None,
    )  # fmt: skip
    return m.VirtualMachineScaleSet(
        location=state.region, tags=labels, sku=m.Sku(name=state.size, tier="Standard", capacity=0),
        identity=m.VirtualMachineScaleSetIdentity(type="UserAssigned", user_assigned_identities={
            found: m.UserAssignedIdentitiesValue() for found in [state.identity_id, *state.user_identities]}),
        properties=properties,
    )  # fmt: skip


def _priority(spec: TaskSpec, m: Any) -> dict[str, Any]:
    if spec.spot < 0:
        return {"priority": "Regular"}
    return {"priority": "Spot", "eviction_policy": "Delete",
            "billing_profile": m.BillingProfile(max_price=-1 if spec.spot == 0 else spec.spot)}  # fmt: skip


def scale_set_id(state: AzState) -> str:
    return (f"/subscriptions/{state.subscription}/resourceGroups/{state.group}/providers/"
            f"Microsoft.Compute/virtualMachineScaleSets/{state.name}")  # fmt: skip


def create(
    clients: Clients, spec: TaskSpec, state: AzState, labels: dict[str, str], custom_data: str
) -> None:
    compute = clients("compute")
    compute.virtual_machine_scale_sets.begin_create_or_update(
        state.group, state.name, body(spec, state, labels, custom_data)
    ).result()
    state.scale_set = state.name


def capacity(clients: Clients, state: AzState) -> int:
    found = clients("compute").virtual_machine_scale_sets.get(state.group, state.scale_set)
    return int(found.sku.capacity or 0)


def set_capacity(clients: Clients, state: AzState, count: int) -> None:
    from azure.mgmt.compute import models as m

    clients("compute").virtual_machine_scale_sets.begin_update(
        state.group, state.scale_set, m.VirtualMachineScaleSetUpdate(sku=m.Sku(capacity=count))
    ).result()


def instances(clients: Clients, state: AzState) -> dict[str, str]:
    """instance name -> instance id of every instance not on its way out."""
    found = clients("compute").virtual_machine_scale_set_vms.list(state.group, state.scale_set)
    return {
        str(vm.name): str(vm.instance_id)
        for vm in found
        if getattr(vm.properties, "provisioning_state", None) not in GONE_STATES
    }


def read(clients: Clients, state: AzState, owners: dict[str, tuple[int, int]]) -> GroupState:
    """The instances (one list call with their instance views) and, as events, what is in motion:
    the set's provisioning state and each instance's provisioning and power states."""
    compute, now = clients("compute"), time.time()
    events = _set_events(
        compute.virtual_machine_scale_sets.get_instance_view(state.group, state.scale_set), now
    )
    machines = []
    for vm in compute.virtual_machine_scale_set_vms.list(state.group, state.scale_set, expand="instanceView"):
        name, properties = str(vm.name), vm.properties
        rank, boot = owners.get(name, (-1, -1))
        if getattr(properties, "provisioning_state", None) not in GONE_STATES:
            machines.append(Machine(rank=rank, boot=boot, alive=True))
        view = getattr(properties, "instance_view", None)
        found = _states(getattr(view, "statuses", None) or [])
        provisioning, power = (
            found.get("ProvisioningState", "unknown"),
            found.get("PowerState", "no power state yet"),
        )
        if (provisioning, power) != ("succeeded", "running"):  # only what is in motion: a steady set is quiet
            events.append({"time": now, "kind": "instance", "rank": rank if rank >= 0 else None,
                           "detail": f"{name}: provisioning {provisioning}, power {power}"})  # fmt: skip
    return GroupState(exists=not state.stopped, machines=machines, events=events)


def _states(statuses: list[Any]) -> dict[str, str]:
    """Instance-view status codes ("PowerState/running") as {"PowerState": "running"}."""
    return dict(str(item.code).split("/", 1) for item in statuses if "/" in str(item.code or ""))


def _set_events(view: Any, now: float) -> list[dict[str, Any]]:
    """The set's own provisioning state while it is not `succeeded`."""
    provisioning = _states(getattr(view, "statuses", None) or []).get("ProvisioningState", "succeeded")
    if provisioning == "succeeded":
        return []
    return [
        {"time": now, "kind": "scale-set", "rank": None, "detail": f"scale set provisioning {provisioning}"}
    ]


def delete_instance(clients: Clients, state: AzState, instance_id: str) -> None:
    clients("compute").virtual_machine_scale_set_vms.begin_delete(
        state.group, state.scale_set, instance_id
    ).result()
