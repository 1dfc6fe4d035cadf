"""The GCP machine: ONE Compute Engine instance (not a group) with the machine's own key in its
`ssh-keys` metadata, behind the task backend's firewall pair: deny all ingress, and allow tcp/22
from the stated range only (`--ssh-from` or `TPI_GCP_SSH_CIDR`). Stop/start keep its disk.

Checks are the task backend's pre-flight. A runner's machine powers off when its runner ends
(GCP has no delete-on-shutdown for standard VMs): it stops costing compute, and `destroy`
removes its disk with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.gcp import network
from ..backends.gcp.common import Clients, GcpState, base_name, describe, not_found
from ..backends.gcp.preflight import preflight
from ..backends.kit.steps import Steps
from ..backends.kit.tags import CREATOR, label_value
from .driver import MachineSpec, SshTarget, Status, ssh_range
from .keys import new_key
from .registry import files_dir, remove_files

SSH_ENV = "TPI_GCP_SSH_CIDR"
RUNNING = ("PROVISIONING", "STAGING", "RUNNING", "REPAIRING")
STOPPED = ("STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED", "TERMINATED")  # TERMINATED: GCP's "stopped"


@dataclass
class GcpMachineState(GcpState):
    """What the task backend looks up (pre-flight fills it as for a task), plus the one instance."""

    instance: str = ""
    user: str = ""
    key_file: str = ""


def instance_body(spec: MachineSpec, state: GcpMachineState, public_key: str) -> dict[str, Any]:
    """The compute/v1 instances.insert body (JSON names)."""
    labels = {label_value(k): label_value(v) for k, v in {**spec.task.tags, **spec.labels}.items()}
    labels.update(
        {"tpi-machine": label_value(spec.id), CREATOR: label_value(state.creator), "tpi-kind": spec.kind}
    )
    disk: dict[str, Any] = {"sourceImage": state.image, "labels": labels}
    if spec.task.disk_size > 0:
        disk["diskSizeGb"] = str(spec.task.disk_size)
    items = [{"key": "ssh-keys", "value": f"{state.user}:{public_key}"}]
    if spec.startup_script:
        items.append({"key": "startup-script", "value": spec.startup_script})
    spot = spec.task.spot >= 0
    body: dict[str, Any] = {
        "name": state.name, "description": f"tpi-jupyter {spec.kind} {spec.id}", "labels": labels,
        "machineType": f"zones/{state.zone}/machineTypes/{state.machine_type}",
        "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": disk}],
        "networkInterfaces": [{"network": "global/networks/default",
                               "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
        "metadata": {"items": items},
        "tags": {"items": [state.name]},  # the firewall pair applies to this machine only
        "scheduling": {"provisioningModel": "SPOT" if spot else "STANDARD", "automaticRestart": not spot,
                       "onHostMaintenance": "TERMINATE" if (spot or state.accelerator) else "MIGRATE",
                       **({"instanceTerminationAction": "STOP"} if spot else {})},
    }  # fmt: skip
    if state.accelerator:
        body["guestAccelerators"] = [{"acceleratorType": f"zones/{state.zone}/acceleratorTypes/{state.accelerator}",
                                      "acceleratorCount": state.accelerator_count}]  # fmt: skip
    if spec.task.permission_set:
        body["serviceAccounts"] = [{"email": spec.task.permission_set,
                                    "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}]  # fmt: skip
    return body


class GcpMachineDriver:
    name = "gcp"
    state_type = GcpMachineState
    stop_verb = "stop"
    release_command = "shutdown -h now || sudo shutdown -h now"

    def __init__(self) -> None:
        self.clients = Clients()

    def new_state(self, spec: MachineSpec) -> GcpMachineState:
        return GcpMachineState(name=base_name(spec.id))

    def plan(self, spec: MachineSpec) -> list[str]:
        return [f"firewall {base_name(spec.id)} (deny all) and {base_name(spec.id)}-ssh (tcp/22 from the stated range)",
                f"one {spec.task.native_machine} instance in {spec.task.native_region}, your key in its ssh-keys"]  # fmt: skip

    def create(self, spec: MachineSpec, state: GcpMachineState, steps: Steps) -> None:
        cidr = ssh_range(spec, SSH_ENV)  # refused before any call
        preflight(self.clients, spec.task, state)
        state.ssh_from, state.user = cidr, spec.task.native_image.partition("@")[0] or "tpi"
        steps.explain = describe
        steps.run("firewall", lambda: network.create_firewall(self.clients, state, spec.id))
        steps.run("instance", lambda: self._instance(spec, state))

    def _instance(self, spec: MachineSpec, state: GcpMachineState) -> None:
        from google.cloud import compute_v1

        state.key_file = str(files_dir(spec.id) / "id_ed25519")
        public = new_key(Path(state.key_file), f"tpi-machine {spec.id}")
        body = instance_body(spec, state, public)
        resource = compute_v1.Instance.from_json(json.dumps(body), ignore_unknown_fields=False)
        operation = self.clients("InstancesClient").insert(project=state.project, zone=state.zone,
                                                           instance_resource=resource)  # fmt: skip
        state.instance = state.name
        operation.result()

    def _get(self, state: GcpMachineState) -> Any:
        if not state.instance:
            return None
        try:
            return self.clients("InstancesClient").get(
                project=state.project, zone=state.zone, instance=state.instance
            )
        except Exception as error:
            if not_found(error):
                return None
            raise

    def read(self, spec: MachineSpec, state: GcpMachineState) -> Status:
        found = self._get(state)
        if found is None:
            return Status("released" if spec.kind == "runner" else "gone")
        if found.status in RUNNING:
            nics = list(found.network_interfaces)
            nat = [c.nat_i_p for c in nics[0].access_configs if c.nat_i_p] if nics else []
            return Status("running", nat[0] if nat else (nics[0].network_i_p if nics else ""))
        return Status("released" if spec.kind == "runner" else "stopped")

    def ssh(self, spec: MachineSpec, state: GcpMachineState) -> SshTarget:
        known = str(files_dir(spec.id) / "known_hosts")
        return SshTarget(state.user, self.read(spec, state).address, 22, state.key_file, known)

    def stop(self, spec: MachineSpec, state: GcpMachineState) -> None:
        self.clients("InstancesClient").stop(
            project=state.project, zone=state.zone, instance=state.instance
        ).result()

    def start(self, spec: MachineSpec, state: GcpMachineState) -> None:
        self.clients("InstancesClient").start(
            project=state.project, zone=state.zone, instance=state.instance
        ).result()

    def delete(self, spec: MachineSpec, state: GcpMachineState) -> None:
        """The instance (its boot disk auto-deletes), then the firewall pair, then the key file."""
        if state.instance:
            try:
                self.clients("InstancesClient").delete(
                    project=state.project, zone=state.zone, instance=state.instance).result()  # fmt: skip
            except Exception as error:
                if not not_found(error):
                    raise RuntimeError(f"gcp: instance: {describe(error)}") from None
        if state.project:
            network.delete_firewall(self.clients, state)
        remove_files(spec.id)
