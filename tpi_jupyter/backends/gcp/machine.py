"""The GCP machine hooks the agent calls on a managed-instance-group VM (`--release gcp`).

`identity()` is the instance name (metadata server, or `TPI_INSTANCE_ID` when set: tests).
`release(name)` calls `deleteInstances` on this machine's own group for this one instance: the
group lowers its target size by one and does not recreate it; no other rank is touched.
`notice()` is `instance/preempted` = TRUE (a Spot VM being reclaimed); None otherwise.
`GCE_METADATA_HOST` moves the metadata server (tests run a stand-in on 127.0.0.1); group,
project and zone come from the boot script's environment (`TPI_GCP_*`), never a secret.

Standard library at module level; google-auth comes with the `gcp` extra. No IPython here.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any

METADATA_HOST = "metadata.google.internal"
TIMEOUT = 2.0
COMPUTE = "https://compute.googleapis.com"


def _metadata(path: str) -> str:
    host = os.environ.get("GCE_METADATA_HOST") or METADATA_HOST
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/{path}", headers={"Metadata-Flavor": "Google"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        return str(response.read().decode())


def identity() -> str:
    return os.environ.get("TPI_INSTANCE_ID") or _metadata("instance/name")


def notice() -> str | None:
    try:
        preempted = _metadata("instance/preempted").strip()
    except (urllib.error.URLError, OSError):
        return None
    return "spot preemption notice (instance/preempted)" if preempted == "TRUE" else None


def release_request(name: str) -> tuple[str, dict[str, Any]]:
    """The deleteInstances URL and body for one instance of this machine's group."""
    project, zone, group = (os.environ[f"TPI_GCP_{key}"] for key in ("PROJECT", "ZONE", "GROUP"))
    base = os.environ.get("TPI_GCP_COMPUTE_ENDPOINT") or COMPUTE
    url = f"{base}/compute/v1/projects/{project}/zones/{zone}/instanceGroupManagers/{group}/deleteInstances"
    return url, {"instances": [f"zones/{zone}/instances/{name}"], "skipInstancesOnValidationError": True}


def release(name: str) -> None:
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    url, body = release_request(name)
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    response = session.post(url, json=body, timeout=60)
    response.raise_for_status()
