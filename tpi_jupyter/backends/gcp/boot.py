"""The GCP startup script: the shared boot script (kit/boot.py) with GCP's fragment.

GCP contributes the group's coordinates (project, zone, group: names only), gcsfs at the
client's version, and a helper that reads and writes the task's bucket prefix with the
machine's service account and releases the instance through the agent's own hook. The script
holds no secret: the machine reads the task (script, environment, data) from its bucket.
"""

from __future__ import annotations

from ..kit import boot_failures
from ..kit.boot import BootPlan, CloudBoot, script
from .common import ENDPOINT_VARIABLE, GcpState

HELPER = """
import json
import os
import urllib.request

import gcsfs

ROOT = @ROOT@


def machine_id():
    if os.environ.get("TPI_INSTANCE_ID"):
        return os.environ["TPI_INSTANCE_ID"]
    host = os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"
    ask = urllib.request.Request(f"http://{host}/computeMetadata/v1/instance/name",
                                 headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(ask, timeout=5) as response:
        return response.read().decode()


def _fs():
    return gcsfs.GCSFileSystem(skip_instance_cache=True, use_listings_cache=False)


def read(key):
    return _fs().cat_file(ROOT + "/" + key)


def write(key, data):
    _fs().pipe_file(ROOT + "/" + key, data)


def keys(prefix):
    try:
        found = _fs().find(ROOT + "/" + prefix)
    except FileNotFoundError:
        return []
    return [path[len(ROOT) + 1:] for path in found]


def release(name):
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    project, zone, group = (os.environ["TPI_GCP_" + key] for key in ("PROJECT", "ZONE", "GROUP"))
    base = os.environ.get("TPI_GCP_COMPUTE_ENDPOINT") or "https://compute.googleapis.com"
    url = f"{base}/compute/v1/projects/{project}/zones/{zone}/instanceGroupManagers/{group}/deleteInstances"
    body = {"instances": [f"zones/{zone}/instances/{name}"], "skipInstancesOnValidationError": True}
    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    AuthorizedSession(credentials).post(url, data=json.dumps(body), timeout=60).raise_for_status()
"""


def cloud_boot(state: GcpState, gcsfs_version: str, endpoint: str = "") -> CloudBoot:
    environment = {"TPI_GCP_PROJECT": state.project, "TPI_GCP_ZONE": state.zone, "TPI_GCP_GROUP": state.name}
    if endpoint:  # a Compute endpoint the client was pointed at (the tests' contract server)
        environment[ENDPOINT_VARIABLE] = endpoint
    helper = HELPER.replace("@ROOT@", repr(f"{state.bucket}/{state.prefix}"))
    return CloudBoot(
        name="gcp", environment=environment, bootstrap=(f"gcsfs=={gcsfs_version}",), helper=helper
    )


def _relative(state: GcpState, key: str) -> str:
    return key[len(state.prefix) + 1 :] if key.startswith(f"{state.prefix}/") else key


def startup_script(task_id: str, remote: str, state: GcpState, gcsfs_version: str, parallelism: int,
                   endpoint: str = "") -> str:  # fmt: skip
    plan = BootPlan(
        task_id=task_id, remote=remote, deadline=state.deadline, wheel_key=_relative(state, state.wheel_key),
        lock_key=_relative(state, state.lock_key), failed_boot_limit=boot_failures.limit(parallelism),
    )  # fmt: skip
    return script(plan, cloud_boot(state, gcsfs_version, endpoint))
