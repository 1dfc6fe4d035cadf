"""Azure machines against the Resource Manager contract server: one VM in its own group (issue 19)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter.backends.azure import clients
from tpi_jupyter.machines import registry

from .azure_imds import AzureImds
from .azure_machine_contract import PUBLIC_IP, MachineContract
from .machine_words import destroy_all, tpi
from .test_azure import SUBSCRIPTION, StandInCredential


@pytest.fixture
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tpi_home: Path) -> Iterator[MachineContract]:
    imds = AzureImds()
    server = MachineContract(
        "UseDevelopmentStorage=false", tmp_path / "machines", imds, play=False
    )  # no storage
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_CONFIG_DIR",
        "TPI_AZ_SSH_CIDR",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TPI_AZURE_RESOURCE_MANAGER", server.url)
    monkeypatch.setenv("AZURE_SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setattr(clients, "credential", StandInCredential)
    yield server
    destroy_all()
    server.close()
    imds.close()


def test_one_vm_reachable_from_the_range_only_deallocate_start_destroy(
    arm: MachineContract, tmp_path: Path, capsys
) -> None:
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/bash\necho ready\n")
    code, out = tpi(capsys, "machine", "create", "abox", "cloud=az", "machine=m", "spot=0", "tags=team=ml",
                    "--ssh-from", "198.51.100.0/24", "--startup-script", str(script))  # fmt: skip
    assert code == 0, out
    record = registry.records()[0]
    (vm,) = arm.bodies("virtualmachines")
    assert arm.bodies("virtualmachinescalesets") == []  # one machine, not a scale set
    properties = vm["properties"]
    ssh_key = properties["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"]
    assert (
        ssh_key.startswith("ssh-ed25519 ")
        and properties["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"]
    )
    assert properties["priority"] == "Spot" and properties["evictionPolicy"] == "Deallocate"
    assert (
        vm["tags"]["tpi-machine"] == record["id"]
        and vm["tags"]["team"] == "ml"
        and "tpi-task" not in vm["tags"]
    )
    (group,) = arm.bodies("networksecuritygroups")
    rules = group["properties"]["securityRules"]
    assert [(r["properties"]["sourceAddressPrefix"], r["properties"]["destinationPortRange"], r["properties"]["access"])
            for r in rules] == [("198.51.100.0/24", "22", "Allow")]  # fmt: skip
    (nic,) = arm.bodies("networkinterfaces")
    assert nic["properties"]["ipConfigurations"][0]["properties"]["publicIPAddress"]["id"].lower().endswith(
        "/publicipaddresses/" + record["state"]["name"])  # fmt: skip

    code, out = tpi(capsys, "machine", "ssh", "abox")
    assert code == 0 and out.strip().endswith(f"@{PUBLIC_IP}") and record["state"]["key_file"] in out
    assert tpi(capsys, "machine", "stop", "abox")[0] == 0
    assert any(m == "POST" and p.lower().endswith("/deallocate") for m, p, _ in arm.calls)
    assert "stopped" in tpi(capsys, "machine", "list")[1]
    assert tpi(capsys, "machine", "start", "abox")[0] == 0
    assert json.loads(tpi(capsys, "machine", "list", "--json")[1])[0]["status"] == "running"

    assert tpi(capsys, "machine", "destroy", "abox")[0] == 0
    assert [
        rid for rid in arm.resources if record["state"]["group"] in rid
    ] == [] and registry.records() == []
    assert not Path(record["state"]["key_file"]).exists()


def test_no_range_refused_a_failure_rolls_back_and_no_runners_yet(
    arm: MachineContract, capsys, monkeypatch
) -> None:
    code, out = tpi(capsys, "machine", "create", "aopen", "cloud=az")
    assert code == 2 and "--ssh-from: no range may reach port 22" in out and "TPI_AZ_SSH_CIDR" in out
    arm.fail["PUT virtualmachines"] = 409
    code, out = tpi(capsys, "machine", "create", "afail", "cloud=az", "--ssh-from", "198.51.100.0/24")
    assert code == 2 and "creating the virtual machine failed" in out and "everything made was removed" in out
    assert [rid for rid in arm.resources if "resourcegroups/tpi-" in rid] == [] and registry.records() == []
    monkeypatch.setenv("REPO_TOKEN", "unused")
    code, out = tpi(capsys, "runner", "create", "--driver", "gitlab", "--repo", "https://gitlab.example.com/a/b",
                    "--labels", "x", "cloud=az")  # fmt: skip
    assert code == 2 and "cloud: runners on az are not built yet" in out
