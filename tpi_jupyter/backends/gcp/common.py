"""What every GCP module shares: the task's state, the clients, names, labels, error helpers.

Credentials are Application Default Credentials (google.auth.default). `TPI_GCP_COMPUTE_ENDPOINT`
points every Compute client at another endpoint (the tests' contract server); storage follows
`STORAGE_EMULATOR_HOST` as gcsfs does.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from ...spec import SpecError, TaskSpec, short_id
from ..kit import tags as kit_tags
from ..kit.steps import describe as kit_describe

ENDPOINT_VARIABLE = "TPI_GCP_COMPUTE_ENDPOINT"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass
class GcpState:
    """Everything the GCP backend made or looked up for one task; persisted by task.py."""

    deadline: float = 0.0
    project: str = ""
    zone: str = ""
    creator: str = ""  # the caller's account, as a label value
    name: str = ""  # tpi-<short id>: template, group, bucket, service account
    machine_type: str = ""
    accelerator: str = ""
    accelerator_count: int = 0
    image: str = ""  # the image's self link, resolved from its family
    bucket: str = ""
    prefix: str = ""
    bucket_created: bool = False
    user_bucket: bool = False
    service_account: str = ""  # email of the task's service account (made by us or the user's)
    service_account_created: bool = False
    wheel_key: str = ""
    lock_key: str = ""
    template: str = ""
    firewall: str = ""
    ssh_firewall: str = ""  # the allow-SSH rule, only with TPI_GCP_SSH_CIDR
    ranks_firewall: str = ""  # multi-node tasks: traffic between the task's own machines
    ssh_from: str = ""  # the range it allows
    group: str = ""
    queue: str = ""  # a map run's Pub/Sub topics and subscription, when found by sweep
    stopped: bool = False

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]


def base_name(task_id: str) -> str:
    return f"tpi-{short_id(task_id)}"


def labels(spec: TaskSpec, creator: str) -> dict[str, str]:
    """The kit's tags as GCP labels (lowercase keys and values, at most 63 characters)."""
    found = kit_tags.task_tags(spec, creator)
    return {kit_tags.label_value(key): kit_tags.label_value(value) for key, value in found.items()}


def split_machine(native: str) -> tuple[str, str, int]:
    """`n1-standard-4+nvidia-tesla-t4*1` -> ("n1-standard-4", "nvidia-tesla-t4", 1)."""
    machine, _, accelerator = native.partition("+")
    if not accelerator:
        return machine, "", 0
    name, _, count = accelerator.partition("*")
    return machine, name, int(count or 1)


def status_code(error: BaseException) -> int:
    return int(getattr(error, "code", 0) or 0)


def not_found(error: BaseException) -> bool:
    return status_code(error) == 404 or isinstance(error, FileNotFoundError)


def describe(error: BaseException) -> str:
    message = getattr(error, "message", None)
    if message and status_code(error):
        return " ".join(f"{status_code(error)}: {message}".split())
    return kit_describe(error)


class Clients:
    """Compute clients made once per kind, under a lock, with one set of credentials."""

    def __init__(self) -> None:
        self._credentials: Any = None
        self._project = ""
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def credentials(self) -> tuple[Any, str]:
        """ADC and the project: `GcpSettings.project`, `GOOGLE_CLOUD_PROJECT`, else the credentials' own."""
        with self._lock:
            if self._credentials is None:
                try:
                    import google.auth
                    from google.auth.exceptions import DefaultCredentialsError
                except ImportError:
                    raise SpecError(
                        "cloud: gcp needs google-cloud-compute; accepted: pip install 'tpi-jupyter[gcp]'"
                    ) from None
                try:
                    credentials, project = google.auth.default(scopes=[SCOPE])
                except DefaultCredentialsError:
                    raise SpecError(
                        "cloud: gcp found no Application Default Credentials; accepted: "
                        "`gcloud auth application-default login` or GOOGLE_APPLICATION_CREDENTIALS"
                    ) from None
                self._credentials = credentials
                from .settings import configured_project  # traitlets: on the client only

                self._project = configured_project(project)
            return self._credentials, self._project

    def project(self) -> str:
        project = self.credentials()[1]
        if not project:
            raise SpecError(
                "cloud: gcp has no project; accepted: %config GcpSettings.project = '<project id>', "
                "GOOGLE_CLOUD_PROJECT=<project id>, or an ADC project"
            )
        return project

    def __call__(self, kind: str) -> Any:
        """A google.cloud.compute_v1 client by class name, e.g. "InstanceGroupManagersClient"."""
        credentials, _ = self.credentials()
        with self._lock:
            if kind not in self._clients:
                from google.api_core.client_options import ClientOptions
                from google.cloud import compute_v1

                endpoint = os.environ.get(ENDPOINT_VARIABLE)
                options = ClientOptions(api_endpoint=endpoint) if endpoint else None
                self._clients[kind] = getattr(compute_v1, kind)(
                    credentials=credentials, transport="rest", client_options=options
                )
            return self._clients[kind]
