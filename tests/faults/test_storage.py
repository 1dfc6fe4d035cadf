"""Storage faults between the machines/client and the object store (moto's S3).

The chain: client and machines -> Toxiproxy (latency, resets, stalls, connections cut after N
bytes) -> a fault-injecting HTTP proxy of the tests' own (500 InternalError, 503 SlowDown) ->
moto server. A local-backend task keeps its remote in an S3 bucket (`container=s3://...`), so its
upload, its machines' sync-back and log streaming, and the client's reads and pull all cross the
faults. What must hold: every operation completes after retries, or fails with one line; every
file that arrives is whole (hashes), and none is lost. The scenarios are in storage_faults.py,
shared with GCS and Azure Blob (test_storage_clouds.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..aws_moto import moto_endpoint  # noqa: F401 - fixture
from .storage_faults import Store, faulted, read_all, stays_down, survive


@pytest.fixture
def store(moto_endpoint: str, tpi_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:  # noqa: F811
    with faulted("s3", moto_endpoint, "s3") as (seed, toxi, http, listen):
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (("AWS_ENDPOINT_URL", f"http://{listen}"), ("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_REGION", "us-east-1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        bucket = f"faults-{seed}"
        direct = s3fs.S3FileSystem(
            endpoint_url=moto_endpoint, skip_instance_cache=True, use_listings_cache=False
        )
        direct.mkdir(bucket)
        yield Store("s3", f"s3://{bucket}", seed, toxi, http, lambda prefix: read_all(direct, bucket, prefix))


@pytest.mark.slow
def test_upload_sync_back_logs_and_pull_survive_storage_faults(store: Store, workdir: Path) -> None:
    survive(store, workdir, "local+s3")


@pytest.mark.slow
def test_a_store_that_stays_down_fails_in_one_line_and_leaves_nothing_half_written(
    store: Store, workdir: Path, tmp_path: Path
) -> None:
    line = stays_down(store, workdir, tmp_path)
    assert "Could not connect" in line, line  # botocore's words for a connection it could not make
