"""The task's remote in an object store (`container=s3://`, `gs://`, `az://`), and what pods
need to reach it.

Pods get the client's storage credentials through the task's Secret (deleted with the task),
unless `TPI_K8S_STORAGE_CREDENTIALS=none` says their service account has access (workload
identity). `TPI_K8S_STORAGE_ENDPOINT` gives the store's endpoint as pods reach it, when it differs
from this machine's (`AWS_ENDPOINT_URL`, `STORAGE_EMULATOR_HOST`, a connection string's
`BlobEndpoint`). Which variables are forwarded, per store, is `FORWARDED`; a GCP key file is
forwarded by content. Without `container` the remote is the task's PersistentVolumeClaim,
reached through the transfer pod (proxyfs.py); deleting the claim deletes it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ... import layout
from ...spec import SpecError, TaskSpec
from ...sync import filesystem

OBJECT_STORES = ("s3", "gs", "az")
FORWARDED = {
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"),
    "gs": ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"),
    "az": ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
           "AZURE_STORAGE_SAS_TOKEN"),
}  # fmt: skip
GCP_KEY = "GOOGLE_APPLICATION_CREDENTIALS"
GCP_KEY_CONTENT = "TPI_GCP_KEY_JSON"  # the pod writes it to a private file and points GCP_KEY there


def check(spec: TaskSpec) -> None:
    """An object-store container, or none (a claim): anything else is refused before anything exists."""
    if spec.container and protocol(spec.container) not in OBJECT_STORES:
        raise SpecError(
            f"container: {spec.container!r} on k8s; accepted: an object-store URL "
            "container=s3://bucket[/prefix], gs://bucket[/prefix] or az://container[/prefix], "
            "or no container (a PersistentVolumeClaim of the default StorageClass)"
        )


def on_claim(spec: TaskSpec) -> bool:
    return not spec.container


def protocol(container: str) -> str:
    return container.partition("://")[0] if "://" in container else ""


def remote_url(spec: TaskSpec) -> str:
    return layout.join(spec.container.rstrip("/"), spec.id)


ENDPOINT = {"s3": "AWS_ENDPOINT_URL", "gs": "STORAGE_EMULATOR_HOST"}


def credentials(container: str, forward: bool, endpoint: str = "") -> dict[str, str]:
    """What the pods' agent needs in its environment to reach the store (never in the pod spec).

    `endpoint` replaces this machine's endpoint setting (an in-cluster store, a gateway)."""
    kind = protocol(container)
    if not forward or kind not in FORWARDED:
        return {ENDPOINT[kind]: endpoint} if endpoint and kind in ENDPOINT else {}
    found = {name: os.environ[name] for name in FORWARDED[kind] if os.environ.get(name)}
    if endpoint and kind in ENDPOINT:
        found[ENDPOINT[kind]] = endpoint
        found.pop("AWS_ENDPOINT_URL_S3", None)
    if endpoint and kind == "az" and "AZURE_STORAGE_CONNECTION_STRING" in found:  # its BlobEndpoint
        found["AZURE_STORAGE_CONNECTION_STRING"] = _blob_endpoint(
            found["AZURE_STORAGE_CONNECTION_STRING"], endpoint
        )
    if kind == "s3" and "AWS_ACCESS_KEY_ID" not in found:
        found.update(_boto_credentials())
    if kind == "gs" and os.environ.get(GCP_KEY):
        found[GCP_KEY_CONTENT] = Path(os.environ[GCP_KEY]).read_text()
    return found


def _blob_endpoint(connection: str, endpoint: str) -> str:
    parts = [part for part in connection.split(";") if part and not part.startswith("BlobEndpoint=")]
    return ";".join([*parts, f"BlobEndpoint={endpoint}"]) + ";"


def _boto_credentials() -> dict[str, str]:
    """A profile's or SSO's keys, as botocore resolves them (short-lived ones expire in the pod)."""
    with contextlib.suppress(ImportError):
        import botocore.session

        frozen = botocore.session.get_session().get_credentials()
        if frozen is not None:
            keys = frozen.get_frozen_credentials()
            found = {"AWS_ACCESS_KEY_ID": keys.access_key, "AWS_SECRET_ACCESS_KEY": keys.secret_key}
            if keys.token:
                found["AWS_SESSION_TOKEN"] = keys.token
            return found
    return {}


def delete(remote: str) -> None:
    """The task's prefix only (the bucket is the user's); a claim's remote goes with the claim."""
    if protocol(remote) not in OBJECT_STORES:
        return
    fs, root = filesystem(remote)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(root):
            fs.rm(root, recursive=True)
