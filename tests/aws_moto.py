"""moto server fixtures for the AWS backend tests (EC2, Auto Scaling, S3, IAM, STS).

One ThreadedMotoServer per session, reset before and after every test. moto has no current Ubuntu or NVIDIA
images: `MOTO_AMIS_PATH` seeds them, and must be set before moto's EC2 models are imported,
which is why this module sets it when it is imported (at collection, before any server starts).

Every AWS test runs with `AWS_ENDPOINT_URL` pointing at moto, dummy keys and no profile, so no
request can reach real AWS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import aws_placement, emulators, played

REGION = "us-west-1"
UBUNTU_OWNER = "099720109477"
NVIDIA_OWNER = "898082745236"


def _ami(ami_id: str, owner: str, name: str, created: str) -> dict[str, Any]:
    return {
        "ami_id": ami_id, "state": "available", "public": True, "owner_id": owner,
        "image_location": f"{owner}/{name}", "root_device_type": "ebs", "root_device_name": "/dev/sda1",
        "description": name, "image_type": "machine", "platform": None, "architecture": "x86_64",
        "name": name, "virtualization_type": "hvm", "hypervisor": "xen", "creation_date": created,
    }  # fmt: skip


SEEDED_AMIS = [
    _ami("ami-0a0ubuntu2404old", UBUNTU_OWNER,
         "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20240423", "2024-04-23T00:00:00.000Z"),
    _ami("ami-0b0ubuntu2404new", UBUNTU_OWNER,
         "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250610", "2025-06-10T00:00:00.000Z"),
    _ami("ami-0c0nvidiadlami01", NVIDIA_OWNER,
         "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250601", "2025-06-01T00:00:00.000Z"),
]  # fmt: skip
NEWEST_UBUNTU = "ami-0b0ubuntu2404new"

if "MOTO_AMIS_PATH" not in os.environ:
    _handle, _path = tempfile.mkstemp(prefix="tpi-moto-amis-", suffix=".json")
    with os.fdopen(_handle, "w") as _out:
        json.dump(SEEDED_AMIS, _out)
    os.environ["MOTO_AMIS_PATH"] = _path


# moto's endpoint -> (URL of the placement-group contract server in front of it, its store);
# aws_env points the AWS tests at the front (tests/aws_placement.py), other users get moto itself.
FRONTS: dict[str, tuple[str, aws_placement.Store]] = {}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    for url in emulators.moto_server():
        with contextlib.contextmanager(aws_placement.front)(url) as front:
            FRONTS[url] = front
            yield url
            FRONTS.pop(url, None)


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Environment for boto3 and s3fs: moto's endpoint, dummy keys, no profile; fast waits."""
    from dataclasses import replace

    from tpi_jupyter.backends.aws import AwsBackend
    from tpi_jupyter.backends.base import Timing

    endpoint = FRONTS[moto_endpoint][0]  # the placement-group contract in front of moto
    point_at_moto(monkeypatch, endpoint, tmp_path)
    for name, value in (("POLL", 0.05), ("PROFILE_PROPAGATION", 0.0), ("STOP_WAIT", 10.0),
                        ("GROUP_DELETE_WAIT", 10.0), ("DEPENDENCY_WAIT", 1.0)):  # fmt: skip
        monkeypatch.setattr(AwsBackend, name, value)
    fast = Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=1)
    monkeypatch.setattr(
        AwsBackend, "capabilities", replace(AwsBackend.capabilities, timing=fast, poll_interval=0.5)
    )
    _reset(endpoint)  # the server is shared with other test files (the syncer's buckets)
    _clear_s3fs()
    default_vpc_internet()
    yield endpoint
    _clear_s3fs()
    _reset(endpoint)


def point_at_moto(monkeypatch: pytest.MonkeyPatch, endpoint: str, tmp_path: Path) -> None:
    """boto3 and s3fs reach moto only: its endpoint, dummy keys, no profile, no metadata probe."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def default_vpc_internet(region: str = REGION) -> None:
    """What a real default VPC has and moto's lacks: an internet gateway and the 0.0.0.0/0 route
    (pre-flight refuses a default VPC without a way out)."""
    ec2 = client("ec2") if region == REGION else __import__("boto3").client("ec2", region_name=region)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc)
    main = [{"Name": "vpc-id", "Values": [vpc]}, {"Name": "association.main", "Values": ["true"]}]
    table = ec2.describe_route_tables(Filters=main)["RouteTables"][0]["RouteTableId"]
    ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway)


def _reset(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=30).read()


def _clear_s3fs() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def client(service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION)


def tagged(task_id: str) -> list[str]:
    """Every resource kind tagged tpi-task=<task_id> that still exists (instances aside)."""
    ec2, autoscaling, iam, s3 = client("ec2"), client("autoscaling"), client("iam"), client("s3")
    tag = [{"Name": "tag:tpi-task", "Values": [task_id]}]
    left = [f"group {g['AutoScalingGroupName']}" for g in autoscaling.describe_auto_scaling_groups()[
        "AutoScalingGroups"] if {"Key": "tpi-task", "Value": task_id} in [
            {"Key": t["Key"], "Value": t["Value"]} for t in g.get("Tags", [])]]  # fmt: skip
    left += [
        f"template {t['LaunchTemplateName']}"
        for t in ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"]
    ]
    left += [
        f"security group {g['GroupId']}" for g in ec2.describe_security_groups(Filters=tag)["SecurityGroups"]
    ]
    left += [f"key pair {k['KeyName']}" for k in ec2.describe_key_pairs(Filters=tag)["KeyPairs"]]
    left += [
        f"placement group {g['GroupName']}"
        for g in ec2.describe_placement_groups(Filters=tag)["PlacementGroups"]
    ]
    for role in iam.list_roles()["Roles"]:
        if {"Key": "tpi-task", "Value": task_id} in iam.list_role_tags(RoleName=role["RoleName"])["Tags"]:
            left.append(f"role {role['RoleName']}")
    for profile in iam.list_instance_profiles()["InstanceProfiles"]:
        if {"Key": "tpi-task", "Value": task_id} in profile.get("Tags", []):  # moto lists them here
            left.append(f"instance profile {profile['InstanceProfileName']}")
    for bucket in s3.list_buckets().get("Buckets", []):
        try:
            tags = s3.get_bucket_tagging(Bucket=bucket["Name"])["TagSet"]
        except Exception:
            continue
        if {"Key": "tpi-task", "Value": task_id} in tags:
            left.append(f"bucket {bucket['Name']}")
    return left


def group_instances(group: str, alive_only: bool = True) -> list[str]:
    found = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
        "AutoScalingGroups"
    ]
    if not found:
        return []
    return [
        i["InstanceId"] for i in found[0]["Instances"] if not alive_only or i["LifecycleState"] == "InService"
    ]


def instance_user_data(instance_id: str) -> str:
    import base64

    value = client("ec2").describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"]).decode()


def agent_command(user_data: str, machine_dir: Path) -> list[str]:
    """The user data's `python -m tpi_jupyter.agent ...` line, for this venv and a local directory."""
    line = next(line for line in user_data.splitlines() if " -m tpi_jupyter.agent " in line)
    words = shlex.split(line)
    words[0] = sys.executable
    words[words.index("--machine-dir") + 1] = str(machine_dir)
    if "--boot-log" in words:  # the machine's boot log, when the test wrote one
        words[words.index("--boot-log") + 1] = str(machine_dir / "boot.log")
    return words


class PlayedMachine:
    """An ASG instance played by a local process running the agent its user data starts."""

    def __init__(self, instance_id: str, base: Path):
        self.instance_id = instance_id
        self.machine_dir = base / instance_id
        self.machine_dir.mkdir(parents=True)
        command = agent_command(instance_user_data(instance_id), self.machine_dir)
        self.log = self.machine_dir.parent / f"{instance_id}.log"
        env = {**os.environ, "TPI_INSTANCE_ID": instance_id}
        self.process = played.spawn(command, env, self.log, mark=str(self.machine_dir))

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"agent of {self.instance_id} still runs:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """The machine vanishes at once: agent and script alike."""
        played.vanish(self.process, mark=str(self.machine_dir))
