"""Storage faults in front of fake-gcs-server (gs:// remote) and Azurite (az:// remote).

The same scenarios as test_storage.py (S3 on moto), from storage_faults.py: a local task whose
remote is a bucket or container reached through Toxiproxy and the HTTP fault proxy, which answers
each service's own errors (GCS: 503/429/500 with its JSON error body; Azure Blob: 503
`ServerBusy` and 500 `InternalError` with the XML body and `x-ms-error-code`). CI runs a short
round: fewer, smaller files and log lines, and a cap on the injected HTTP errors (the Azure SDK
waits 15 s, then 18 s and 24 s, before its retries: 15% of requests would take minutes). The
long forms (benchmarks/soak.py, TPI_FAULT_SOAK=1) run the full sizes uncapped, and the store that
stays down (each failed operation waits out every retry: about 30 s for gcsfs, 60 s for Azure).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import emulators
from ..emulator_fixtures import azurite_connection, gcs_url  # noqa: F401 - fixtures
from . import figures
from .http_faults import FaultInjectingHttpProxy
from .storage_faults import FULL, SHORT, Sizes, Store, faulted, read_all, stays_down, survive

SOAK = bool(os.environ.get("TPI_FAULT_SOAK"))
SIZES: Sizes = FULL if SOAK else SHORT
HTTP_LIMIT = {"gcs": None if SOAK else 8, "az": None if SOAK else 3}  # injected errors, CI's time budget


def _gcs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    gcsfs = emulators.require("gcsfs")
    url = request.getfixturevalue("gcs_url")
    with faulted("gcs", url, "gcs") as (seed, toxi, http, listen):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://{listen}")
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        gcsfs.GCSFileSystem.clear_instance_cache()
        bucket = f"faults-{seed}-{uuid.uuid4().hex[:6]}"  # the emulator serves the whole module
        direct = gcsfs.GCSFileSystem(endpoint_url=url, token="anon", project="test", skip_instance_cache=True,
                                     use_listings_cache=False)  # fmt: skip
        direct.mkdir(bucket)
        yield Store(
            "gcs", f"gs://{bucket}", seed, toxi, http, lambda prefix: read_all(direct, bucket, prefix)
        )


def _azure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    adlfs = emulators.require("adlfs")
    connection = request.getfixturevalue("azurite_connection")
    endpoint = re.search(r"BlobEndpoint=http://([^/;]+)", connection)[1]  # type: ignore[index]
    with faulted("az", f"http://{endpoint}", "azure") as (seed, toxi, http, listen):
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection.replace(endpoint, listen))
        for name in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        adlfs.AzureBlobFileSystem.clear_instance_cache()
        container = f"faults-{seed}-{uuid.uuid4().hex[:6]}"
        direct = adlfs.AzureBlobFileSystem(connection_string=connection, skip_instance_cache=True)
        direct.mkdir(container)
        yield Store(
            "az", f"az://{container}", seed, toxi, http, lambda prefix: read_all(direct, container, prefix)
        )


@pytest.fixture(params=["gcs", "az"])
def store(request: pytest.FixtureRequest, tpi_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    yield from (_gcs if request.param == "gcs" else _azure)(request, monkeypatch)


@pytest.mark.slow
def test_upload_sync_back_logs_and_pull_survive_storage_faults(store: Store, workdir: Path) -> None:
    survive(store, workdir, f"local+{store.name}", SIZES, HTTP_LIMIT[store.name])


@pytest.mark.slow
@figures.soak_only
def test_a_store_that_stays_down_fails_in_one_line_and_leaves_nothing_half_written(
    store: Store, workdir: Path, tmp_path: Path
) -> None:
    stays_down(store, workdir, tmp_path, SHORT)


def test_a_gcs_error_of_two_lines_fails_the_launch_in_one_line(
    gcs_url: str,  # noqa: F811 - the fixture
    tpi_home: Path,
    workdir: Path,
    tmp_path: Path,
) -> None:
    """gcsfs logs a traceback (`logger.exception`) before it raises; `tpi` printed it (40 lines)."""
    denied = FaultInjectingHttpProxy(gcs_url, seed=1, share=1.0, service="gcs")
    denied.errors, denied.limit = ((403, "forbidden", "Access denied."),), 1  # not retried: reported at once
    (workdir / "a.txt").write_text("a\n")
    (tmp_path / "script").write_text("#!/bin/bash\ntrue\n")
    env = {**os.environ, "STORAGE_EMULATOR_HOST": denied.url, "GOOGLE_CLOUD_PROJECT": "test"}

    def tpi(*words: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", *words], capture_output=True, text=True,
                              timeout=120, env=env)  # fmt: skip

    try:
        done = tpi(
            "run",
            "workdir=.",
            "name=denied",
            "container=gs://denied/runs",
            "--script",
            str(tmp_path / "script"),
        )
        assert done.returncode != 0 and denied.injected[403] == 1, done.stderr
        (line,) = done.stderr.strip().splitlines() or [""]
        assert line.startswith("tpi: error: launch of denied failed: ") and "Access denied" in line, line
    finally:
        assert tpi("destroy", "denied").returncode == 0  # the store answers again
        denied.close()


def test_gcsfs_out_of_retries_report_is_not_printed_by_the_last_resort_handler(gcs_url: str) -> None:  # noqa: F811
    """What gcsfs logs when a request runs out of retries (its `logger.exception`, as in
    gcsfs.retry) stays off stderr once the product made its filesystem; the store that stays down
    (soak form above) shows it end to end, after gcsfs's 30 s of retries."""
    code = (
        "import logging\nfrom tpi_jupyter.sync import filesystem\nfilesystem('gs://b/x')\n"
        "try:\n    raise ConnectionError('Cannot connect')\nexcept ConnectionError as e:\n"
        "    logging.getLogger('gcsfs').exception(f'_request out of retries on exception: {e}')\n"
    )
    env = {**os.environ, "STORAGE_EMULATOR_HOST": gcs_url, "GOOGLE_CLOUD_PROJECT": "test"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
