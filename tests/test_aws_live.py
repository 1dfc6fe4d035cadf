"""Opt-in smoke test against real AWS: `TPI_SMOKE_AWS=1 pytest tests/test_aws_live.py -s`.

It spends real money (one t3.micro spot instance for a few minutes, a bucket, a role) and needs
credentials from the standard chain (AWS_PROFILE, SSO, or keys) allowed to manage EC2, Auto
Scaling, IAM roles and instance profiles, and S3. `TPI_SMOKE_AWS_REGION` picks the region
(default us-west = us-west-1).

What moto cannot show, in the order a real account shows it: the boot script on a real image
(its log is printed as it reaches the bucket, and the console output of a machine that wrote
none); the group launching a second instance for `parallelism=1` (a boot loop) fails the test
at once; then the rank claim, the reports, the machine releasing itself, and after destroy no
instance, volume or network interface tagged with the task (nor anything `tpi sweep` finds).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout, ranks
from tpi_jupyter.backends.kit.boot import MACHINES
from tpi_jupyter.commands import build_spec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import FINAL, Task, launch, sweep

pytestmark = pytest.mark.skipif(
    os.environ.get("TPI_SMOKE_AWS") != "1", reason="real AWS: set TPI_SMOKE_AWS=1 (costs money)"
)

SCRIPT = """#!/bin/bash
mkdir -p results
echo "hello from $(hostname) rank $TPI_RANK home $HOME"
python3 --version
echo "hello from $(hostname) rank $TPI_RANK" > results/hello.txt
"""
POLL = 10.0


class Watcher:
    """Prints boot logs as they reach the bucket; fails fast on a second instance."""

    def __init__(self, task: Task):
        import boto3

        self.task = task
        self.region = task.task_spec.native_region
        self.ec2 = boto3.client("ec2", region_name=self.region)
        self.fs, self.root = filesystem(task.record["remote"])
        self.printed: dict[str, int] = {}

    def instances(self) -> dict[str, str]:
        """Every instance ever launched for the task (terminated ones too): id -> state."""
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "tag:tpi-task", "Values": [self.task.id]}]
        )
        return {
            i["InstanceId"]: i["State"]["Name"]
            for p in pages
            for r in p["Reservations"]
            for i in r["Instances"]
        }

    def boot_logs(self) -> None:
        self.fs.invalidate_cache()
        for path in self.fs.glob(layout.join(self.root, MACHINES, "*", "boot-log")):
            text = bytes(self.fs.cat_file(path)).decode("utf-8", "replace")
            new = text[self.printed.get(path, 0) :]
            if new:
                print(f"--- boot log {path.rsplit('/', 2)[-2]} ---\n{new}", flush=True)
                self.printed[path] = len(text)

    def console(self, instance: str) -> str:
        try:
            return str(self.ec2.get_console_output(InstanceId=instance, Latest=True).get("Output", ""))
        except Exception as error:
            return f"(no console output: {error})"

    def step(self) -> None:
        self.boot_logs()
        launched = self.instances()
        if len(launched) > 1:  # parallelism=1: a second machine means the first one's boot failed
            for instance in launched:
                print(f"--- console of {instance} ---\n{self.console(instance)}", flush=True)
            pytest.fail(f"the group launched {len(launched)} instances for parallelism=1: {launched}")


def leftovers(watcher: Watcher, task_id: str) -> list[str]:
    tag = [{"Name": "tag:tpi-task", "Values": [task_id]}]
    ec2 = watcher.ec2
    found: list[Any] = [
        f"instance {i}" for i, s in watcher.instances().items() if s not in ("terminated", "shutting-down")
    ]
    found += [f"volume {v['VolumeId']}" for v in ec2.describe_volumes(Filters=tag)["Volumes"]]
    found += [
        f"network interface {n['NetworkInterfaceId']}"
        for n in ec2.describe_network_interfaces(Filters=tag)["NetworkInterfaces"]
    ]
    found += [
        line for line in sweep("aws", delete=False, region=watcher.region, everyone=True) if task_id in line
    ]
    return found


@pytest.mark.timeout(1800)
def test_live_spot_task_end_to_end(tpi_home: Path, workdir: Path) -> None:
    if os.environ.get("AWS_ENDPOINT_URL"):
        pytest.skip("AWS_ENDPOINT_URL is set: this test is for real AWS")
    region = os.environ.get("TPI_SMOKE_AWS_REGION", "us-west")
    spec = build_spec(["machine=s", "spot=0", "workdir=.", "output=results", "timeout=1200",
                       f"region={region}", "tags=purpose=tpi-smoke"], {"cloud": "aws"})  # fmt: skip
    task = launch(spec, SCRIPT)
    assert isinstance(task, Task)
    watcher = Watcher(task)
    try:
        limit = time.time() + 1200
        while (status := task.read(fresh=True).status) not in FINAL and time.time() < limit:
            watcher.step()
            time.sleep(POLL)
        watcher.boot_logs()
        assert status == "succeeded", task.tail_text()
        (instance,) = watcher.instances()
        fs, root = watcher.fs, watcher.root
        assert ranks.read_claims(fs, root) == {(0, 0): instance}  # the claim: machine id = instance id
        assert b'"result": "success"' in bytes(fs.cat_file(layout.join(root, layout.status(0))))
        assert fs.exists(layout.join(root, layout.boot_log(0, 0)))  # the agent's copy of its boot log
        assert "hello from" in task.logs()[0] and "home /root" in task.logs()[0]
        # Released: the machine left its group on its own and the group wants none.
        group_name = task.record["backend"]["group"]
        import boto3

        autoscaling = boto3.client("autoscaling", region_name=watcher.region)
        deadline = time.time() + 300
        while time.time() < deadline:
            (group,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])[
                "AutoScalingGroups"
            ]
            if not group["Instances"]:
                break
            time.sleep(POLL)
        assert group["Instances"] == [] and group["DesiredCapacity"] == 0
    finally:
        task.destroy()
    assert (workdir / "results" / "hello.txt").read_text().startswith("hello from")
    deadline = time.time() + 600  # terminated instances' volumes and interfaces take a while to go
    while (left := leftovers(watcher, task.id)) and time.time() < deadline:
        time.sleep(POLL * 3)
    assert left == [], left
