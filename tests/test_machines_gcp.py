"""GCP machines against the Compute contract server: one instance, the firewall pair (issue 19)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter.machines import registry

from .forge_contract import ForgeContract
from .gcp_contract import credentials_file
from .gcp_machine_contract import NAT_IP, MachineContract
from .machine_words import destroy_all, tpi


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MachineContract]:
    base = tmp_path_factory.mktemp("gcp-machines")
    server = MachineContract("http://127.0.0.1:9", base / "machines", base / "adc.json")  # no storage used
    credentials_file(base / "adc.json", f"{server.url}/token")
    yield server
    server.close()


@pytest.fixture
def gcp(
    contract: MachineContract, tpi_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MachineContract]:
    contract.reset()
    for key, value in contract.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TPI_GCP_SSH_CIDR", raising=False)
    yield contract
    destroy_all()
    contract.reset()


def test_one_instance_with_its_key_reachable_from_the_range_only(
    gcp: MachineContract, tmp_path: Path, capsys
) -> None:
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/bash\necho ready\n")
    code, out = tpi(capsys, "machine", "create", "gbox", "cloud=gcp", "machine=m", "region=us-east", "disk_size=50",
                    "tags=team=ml", "--ssh-from", "198.51.100.0/24", "--startup-script", str(script))  # fmt: skip
    assert code == 0, out
    record = registry.records()[0]
    state = record["state"]
    (instance,) = gcp.standalone.values()
    assert gcp.groups == {} and gcp.templates == {}  # one machine, not a group
    items = {item["key"]: item["value"] for item in instance["metadata"]["items"]}
    user, _, public = items["ssh-keys"].partition(":")
    assert user == "ubuntu" and public.startswith("ssh-ed25519 ")
    assert items["startup-script"] == script.read_text()
    assert instance["labels"]["tpi-machine"] == record["id"] and instance["labels"]["team"] == "ml"
    assert "tpi-task" not in instance["labels"]
    assert instance["disks"][0]["initializeParams"]["diskSizeGb"] == "50"
    tag = instance["tags"]["items"][0]
    assert gcp.ingress_allowed("198.51.100.7", 22, tag) and not gcp.ingress_allowed("192.0.2.1", 22, tag)
    assert not gcp.ingress_allowed("198.51.100.7", 8888, tag)  # only port 22
    assert Path(state["key_file"]).stat().st_mode & 0o777 == 0o600

    code, out = tpi(capsys, "machine", "ssh", "gbox")
    assert code == 0 and out.strip().endswith(f"ubuntu@{NAT_IP}") and state["key_file"] in out
    assert tpi(capsys, "machine", "stop", "gbox")[0] == 0
    assert instance["status"] == "TERMINATED" and "stopped" in tpi(capsys, "machine", "list")[1]
    assert tpi(capsys, "machine", "start", "gbox")[0] == 0
    assert json.loads(tpi(capsys, "machine", "list", "--json")[1])[0]["status"] == "running"

    assert tpi(capsys, "machine", "destroy", "gbox")[0] == 0
    assert gcp.standalone == {} and gcp.firewalls == {} and registry.records() == []
    assert not Path(state["key_file"]).exists()
    assert tpi(capsys, "machine", "destroy", "gbox")[0] == 0


def test_no_range_refused_and_a_failed_instance_rolls_back(gcp: MachineContract, capsys) -> None:
    code, out = tpi(capsys, "machine", "create", "gopen", "cloud=gcp")
    assert code == 2 and "--ssh-from: no range may reach port 22" in out and "TPI_GCP_SSH_CIDR" in out
    assert not [call for call in gcp.calls if call[0] == "POST" and "/token" not in call[1]]
    gcp.fail_on = "/instances"
    code, out = tpi(capsys, "machine", "create", "gfail", "cloud=gcp", "--ssh-from", "198.51.100.0/24")
    assert code == 2 and "creating the instance failed" in out and "everything made was removed" in out
    assert gcp.firewalls == {} and gcp.standalone == {} and registry.records() == []
    assert list(registry.machines_dir().glob("tpi-*")) == []


def test_runner_instance_gets_the_registration_never_the_token(
    gcp: MachineContract, capsys, monkeypatch
) -> None:
    token = "glpat-REPOTOKENnever0on0gcp"
    monkeypatch.setenv("REPO_TOKEN", token)
    with ForgeContract(token) as forge:
        code, out = tpi(capsys, "runner", "create", "--driver", "gitlab", "--repo", "https://gitlab.example.com/acme/ml/models",
                        "--api-url", forge.gitlab_api, "--labels", "gpu", "--name", "gci", "cloud=gcp",
                        "--ssh-from", "198.51.100.0/24")  # fmt: skip
        assert code == 0, out
        (instance,) = gcp.standalone.values()
        script = next(i["value"] for i in instance["metadata"]["items"] if i["key"] == "startup-script")
        (runner,) = forge.runners.values()
        assert runner.secret in script and token not in script and token not in json.dumps(instance)
        assert instance["labels"]["tpi-kind"] == "runner"
        code, out = tpi(capsys, "runner", "destroy", "gci")
        assert code == 0 and "runner gci: unregistered" in out
        assert forge.runners == {} and gcp.standalone == {} and gcp.firewalls == {}
