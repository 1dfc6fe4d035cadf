"""Multi-node tasks on AWS (issue 16, point 4), against moto server.

moto plays EC2, Auto Scaling, S3 and IAM; it has no placement groups, so those three calls go to
a contract server in front of it (tests/aws_placement.py: requests checked against botocore's
EC2 model, InUse refusals as AWS makes them). What neither shows (instances really packed in a
placement group, capacity errors of a full zone) is stated in the README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tpi_jupyter import state
from tpi_jupyter.backends.aws import group as aws_group
from tpi_jupyter.commands import build_spec, parse_words, run_verb
from tpi_jupyter.spec import SpecError
from tpi_jupyter.task import Task, TaskError, launch

from .aws_moto import (
    FRONTS,
    aws_env,  # noqa: F401 - fixture
    client,
    group_instances,
    moto_endpoint,  # noqa: F401 - fixture
    tagged,
)

SCRIPT = "#!/bin/bash\nsleep 60\n"


@pytest.fixture
def home(aws_env: str, tpi_home: Path) -> Path:  # noqa: F811 - the imported fixture
    return tpi_home


def start(words: list[str]) -> Task:
    task = launch(build_spec(words, {"cloud": "aws"}), SCRIPT)
    assert isinstance(task, Task)
    return task


def asg(task: Task) -> dict[str, Any]:
    name = task.record["backend"]["group"]
    return dict(
        client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][
            0
        ]
    )


def inbound(task: Task) -> list[dict[str, Any]]:
    sg = task.record["backend"]["security_group"]
    return list(client("ec2").describe_security_groups(GroupIds=[sg])["SecurityGroups"][0]["IpPermissions"])


def subnet_zones(subnets: list[str]) -> set[str]:
    return {s["AvailabilityZone"] for s in client("ec2").describe_subnets(SubnetIds=subnets)["Subnets"]}


def placement_groups(task_id: str) -> list[dict[str, Any]]:
    tag = [{"Name": "tag:tpi-task", "Values": [task_id]}]
    return list(client("ec2").describe_placement_groups(Filters=tag)["PlacementGroups"])


def contract_store() -> Any:
    """The placement-group store behind this test's endpoint (every module that imports the
    session fixture `moto_endpoint` has its own moto server and front)."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    return next(store for front, store in FRONTS.values() if front == endpoint)


def test_multi_node_task_one_zone_placement_group_and_own_traffic(home: Path) -> None:
    task = start(["name=aws-mpi", "parallelism=3", "placement=cluster", "launch=mpi"])
    aws, found = task.record["backend"], asg(task)
    zone = aws["zone"]
    offered = client("ec2").describe_instance_type_offerings(
        LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": ["m5.2xlarge"]}]
    )["InstanceTypeOfferings"]
    assert zone in {item["Location"] for item in offered}
    assert len(subnet_zones([s["SubnetId"] for s in client("ec2").describe_subnets()["Subnets"]])) > 1
    assert subnet_zones(found["VPCZoneIdentifier"].split(",")) == {zone}
    assert found["AvailabilityZones"] == [zone]
    instances = group_instances(aws["group"])
    assert len(instances) == 3
    placed = client("ec2").describe_instances(InstanceIds=instances)["Reservations"]
    assert {i["Placement"]["AvailabilityZone"] for r in placed for i in r["Instances"]} == {zone}

    assert found["PlacementGroup"] == aws["placement_group"] == aws["name"]
    (placement,) = placement_groups(task.id)
    assert placement["GroupName"] == aws["name"] and placement["Strategy"] == "cluster"
    creates = [params for action, params in contract_store().calls if action == "CreatePlacementGroup"]
    assert len(creates) == 1 and creates[0]["TagSpecification.1.ResourceType"] == "placement-group"

    # Inbound: one rule, every protocol, from the group itself; no address range at all.
    (rule,) = inbound(task)
    assert rule["IpProtocol"] == "-1" and rule["IpRanges"] == [] and rule["Ipv6Ranges"] == []
    assert [pair["GroupId"] for pair in rule["UserIdGroupPairs"]] == [aws["security_group"]]

    # As on AWS, the placement group cannot go while the group's instances are in it.
    with pytest.raises(ClientError) as refused:
        client("ec2").delete_placement_group(GroupName=aws["placement_group"])
    assert refused.value.response["Error"]["Code"] == "InvalidPlacementGroup.InUse"
    task.destroy()
    assert tagged(task.id) == [] and placement_groups(task.id) == []


def test_single_node_task_keeps_every_zone_and_no_inbound_rule(home: Path) -> None:
    task = start(["name=aws-one"])
    aws, found = task.record["backend"], asg(task)
    assert aws["zone"] == "" and aws["placement_group"] == "" and "PlacementGroup" not in found
    assert len(subnet_zones(found["VPCZoneIdentifier"].split(","))) > 1
    assert inbound(task) == []
    assert placement_groups(task.id) == []
    task.destroy()
    assert tagged(task.id) == []


def test_multi_node_without_placement_makes_no_placement_group(home: Path) -> None:
    task = start(["name=aws-two", "parallelism=2"])
    assert len(subnet_zones(asg(task)["VPCZoneIdentifier"].split(","))) == 1
    assert [pair["GroupId"] for pair in inbound(task)[0]["UserIdGroupPairs"]] == [
        task.record["backend"]["security_group"]
    ]
    assert placement_groups(task.id) == [] and "PlacementGroup" not in asg(task)
    task.destroy()
    assert tagged(task.id) == []


@pytest.mark.parametrize(
    ("words", "text"),
    [
        (["placement=cluster"], "placement: cluster packs the machines of a multi-node task; accepted: none"),
        (["placement=cluster", "parallelism=2", "machine=s"],
         "placement: t3.micro cannot join a cluster placement group (it supports partition, spread); accepted:"),
    ],
)  # fmt: skip
def test_bad_placement_is_refused_before_anything_exists(home: Path, words: list[str], text: str) -> None:
    with pytest.raises(SpecError) as raised:
        start(["name=aws-bad", *words])
    assert str(raised.value).startswith(text) and "\n" not in str(raised.value)
    assert state.records() == []
    assert client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert client("ec2").describe_placement_groups()["PlacementGroups"] == []
    assert client("s3").list_buckets().get("Buckets", []) == []


def test_failure_after_the_placement_group_rolls_it_back(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> None:
        raise ClientError({"Error": {"Code": "InsufficientInstanceCapacity", "Message": "injected: zone full"}},
                          "CreateAutoScalingGroup")  # fmt: skip

    monkeypatch.setattr(aws_group, "create_group", refuse)
    spec = build_spec(["name=aws-pg-rollback", "parallelism=2", "placement=cluster"], {"cloud": "aws"})
    with pytest.raises(TaskError) as raised:
        launch(spec, SCRIPT)
    assert "everything created so far was removed" in str(raised.value)
    assert [a for a, _ in contract_store().calls].count("DeletePlacementGroup") == 1
    assert placement_groups(spec.id) == [] and tagged(spec.id) == []


def test_sweep_finds_and_deletes_a_gone_tasks_placement_group(home: Path) -> None:
    lost = start(["name=aws-pg-lost", "parallelism=2", "placement=cluster"])
    state.delete(lost.id)
    out: list[str] = []
    run_verb(parse_words(["sweep", "aws"]), out.append)
    line = next(line for line in out if line.startswith(f"orphan {lost.id} (us-west-1)"))
    assert f"placement group {lost.record['backend']['placement_group']}" in line, line
    run_verb(parse_words(["sweep", "aws", "--yes"]), out.append)
    assert placement_groups(lost.id) == [] and tagged(lost.id) == []


def test_dry_run_lists_the_multi_node_resources(home: Path) -> None:
    words = ["name=aws-plan", "parallelism=4", "placement=cluster", "launch=mpi"]
    text = str(launch(build_spec(words, {"cloud": "aws"}), SCRIPT, dry_run=True))
    assert "all 4 machines in one availability zone of us-west-1 that offers m5.2xlarge" in text, text
    assert "admits all traffic from its own members (rank to rank), nothing else inbound" in text
    assert "cluster placement group tpi-" in text
    assert client("ec2").describe_placement_groups()["PlacementGroups"] == []
    single = str(launch(build_spec(["name=aws-plan1"], {"cloud": "aws"}), SCRIPT, dry_run=True))
    assert "multi-node" not in single
