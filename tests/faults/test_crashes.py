"""Client crashes: `tpi run` and `tpi destroy` killed with SIGKILL at random (seeded) points.

On AWS (moto server): after each kill, `tpi destroy` finishes what the registry recorded, `tpi
sweep aws --yes` removes what only tags tell, a second destroy ends clean, and moto lists
nothing of the task (every kind of resource the backend makes, tagged or not). The local
backend: no process of the task is left running.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tpi_jupyter import state

from ..aws_moto import aws_env, client, moto_endpoint  # noqa: F401 - fixtures
from . import figures

pytestmark = pytest.mark.slow


def tpi(*words: str, kill_after: float | None = None) -> subprocess.CompletedProcess[str] | None:
    """Run the CLI; with kill_after, SIGKILL it then (None if it was killed before it ended)."""
    command = [sys.executable, "-m", "tests.faults.fast_cli", *words]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               stdin=subprocess.DEVNULL, env=os.environ.copy())  # fmt: skip
    try:
        out, err = process.communicate(timeout=kill_after if kill_after is not None else 240)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def leftovers() -> list[str]:
    """Everything of the kinds the AWS backend makes that moto still holds, tagged or not."""
    ec2, s3, iam, autoscaling = client("ec2"), client("s3"), client("iam"), client("autoscaling")
    left = [f"bucket {b['Name']}" for b in s3.list_buckets().get("Buckets", [])]
    left += [
        f"group {g['AutoScalingGroupName']}"
        for g in autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
    ]
    left += [
        f"template {t['LaunchTemplateName']}" for t in ec2.describe_launch_templates()["LaunchTemplates"]
    ]
    left += [f"key {k['KeyName']}" for k in ec2.describe_key_pairs()["KeyPairs"]]
    left += [f"security group {g['GroupName']}" for g in ec2.describe_security_groups()["SecurityGroups"]
             if g["GroupName"] != "default"]  # fmt: skip
    left += [f"role {r['RoleName']}" for r in iam.list_roles(PathPrefix="/tpi/")["Roles"]]
    left += [
        f"profile {p['InstanceProfileName']}"
        for p in iam.list_instance_profiles(PathPrefix="/tpi/")["InstanceProfiles"]
    ]
    running = ec2.describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    )
    left += [f"instance {i['InstanceId']}" for r in running["Reservations"] for i in r["Instances"]]
    return left


def clean_up(name: str) -> dict[str, int]:
    """destroy, then sweep, then destroy again; what each step found to do."""
    recorded = 1 if any(r["name"] == name for r in state.records()) else 0
    destroyed = tpi("destroy", name)
    assert destroyed is not None and destroyed.returncode == 0, destroyed and destroyed.stderr
    after_destroy = leftovers()
    swept = tpi("sweep", "aws", "--yes")
    assert swept is not None and swept.returncode == 0, swept and swept.stderr
    assert leftovers() == [], f"sweep left {leftovers()} (after destroy: {after_destroy})"
    again = tpi("destroy", name)
    assert again is not None and again.returncode == 0 and state.records() == []
    return {"recorded": recorded, "left_for_sweep": after_destroy}


def test_client_killed_during_launch_and_destroy_leaves_nothing(
    aws_env: str,  # noqa: F811 - the imported fixture
    tpi_home: Path,
    workdir: Path,
    tmp_path: Path,
) -> None:
    seed = figures.seed()
    rng = random.Random(seed)
    (workdir / "input.txt").write_text("x" * 1000)
    script = tmp_path / "script"
    script.write_text("#!/bin/bash\necho hi\n")
    began = time.monotonic()
    whole = tpi("run", "cloud=aws", "spot=0", "workdir=.", "name=crash-ref", "--script", str(script))
    launch_time = time.monotonic() - began
    assert whole is not None and whole.returncode == 0, whole and whole.stderr
    clean_up("crash-ref")

    rows = []
    for round_ in range(int(os.environ.get("TPI_FAULT_CRASHES") or 2)):
        name, verb = f"crash-{round_}", rng.choice(["run", "destroy"])
        point = rng.uniform(0.2, launch_time)
        if verb == "run":
            killed = tpi("run", "cloud=aws", "spot=0", "workdir=.", f"name={name}", "--script", str(script),
                         kill_after=point)  # fmt: skip
        else:
            assert tpi("run", "cloud=aws", "spot=0", "workdir=.", f"name={name}", "--script", str(script))
            killed = tpi("destroy", name, kill_after=point / 2)
        row = {"verb": verb, "kill_at": round(point, 2), "killed": killed is None, **clean_up(name)}
        rows.append(row)
        print(row)
    figures.record("crash", "aws", {"seed": seed, "rounds": rows})
    assert any(row["killed"] for row in rows) or not rows  # the kills landed inside the commands
