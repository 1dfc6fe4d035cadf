"""Opt-in smoke test against a real Azure subscription: `TPI_SMOKE_AZURE=1` (or `TPI_SMOKE_AZ=1`)
`pytest tests/test_azure_live.py -s`. It spends real money (one Standard_B1s Spot machine for a
few minutes, a storage account, an identity) and needs `az login` (or another credential
`DefaultAzureCredential` finds) with rights to create resource groups, custom roles and role
assignments in the subscription. `TPI_SMOKE_AZ_REGION` picks the region (default us-west =
westus2).

What the contract server cannot show: the custom data booting a real Ubuntu image, the managed
identity reaching Blob storage with Entra ID, the machine deleting its own instance through its
custom role, and the resource group's deletion leaving nothing `tpi sweep az` finds.
"""

from __future__ import annotations

import json
import os

import pytest

from tpi_jupyter import layout, ranks
from tpi_jupyter.commands import build_spec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, launch, sweep

pytestmark = pytest.mark.skipif(
    "1" not in (os.environ.get("TPI_SMOKE_AZURE"), os.environ.get("TPI_SMOKE_AZ"))
    or bool(os.environ.get("TPI_AZURE_RESOURCE_MANAGER")),
    reason="real Azure: set TPI_SMOKE_AZURE=1 (costs money)",
)

SCRIPT = """#!/bin/bash
mkdir -p results
echo "hello from $(hostname) rank $TPI_RANK" | tee results/hello.txt
"""


def test_one_spot_machine_runs_releases_itself_and_is_destroyed(tmp_path: object) -> None:
    region = os.environ.get("TPI_SMOKE_AZ_REGION", "us-west")
    words = [
        "name=az-smoke",
        "machine=s",
        "spot=0",
        f"region={region}",
        "timeout=1800",
        "output=results",
        "workdir=.",
    ]
    task = launch(build_spec(words, {"cloud": "az"}), SCRIPT)
    assert isinstance(task, Task)
    try:
        assert task.wait(timeout=1800) == "succeeded", task.logs()
        fs, root = filesystem(task.record["remote"])
        assert list(ranks.read_claims(fs, root)) == [(0, 0)]
        assert json.loads(fs.cat_file(layout.join(root, layout.status(0))))["result"] == "success"
        assert "hello from" in task.logs()[0]
    finally:
        task.destroy()
    assert not any(task.id in line for line in sweep("az", delete=False))
