"""Client crashes: `tpi run` and `tpi destroy` killed with SIGKILL at random (seeded) points.

On AWS (moto server): after each kill, `tpi destroy` finishes what the registry recorded, `tpi
sweep aws --yes` removes what only tags tell, a second destroy ends clean, and moto lists
nothing of the task (every kind of resource the backend makes, tagged or not). The other
backends: test_crashes_clouds.py; the shared steps: crashes.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ..aws_moto import aws_env, client, moto_endpoint  # noqa: F401 - fixtures
from .crashes import Target, kill_rounds

pytestmark = pytest.mark.slow


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


def test_client_killed_during_launch_and_destroy_leaves_nothing(
    aws_env: str,  # noqa: F811 - the imported fixture
    tpi_home: Path,
    workdir: Path,
    tmp_path: Path,
) -> None:
    (workdir / "input.txt").write_text("x" * 1000)
    script = tmp_path / "script"
    script.write_text("#!/bin/bash\necho hi\n")
    rows = kill_rounds(Target("aws", leftovers), script)
    assert any(row["killed"] for row in rows) or not rows  # the kills landed inside the commands
