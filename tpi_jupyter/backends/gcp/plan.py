"""`--dry-run --json`: every create request the backend would send, with its body, as a user
reviews `terraform plan`. Nothing is asked of the cloud: the image stays a family link (GCP
resolves it at creation), the project comes from `GOOGLE_CLOUD_PROJECT` or ADC when available."""

from __future__ import annotations

from typing import Any

from ...spec import TaskSpec
from ..kit import boot_failures
from ..kit.boot import BootPlan, script
from ..kit.wheel import keys
from . import cluster
from .boot import cloud_boot
from .common import GcpState, base_name, labels, split_machine
from .identity import CRM, IAM, STORAGE, account_body, bucket_binding, release_binding
from .network import bodies as firewall_bodies
from .network import ssh_cidr
from .storage import bucket_body, choose
from .template import body as template_body

COMPUTE = "https://compute.googleapis.com/compute/v1"


def planned_state(spec: TaskSpec, deadline: float) -> GcpState:
    """The state create would fill in, from the spec alone."""
    from .settings import configured_project  # traitlets: on the client only

    project = configured_project() or "your-project"  # a placeholder the boot script can hold
    state = GcpState(deadline=deadline, project=project, zone=spec.native_region, name=base_name(spec.id),
                     creator="<your account>")  # fmt: skip
    machine, accelerator, count = split_machine(spec.native_machine)
    image_project, _, family = spec.native_image.partition("@")[2].partition("/")
    state.machine_type, state.accelerator, state.accelerator_count = machine, accelerator, count
    state.image = f"projects/{image_project}/global/images/family/{family}"
    choose(spec, state)
    state.ssh_from = ssh_cidr()
    state.service_account = (
        spec.permission_set.split(",", 1)[0] or f"{state.name}@{project}.iam.gserviceaccount.com"
    )
    shipped = keys("gcp")
    state.wheel_key, state.lock_key = (
        f"{state.prefix}/{shipped.wheel_key}",
        f"{state.prefix}/{shipped.lock_key}",
    )
    return state


def requests(spec: TaskSpec, deadline: float) -> list[dict[str, Any]]:
    state = planned_state(spec, deadline)
    found = labels(spec, state.creator)
    project, zone = state.project, state.zone
    boot = BootPlan(task_id=spec.id, remote=f"gs://{state.bucket}/{state.prefix}", deadline=deadline,
                    wheel_key=shipped_key(state.wheel_key, state), lock_key=shipped_key(state.lock_key, state),
                    failed_boot_limit=boot_failures.limit(spec.parallelism))  # fmt: skip
    startup = script(boot, cloud_boot(state, _gcsfs_version()))
    made: list[dict[str, Any]] = []
    if not spec.container:
        made.append({"method": "POST", "url": f"{STORAGE}/storage/v1/b?project={project}",
                     "body": bucket_body(state, found)})  # fmt: skip
    if not spec.permission_set:
        made += [
            {"method": "POST", "url": f"{IAM}/v1/projects/{project}/serviceAccounts", "body": account_body(state, spec.id)},
            {"method": "PUT", "url": f"{STORAGE}/storage/v1/b/{state.bucket}/iam", "body": {"add binding": bucket_binding(state)}},
            {"method": "POST", "url": f"{CRM}/v1/projects/{project}:setIamPolicy", "body": {"add binding": release_binding(state)}},
        ]  # fmt: skip
    made += [
        {"method": "POST", "url": f"{COMPUTE}/projects/{project}/global/firewalls", "body": rule}
        for rule in [*firewall_bodies(state, spec.id), *cluster.bodies(spec, state)]
    ]
    made += [
        {"method": "POST", "url": f"{COMPUTE}/projects/{project}/global/instanceTemplates",
         "body": template_body(spec, state, found, startup)},
        {"method": "POST", "url": f"{COMPUTE}/projects/{project}/zones/{zone}/instanceGroupManagers",
         "body": group_body_for(state)},
        {"method": "POST", "url": f"{COMPUTE}/projects/{project}/zones/{zone}/instanceGroupManagers/{state.name}"
         f"/resize?size={spec.parallelism}", "body": None},
    ]  # fmt: skip
    return made


def _gcsfs_version() -> str:
    """The client's gcsfs, which machines get; a plain dry run must work without the gcp extra."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gcsfs")
    except PackageNotFoundError:
        return "not-installed"


def shipped_key(key: str, state: GcpState) -> str:
    return key[len(state.prefix) + 1 :] if key.startswith(f"{state.prefix}/") else key


def group_body_for(state: GcpState) -> dict[str, Any]:
    from .group import group_body

    state.template = state.name
    return group_body(state)
