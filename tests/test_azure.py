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
BLOB_ROLE = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
QUEUE_ROLE = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"  # Storage Queue Data Contributor: a map run's queue


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
def arm(
    azurite: str, imds: AzureImds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tpi_home: Path
) -> Iterator[ContractServer]:
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
    monkeypatch.setattr(
        AzureBackend, "capabilities", replace(AzureBackend.capabilities, timing=fast, poll_interval=0.3)
    )
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
    assert properties["spotRestorePolicy"] == {"enabled": True}
    assert profile["priority"] == "Spot" and profile["evictionPolicy"] == "Delete"
    assert profile["billingProfile"] == {"maxPrice": -1}
    assert created["identity"]["type"] == "UserAssigned" and list(
        created["identity"]["userAssignedIdentities"]
    ) == [az["identity_id"]]
    assert created["tags"] == {"team": "ml", "tpi-task": task.id, "tpi-creator": CALLER}
    scaled = [b for b in arm.bodies("virtualmachinescalesets") if "location" not in b]
    assert scaled == [{"sku": {"capacity": 1}}]
    order = [f"{m} {p.rsplit('/', 2)[-2]}" for m, p, _ in arm.calls if m in ("PUT", "PATCH")]
    assert order.index("PATCH virtualMachineScaleSets") > order.index("PUT virtualMachineScaleSets")
    # Storage: no shared keys, no public blobs; the identity may use this container only.
    (account,) = arm.bodies("storageaccounts")
    assert (
        account["properties"]["allowSharedKeyAccess"] is False
        and account["properties"]["allowBlobPublicAccess"] is False
    )
    roles = {
        b["properties"]["roleDefinitionId"].rsplit("/", 1)[-1]: p
        for m, p, b in arm.calls
        if b and "roleAssignments" in p
    }
    assert roles["ba92f5b4-2d11-453d-a403-e96b0029c9fe"].startswith(
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{az['group']}/providers/Microsoft.Storage/storageAccounts/{az['account']}/blobServices/default/containers/tpi/"
    )
    assignments = [(b["properties"], p) for m, p, b in arm.calls if m == "PUT" and "roleAssignments" in p]
    callers = [
        props["roleDefinitionId"].rsplit("/", 1)[-1]
        for props, _ in assignments
        if props["principalId"] == CALLER
    ]
    assert callers == [
        BLOB_ROLE,
        QUEUE_ROLE,
    ]  # the caller uploads with Entra ID too: this container, this queue
    # Releasing: a custom role that reads and deletes this scale set's instances, nothing more.
    (release,) = arm.bodies("roledefinitions")
    assert release["properties"]["permissions"] == [{"actions": [
        "Microsoft.Compute/virtualMachineScaleSets/read",
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/delete"]}]  # fmt: skip
    scale_set_path = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{az['group']}/providers/"
                      f"Microsoft.Compute/virtualMachineScaleSets/{az['scale_set']}")  # fmt: skip
    # Custom roles are assignable at a group (not a resource); it is assigned on the scale set only.
    assert release["properties"]["assignableScopes"] == [
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{az['group']}"
    ]
    machine_roles = sorted((props["roleDefinitionId"].rsplit("/", 1)[-1], path.rsplit("/providers/Microsoft.Authorization", 1)[0])
                           for props, path in assignments if props["principalId"] == az["identity_principal_id"])  # fmt: skip
    account_path = roles[BLOB_ROLE].split("/blobServices/", 1)[0]
    assert machine_roles == sorted([(BLOB_ROLE, roles[BLOB_ROLE].rsplit("/providers/Microsoft.Authorization", 1)[0]),
                                    (QUEUE_ROLE, f"{account_path}/queueServices/default/queues/{az['name']}"),
                                    (az["release_role"], scale_set_path)])  # fmt: skip
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
    assert arm.authorization_left() == []  # the subscription's role objects too
    assert arm.authorization_left() == []  # the subscription's role objects too
    assert not Path(az["key_file"]).exists()
    AzureBackend().delete(task.task_spec, task.backend_state)  # idempotent


# ---------------------------------------------------------------- ranks, self-release, eviction

PARALLEL_SCRIPT = """#!/bin/bash
mkdir -p results
# rank 1 runs until the test has seen rank 0 release itself (no race with a sleep)
if [ "$TPI_RANK" = 1 ]; then for _ in $(seq 1200); do [ -e "$GO_FILE" ] && break; sleep 0.1; done; fi
echo "rank $TPI_RANK done" | tee "results/rank-$TPI_RANK.txt"
"""


def status_of(task: Task, rank: int) -> str:
    try:
        return str(json.loads(read_key(task, layout.status(rank)))["result"])
    except FileNotFoundError:
        return ""


def test_parallelism_two_each_rank_deletes_only_its_own_instance(
    arm: ContractServer, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    task = start(["workdir=.", "output=results", "parallelism=2", "spot=-1", "name=az-par",
                  f"environment=GO_FILE={go}"], PARALLEL_SCRIPT)  # fmt: skip
    (created,) = [b for b in arm.bodies("virtualmachinescalesets") if "location" in b]
    profile = created["properties"]["virtualMachineProfile"]
    assert (
        profile["priority"] == "Regular"
        and "billingProfile" not in profile
        and "evictionPolicy" not in profile
    )
    wait_for(lambda: status_of(task, 0) == "success", timeout=60)
    fs, root = filesystem(task.record["remote"])
    wait_for(lambda: len(ranks.read_claims(fs, root)) == 2, timeout=30)
    claims = ranks.read_claims(fs, root)
    assert sorted(claims) == [(0, 0), (1, 0)], [p.output() for p in arm.played()]
    (scale_set,) = arm.scale_sets.values()
    rank_one = claims[(1, 0)]
    # Rank 0 deleted its own instance only: rank 1's machine still runs; the set is at 1, not 0.
    wait_for(
        lambda: (
            [f"{scale_set.name}_{i}" for i in scale_set.instances] == [rank_one] and scale_set.capacity == 1
        ),
        timeout=30,
    )
    assert scale_set.capacity == 1, [(m, p, b) for m, p, b in arm.calls if m in ("PATCH", "DELETE")]
    assert task.read(fresh=True).ranks[1].state == "running"
    deletes = [p for m, p, _ in arm.calls if m == "DELETE" and "/virtualMachines/" in p]
    assert deletes == [f"{scale_set.rid}/virtualMachines/{claims[(0, 0)].rsplit('_', 1)[1]}"]
    assert [b for b in arm.bodies("virtualmachinescalesets") if "location" not in b] == [
        {"sku": {"capacity": 2}}
    ]
    go.touch()
    assert task.wait(timeout=60) == "succeeded"
    wait_for(lambda: scale_set.instances == {} and scale_set.capacity == 0, timeout=30)
    # Reading the task while rank 1 ran never raised the capacity for the rank that had reported.
    assert [b for b in arm.bodies("virtualmachinescalesets") if "location" not in b] == [
        {"sku": {"capacity": 2}}
    ]
    task.destroy()
    assert arm.tagged(task.id) == []


EVICT_SCRIPT = """#!/bin/bash
mkdir -p results
echo "boot of rank $TPI_RANK" >> results/boots.txt
for _ in $(seq 1200); do [ -e "$GO_FILE" ] && break; sleep 0.1; done
echo "finished"
"""


def test_spot_eviction_resumes_on_a_new_instance(arm: ContractServer, workdir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    task = start(
        ["workdir=.", "output=results", "spot=0.5", "name=az-evict", f"environment=GO_FILE={go}"],
        EVICT_SCRIPT,
    )
    (created,) = [b for b in arm.bodies("virtualmachinescalesets") if "location" in b]
    assert created["properties"]["virtualMachineProfile"]["billingProfile"] == {"maxPrice": 0.5}
    (scale_set,) = arm.scale_sets.values()
    wait_for(lambda: task.read(fresh=True).ranks[0].state == "running", timeout=60)
    first = next(iter(scale_set.instances.values()))
    assert first is not None
    task.preempt(0)  # Azure's simulateEviction: a Scheduled Events Preempt, then the instance goes
    assert any(m == "POST" and p.endswith("/simulateEviction") for m, p, _ in arm.calls)
    assert first.process.wait(timeout=60) == 0, first.output()
    assert "interrupted" in first.output()
    # The evicted instance is gone and lowered the capacity; the client, reading, raises it back.
    wait_for(lambda: task.read(fresh=True) and "1" in scale_set.instances, timeout=60, interval=0.3)
    assert "0" not in scale_set.instances
    go.touch()
    assert task.wait(timeout=90) == "succeeded"
    fs, root = filesystem(task.record["remote"])
    claims = ranks.read_claims(fs, root)
    assert claims == {(0, 0): f"{scale_set.name}_0", (0, 1): f"{scale_set.name}_1"}
    assert task.read(fresh=True).ranks[0].boots == 2
    assert status_of(task, 0) == "success"
    task.destroy()
    assert arm.tagged(task.id) == []


def test_an_evicted_rank_resumes_from_the_push_made_on_the_notice(
    arm: ContractServer, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch file is rewritten every 0.2 s, so the push after the kill keeps the last
    interval's copy of it (it may be torn); the push made on the notice, while the script still
    runs, leaves a fresh one: the respawn starts a few epochs back, not up to an interval's worth."""
    from .faults.spot import SCRIPT, rank_epochs, setback, synced_epoch

    slow = Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=6)
    monkeypatch.setattr(AzureBackend, "capabilities", replace(AzureBackend.capabilities, timing=slow))
    go = tmp_path / "go"
    go.write_text("")
    task = start(["workdir=.", "spot=0", "name=az-fresh", f"environment=GO_FILE={go}"], SCRIPT)
    wait_for(lambda: synced_epoch(task, 0) > 0, timeout=90, interval=0.1)
    time.sleep(4)  # the remote's copy is now ~20 epochs old; the next interval's push is ~2 s away
    task.preempt(0)
    wait_for(lambda: len(rank_epochs(task).get(0, {}).get(1, [])) > 2, timeout=90, interval=0.3)
    boots = rank_epochs(task)[0]
    go.write_text(str(max(max(epochs, default=0) for epochs in boots.values()) + 3))
    assert task.wait(timeout=90) == "succeeded"
    assert setback(rank_epochs(task)[0]) <= 5, rank_epochs(task)[0]
    task.destroy()


def test_the_users_container_gets_a_prefix_and_the_machines_a_data_role_on_it_only(
    arm: ContractServer, workdir: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    account_id = arm.user_account("devstoreaccount1")
    service = BlobServiceClient.from_connection_string(arm.azurite)
    mine = service.get_container_client("mine")
    if not mine.exists():
        mine.create_container()
    mine.upload_blob("keep.txt", b"the user's own data", overwrite=True)
    (workdir / "input.txt").write_text("from the workdir\n")
    task = start(["workdir=.", "output=results", "machine=s", "name=az-mine", "container=devstoreaccount1/mine/exp"],
                 LIFE_SCRIPT)  # fmt: skip
    az = task.record["backend"]
    assert task.record["remote"] == f"abfs://mine@devstoreaccount1.dfs.core.windows.net/exp/{task.id}"
    assert arm.bodies("storageaccounts") == [] and arm.bodies("containers") == []  # nothing new for storage
    assignments = [(b["properties"], p) for m, p, b in arm.calls if m == "PUT" and "roleAssignments" in p]
    data_roles = [(props["principalId"], path.split("/providers/Microsoft.Authorization")[0])
                  for props, path in assignments if props["roleDefinitionId"].endswith(BLOB_ROLE)]  # fmt: skip
    # The machines' identity: a data role on the user's container only; the caller gets none (theirs).
    assert data_roles == [(az["identity_principal_id"], f"{account_id}/blobServices/default/containers/mine")]
    (created,) = [b for b in arm.bodies("virtualmachinescalesets") if "location" in b]
    custom = base64.b64decode(
        created["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
    ).decode()
    assert "'devstoreaccount1'" in custom and "'mine'" in custom and f"'exp/{task.id}'" in custom
    assert "AccountKey" not in custom and "sig=" not in custom

    assert task.wait(timeout=90) == "succeeded", [p.output() for p in arm.played()]
    assert mine.download_blob(f"exp/{task.id}/data/input.txt").readall() == b"from the workdir\n"
    assert task.destroy() == ["results/out.txt"]
    # Our prefix and role objects are gone; the user's container and data stay.
    names = [b.name for b in mine.list_blobs()]
    assert "keep.txt" in names and not [n for n in names if n.startswith(f"exp/{task.id}")]
    assert arm.tagged(task.id) == [] and arm.authorization_left() == [] and state.load(task.id) is None
    assert account_id.lower() in arm.resources

    # Forgotten by the registry: sweep finds the data role on the user's container too.
    from tpi_jupyter.task import sweep

    lost = start(
        ["machine=s", "name=az-mine-lost", "container=devstoreaccount1/mine/exp"], "#!/bin/bash\ntrue\n"
    )
    assert lost.wait(timeout=60) == "succeeded"
    state.delete(lost.id)
    assert sweep("az", delete=True)[0].startswith(f"deleted {lost.id}")
    assert arm.tagged(lost.id) == [] and arm.authorization_left() == []
    assert account_id.lower() in arm.resources and "keep.txt" in [b.name for b in mine.list_blobs()]
    for blob in mine.list_blobs(
        name_starts_with=f"exp/{lost.id}/"
    ):  # the prefix stays (README): the user's to delete
        mine.delete_blob(blob.name)


def test_permission_set_attaches_the_users_identities_beside_the_tasks_own(
    arm: ContractServer, workdir: Path
) -> None:
    first, second = arm.user_identity("vault-reader"), arm.user_identity("registry-pull", group="other-ids")
    task = start(["machine=s", "name=az-ids", f"permission_set={first},{second}"], "#!/bin/bash\ntrue\n")
    az = task.record["backend"]
    (created,) = [b for b in arm.bodies("virtualmachinescalesets") if "location" in b]
    assert list(created["identity"]["userAssignedIdentities"]) == [az["identity_id"], first, second]
    # The task's roles stay with the task's own identity: the user's identities get none.
    principals = {
        b["properties"]["principalId"] for m, p, b in arm.calls if m == "PUT" and "roleAssignments" in p
    }
    assert principals == {az["identity_principal_id"], CALLER}
    custom = base64.b64decode(
        created["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
    ).decode()
    assert f"AZURE_CLIENT_ID={az['identity_client_id']}" in custom
    assert task.wait(timeout=60) == "succeeded", [p.output() for p in arm.played()]
    task.destroy()
    # The user's identities are theirs: still there after destroy.
    assert {first.lower(), second.lower()} <= set(arm.resources)
    assert arm.tagged(task.id) == [] and arm.authorization_left() == []


# ---------------------------------------------------------------- failures: before and midway


@pytest.mark.parametrize(
    ("words", "key", "setup"),
    [
        (["region=southpole"], "region", ""),
        (["machine=Standard_Z99_v9"], "machine", ""),
        (["machine=m", "spot=0"], "machine", "quota"),
        ([], "cloud", "no-credentials"),
        ([], "cloud", "no-subscription"),
        ([], "TPI_AZ_SSH_CIDR", "bad-ssh-cidr"),
        (["container=devstoreaccount1/mine"], "container", ""),
        (
            [
                "permission_set=/subscriptions/x/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/i"
            ],
            "permission_set",
            "",
        ),
        (
            [
                f"permission_set=/subscriptions/{SUBSCRIPTION}/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/gone"
            ],
            "permission_set",
            "",
        ),
    ],
)
def test_preflight_refuses_in_one_line_before_creating_anything(
    arm: ContractServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    words: list[str],
    key: str,
    setup: str,
) -> None:
    if setup == "quota":
        arm.quota_zero = True
    if setup == "bad-ssh-cidr":
        monkeypatch.setenv("TPI_AZ_SSH_CIDR", "203.0.113.7/33")
    if setup == "no-subscription":
        monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
        monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "no-azure-cli"))
    if setup == "no-credentials":

        class NoCredential:
            def get_token(self, *scopes: str, **kwargs: Any) -> Any:
                from azure.core.exceptions import ClientAuthenticationError

                raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

        monkeypatch.setattr(clients, "credential", NoCredential)
    with pytest.raises(SpecError) as raised:
        start(["name=pre", *words], "#!/bin/bash\ntrue\n")
    message = str(raised.value)
    assert message.startswith(f"{key}: ") and "accepted:" in message and "\n" not in message, message
    assert [call for call in arm.calls if call[0] != "GET"] == [] and state.records() == []
    if setup == "quota":
        assert "quota" in message and "Spot vCPUs" in message


def test_failure_midway_rolls_back_everything(arm: ContractServer, workdir: Path, tpi_home: Path) -> None:
    from tpi_jupyter.task import TaskError

    arm.fail["PUT virtualmachinescalesets"] = 400
    with pytest.raises(TaskError) as raised:
        start(["name=az-roll"], "#!/bin/bash\ntrue\n")
    assert "scale set" in str(raised.value) and "InjectedFault" in str(raised.value)
    assert any(m == "DELETE" and "/resourcegroups/" in p.lower() for m, p, _ in arm.calls)
    assert arm.resources == {} and state.records() == []  # role objects too
    assert not list((tpi_home / "tasks").glob("*.ssh-key"))
    from azure.storage.blob import BlobServiceClient

    names = [c.name for c in BlobServiceClient.from_connection_string(arm.azurite).list_containers()]
    assert "tpi" not in names


def test_failure_midway_in_the_users_container_removes_our_prefix_and_role_only(
    arm: ContractServer, workdir: Path
) -> None:
    from azure.storage.blob import BlobServiceClient

    from tpi_jupyter.task import TaskError

    arm.user_account("devstoreaccount1")
    mine = BlobServiceClient.from_connection_string(arm.azurite).get_container_client("mine")
    if not mine.exists():
        mine.create_container()
    mine.upload_blob("keep.txt", b"the user's own data", overwrite=True)
    before = sorted(b.name for b in mine.list_blobs())
    arm.fail["PUT virtualmachinescalesets"] = 400
    with pytest.raises(TaskError, match="scale set"):
        start(["name=az-roll-mine", "container=devstoreaccount1/mine/exp"], "#!/bin/bash\ntrue\n")
    assert any(m == "PUT" and "/containers/mine/providers/" in p for m, p, _ in arm.calls)  # it got that far
    assert arm.authorization_left() == [] and state.records() == []
    assert sorted(b.name for b in mine.list_blobs()) == before  # the wheel uploaded under our prefix went too


def test_sweep_finds_and_deletes_what_a_forgotten_task_left(arm: ContractServer, workdir: Path) -> None:
    from tpi_jupyter.task import sweep

    task = start(["name=az-sweep", "machine=s"], "#!/bin/bash\ntrue\n")
    assert task.wait(timeout=60) == "succeeded"
    state.delete(task.id)  # the registry forgets it: its resource group is an orphan
    lines = sweep("az", delete=False)
    assert lines == [
        f"orphan {task.id} (westus2): resource group {task.record['backend']['group']}; created by {CALLER}"
    ]
    assert arm.tagged(task.id) != []
    lines = sweep("az", delete=True)
    assert lines[0].startswith(f"deleted {task.id}") and arm.tagged(task.id) == []
    assert arm.authorization_left() == []  # its custom role and assignments, found by their derived names
    assert sweep("az", delete=True) == []


def test_dry_run_plans_every_create_request_with_its_body(arm: ContractServer) -> None:
    from .azure_contract import _kind, _models
    from .azure_models import check

    plan = launch(build_spec(["name=az-plan", "spot=0", "parallelism=2", "machine=m+v100"], {"cloud": "az"}),
                  "#!/bin/bash\ntrue\n", dry_run=True)  # fmt: skip
    text = str(plan)
    requests = [
        line.split("request: ", 1)[1].split(" ", 2) for line in text.splitlines() if "request: " in line
    ]
    kinds = [_kind(path.lower()) for _, path, _ in requests]
    assert kinds == ["resourcegroups", "userassignedidentities", "networksecuritygroups", "virtualnetworks",
                     "storageaccounts", "containers", "roleassignments", "roleassignments", "roleassignments",
                     "roleassignments", "virtualmachinescalesets",
                     "roledefinitions", "roleassignments"]  # fmt: skip
    models = _models()
    for (method, _, body), kind in zip(requests, kinds, strict=True):
        assert method == "PUT" and check(json.loads(body), models[kind]) == [], body
    scale_set = json.loads(requests[kinds.index("virtualmachinescalesets")][2])
    assert scale_set["sku"] == {"name": "Standard_NC24ads_A100_v4", "tier": "Standard", "capacity": 0}
    assert scale_set["properties"]["virtualMachineProfile"]["billingProfile"] == {"maxPrice": -1}
    # The custom data parses as bash, and its helper as Python (a real image runs both).
    import subprocess

    text = base64.b64decode(
        scale_set["properties"]["virtualMachineProfile"]["osProfile"]["customData"]
    ).decode()
    assert subprocess.run(["bash", "-n"], input=text, text=True, check=False).returncode == 0
    helper = text.split("<<'TPI_HELPER_END'\n", 1)[1].split("\nTPI_HELPER_END\n", 1)[0]
    compile(helper, "boot_helper.py", "exec")
    assert "AZURE_CLIENT_ID=IDENTITY-CLIENT-ID" in text and "azure-identity==" in text
    assert arm.calls == [] and state.records() == []  # nothing asked of Azure, nothing recorded


def test_dry_run_json_prints_every_create_request_and_creates_nothing(
    arm: ContractServer, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tpi_jupyter import cli

    from .azure_contract import _kind, _models
    from .azure_models import check

    (workdir / "input.txt").write_text("x\n")
    (workdir / "run.sh").write_text("#!/bin/bash\ntrue\n")
    mine = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mine"
    words = ["run", "cloud=az", "workdir=.", "machine=m+t4", "spot=0.25", "name=az-dry", f"environment=TOKEN={SECRET}",
             f"permission_set={mine}", "--script", "run.sh", "--dry-run", "--json"]  # fmt: skip
    assert cli.main(words) == 0
    printed = capsys.readouterr().out
    plan = json.loads(printed)
    assert SECRET not in printed and plan["files"] == 2 and plan["task_id"]
    made = plan["requests"]
    kinds = [_kind(request["url"].lower()) for request in made]
    assert kinds == ["resourcegroups", "userassignedidentities", "networksecuritygroups", "virtualnetworks",
                     "storageaccounts", "containers", "roleassignments", "roleassignments", "roleassignments",
                     "roleassignments", "virtualmachinescalesets",
                     "roledefinitions", "roleassignments"]  # fmt: skip
    models = _models()
    for request, kind in zip(
        made, kinds, strict=True
    ):  # what Resource Manager gets is what the SDK's types accept
        assert request["method"] == "PUT" and request["url"].startswith(
            "https://management.azure.com/subscriptions/"
        )
        assert check(request["body"], models[kind]) == [], request
    scale_set = made[kinds.index("virtualmachinescalesets")]["body"]
    assert scale_set["sku"] == {"name": "Standard_NC4as_T4_v3", "tier": "Standard", "capacity": 0}
    assert scale_set["properties"]["virtualMachineProfile"]["billingProfile"] == {"maxPrice": 0.25}
    assert list(scale_set["identity"]["userAssignedIdentities"])[1:] == [mine]
    assert arm.calls == [] and state.records() == []
    # --json is for plans only: one line, exit 2, nothing created.
    assert cli.main([*words[:-2], "--json"]) == 2
    assert "--json: shows a launch plan; accepted: --dry-run --json" in capsys.readouterr().err
    assert arm.calls == [] and state.records() == []


def test_upload_waits_until_the_callers_new_data_role_applies(
    arm: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tpi_jupyter.backends.azure as backend_module

    real_put, refused = backend_module._put, []

    def put(remote: str, key: str, data: bytes) -> None:  # 403 twice, as a fresh assignment does
        if len(refused) < 2:
            refused.append(key)
            raise PermissionError("AuthorizationPermissionMismatch")
        real_put(remote, key, data)

    monkeypatch.setattr(backend_module, "_put", put)
    task = start(["name=az-propagation", "machine=s"], "#!/bin/bash\ntrue\n")
    assert refused == [".tpi/probe", ".tpi/probe"]
    assert task.wait(timeout=60) == "succeeded"
    monkeypatch.setattr(AzureBackend, "ROLE_PROPAGATION", 0.0)
    refused.clear()
    monkeypatch.setattr(
        backend_module, "_put", lambda *a: (_ for _ in ()).throw(PermissionError("denied for good"))
    )
    from tpi_jupyter.task import TaskError

    with pytest.raises(TaskError, match="agent wheel upload failed"):
        start(["name=az-denied", "machine=s"], "#!/bin/bash\ntrue\n")
    assert arm.tagged(task.id) != [] and len(state.records()) == 1  # the denied launch rolled back
    # In the user's own container no role of ours is new: a refusal is final on the first try.
    arm.user_account("devstoreaccount1")
    monkeypatch.setattr(AzureBackend, "ROLE_PROPAGATION", 2.0)  # without the rule: ~40 tries
    monkeypatch.setattr(backend_module, "_put", lambda *a: (refused.append(a[1]), put_denied())[1])
    with pytest.raises(TaskError, match="agent wheel upload failed"):
        start(["name=az-denied-mine", "machine=s", "container=devstoreaccount1/mine"], "#!/bin/bash\ntrue\n")
    assert refused == [".tpi/probe"] and len(state.records()) == 1


def put_denied() -> None:
    raise PermissionError("AuthorizationPermissionMismatch")


def test_backend_and_machine_hooks_are_found_by_entry_point() -> None:
    from tpi_jupyter.backends.base import get_backend, machine_hooks

    found = get_backend("az").capabilities
    assert (found.ranks, found.sweep, found.preemption) == ("claims", True, True)
    hooks = machine_hooks("az")
    assert (
        hooks.__name__ == "tpi_jupyter.backends.azure.machine"
        and callable(hooks.release)
        and callable(hooks.notice)
    )


def test_notice_sees_only_this_machines_preempt(imds: AzureImds, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpi_jupyter.backends.azure import machine

    monkeypatch.setenv("TPI_IMDS_URL", imds.url)
    monkeypatch.setenv("TPI_INSTANCE_ID", "tpi-x_3")
    assert machine.notice() is None
    imds.preempt("tpi-x_4")  # another machine's eviction
    assert machine.notice() is None
    imds.preempt("tpi-x_3")
    assert (machine.notice() or "").startswith("scheduled event Preempt")


def test_user_stop_goes_through_the_remote_and_the_set_ends_at_zero(
    arm: ContractServer, workdir: Path
) -> None:
    task = start(["name=az-stop", "machine=s"], "#!/bin/bash\necho started\nsleep 60\n")
    wait_for(lambda: task.read(fresh=True).ranks[0].state == "running", timeout=60)
    (scale_set,) = arm.scale_sets.values()
    task.stop()
    # The agent saw the stop key, reported and deleted its own instance; the set is at 0.
    assert scale_set.instances == {} and scale_set.capacity == 0
    assert "stop" in json.loads(read_key(task, layout.status(0))).get(
        "reason", ""
    )  # a failure, reason: the stop
    assert any(m == "DELETE" and "/virtualMachines/" in p for m, p, _ in arm.calls)
    assert task.read(fresh=True).status in ("failed", "stopped")
    task.destroy()
    assert arm.tagged(task.id) == [] and arm.authorization_left() == []


def test_the_shipped_agent_wheel_has_the_az_extra_and_its_lock(
    arm: ContractServer, workdir: Path, tmp_path: Path
) -> None:
    import zipfile

    task = start(["name=az-wheel", "machine=s"], "#!/bin/bash\ntrue\n")
    assert task.wait(timeout=60) == "succeeded"
    lock = dict(line.split("==") for line in read_key(task, ".tpi/agent/lock.txt").decode().splitlines())
    assert {"azure-identity", "azure-mgmt-compute", "adlfs", "azure-storage-blob"} <= set(lock)
    fs, root = filesystem(task.record["remote"])
    (wheel_key,) = [k for k in fs.ls(layout.join(root, ".tpi/agent")) if k.endswith(".whl")]
    (tmp_path / "agent.whl").write_bytes(fs.cat_file(wheel_key))
    with zipfile.ZipFile(tmp_path / "agent.whl") as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "tpi_jupyter/backends/azure/machine.py" in names and "Provides-Extra: az" in metadata
    assert "az = tpi_jupyter.backends.azure.machine" in points


def test_subscription_from_the_environment_else_the_azure_cli_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", "from-env")
    assert clients.subscription() == "from-env"
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID")
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path))
    profile = {
        "subscriptions": [{"id": "other", "isDefault": False}, {"id": "cli-default", "isDefault": True}]
    }
    (tmp_path / "azureProfile.json").write_text(
        json.dumps(profile), encoding="utf-8-sig"
    )  # the CLI writes a BOM
    assert clients.subscription() == "cli-default"
    (tmp_path / "azureProfile.json").unlink()
    with pytest.raises(SpecError, match=r"^cloud: az has no subscription; accepted: AZURE_SUBSCRIPTION_ID"):
        clients.subscription()


def test_ssh_cidr_adds_one_inbound_rule_for_port_22_from_that_range_only(
    arm: ContractServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tpi_jupyter.backends.azure import network
    from tpi_jupyter.backends.azure.common import AzState

    monkeypatch.setenv("TPI_AZ_SSH_CIDR", " 198.51.100.0/24 ")
    backend = AzureBackend()
    found = AzState(subscription=SUBSCRIPTION, region="westus2", name="tpi-ssh", group="tpi-ssh")
    backend._create_group(found, {"tpi-task": "ssh"})
    found.ssh_from = network.ssh_cidr()
    network.create(backend.clients, found, {"tpi-task": "ssh"})  # the server checks it with the SDK's model
    (security,) = arm.bodies("networksecuritygroups")
    assert security["properties"]["securityRules"] == [{"name": "ssh", "properties": {
        "description": "ssh, asked for with TPI_AZ_SSH_CIDR", "protocol": "Tcp", "access": "Allow",
        "direction": "Inbound", "priority": 100, "sourceAddressPrefix": "198.51.100.0/24",
        "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "22"}}]  # fmt: skip
    backend.clients("resource").resource_groups.begin_delete("tpi-ssh").result()
    # The dry run shows the same rule; without the variable, no rule at all.
    plan = launch(build_spec(["name=az-ssh"], {"cloud": "az"}), "#!/bin/bash\ntrue\n", dry_run=True)
    assert "tcp/22 from 198.51.100.0/24 only (TPI_AZ_SSH_CIDR)" in str(plan)
    assert '"sourceAddressPrefix": "198.51.100.0/24"' in str(plan)
    monkeypatch.delenv("TPI_AZ_SSH_CIDR")
    plan = launch(build_spec(["name=az-ssh"], {"cloud": "az"}), "#!/bin/bash\ntrue\n", dry_run=True)
    assert '"securityRules": []' in str(plan) and "without inbound rules" in str(plan)
    # A bad range: one line naming the variable, nothing asked of Azure, even in a dry run.
    calls = len(arm.calls)
    monkeypatch.setenv("TPI_AZ_SSH_CIDR", "10.0.0.1/8")
    with pytest.raises(
        SpecError, match=r"^TPI_AZ_SSH_CIDR: '10.0.0.1/8' is not an address range; accepted: "
    ):
        launch(build_spec(["name=az-ssh"], {"cloud": "az"}), "#!/bin/bash\ntrue\n", dry_run=True)
    assert len(arm.calls) == calls and state.records() == []


def test_read_reports_the_sets_and_instances_states_in_motion_as_events(
    arm: ContractServer, workdir: Path
) -> None:
    task = start(["name=az-events", "machine=s"], "#!/bin/bash\necho started\nsleep 60\n")
    wait_for(lambda: task.read(fresh=True).ranks[0].state == "running", timeout=60)
    backend = task.backend
    assert backend.read(task.task_spec, task.backend_state).events == []  # a steady set is quiet
    (scale_set,) = arm.scale_sets.values()
    (instance,) = scale_set.instances
    scale_set.provisioning = "updating"
    scale_set.states[instance] = ("updating", "stopping")
    found = backend.read(task.task_spec, task.backend_state)
    assert [(e["kind"], e["rank"], e["detail"]) for e in found.events] == [
        ("scale-set", None, "scale set provisioning updating"),
        ("instance", 0, f"{scale_set.name}_{instance}: provisioning updating, power stopping"),
    ]
    assert len(found.machines) == 1 and found.machines[0].rank == 0
    assert any(
        e["kind"] == "instance" and "power stopping" in e["detail"]
        for e in task.events(task.read(fresh=True))
    )
    # The instance view was asked for, as the SDK sends it.
    assert any(p.endswith("/instanceView") for m, p, _ in arm.calls if m == "GET")
    task.stop()
    task.destroy()
