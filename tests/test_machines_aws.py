"""AWS machines and runners on moto: one instance, its key pair, an SSH-only security group (issue 19).

moto runs no user data: the runner test plays the machine by running the instance's user data
as a local process, whose `shutdown` is a stand-in that terminates the instance through moto, as
the launch template's InstanceInitiatedShutdownBehavior=terminate makes EC2 do.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter.machines import aws as aws_machines
from tpi_jupyter.machines import registry

from .aws_moto import (
    NEWEST_UBUNTU,
    aws_env,  # noqa: F401 - fixture
    client,
    instance_user_data,
    moto_endpoint,  # noqa: F401 - fixture
    tagged,
)
from .conftest import wait_for
from .forge_contract import ForgeContract
from .machine_words import destroy_all, tpi

TOKEN = "glpat-REPOTOKENnever0in0user0data"


@pytest.fixture
def home(aws_env: str, tpi_home: Path):  # noqa: F811 - the imported fixture
    yield tpi_home
    destroy_all()


def instance(machine_id: str) -> dict[str, Any]:
    found = client("ec2").describe_instances(Filters=[{"Name": "tag:tpi-machine", "Values": [machine_id]}])
    return next(i for r in found["Reservations"] for i in r["Instances"])


def left_of(machine_id: str) -> list[str]:
    """Every resource tagged with the machine that still exists (a terminated instance is gone)."""
    ec2, tag = client("ec2"), [{"Name": "tag:tpi-machine", "Values": [machine_id]}]
    left = [
        f"template {t['LaunchTemplateName']}"
        for t in ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"]
    ]
    left += [f"group {g['GroupId']}" for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]]
    left += [f"key pair {k['KeyName']}" for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]]
    instances = ec2.describe_instances(Filters=tag)["Reservations"]
    left += [i["InstanceId"] for r in instances for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    return left


def test_one_instance_ssh_only_from_the_stated_range(home: Path, tmp_path: Path, capsys) -> None:
    script = tmp_path / "startup.sh"
    script.write_text("#!/bin/bash\necho hello > /tmp/booted\n")
    code, out = tpi(capsys, "machine", "create", "gpu-box", "cloud=aws", "machine=m", "disk_size=40",
                    "tags=team=ml", "--ssh-from", "203.0.113.7/32", "--startup-script", str(script))  # fmt: skip
    assert code == 0, out
    record = registry.records()[0]
    machine_id, state = record["id"], record["state"]
    found = instance(machine_id)
    assert found["State"]["Name"] == "running" and found["ImageId"] == NEWEST_UBUNTU
    assert found["KeyName"] == state["key_name"] and client("autoscaling").describe_auto_scaling_groups()[
        "AutoScalingGroups"] == []  # one machine, not a group  # fmt: skip
    assert instance_user_data(found["InstanceId"]) == script.read_text()
    group = client("ec2").describe_security_groups(GroupIds=[state["security_group"]])["SecurityGroups"][0]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", 22, 22, ["203.0.113.7/32"])]  # fmt: skip
    template = client("ec2").describe_launch_template_versions(LaunchTemplateId=state["launch_template"])
    data = template["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert (
        data["InstanceInitiatedShutdownBehavior"] == "stop"
        and data["MetadataOptions"]["HttpTokens"] == "required"
    )
    assert data["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 40
    tags = {t["Key"]: t["Value"] for t in found["Tags"]}
    assert tags["tpi-machine"] == machine_id and tags["team"] == "ml" and tags["tpi-kind"] == "machine"
    assert (
        "tpi-task" not in tags and tagged(machine_id) == []
    )  # a task sweep never takes it for a gone task's
    assert (
        tpi(capsys, "sweep", "aws", "--region", "us-west-1")[1].strip().endswith("no resources of gone tasks")
    )
    key = Path(state["key_file"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    code, out = tpi(capsys, "machine", "ssh", "gpu-box")
    address = found.get("PublicIpAddress") or found["PrivateIpAddress"]
    assert code == 0 and out.strip().endswith(f"ubuntu@{address}") and str(key) in out
    assert "StrictHostKeyChecking=accept-new" in out and key.read_text().splitlines()[1] not in out

    assert tpi(capsys, "machine", "stop", "gpu-box")[0] == 0
    assert instance(machine_id)["State"]["Name"] == "stopped"
    assert "stopped" in tpi(capsys, "machine", "list")[1]
    assert tpi(capsys, "machine", "start", "gpu-box")[0] == 0
    assert instance(machine_id)["State"]["Name"] == "running"
    row = json.loads(tpi(capsys, "machine", "list", "--json")[1])[0]
    assert (
        row["status"] == "running" and row["cost"]
    )  # as the AWS backend prices it ("n/a" until prices exist)

    code, out = tpi(capsys, "machine", "destroy", "gpu-box")
    assert code == 0, out
    assert instance(machine_id)["State"]["Name"] == "terminated"
    assert left_of(machine_id) == [] and not key.exists() and registry.records() == []
    assert tpi(capsys, "machine", "destroy", "gpu-box")[0] == 0


def test_no_ssh_range_is_refused_before_anything_exists(home: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("TPI_AWS_SSH_CIDR", raising=False)
    code, out = tpi(capsys, "machine", "create", "open", "cloud=aws")
    assert code == 2 and "--ssh-from: no range may reach port 22" in out and out.count("\n") == 1
    code, out = tpi(capsys, "machine", "create", "open", "cloud=aws", "--ssh-from", "10.0.0.1/8")
    assert code == 2 and "--ssh-from: '10.0.0.1/8' is not an address range" in out
    assert client("ec2").describe_key_pairs()["KeyPairs"] == [] and registry.records() == []


def test_failure_midway_rolls_back_everything(home: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TPI_AWS_SSH_CIDR", "198.51.100.0/24")

    def refuse(self: Any, ec2: Any, state: Any) -> None:  # the last step fails, as a capacity error would
        raise RuntimeError("InsufficientInstanceCapacity")

    monkeypatch.setattr(aws_machines.AwsMachineDriver, "_instance", refuse)
    code, out = tpi(capsys, "machine", "create", "doomed", "cloud=aws")
    assert code == 2 and "creating the instance failed" in out and "everything made was removed" in out
    ec2 = client("ec2")
    assert (
        ec2.describe_key_pairs()["KeyPairs"] == []
        and ec2.describe_launch_templates()["LaunchTemplates"] == []
    )
    assert [g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"] != "default"] == []
    assert registry.records() == [] and list(registry.machines_dir().glob("tpi-*")) == []


def play(user_data: str, instance_id: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """The instance, played here: its user data with a clean environment, and a `shutdown` that
    terminates it through moto (what EC2 does for InstanceInitiatedShutdownBehavior=terminate)."""
    bin_dir = tmp_path / "machine-bin"
    bin_dir.mkdir()
    shutdown = bin_dir / "shutdown"
    shutdown.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import boto3; boto3.client(\"ec2\")"
                        f".terminate_instances(InstanceIds=[\"{instance_id}\"])'\n")  # fmt: skip
    shutdown.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(tmp_path / "machine-home")}
    env.update(
        {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    )  # moto, for the shutdown stand-in
    (tmp_path / "machine-home").mkdir()
    return subprocess.Popen(
        ["/bin/bash", "-c", user_data], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def test_runner_on_aws_gets_a_registration_never_the_token(
    home: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("REPO_TOKEN", TOKEN)
    monkeypatch.setenv("TPI_AWS_SSH_CIDR", "198.51.100.0/24")
    with ForgeContract(TOKEN) as forge:
        job = forge.queue_job("gitlab", ["gpu"], "echo trained")
        code, out = tpi(capsys, "runner", "create", "--driver", "gitlab", "--repo", "https://gitlab.example.com/acme/ml/models",
                        "--api-url", forge.gitlab_api, "--labels", "gpu", "--idle-timeout", "2s", "--stand-in",
                        "--name", "aws-ci", "cloud=aws", "spot=0")  # fmt: skip
        assert code == 0, out
        record = registry.records()[0]
        found = instance(record["id"])
        user_data = instance_user_data(found["InstanceId"])
        assert TOKEN not in user_data and "glrt-" in user_data  # only the runner's own registration
        template = client("ec2").describe_launch_template_versions(
            LaunchTemplateId=record["state"]["launch_template"]
        )
        data = template["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
        assert data["InstanceMarketOptions"]["SpotOptions"]["SpotInstanceType"] == "one-time"
        assert TOKEN not in base64.b64decode(data["UserData"]).decode()
        machine = play(user_data, found["InstanceId"], tmp_path)
        try:
            wait_for(lambda: job.state == "success", timeout=30)
            wait_for(lambda: record["runner"]["runner_id"] in forge.removed, timeout=30)
            assert machine.wait(timeout=30) == 0
        finally:
            machine.kill()
        log = machine.stdout.read().decode() if machine.stdout else ""
        assert "unregistered after 1 job(s)" in log and TOKEN not in log
        assert instance(record["id"])["State"]["Name"] == "terminated"  # it released itself
        assert json.loads(tpi(capsys, "runner", "list", "--json")[1])[0]["status"] == "released"
        for path in home.rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
        code, out = tpi(capsys, "runner", "destroy", "aws-ci")
        assert code == 0 and "already unregistered" in out, out
    assert left_of(record["id"]) == [] and registry.records() == []
