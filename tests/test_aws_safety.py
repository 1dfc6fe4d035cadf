"""AWS safe on a real account: pre-flight checks, the no-paid-loop rule, spot notices.

Pre-flight checks run against moto where moto implements the call (route tables, images). moto
implements neither Service Quotas nor `iam:SimulatePrincipalPolicy`: those two calls are answered
by botocore's Stubber with the documented response shapes, and each test says so.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from tpi_jupyter import layout
from tpi_jupyter.agent_watch import STOP_KEY
from tpi_jupyter.backends.aws import checks
from tpi_jupyter.backends.kit import boot, boot_failures
from tpi_jupyter.commands import build_spec, parse_words, run_verb
from tpi_jupyter.spec import SpecError
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, launch

from .aws_moto import (  # noqa: F401 - fixtures
    REGION,
    PlayedMachine,
    aws_env,
    client,
    group_instances,
    instance_user_data,
    moto_endpoint,
)
from .boot_machine import Machine
from .conftest import wait_for
from .imds import Imds, imds  # noqa: F401 - fixture


@pytest.fixture
def moto(aws_env: str, tpi_home: Path) -> str:  # noqa: F811 - the imported fixture
    return aws_env


def default_vpc() -> tuple[str, list[dict[str, Any]]]:
    ec2 = client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    return vpc, ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]


def main_table(vpc: str) -> str:
    found = client("ec2").describe_route_tables(
        Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "association.main", "Values": ["true"]}]
    )
    return str(found["RouteTables"][0]["RouteTableId"])


def test_default_vpc_without_a_route_to_the_internet_is_refused(moto: str) -> None:
    vpc, subnets = default_vpc()  # the fixture gave it a gateway and the default route
    found = checks.internet_subnets(client("ec2"), REGION, vpc, subnets)
    assert sorted(found) == sorted(item["SubnetId"] for item in subnets)
    client("ec2").delete_route(RouteTableId=main_table(vpc), DestinationCidrBlock="0.0.0.0/0")
    with pytest.raises(
        SpecError, match=r"^region: the default VPC vpc-\w+ in us-west-1 has no subnet with a route"
    ):
        checks.internet_subnets(client("ec2"), REGION, vpc, subnets)


def test_subnet_with_its_own_table_and_no_route_is_left_out(moto: str) -> None:
    vpc, subnets = default_vpc()
    ec2 = client("ec2")
    isolated = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=isolated, SubnetId=subnets[0]["SubnetId"])
    found = checks.internet_subnets(ec2, REGION, vpc, subnets)
    assert subnets[0]["SubnetId"] not in found and found


def test_image_owner_star_is_refused() -> None:
    with pytest.raises(SpecError, match=r"^image: 'ubuntu@\*:x86_64:ubuntu\*' matches AMIs of any owner"):
        checks.check_image_owner("ubuntu@*:x86_64:ubuntu*", "*")
    checks.check_image_owner("ubuntu@099720109477:x86_64:ubuntu*", "099720109477")


def test_images_without_python_3_10_are_refused() -> None:
    for name in (
        "ubuntu/images/hvm-ssd/ubuntu-focal-20.04-amd64-server-20240101",
        "amzn2-ami-hvm-2.0.2024-x86_64-gp2",
    ):
        with pytest.raises(SpecError, match=r"^image: .* has no Python 3\.10"):
            checks.check_image_python("custom", name)
    checks.check_image_python("ubuntu", "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20250610")
    checks.check_image_python("al", "al2023-ami-2023.6.20250107.0-kernel-6.1-x86_64")


def test_disk_size_under_the_image_snapshot_is_refused(moto: str) -> None:
    image = client("ec2").describe_images(Owners=["099720109477"])["Images"][0]
    size = next(
        m["Ebs"]["VolumeSize"]
        for m in image["BlockDeviceMappings"]
        if m["DeviceName"] == image["RootDeviceName"]
    )
    with pytest.raises(
        SpecError, match=rf"^disk_size: {size - 1} GB is smaller than the image's root snapshot"
    ):
        checks.check_disk(size - 1, image)
    checks.check_disk(size, image)
    checks.check_disk(-1, image)


def test_gpu_family_with_a_zero_vcpu_quota_is_refused() -> None:
    """moto has no Service Quotas: Stubber answers this one call with the documented shape."""
    import boto3

    quotas = boto3.client("service-quotas", region_name=REGION)
    with Stubber(quotas) as stub:
        stub.add_response(
            "get_service_quota",
            {"Quota": {"QuotaCode": "L-3819A6DF", "Value": 0.0}},
            {"ServiceCode": "ec2", "QuotaCode": "L-3819A6DF"},
        )
        with pytest.raises(
            SpecError, match=r"^machine: g4dn.xlarge needs 4 vCPUs of the Spot 'G and VT instances' quota"
        ):
            checks.check_gpu_quota(quotas, "g4dn.xlarge", 4, True, REGION)
        stub.add_response(
            "get_service_quota",
            {"Quota": {"QuotaCode": "L-417A185B", "Value": 96.0}},
            {"ServiceCode": "ec2", "QuotaCode": "L-417A185B"},
        )
        checks.check_gpu_quota(quotas, "p3.2xlarge", 8, False, REGION)
        stub.assert_no_pending_responses()
    checks.check_gpu_quota(quotas, "m5.large", 2, True, REGION)  # not accelerated: no call at all


def _simulation(decisions: dict[str, str]) -> dict[str, Any]:
    return {
        "EvaluationResults": [
            {"EvalActionName": action, "EvalDecision": decision} for action, decision in decisions.items()
        ],
        "IsTruncated": False,
    }


def test_permission_set_role_lacking_what_machines_need_is_refused(moto: str) -> None:
    """The instance profile is real (moto); moto lacks SimulatePrincipalPolicy, so Stubber answers it."""
    import json

    import boto3

    iam = boto3.client("iam", region_name=REGION)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"}}
        ],
    }
    role = iam.create_role(RoleName="mine", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="mine")["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName="mine", RoleName="mine")
    real_profile = iam.get_instance_profile(InstanceProfileName="mine")
    real_profile.pop("ResponseMetadata")
    for item in real_profile["InstanceProfile"]["Roles"]:  # boto3 decodes it; the wire shape is a string
        item["AssumeRolePolicyDocument"] = json.dumps(item["AssumeRolePolicyDocument"])
    with Stubber(iam) as stub:
        stub.add_response("get_instance_profile", real_profile, {"InstanceProfileName": "mine"})
        stub.add_response(
            "simulate_principal_policy",
            _simulation(
                {
                    "s3:GetObject": "allowed",
                    "s3:PutObject": "implicitDeny",
                    "s3:DeleteObject": "allowed",
                    "s3:AbortMultipartUpload": "explicitDeny",
                }
            ),
            {
                "PolicySourceArn": role,
                "ActionNames": list(checks.OBJECT_ACTIONS),
                "ResourceArns": ["arn:aws:s3:::bkt/pre/x"],
                "ContextEntries": [],
            },
        )
        stub.add_response("simulate_principal_policy", _simulation({"s3:ListBucket": "allowed"}))
        stub.add_response(
            "simulate_principal_policy",
            _simulation({"autoscaling:TerminateInstanceInAutoScalingGroup": "allowed"}),
        )
        with pytest.raises(SpecError) as refused:
            checks.check_permission_set(iam, profile, "aws", "bkt", "pre", "tpi-task-id")
    message = str(refused.value)
    assert message.startswith(
        f"permission_set: the role of {profile!r} lacks s3:PutObject, s3:AbortMultipartUpload"
    )
    assert "\n" not in message


def test_permission_set_that_does_not_exist_is_refused(moto: str) -> None:
    import boto3

    iam = boto3.client("iam", region_name=REGION)
    with pytest.raises(
        SpecError, match=r"^permission_set: 'arn:aws:iam::123456789012:instance-profile/none' is not usable"
    ):
        checks.check_permission_set(
            iam, "arn:aws:iam::123456789012:instance-profile/none", "aws", "b", "p", "t"
        )


def test_partition_follows_the_task_region() -> None:
    assert checks.partition_of("us-west-1") == "aws"
    assert checks.partition_of("cn-north-1") == "aws-cn"
    assert checks.partition_of("us-gov-west-1") == "aws-us-gov"


# ---------------------------------------------------------------- the group and its boot script


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "aws"}), script)
    assert isinstance(task, Task)
    return task


def describe_group(task: Task) -> dict[str, Any]:
    name = task.record["backend"]["group"]
    return dict(
        client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][
            0
        ]
    )


def test_machines_terminate_on_shutdown_and_the_group_stops_itself_at_the_deadline(moto: str) -> None:
    task = start(["name=aws-safe-group", "spot=0.00001", "timeout=600"], "#!/bin/bash\ntrue\n")
    state = task.record["backend"]
    template = client("ec2").describe_launch_template_versions(LaunchTemplateId=state["launch_template"])
    data = template["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert data["InstanceInitiatedShutdownBehavior"] == "terminate"
    script = base64.b64decode(data["UserData"]).decode()
    assert "set -Eeuo pipefail" in script and f"systemctl start --no-block {boot.UNIT}" in script
    assert "RuntimeMaxSec=$left" in script and "DPkg::Lock::Timeout" in script
    group = describe_group(task)
    assert group["CapacityRebalance"] is False
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["SpotMaxPrice"] == "0.00001"  # not 1e-05
    (action,) = client("autoscaling").describe_scheduled_actions(AutoScalingGroupName=state["group"])[
        "ScheduledUpdateGroupActions"
    ]
    assert (action["MinSize"], action["MaxSize"], action["DesiredCapacity"]) == (0, 0, 0)
    assert abs(action["StartTime"].timestamp() - (task.record["deadline"] + boot.GRACE)) < 2
    task.destroy()


def played_boot(instance_id: str, base: Path, metadata: Imds) -> Machine:
    """Run the instance's real boot script (moto's user data) with stand-ins, against moto's S3."""
    metadata.set_instance(instance_id)
    machine = Machine(base / instance_id, metadata)
    machine.give("systemctl", "sleep", "shutdown", python="good")
    machine.extra_env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    machine.run(instance_user_data(instance_id), PIP_FAIL_WHEEL="1")  # the agent wheel does not install
    return machine


def test_failed_boots_end_the_task_with_the_boot_log_and_no_paid_loop(
    moto: str,
    tmp_path: Path,
    imds: Imds,  # noqa: F811
) -> None:
    task = start(["name=aws-bad-boot", "timeout=600"], "#!/bin/bash\ntrue\n")
    group_name = task.record["backend"]["group"]
    played: list[str] = []
    while len(played) < boot_failures.MAX_FAILED_BOOTS + 1:
        fresh = [i for i in group_instances(group_name) if i not in played]
        if not fresh:
            wait_for(
                lambda: (
                    [i for i in group_instances(group_name) if i not in played]
                    or describe_group(task)["DesiredCapacity"] == 0
                ),
                timeout=30,
            )
            fresh = [i for i in group_instances(group_name) if i not in played]
            if not fresh:
                break  # the last failed machine released itself: no respawn
        instance = fresh[0]
        played.append(instance)
        machine = played_boot(instance, tmp_path, imds)
        assert machine.calls("systemctl")[-1] == "poweroff --no-block"
        # EC2 terminates an instance that powers off (InstanceInitiatedShutdownBehavior=terminate).
        client("ec2").terminate_instances(InstanceIds=[instance])
    assert len(played) == boot_failures.MAX_FAILED_BOOTS  # at most N machines, then no respawn
    snapshot = task.read(fresh=True)
    assert snapshot.status == "failed"
    reason = snapshot.ranks[0].reason
    assert reason.startswith(f"{boot_failures.MAX_FAILED_BOOTS} boots failed without starting the agent")
    assert f"boot log of {played[-1]}" in reason and "gave up after 5 attempts" in reason
    group = describe_group(task)
    assert (group["DesiredCapacity"], group["MaxSize"]) == (0, 0)
    launched = client("ec2").describe_instances(Filters=[{"Name": "tag:tpi-task", "Values": [task.id]}])
    assert (
        len([i for r in launched["Reservations"] for i in r["Instances"]]) == boot_failures.MAX_FAILED_BOOTS
    )
    # The boot log in every face: CLI status, the widget's rank table, the REST detail (sidebar).
    out: list[str] = []
    run_verb(parse_words(["status", task.name]), out.append)
    assert "gave up after 5 attempts" in "\n".join(out)
    from tpi_jupyter.server.handlers import task_detail
    from tpi_jupyter.widgets import TaskWidget

    table = TaskWidget._ranks_html(snapshot)
    assert "gave up after 5 attempts" in table and "<br>tpi-boot: FAILED" in table  # one log line a row
    assert "gave up after 5 attempts" in task_detail(task)["ranks"][0]["reason"]
    task.destroy()


# ---------------------------------------------------------------- spot notices and user stops

EPOCH_SCRIPT = """#!/bin/bash
mkdir -p results
if test -f results/epoch.txt; then EPOCH="$(cat results/epoch.txt)"; fi
for epoch in $(seq ${EPOCH:-1} 12); do sleep 0.5; echo "$epoch" | tee results/epoch.txt; done
"""


def read_key(task: Task, key: str) -> bytes:
    fs, root = filesystem(task.record["remote"])
    fs.invalidate_cache()
    return bytes(fs.cat_file(layout.join(root, key)))


def exists(task: Task, key: str) -> bool:
    fs, root = filesystem(task.record["remote"])
    fs.invalidate_cache()
    return bool(fs.exists(layout.join(root, key)))


def synced_epoch(task: Task) -> int:
    try:
        return int(read_key(task, layout.data("results/epoch.txt")).decode().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_spot_notice_syncs_back_without_a_status_and_the_rank_resumes(
    moto: str,
    workdir: Path,
    tmp_path: Path,
    imds: Imds,  # noqa: F811
) -> None:
    task = start(["workdir=.", "output=results", "spot=0", "name=aws-notice", "timeout=600"], EPOCH_SCRIPT)
    group_name = task.record["backend"]["group"]
    (first_id,) = group_instances(group_name)
    first = PlayedMachine(first_id, tmp_path / "machines")  # TPI_IMDS_URL: the stand-in
    wait_for(lambda: synced_epoch(task) >= 3, timeout=60)
    imds.interrupt()  # EC2: this spot instance goes in two minutes
    assert first.wait(timeout=60) == 0, first.output()
    assert "interrupted (spot interruption notice" in first.output()
    assert not exists(task, layout.status(0))  # not a result: the rank is to be respawned
    assert describe_group(task)["DesiredCapacity"] == 1  # the machine did not release itself
    assert imds.asked("/meta-data/spot/instance-action") >= 1
    epoch_at_notice = synced_epoch(task)
    assert epoch_at_notice >= 3  # pushed on the way out
    # EC2 takes the instance; the group starts a replacement, which resumes rank 0.
    imds.clear_notices()
    client("ec2").terminate_instances(InstanceIds=[first_id])
    second_id = wait_for(lambda: [i for i in group_instances(group_name) if i != first_id], timeout=30)[0]  # type: ignore[index]
    second = PlayedMachine(second_id, tmp_path / "machines")
    assert task.wait(timeout=90) == "succeeded", second.output()
    assert second.wait(timeout=30) == 0
    fs, _ = filesystem(task.record["remote"])
    log = b"".join(
        fs.cat_file(path) for path, _ in task.read(fresh=True).log_parts[layout.log(0, 1)]
    ).decode()
    epochs = [int(line.split(" ", 1)[1]) for line in log.splitlines() if line.split(" ", 1)[1].isdigit()]
    assert epochs[0] >= epoch_at_notice and epochs[-1] == 12
    task.destroy()


def test_user_stop_reaches_machines_through_the_remote(
    moto: str,
    workdir: Path,
    tmp_path: Path,
    imds: Imds,  # noqa: F811 - the imported fixture
) -> None:
    task = start(["name=aws-user-stop", "timeout=600"], "#!/bin/bash\necho started\nsleep 120\n")
    group_name = task.record["backend"]["group"]
    (instance,) = group_instances(group_name)
    machine = PlayedMachine(instance, tmp_path / "machines")
    wait_for(lambda: exists(task, layout.heartbeat(0, 0)), timeout=60)
    task.stop()
    assert exists(task, STOP_KEY)
    assert machine.wait(timeout=60) == 0, machine.output()
    outcome = read_key(task, layout.status(0)).decode()
    assert '"reason": "stopped"' in outcome
    assert task.read(fresh=True).status == "failed"
    assert group_instances(group_name, alive_only=False) == []  # the machine released itself
    task.destroy()


# ---------------------------------------------------------------- the agent on a machine


def local_remote(tmp_path: Path, script: str) -> Path:
    """A task's remote in a directory, as task.py writes it, for an agent run by hand."""
    remote = tmp_path / "remote"
    (remote / ".tpi").mkdir(parents=True)
    (remote / "data").mkdir()
    task = {"id": "tpi-agent-test", "spec": {"exclude": [], "region": "r", "machine": "m", "parallelism": 1},
            "deadline": time.time() + 600, "masked": [],
            "timing": {"log_interval": 0.1, "heartbeat_interval": 0.2, "sync_interval": 0.5}}  # fmt: skip
    (remote / ".tpi" / "task.json").write_text(json.dumps(task))
    (remote / ".tpi" / "script").write_text(script)
    return remote


def start_agent(tmp_path: Path, remote: Path, **env: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tpi_jupyter.agent", "--remote", str(remote), "--rank", "0", "--boot", "0",
               "--machine-dir", str(tmp_path / "machine")]  # fmt: skip
    return subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def standin_systemctl(tmp_path: Path, answer: str) -> str:
    """A PATH whose systemctl says the system is `answer` (running, stopping)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f'#!/bin/bash\n[ "$1" = is-system-running ] && echo {answer}\n')
    (bin_dir / "systemctl").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


@pytest.mark.parametrize(("system", "status"), [("stopping", None), ("running", "stopped")])
def test_sigterm_is_an_interruption_only_while_the_system_shuts_down(
    tmp_path: Path, system: str, status: str | None
) -> None:
    remote = local_remote(tmp_path, "#!/bin/bash\necho 1 > progress.txt\necho started\nsleep 60\n")
    agent = start_agent(tmp_path, remote, PATH=standin_systemctl(tmp_path, system))
    wait_for(
        lambda: (
            (remote / "reports/0/0/log").exists() and b"started" in (remote / "reports/0/0/log").read_bytes()
        )
    )
    agent.send_signal(signal.SIGTERM)
    out = agent.communicate(timeout=60)[0].decode()
    assert agent.returncode == 0, out
    assert (remote / "data" / "progress.txt").read_text() == "1\n"  # pushed either way
    if status is None:  # the cloud is taking the machine: no result, the group respawns the rank
        assert not (remote / "reports/0/status.json").exists()
        assert "interrupted (the machine is shutting down)" in out
    else:
        assert json.loads((remote / "reports/0/status.json").read_text())["reason"] == status


@pytest.mark.parametrize("private", [True, False])
def test_script_runs_in_a_login_shell_without_the_agent_venv(tmp_path: Path, private: bool) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bash_profile").write_text("export TPI_PROFILE_SEEN=yes\n")
    script = '#!/bin/bash\necho "PATH=$PATH"\necho "HOME=$HOME"\necho "PROFILE=${TPI_PROFILE_SEEN:-no}"\n'
    remote = local_remote(tmp_path, script)
    agent_bin = os.path.dirname(sys.executable)
    env = {"HOME": str(home), "PATH": f"{agent_bin}:/usr/bin:/bin"}
    if private:
        env["TPI_PRIVATE_AGENT"] = "1"
    agent = start_agent(tmp_path, remote, **env)
    assert agent.wait(timeout=60) == 0
    lines = dict(
        line.split(" ", 1)[1].split("=", 1) for line in (remote / "reports/0/0/log").read_text().splitlines()
    )
    assert lines["HOME"] == str(home)
    if private:  # a cloud machine: pip in the script reaches the machine's Python, not the agent's
        assert agent_bin not in lines["PATH"].split(":")
        assert lines["PROFILE"] == "yes"
    else:  # locally the notebook's Python comes first, as before
        assert lines["PATH"].split(":")[0] == agent_bin and lines["PROFILE"] == "no"


def test_a_stop_given_before_the_machine_started_counts(tmp_path: Path) -> None:
    remote = local_remote(tmp_path, "#!/bin/bash\necho ran > ran.txt\n")
    (remote / STOP_KEY).parent.mkdir(parents=True)
    (remote / STOP_KEY).write_text("now")
    agent = start_agent(tmp_path, remote)
    assert agent.wait(timeout=60) == 0
    assert json.loads((remote / "reports/0/status.json").read_text())["reason"] == "stopped"
    assert not (remote / "data" / "ran.txt").exists()


# ---------------------------------------------------------------- pre-flight on launch, polling, hygiene


def nothing_created(home: Path) -> bool:
    return (
        not list((home / "tasks").glob("*.json"))
        and client("s3").list_buckets().get("Buckets", []) == []
        and client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
        and client("iam").list_roles(PathPrefix="/tpi/")["Roles"] == []
    )


@pytest.mark.parametrize(
    ("words", "start_of_message"),
    [
        (
            ["image=ubuntu@*:x86_64:ubuntu/images/*"],
            "image: 'ubuntu@*:x86_64:ubuntu/images/*' matches AMIs of any owner",
        ),
        (["disk_size=1"], "disk_size: 1 GB is smaller than the image's root snapshot"),
    ],
)
def test_preflight_refusals_on_launch_create_nothing(
    moto: str, tpi_home: Path, words: list[str], start_of_message: str
) -> None:
    with pytest.raises(SpecError) as refused:
        start(["name=aws-refused", *words], "#!/bin/bash\ntrue\n")
    assert str(refused.value).startswith(start_of_message) and "\n" not in str(refused.value)
    assert nothing_created(tpi_home)


def test_default_vpc_without_internet_refuses_the_launch(moto: str, tpi_home: Path) -> None:
    vpc, _ = default_vpc()
    client("ec2").delete_route(RouteTableId=main_table(vpc), DestinationCidrBlock="0.0.0.0/0")
    with pytest.raises(SpecError, match=r"^region: the default VPC"):
        start(["name=aws-no-internet"], "#!/bin/bash\ntrue\n")
    assert nothing_created(tpi_home)


def count_calls(service_client: Any, operation: str) -> list[str]:
    calls: list[str] = []
    service_client.meta.events.register(f"before-call.*.{operation}", lambda **_: calls.append(operation))
    return calls


def test_reads_cache_scaling_events_and_skip_describe_instances(moto: str) -> None:
    task = start(["name=aws-polling", "timeout=600"], "#!/bin/bash\ntrue\n")
    backend = task.backend
    region = task.record["backend"]["region"]
    activities = count_calls(backend.clients("autoscaling", region), "DescribeScalingActivities")  # type: ignore[attr-defined]
    instances = count_calls(backend.clients("ec2", region), "DescribeInstances")  # type: ignore[attr-defined]
    for _ in range(3):
        task.read(fresh=True)
    assert activities == ["DescribeScalingActivities"]  # the group did not change: the cached list serves
    assert instances == []  # no face shows addresses
    client("ec2").terminate_instances(InstanceIds=group_instances(task.record["backend"]["group"]))
    wait_for(lambda: len(activities) == 2 or task.read(fresh=True) is None, timeout=30)
    assert backend.addresses(task.task_spec, task.backend_state) is not None  # type: ignore[attr-defined]
    assert instances == ["DescribeInstances"]  # only when asked for
    task.destroy()


def test_role_may_abort_its_multipart_uploads(moto: str) -> None:
    task = start(["name=aws-role", "timeout=600"], "#!/bin/bash\ntrue\n")
    role = task.record["backend"]["role"]
    policy = client("iam").get_role_policy(RoleName=role, PolicyName="tpi-task")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    objects = next(s for s in policy["Statement"] if s["Sid"] == "ReadWriteTaskPrefix")
    assert "s3:AbortMultipartUpload" in objects["Action"]
    task.destroy()


def test_destroy_keeps_role_and_bucket_while_the_group_cannot_be_deleted(
    moto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.exceptions import ClientError

    from tpi_jupyter.backends.aws import group

    task = start(["name=aws-keep", "timeout=600"], "#!/bin/bash\ntrue\n")
    state = task.record["backend"]

    def refuse(*args: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "ScalingActivityInProgress", "Message": "injected"}}, "DeleteAutoScalingGroup"
        )

    monkeypatch.setattr(group, "delete_group", refuse)
    with pytest.raises(RuntimeError, match="auto scaling group: ScalingActivityInProgress"):
        task.backend.delete(task.task_spec, task.backend_state)
    assert client("iam").get_role(RoleName=state["role"])["Role"]["RoleName"] == state["role"]
    client("s3").head_bucket(Bucket=state["bucket"])  # still there: machines may still write
    monkeypatch.undo()
    task.destroy()


def test_group_that_already_exists_is_recorded_for_rollback(moto: str) -> None:
    """A retried create whose first call had worked: AWS answers AlreadyExists. moto accepts the
    duplicate name silently, so Stubber gives AWS's answer to that one call."""
    from tpi_jupyter.backends.aws import AwsBackend, group
    from tpi_jupyter.backends.aws.common import AwsState, Clients

    task = start(["name=aws-exists", "timeout=600"], "#!/bin/bash\ntrue\n")
    made = task.record["backend"]
    copy = AwsState(deadline=made["deadline"], region=made["region"], name=made["name"], subnets=made["subnets"],
                    launch_template=made["launch_template"], instance_type=made["instance_type"])  # fmt: skip
    clients = Clients()
    with Stubber(clients("autoscaling", copy.region)) as stub:
        stub.add_client_error("create_auto_scaling_group", service_error_code="AlreadyExists")
        with pytest.raises(Exception, match="AlreadyExists"):
            group.create_group(clients, task.task_spec, copy, {}, 0.0, 0.0)
    assert copy.group == made["group"]  # a rollback of this state deletes it
    AwsBackend().delete(task.task_spec, copy)
    assert (
        client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[copy.group])[
            "AutoScalingGroups"
        ]
        == []
    )
    task.destroy()


def test_obstore_signs_with_boto3s_own_credential_chain(moto: str) -> None:
    import obstore

    from tpi_jupyter.sync_engines import BOTO3_CREDENTIALS, obstore_config, select_engine

    client("s3").create_bucket(
        Bucket="tpi-obstore-creds", CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    fs, _ = filesystem("s3://tpi-obstore-creds/task")
    config = obstore_config(fs)
    assert config is not None and config[BOTO3_CREDENTIALS] == "boto3"
    assert "secret_access_key" not in config and "access_key_id" not in config  # no hand-copied chain
    engine = select_engine(fs)
    assert engine.name == "obstore"
    store, key = engine._store("tpi-obstore-creds/task/probe")  # type: ignore[attr-defined]
    obstore.put(store, key, b"signed by boto3's chain")
    body = client("s3").get_object(Bucket="tpi-obstore-creds", Key="task/probe")["Body"].read()
    assert body == b"signed by boto3's chain"


def test_sts_and_region_lookups_use_the_task_region(moto: str) -> None:
    from tpi_jupyter.backends.aws.common import AwsState, Clients
    from tpi_jupyter.backends.aws.preflight import lookup_region, preflight

    clients = Clients()
    checked = AwsState()
    preflight(clients, build_spec(["name=x", "region=us-west"], {"cloud": "aws"}), checked)
    made = set(clients._clients)
    assert ("sts", "us-west-1") in made and ("ec2", "us-west-1") in made
    assert not [key for key in made if key[1] == "us-east-1"]  # nothing asked in another region
    assert checked.partition == "aws"
    assert lookup_region("cn-north-1") == "cn-north-1" and lookup_region("us-gov-west-1") == "us-gov-west-1"
    assert lookup_region("xx-nowhere-9") == "us-east-1"  # unknown: asked in its partition's home


def test_machine_hook_reads_both_notices_from_the_metadata_service(
    imds: Imds,  # noqa: F811 - the imported fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tpi_jupyter.backends.aws import machine

    monkeypatch.delenv("TPI_INSTANCE_ID", raising=False)
    assert machine.identity() == "i-0123456789abcdef0"
    assert machine.notice() is None  # 404s: nothing yet
    imds.recommend_rebalance()
    assert (machine.notice() or "").startswith("rebalance recommendation: ")
    imds.interrupt()
    assert '"action": "terminate"' in (machine.notice() or "")
    asked = len(imds.requests)
    monkeypatch.delenv("TPI_IMDS_URL")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert machine.notice() is None and len(imds.requests) == asked  # no metadata request at all
