"""Opt-in live smoke test on a real Google Cloud project (it costs money): TPI_SMOKE_GCP=1.

Uses Application Default Credentials and GOOGLE_CLOUD_PROJECT; the zone is
TPI_SMOKE_GCP_ZONE (default us-west1-b). Skipped unless asked, and whenever a test endpoint
(`TPI_GCP_COMPUTE_ENDPOINT`, `STORAGE_EMULATOR_HOST`) is set, as in CI here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, launch

pytestmark = pytest.mark.skipif(
    os.environ.get("TPI_SMOKE_GCP") != "1"
    or bool(os.environ.get("TPI_GCP_COMPUTE_ENDPOINT") or os.environ.get("STORAGE_EMULATOR_HOST")),
    reason="live GCP smoke test: set TPI_SMOKE_GCP=1 with ADC and GOOGLE_CLOUD_PROJECT (costs money)",
)


def test_live_spot_task_runs_releases_itself_and_leaves_nothing(tpi_home: Path, workdir: Path) -> None:
    from tpi_jupyter.backends.gcp import GcpBackend
    from tpi_jupyter.backends.kit.sweep import sweep

    zone = os.environ.get("TPI_SMOKE_GCP_ZONE", "us-west1-b")
    words = ["machine=s", "spot=0", f"region={zone}", "timeout=1800", "name=gcp-smoke"]
    task = launch(build_spec(words, {"cloud": "gcp"}), "#!/bin/bash\necho hello from $TPI_RANK\n")
    assert isinstance(task, Task)
    try:
        assert task.wait(timeout=1500, on_line=lambda rank, _, line: print(rank, line)) == "succeeded"
        assert "hello from 0" in task.logs()[0]
        found = GcpBackend().read(task.task_spec, task.backend_state)
        assert not any(machine.alive for machine in found.machines)  # the machine released itself
    finally:
        task.destroy()
    assert sweep(GcpBackend(), [], region=zone, everyone=False, delete=False) == []
