"""The instance template: machine type and accelerators, image, SPOT scheduling with a
server-side deadline, the task's service account, the startup script (no secret), labels."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ...spec import SpecError, TaskSpec
from ..kit.boot import GRACE
from .common import SCOPE, GcpState


def refuse_spot_price(spec: TaskSpec) -> None:
    if spec.spot > 0:
        raise SpecError(
            f"spot: {spec.spot:g} is a maximum price, which GCP Spot VMs cannot honour (they are "
            "billed at the current spot price); accepted: 0 (spot) or -1 (on-demand)"
        )


def scheduling(spec: TaskSpec, state: GcpState) -> dict[str, Any]:
    """SPOT or standard; a termination time at the deadline plus the boot script's grace, so the
    machines stop even when no client is left to stop them."""
    stop_at = datetime.fromtimestamp(state.deadline + GRACE, tz=timezone.utc)
    found: dict[str, Any] = {
        "terminationTime": stop_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "instanceTerminationAction": "DELETE",
        "onHostMaintenance": "TERMINATE" if (state.accelerator or spec.spot >= 0) else "MIGRATE",
        "automaticRestart": False,
    }
    if spec.spot >= 0:
        found["provisioningModel"] = "SPOT"
    else:
        found["provisioningModel"] = "STANDARD"
    return found


def body(spec: TaskSpec, state: GcpState, labels: dict[str, str], startup_script: str) -> dict[str, Any]:
    """The compute/v1 instanceTemplates.insert body (JSON names, as `--dry-run` shows it)."""
    disk: dict[str, Any] = {"sourceImage": state.image, "labels": labels}
    if spec.disk_size > 0:
        disk["diskSizeGb"] = str(spec.disk_size)
    properties: dict[str, Any] = {
        "machineType": state.machine_type,
        "labels": labels,
        "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT", "initializeParams": disk}],
        # An ephemeral external address for egress (pip, GCS); ingress is denied (network.py).
        "networkInterfaces": [{"network": "global/networks/default",
                               "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
        "metadata": {"items": [{"key": "startup-script", "value": startup_script}]},
        "scheduling": scheduling(spec, state),
        "tags": {"items": [state.name]},  # the task's deny-all ingress rule (network.py) applies
        "serviceAccounts": [{"email": state.service_account, "scopes": [SCOPE]}],
    }  # fmt: skip
    if state.accelerator:
        properties["guestAccelerators"] = [
            {"acceleratorType": state.accelerator, "acceleratorCount": state.accelerator_count}
        ]
    return {"name": state.name, "description": f"tpi-jupyter task {spec.id}", "properties": properties}
