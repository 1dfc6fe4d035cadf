"""The Azure backend end to end: Blob storage on Azurite, Resource Manager through the contract
server of tests/azure_contract.py (SDK-model-checked bodies; it plays the scale set), the
machine-side metadata service through tests/azure_imds.py. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout, ranks, state
from tpi_jupyter.backends.azure import AzureBackend, clients
from tpi_jupyter.backends.base import Timing
from tpi_jupyter.commands import build_spec
from tpi_jupyter.spec import SpecError
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, launch

from . import emulators
from .azure_contract import ContractServer
from .azure_imds import AzureImds
from .conftest import wait_for

SECRET = "s3cr3t-value-that-must-not-leak"
SUBSCRIPTION = "00000000-0000-0000-0000-00000000cafe"
CALLER = "11111111-2222-3333-4444-555555555555"


class StandInCredential:
    """A `get_token` stand-in: never tries managed identity, the CLI or the network."""

    def __init__(self) -> None:
        claims = base64.urlsafe_b64encode(json.dumps({"oid": CALLER}).encode()).decode().rstrip("=")
        self.token = f"e30.{claims}.c2ln"

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture(scope="session")
def azurite() -> Iterator[str]:
    yield from emulators.azurite()


@pytest.fixture
def imds() -> Iterator[AzureImds]:
    found = AzureImds()
    yield found
    found.close()


@pytest.fixture
def arm(azurite: str, imds: AzureImds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tpi_home: Path) -> Iterator[ContractServer]:
    server = ContractServer(azurite, tmp_path / "machines", imds)
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TPI_AZURE_RESOURCE_MANAGER", server.url)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)  # the machines' managed identity
    monkeypatch.setenv("TPI_IMDS_URL", imds.url)
    monkeypatch.setattr(clients, "credential", StandInCredential)
    monkeypatch.setattr(AzureBackend, "POLL", 0.05)
    monkeypatch.setattr(AzureBackend, "STOP_WAIT", 20.0)
    fast = Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=1)
    monkeypatch.setattr(AzureBackend, "capabilities", replace(AzureBackend.capabilities, timing=fast, poll_interval=0.3))
    import os

    server.machine_env = dict(os.environ)
    yield server
    for record in state.records():  # torn down while the contract server still answers
        task = Task(record)
        task.backend.delete(task.task_spec, task.backend_state)
        state.delete(record["id"])
    server.close()


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "az"}), script)
    assert isinstance(task, Task)
    return task


def read_key(task: Task, key: str) -> bytes:
    fs, root = filesystem(task.record["remote"])
    return bytes(fs.cat_file(layout.join(root, key)))


LIFE_SCRIPT = """#!/bin/bash
mkdir -p results
cat input.txt > results/out.txt
echo "rank $TPI_RANK of $TPI_WORLD_SIZE, token length ${#SECRET_TOKEN}"
"""


def test_lifecycle_create_run_succeed_destroy(arm: ContractServer, workdir: Path) -> None:
    (workdir / "input.txt").write_text("hello from the workdir\n")
    words = ["workdir=.", "output=results", "spot=0", "machine=m+t4", "timeout=900",
             f"environment=SECRET_TOKEN={SECRET}", "tags=team=ml", "name=az-life"]  # fmt: skip
    task = start(words, LIFE_SCRIPT)
    az = task.record["backend"]
    assert task.record["remote"] == f"abfs://tpi@{az['account']}.dfs.core.windows.net/{task.id}"

    # The scale set: created at 0, scaled to 1 after the upload; Spot at most on-demand; no overprovisioning.
    (created,) = [b for b in arm.bodies("virtualmachinescalesets") if "location" in b]
    assert created["sku"] == {"name": "Standard_NC4as_T4_v3", "tier": "Standard", "capacity": 0}
    properties = created["properties"]
    profile = properties["virtualMachineProfile"]
    assert properties["overprovision"] is False and properties["orchestrationMode"] == "Uniform"
    assert profile["priority"] == "Spot" and profile["evictionPolicy"] == "Delete"
    assert profile["billingProfile"] == {"maxPrice": -1}
    assert created["identity"]["type"] == "UserAssigned" and list(created["identity"]["userAssignedIdentities"]) == [az["identity_id"]]
    assert created["tags"] == {"team": "ml", "tpi-task": task.id, "tpi-creator": CALLER}
    scaled = [b for b in arm.bodies("virtualmachinescalesets") if "location" not in b]
    assert scaled == [{"sku": {"capacity": 1}}]
    order = [f"{m} {p.rsplit('/', 2)[-2]}" for m, p, _ in arm.calls if m in ("PUT", "PATCH")]
    assert order.index("PATCH virtualMachineScaleSets") > order.index("PUT virtualMachineScaleSets")
    # Storage: no shared keys, no public blobs; the identity may use this container only.
    (account,) = arm.bodies("storageaccounts")
    assert account["properties"]["allowSharedKeyAccess"] is False and account["properties"]["allowBlobPublicAccess"] is False
    roles = {b["properties"]["roleDefinitionId"].rsplit("/", 1)[-1]: p for m, p, b in arm.calls if b and "roleAssignments" in p}
    assert roles["ba92f5b4-2d11-453d-a403-e96b0029c9fe"].startswith(
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{az['group']}/providers/Microsoft.Storage/storageAccounts/{az['account']}/blobServices/default/containers/tpi/")
    # No inbound rule.
    (security,) = arm.bodies("networkSecurityGroups".lower())
    assert security["properties"]["securityRules"] == []
    # No secret in custom data or tags.
    custom = base64.b64decode(profile["osProfile"]["customData"]).decode()
    assert SECRET not in custom and "SECRET_TOKEN" not in custom and SECRET not in json.dumps(arm.calls)
    assert "--rank auto --release az" in custom and task.record["remote"] in custom
    assert "AccountKey" not in custom and "sig=" not in custom

    assert task.wait(timeout=90) == "succeeded", [p.output() for p in arm.played()]
    assert "rank 0 of 1, token length 31" in task.logs()[0]
    # The machine deleted its own instance (through its managed identity): capacity back to 0.
    (scale_set,) = arm.scale_sets.values()
    wait_for(lambda: scale_set.instances == {} and scale_set.capacity == 0, timeout=30)
    assert any(m == "DELETE" and p.endswith("/virtualMachines/0") for m, p, _ in arm.calls)
    assert arm.imds.tokens >= 1

    fetched = task.destroy()
    assert fetched == ["results/out.txt"]
    assert (workdir / "results" / "out.txt").read_text() == "hello from the workdir\n"
    assert arm.tagged(task.id) == [] and state.load(task.id) is None
    assert not Path(az["key_file"]).exists()
    AzureBackend().delete(task.task_spec, task.backend_state)  # idempotent
