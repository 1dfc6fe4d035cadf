"""The Azure machine: ONE virtual machine (not a scale set) in a resource group of its own, with a
public address, behind the task backend's network whose security group lets tcp/22 in from the
stated range only (`--ssh-from` or `TPI_AZ_SSH_CIDR`). `stop` deallocates (compute stops
costing), `start` starts it again; `destroy` deletes the resource group.

Runners are not offered here: a VM that powers itself off stays allocated and billed on Azure,
and releasing it needs a role on the machine; that is left for a later version.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.azure import network
from ..backends.azure.clients import Clients
from ..backends.azure.common import AzState, base_name, describe, not_found
from ..backends.azure.preflight import preflight
from ..backends.kit.steps import Steps
from ..backends.kit.tags import CREATOR
from .driver import MachineSpec, SshTarget, Status, ssh_range
from .keys import new_key
from .registry import files_dir, remove_files

SSH_ENV = "TPI_AZ_SSH_CIDR"
RUNNING = ("PowerState/running", "PowerState/starting")


@dataclass
class AzMachineState(AzState):
    """What the task backend looks up (pre-flight fills it as for a task), plus the VM's parts."""

    address_id: str = ""
    nic_id: str = ""
    vm: str = ""


def vm_body(spec: MachineSpec, state: AzMachineState, tags: dict[str, str], public_key: str) -> Any:
    from azure.mgmt.compute import models as m

    publisher, offer, sku, version = state.image.split(":")
    properties = m.VirtualMachineProperties(
        hardware_profile=m.HardwareProfile(vm_size=state.size),
        os_profile=m.OSProfile(
            computer_name=state.name, admin_username=state.user,
            custom_data=base64.b64encode(spec.startup_script.encode()).decode() if spec.startup_script else None,
            linux_configuration=m.LinuxConfiguration(disable_password_authentication=True, ssh=m.SshConfiguration(
                public_keys=[m.SshPublicKey(path=f"/home/{state.user}/.ssh/authorized_keys", key_data=public_key)]))),
        storage_profile=m.StorageProfile(
            image_reference=m.ImageReference(publisher=publisher, offer=offer, sku=sku, version=version),
            os_disk=m.OSDisk(create_option="FromImage", delete_option="Delete",
                             disk_size_gb=spec.task.disk_size if spec.task.disk_size > 0 else None,
                             managed_disk=m.ManagedDiskParameters(storage_account_type="StandardSSD_LRS"))),
        network_profile=m.NetworkProfile(network_interfaces=[m.NetworkInterfaceReference(
            id=state.nic_id, properties=m.NetworkInterfaceReferenceProperties(primary=True, delete_option="Delete"))]),
    )  # fmt: skip
    if spec.task.spot >= 0:  # Deallocate keeps the disk when Azure reclaims the machine
        properties.priority, properties.eviction_policy = "Spot", "Deallocate"
        properties.billing_profile = m.BillingProfile(max_price=-1 if spec.task.spot == 0 else spec.task.spot)
    return m.VirtualMachine(location=state.region, tags=tags, properties=properties)


class AzMachineDriver:
    name = "az"
    state_type = AzMachineState
    stop_verb = "deallocate"
    release_command = ""  # no runners on Azure yet (see the module's note)

    def __init__(self) -> None:
        self.clients = Clients()

    def new_state(self, spec: MachineSpec) -> AzMachineState:
        return AzMachineState(name=base_name(spec.id), group=base_name(spec.id))

    def plan(self, spec: MachineSpec) -> list[str]:
        return [f"resource group {base_name(spec.id)}: a network (tcp/22 from the stated range only), "
                f"a public address, one {spec.task.native_machine} virtual machine"]  # fmt: skip

    def create(self, spec: MachineSpec, state: AzMachineState, steps: Steps) -> None:
        cidr = ssh_range(spec, SSH_ENV)  # refused before any call
        preflight(self.clients, spec.task, state)
        state.ssh_from = cidr
        tags = {**spec.task.tags, **spec.labels, "tpi-machine": spec.id, CREATOR: state.creator}
        steps.explain = describe
        steps.run("resource group", lambda: self._group(state, tags))
        steps.run("network", lambda: network.create(self.clients, state, tags))
        steps.run("public address and interface", lambda: self._interface(state, tags))
        steps.run("virtual machine", lambda: self._vm(spec, state, tags))

    def _group(self, state: AzMachineState, tags: dict[str, str]) -> None:
        from azure.mgmt.resource.resources import models

        state.group_asked = True
        self.clients("resource").resource_groups.create_or_update(
            state.group, models.ResourceGroup(location=state.region, tags=tags))  # fmt: skip

    def _interface(self, state: AzMachineState, tags: dict[str, str]) -> None:
        from azure.mgmt.network import models as n

        address = self.clients("network").public_ip_addresses.begin_create_or_update(
            state.group, state.name, n.PublicIPAddress(location=state.region, tags=tags,
                sku=n.PublicIPAddressSku(name="Standard"),
                properties=n.PublicIPAddressPropertiesFormat(public_ip_allocation_method="Static"))).result()  # fmt: skip
        state.address_id = str(address.id)
        nic = self.clients("network").network_interfaces.begin_create_or_update(
            state.group, state.name, n.NetworkInterface(location=state.region, tags=tags,
                properties=n.NetworkInterfacePropertiesFormat(ip_configurations=[n.NetworkInterfaceIPConfiguration(
                    name="primary", properties=n.NetworkInterfaceIPConfigurationPropertiesFormat(
                        subnet=n.Subnet(id=state.subnet_id), public_ip_address=n.PublicIPAddress(id=state.address_id),
                        primary=True))]))).result()  # fmt: skip
        state.nic_id = str(nic.id)

    def _vm(self, spec: MachineSpec, state: AzMachineState, tags: dict[str, str]) -> None:
        state.key_file = str(files_dir(spec.id) / "id_ed25519")
        public = new_key(Path(state.key_file), f"tpi-machine {spec.id}")
        poller = self.clients("compute").virtual_machines.begin_create_or_update(
            state.group, state.name, vm_body(spec, state, tags, public))  # fmt: skip
        state.vm = state.name
        poller.result()

    def read(self, spec: MachineSpec, state: AzMachineState) -> Status:
        try:
            view = (
                self.clients("compute").virtual_machines.instance_view(state.group, state.vm)
                if state.vm
                else None
            )
        except Exception as error:
            if not not_found(error):
                raise
            view = None
        if view is None:
            return Status("gone")
        codes = [str(s.code) for s in (view.statuses or []) if str(s.code).startswith("PowerState/")]
        if codes and codes[-1] in RUNNING:
            address = self.clients("network").public_ip_addresses.get(state.group, state.name)
            return Status("running", str(address.properties.ip_address or ""))
        return Status("stopped")

    def ssh(self, spec: MachineSpec, state: AzMachineState) -> SshTarget:
        known = str(files_dir(spec.id) / "known_hosts")
        return SshTarget(state.user, self.read(spec, state).address, 22, state.key_file, known)

    def stop(self, spec: MachineSpec, state: AzMachineState) -> None:
        self.clients("compute").virtual_machines.begin_deallocate(state.group, state.vm).result()

    def start(self, spec: MachineSpec, state: AzMachineState) -> None:
        self.clients("compute").virtual_machines.begin_start(state.group, state.vm).result()

    def delete(self, spec: MachineSpec, state: AzMachineState) -> None:
        """The resource group takes everything in it; then the key file."""
        if state.group_asked:
            try:
                self.clients("resource").resource_groups.begin_delete(state.group).result()
            except Exception as error:
                if not not_found(error):
                    raise RuntimeError(f"az: resource group {state.group}: {describe(error)}") from None
        remove_files(spec.id)
