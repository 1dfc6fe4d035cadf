"""Checks before anything exists: credentials and project, the Compute API, the zone, the
machine type and accelerator offered there, a GPU quota above 0, the image from its family.
Each failure is a SpecError of one line naming the argument and what is accepted."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ...spec import SpecError, TaskSpec
from ..kit.tags import label_value
from .common import Clients, GcpState, base_name, not_found, split_machine, status_code
from .network import ssh_cidr
from .template import refuse_spot_price

T = TypeVar("T")


def _ask(state: GcpState, call: Callable[[], T], key: str, missing: str, accepted: str) -> T:
    """One lookup: a 404 is the user's value; a disabled API or no permission says so."""
    try:
        return call()
    except Exception as error:
        text = str(getattr(error, "message", "") or error)
        if not_found(error):
            raise SpecError(f"{key}: {missing}; accepted: {accepted}") from None
        if status_code(error) == 403 and ("SERVICE_DISABLED" in text or "has not been used" in text
                                           or "is disabled" in text):  # fmt: skip
            raise SpecError(
                f"cloud: the Compute Engine API is disabled in project {state.project}; "
                "accepted: enable it (gcloud services enable compute.googleapis.com)"
            ) from None
        if status_code(error) in (401, 403):
            raise SpecError(
                f"cloud: gcp credentials were refused for project {state.project} ({status_code(error)}); "
                "accepted: credentials with Compute Engine access to that project"
            ) from None
        raise


def quota_metric(accelerator: str, spot: bool) -> str:
    """nvidia-tesla-t4 -> NVIDIA_T4_GPUS (PREEMPTIBLE_NVIDIA_T4_GPUS for spot)."""
    model = accelerator.removeprefix("nvidia-tesla-").removeprefix("nvidia-").replace("-", "_").upper()
    return f"{'PREEMPTIBLE_' if spot else ''}NVIDIA_{model}_GPUS"


def creator(clients: Clients) -> str:
    """Who is asking, as a label value: the service account's email, else the ADC account."""
    credentials = clients.credentials()[0]
    found = getattr(credentials, "service_account_email", "") or getattr(credentials, "account", "")
    return label_value(str(found or "adc-user"))


def preflight(clients: Clients, spec: TaskSpec, state: GcpState) -> None:
    refuse_spot_price(spec)
    state.ssh_from = ssh_cidr()
    state.project, state.zone = clients.project(), spec.native_region
    state.creator, state.name = creator(clients), state.name or base_name(spec.id)
    zone = _ask(state, lambda: clients("ZonesClient").get(project=state.project, zone=state.zone), "region",
                f"{state.zone!r} is not a zone of project {state.project}", "a GCP zone such as us-east1-c")  # fmt: skip
    if zone.status and zone.status != "UP":
        raise SpecError(f"region: zone {state.zone} is {zone.status}; accepted: a zone that is UP")
    machine, accelerator, count = split_machine(spec.native_machine)
    _ask(state, lambda: clients("MachineTypesClient").get(project=state.project, zone=state.zone, machine_type=machine),
         "machine", f"{machine!r} is not offered in {state.zone}", "a machine type of that zone (gcloud compute machine-types list)")  # fmt: skip
    state.machine_type = machine
    if accelerator:
        _ask(state, lambda: clients("AcceleratorTypesClient").get(
            project=state.project, zone=state.zone, accelerator_type=accelerator),
            "machine", f"accelerator {accelerator!r} is not offered in {state.zone}",
            "an accelerator of that zone (gcloud compute accelerator-types list)")  # fmt: skip
        _check_quota(clients, spec, state, accelerator, count)
        state.accelerator, state.accelerator_count = accelerator, count
    user_project, _, family = spec.native_image.partition("@")[2].partition("/")
    image = _ask(state, lambda: clients("ImagesClient").get_from_family(project=user_project, family=family),
                 "image", f"no image family {family!r} in project {user_project}", "ubuntu, nvidia or {user}@{project}/{family}")  # fmt: skip
    state.image = str(image.self_link)


def _check_quota(clients: Clients, spec: TaskSpec, state: GcpState, accelerator: str, count: int) -> None:
    region = clients("RegionsClient").get(project=state.project, region=state.region)
    metric = quota_metric(accelerator, spec.spot >= 0)
    for quota in region.quotas:
        if quota.metric == metric and quota.limit < count * spec.parallelism:
            raise SpecError(
                f"machine: {accelerator} needs {count * spec.parallelism} of quota {metric} in {state.region}, "
                f"which allows {quota.limit:g}; accepted: a machine without it, or a quota increase"
            )
