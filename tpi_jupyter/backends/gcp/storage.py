"""The task's storage: a private GCS bucket (uniform access, public access prevented, labelled)
or a prefix of the user's `container`. Made and deleted through gcsfs, which follows
`STORAGE_EMULATOR_HOST` (fake-gcs-server in the tests)."""

from __future__ import annotations

import contextlib
from typing import Any

from ... import storage_logs
from ...spec import TaskSpec
from .common import GcpState


def gcs(project: str = "") -> Any:
    import gcsfs

    storage_logs.quiet()
    return gcsfs.GCSFileSystem(project=project or None, skip_instance_cache=True, use_listings_cache=False)


def choose(spec: TaskSpec, state: GcpState) -> None:
    """The bucket and prefix, before anything exists."""
    if spec.container:
        bucket, _, prefix = spec.container.partition("/")
        state.bucket, state.user_bucket = bucket, True
        state.prefix = "/".join(part for part in (prefix.strip("/"), spec.id) if part)
    else:
        state.bucket, state.prefix = state.name, spec.id


def location(spec: TaskSpec, state: GcpState) -> tuple[str, str]:
    if not state.bucket:
        probe = GcpState(name=state.name or "tpi-<id>")
        choose(spec, probe)
        return probe.bucket, probe.prefix
    return state.bucket, state.prefix


def bucket_body(state: GcpState, labels: dict[str, str]) -> dict[str, Any]:
    """The JSON API's bucket resource (storage/v1 buckets.insert)."""
    return {
        "name": state.bucket,
        "location": state.region.upper(),
        "labels": labels,
        "iamConfiguration": {
            "uniformBucketLevelAccess": {"enabled": True},
            "publicAccessPrevention": "enforced",
        },
    }


def create_bucket(state: GcpState, labels: dict[str, str]) -> None:
    if state.user_bucket:
        return
    fs = gcs(state.project)
    try:
        fs.call("POST", "b", project=state.project, json=bucket_body(state, labels), json_out=True)
    except Exception as error:
        if int(getattr(error, "code", 0) or 0) == 409:  # the name is someone else's: never delete it
            state.bucket_created = False
        raise
    state.bucket_created = True


def put(state: GcpState, key: str, data: bytes) -> None:
    gcs(state.project).pipe_file(f"{state.bucket}/{state.prefix}/{key}", data)


def delete_storage(state: GcpState) -> None:
    """The task's prefix; the whole bucket when it is the task's own."""
    if not state.bucket:
        return
    fs = gcs(state.project)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(f"{state.bucket}/{state.prefix}", recursive=True)
    if state.bucket_created and not state.user_bucket:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(f"{state.bucket}", recursive=True)
        with contextlib.suppress(FileNotFoundError):
            fs.rmdir(state.bucket)
    state.bucket_created = False
