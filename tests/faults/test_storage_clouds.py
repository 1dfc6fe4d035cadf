"""Storage faults in front of fake-gcs-server (gs:// remote) and Azurite (az:// remote).

The same scenarios as test_storage.py (S3 on moto), from storage_faults.py: a local task whose
remote is a bucket or container reached through Toxiproxy and the HTTP fault proxy, which answers
each service's own errors (GCS: 503/429/500 with its JSON error body; Azure Blob: 503
`ServerBusy` and 500 `InternalError` with the XML body and `x-ms-error-code`). CI runs a short
round (fewer, smaller files and log lines); benchmarks/soak.py runs the full one
(TPI_FAULT_SOAK=1).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import emulators
from .storage_faults import FULL, SHORT, Sizes, Store, faulted, read_all, stays_down, survive

SIZES: Sizes = FULL if os.environ.get("TPI_FAULT_SOAK") else SHORT


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    yield from emulators.fake_gcs_server()


@pytest.fixture(scope="module")
def azurite_connection() -> Iterator[str]:
    yield from emulators.azurite()


def _gcs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    gcsfs = emulators.require("gcsfs")
    url = request.getfixturevalue("gcs_url")
    with faulted("gcs", url, "gcs") as (seed, toxi, http, listen):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{listen}")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        gcsfs.GCSFileSystem.clear_instance_cache()
        bucket = f"faults-{seed}"
        direct = gcsfs.GCSFileSystem(endpoint_url=url, token="anon", project="test", skip_instance_cache=True,
                                     use_listings_cache=False)  # fmt: skip
        direct.mkdir(bucket)
        yield Store("gcs", f"gs://{bucket}", seed, toxi, http, lambda prefix: read_all(direct, bucket, prefix))


def _azure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    adlfs = emulators.require("adlfs")
    connection = request.getfixturevalue("azurite_connection")
    endpoint = re.search(r"BlobEndpoint=http://([^/;]+)", connection)[1]  # type: ignore[index]
    with faulted("az", f"http://{endpoint}", "azure") as (seed, toxi, http, listen):
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection.replace(endpoint, listen))
        for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        adlfs.AzureBlobFileSystem.clear_instance_cache()
        container = f"faults-{seed}"
        direct = adlfs.AzureBlobFileSystem(connection_string=connection, skip_instance_cache=True)
        direct.mkdir(container)
        yield Store("az", f"az://{container}", seed, toxi, http, lambda prefix: read_all(direct, container, prefix))


@pytest.fixture(params=["gcs", "az"])
def store(request: pytest.FixtureRequest, tpi_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    yield from (_gcs if request.param == "gcs" else _azure)(request, monkeypatch)


@pytest.mark.slow
def test_upload_sync_back_logs_and_pull_survive_storage_faults(store: Store, workdir: Path) -> None:
    survive(store, workdir, f"local+{store.name}", SIZES)


@pytest.mark.slow
def test_a_store_that_stays_down_fails_in_one_line_and_leaves_nothing_half_written(
    store: Store, workdir: Path, tmp_path: Path
) -> None:
    stays_down(store, workdir, tmp_path, SHORT)
