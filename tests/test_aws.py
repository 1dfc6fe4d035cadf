"""The AWS backend against moto server: create, boot path, ranks, interruption, rollback, sweep.

moto plays AWS (it creates the group's EC2 instances but runs no user data); each instance is
played by a local process running the agent command found in its user data, with
`TPI_INSTANCE_ID` set to the moto instance id, against moto's S3. What moto cannot show (real
spot behaviour, instance profiles on group instances, pricing) is listed in the README.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout, ranks, state
from tpi_jupyter.backends.aws import AwsBackend, AwsState
from tpi_jupyter.backends.aws import group as aws_group
from tpi_jupyter.backends.aws.boot import user_data
from tpi_jupyter.backends.aws.common import Clients
from tpi_jupyter.backends.aws.preflight import preflight
from tpi_jupyter.commands import build_spec, parse_words, run_verb
from tpi_jupyter.spec import SpecError, TaskSpec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, TaskError, launch

from .aws_moto import (
    NEWEST_UBUNTU,
    PlayedMachine,
    agent_command,
    aws_env,  # noqa: F401 - fixture
    client,
    group_instances,
    instance_user_data,
    moto_endpoint,  # noqa: F401 - fixture
    tagged,
)
from .conftest import wait_for

SECRET = "s3cr3t-value-that-must-not-leak"


@pytest.fixture
def home(aws_env: str, tpi_home: Path) -> Path:  # noqa: F811 - the imported fixture
    """The registry home, torn down (tasks deleted) while moto is still the endpoint."""
    return tpi_home


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "aws"}), script)
    assert isinstance(task, Task)
    return task


def remote(task: Task) -> tuple[Any, str]:
    return filesystem(task.record["remote"])


def read_key(task: Task, key: str) -> bytes:
    fs, root = remote(task)
    fs.invalidate_cache()
    return bytes(fs.cat_file(layout.join(root, key)))


def boot_log(task: Task, rank: int, boot: int) -> str:
    """One boot's whole log: the concatenation of its chunks, in order."""
    fs, _ = remote(task)
    parts = task.read(fresh=True).log_parts[layout.log(rank, boot)]
    assert all(layout.parse_report(path.split(task.id + "/", 1)[1]).chunk is not None for path, _ in parts)  # type: ignore[union-attr]
    return b"".join(fs.cat_file(path) for path, _ in parts).decode()


def synced_epoch(task: Task) -> int:
    try:
        return int(read_key(task, layout.data("results/epoch.txt")).decode().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def play_all(task: Task, base: Path, known: set[str] | None = None) -> list[PlayedMachine]:
    """Start a local agent for every InService instance of the group not played yet."""
    known = set() if known is None else known
    machines = []
    for instance in group_instances(task.record["backend"]["group"]):
        if instance not in known:
            known.add(instance)
            machines.append(PlayedMachine(instance, base))
    return machines


# ---------------------------------------------------------------- checks before anything exists


@pytest.mark.parametrize(
    ("words", "key"),
    [
        (["region=xx-nowhere-9"], "region"),
        (["machine=zz9.mega"], "machine"),
        ([], "cloud"),  # without credentials
    ],
)
def test_preflight_refuses_before_creating_anything(
    home: Path, monkeypatch: pytest.MonkeyPatch, words: list[str], key: str
) -> None:
    if key == "cloud":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(SpecError) as raised:
        start(["name=pre", *words], "#!/bin/bash\ntrue\n")
    message = str(raised.value)
    assert message.startswith(f"{key}: ") and "accepted:" in message and "\n" not in message
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert state.records() == []
    assert client("s3").list_buckets().get("Buckets", []) == []
    assert client("ec2").describe_key_pairs()["KeyPairs"] == []
    assert client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert client("iam").list_roles(PathPrefix="/tpi/")["Roles"] == []


def test_image_catalogue_takes_the_newest_matching_ami(home: Path) -> None:
    checked = AwsState()
    preflight(Clients(), build_spec(["name=x"], {"cloud": "aws"}), checked)
    assert checked.image == NEWEST_UBUNTU
    checked = AwsState()
    preflight(Clients(), build_spec(["name=x", "image=nvidia", "machine=m+t4"], {"cloud": "aws"}), checked)
    assert checked.image == "ami-0c0nvidiadlami01" and checked.instance_type == "g4dn.xlarge"
    assert checked.creator.startswith("arn:aws:") and checked.partition == "aws"


# ---------------------------------------------------------------- the whole lifecycle


LIFE_SCRIPT = """#!/bin/bash
mkdir -p results
cat input.txt > results/out.txt
echo "rank $TPI_RANK of $TPI_WORLD_SIZE, token length ${#SECRET_TOKEN}"
"""


def test_full_lifecycle_boot_path_and_destroy(
    home: Path, workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "input.txt").write_text("hello from the workdir\n")
    seen: dict[str, Any] = {}
    original_start = AwsBackend.start

    def spying_start(self: AwsBackend, spec: TaskSpec, aws: AwsState) -> None:
        group = client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[aws.group])["AutoScalingGroups"][0]  # fmt: skip
        fs, root = filesystem(self.remote_url(spec, aws))
        seen.update(desired=group["DesiredCapacity"], instances=len(group["Instances"]),
                    uploaded=fs.exists(layout.join(root, "data/input.txt")))  # fmt: skip
        original_start(self, spec, aws)

    monkeypatch.setattr(AwsBackend, "start", spying_start)
    words = ["workdir=.", "output=results", "spot=0", "machine=m+t4", "image=nvidia", "timeout=900",
             f"environment=SECRET_TOKEN={SECRET}", "tags=team=ml", "name=aws-life"]  # fmt: skip
    task = start(words, LIFE_SCRIPT)
    aws = task.record["backend"]
    assert seen == {"desired": 0, "instances": 0, "uploaded": True}  # created at 0, uploaded, then scaled
    assert task.record["remote"] == f"s3://{aws['bucket']}/{task.id}"

    # The bucket: private, encrypted, tagged.
    s3 = client("s3")
    block = s3.get_public_access_block(Bucket=aws["bucket"])["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rule = s3.get_bucket_encryption(Bucket=aws["bucket"])["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert {"Key": "tpi-task", "Value": task.id} in s3.get_bucket_tagging(Bucket=aws["bucket"])["TagSet"]
    # The key: fresh ed25519, private half 0600 next to the registry.
    key_path = Path(aws["key_file"])
    assert key_path.parent == home / "tasks" and stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert client("ec2").describe_key_pairs(KeyNames=[aws["key_name"]])["KeyPairs"][0]["KeyType"] == "ed25519"
    # No inbound rule.
    group_sg = client("ec2").describe_security_groups(GroupIds=[aws["security_group"]])["SecurityGroups"][0]
    assert group_sg["IpPermissions"] == []
    # The role may touch only this task's prefix and release only its group's instances.
    policy = client("iam").get_role_policy(RoleName=aws["role"], PolicyName="tpi-task")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    resources = json.dumps(policy)
    assert f"arn:aws:s3:::{aws['bucket']}/{task.id}/*" in resources and '"s3:*"' not in resources
    release = next(s for s in policy["Statement"] if s["Sid"] == "ReleaseOwnInstance")
    assert release["Action"] == "autoscaling:TerminateInstanceInAutoScalingGroup"
    assert release["Condition"] == {"StringEquals": {"autoscaling:ResourceTag/tpi-task": task.id}}
    # The group: spot capped at on-demand (no max price), across the default subnets.
    group = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[aws["group"]])[
        "AutoScalingGroups"][0]  # fmt: skip
    distribution = group["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0 and "SpotMaxPrice" not in distribution
    # No capacity rebalancing (issue 10): it terminates a running rank without a drain hook.
    assert group["CapacityRebalance"] is False and group["DesiredCapacity"] == 1
    assert len(group["VPCZoneIdentifier"].split(",")) >= 2
    overrides = group["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert overrides == [{"InstanceType": "g4dn.xlarge"}]
    assert {"Key": "team", "Value": "ml"} in [{"Key": t["Key"], "Value": t["Value"]} for t in group["Tags"]]

    # No environment value in user data, tags or the launch template.
    template = client("ec2").describe_launch_template_versions(LaunchTemplateId=aws["launch_template"])
    instances = group_instances(aws["group"])
    assert len(instances) == 1
    boot_script = instance_user_data(instances[0])
    everything = json.dumps(template, default=str) + json.dumps(group, default=str) + boot_script
    assert SECRET not in everything and "SECRET_TOKEN" not in boot_script
    assert template["LaunchTemplateVersions"][0]["LaunchTemplateData"]["ImageId"] == "ami-0c0nvidiadlami01"
    assert "--rank auto --release aws" in boot_script and task.record["remote"] in boot_script

    # Boot path, part 1: the wheel the machine fetches with its role installs and imports.
    wheel = fetch_agent_wheel(boot_script, tmp_path)
    check_agent_wheel(wheel, tmp_path)

    # Boot path, part 2: the agent command of the user data, run as the machine.
    machine = PlayedMachine(instances[0], tmp_path / "machines")
    assert task.wait(timeout=90) == "succeeded", machine.output()
    assert machine.wait() == 0, machine.output()
    assert "rank 0 of 1, token length 31" in task.logs()[0]
    assert json.loads(read_key(task, layout.status(0)))["result"] == "success"
    # The machine released itself: out of the group, desired capacity down to 0.
    group = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[aws["group"]])[
        "AutoScalingGroups"][0]  # fmt: skip
    assert group["Instances"] == [] and group["DesiredCapacity"] == 0
    snapshot = task.read()
    assert snapshot.status == "succeeded" and snapshot.ranks[0].boots == 1

    fetched = task.destroy()
    assert fetched == ["results/out.txt"]
    assert (workdir / "results" / "out.txt").read_text() == "hello from the workdir\n"
    assert tagged(task.id) == []
    assert not key_path.exists() and state.load(task.id) is None
    AwsBackend().delete(task.task_spec, task.backend_state)  # idempotent: everything is already gone


def fetch_agent_wheel(boot_script: str, tmp_path: Path) -> Path:
    """Run the boot script's own helper (boto3 with the machine's credentials) against moto to
    fetch the wheel, as the machine does."""
    import shlex

    helper = boot_script.split("<<'TPI_HELPER_END'\n", 1)[1].split("\nTPI_HELPER_END\n", 1)[0]
    (tmp_path / "boot_helper.py").write_text(helper)
    line = next(line for line in boot_script.splitlines() if "tpi_helper get " in line and ".whl" in line)
    words = shlex.split(line)
    key = words[words.index("get") + 1]
    target = tmp_path / "opt-tpi"
    target.mkdir()
    wheel = target / key.rsplit("/", 1)[-1]
    subprocess.run(
        [sys.executable, str(tmp_path / "boot_helper.py"), "get", key, str(wheel)], check=True, timeout=60
    )
    # The lock travels with the wheel and the boot script installs with it (pip -c).
    line = next(line for line in boot_script.splitlines() if "tpi_helper get " in line and "lock.txt" in line)
    lock_key = shlex.split(line)[shlex.split(line).index("get") + 1]
    subprocess.run([sys.executable, str(tmp_path / "boot_helper.py"), "get", lock_key, str(target / "lock.txt")],
                   check=True, timeout=60)  # fmt: skip
    lock = dict(line.split("==") for line in (target / "lock.txt").read_text().splitlines())
    import boto3

    assert lock["boto3"] == boto3.__version__ and "botocore" in lock and "fsspec" in lock
    assert f'-c "$TPI_ROOT/lock.txt" "$TPI_ROOT/{wheel.name}[aws]"' in boot_script
    return wheel


def check_agent_wheel(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "tpi_jupyter/agent.py" in names and "tpi_jupyter/backends/aws/machine.py" in names
    assert "ipython" not in metadata.lower() and "Provides-Extra: aws" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert any("boto3" in line and 'extra == "aws"' in line for line in requires)
    assert not any(name in line.lower() for line in requires for name in ("jupyter", "ipywidgets"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, timeout=120)  # fmt: skip
    probe = "import tpi_jupyter.agent, tpi_jupyter.ranks, tpi_jupyter.backends.aws.machine as m; print(m.__file__)"
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(target)},
                         capture_output=True, text=True, check=True, cwd=tmp_path, timeout=60)  # fmt: skip
    assert out.stdout.startswith(str(target))
    (entry_points,) = target.glob("tpi_jupyter-*.dist-info/entry_points.txt")
    assert "[tpi_jupyter.machines]" in entry_points.read_text()  # the agent finds its hooks this way


# ---------------------------------------------------------------- ranks on identical machines


PARALLEL_SCRIPT = """#!/bin/bash
mkdir -p results
# rank 1 runs until the test has seen rank 0 release itself (no race with a sleep)
if [ "$TPI_RANK" = 1 ]; then for _ in $(seq 1200); do [ -e "$GO_FILE" ] && break; sleep 0.1; done; fi
echo "rank $TPI_RANK done" | tee "results/rank-$TPI_RANK.txt"
"""


def test_parallelism_two_each_rank_releases_only_itself(home: Path, workdir: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    task = start(["workdir=.", "output=results", "parallelism=2", "spot=-1", "name=aws-par",
                  f"environment=GO_FILE={go}"], PARALLEL_SCRIPT)  # fmt: skip
    aws = task.record["backend"]
    group = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[aws["group"]])[
        "AutoScalingGroups"][0]  # fmt: skip
    assert (
        group["MixedInstancesPolicy"]["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    )
    assert group["CapacityRebalance"] is False
    machines = play_all(task, tmp_path / "machines")
    assert len(machines) == 2

    def rank_zero_reported() -> bool:
        try:
            return json.loads(read_key(task, layout.status(0)))["result"] == "success"
        except FileNotFoundError:
            return False

    wait_for(rank_zero_reported, timeout=60)
    fs, root = remote(task)
    claims = ranks.read_claims(fs, root)
    assert sorted(claims) == [(0, 0), (1, 0)]
    assert sorted(claims.values()) == sorted(m.instance_id for m in machines)
    rank_one = claims[(1, 0)]
    # Rank 0 released its own instance only: rank 1's machine is still in the group, still running.
    wait_for(lambda: group_instances(aws["group"]) == [rank_one], timeout=30)
    assert task.read(fresh=True).ranks[1].state == "running"
    go.touch()
    assert task.wait(timeout=60) == "succeeded"
    for machine in machines:
        assert machine.wait() == 0, machine.output()
    assert group_instances(aws["group"], alive_only=False) == []
    task.destroy()
    assert sorted(p.name for p in (workdir / "results").iterdir()) == ["rank-0.txt", "rank-1.txt"]
    assert tagged(task.id) == []


EPOCH_SCRIPT = """#!/bin/bash
mkdir -p results
if test -f results/epoch.txt; then EPOCH="$(cat results/epoch.txt)"; fi
for epoch in $(seq ${EPOCH:-1} 12); do sleep 0.5; echo "$epoch" | tee results/epoch.txt; done
"""


def test_spot_interruption_respawns_and_resumes(home: Path, workdir: Path, tmp_path: Path) -> None:
    task = start(["workdir=.", "output=results", "spot=0.5", "name=aws-spot", "timeout=600"], EPOCH_SCRIPT)
    aws = task.record["backend"]
    group = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[aws["group"]])[
        "AutoScalingGroups"][0]  # fmt: skip
    assert group["MixedInstancesPolicy"]["InstancesDistribution"]["SpotMaxPrice"] == "0.5"
    known: set[str] = set()
    (first,) = play_all(task, tmp_path / "machines", known)
    wait_for(lambda: synced_epoch(task) >= 4, timeout=60)
    # The spot reclaim: the machine vanishes without a status, EC2 terminates the instance.
    first.kill()
    task.preempt(0)
    wait_for(lambda: task.read().status == "preempted", timeout=20)
    # The group replaces the instance; the new machine takes boot 1 of rank 0 once boot 0 is stale.
    replacement = wait_for(lambda: play_all(task, tmp_path / "machines", known), timeout=20)
    (second,) = replacement  # type: ignore[misc]
    assert second.instance_id != first.instance_id
    assert task.wait(timeout=90) == "succeeded", second.output()
    fs, root = remote(task)
    assert ranks.read_claims(fs, root) == {(0, 0): first.instance_id, (0, 1): second.instance_id}
    boot_one = boot_log(task, 0, 1).splitlines()
    texts = [line.split(" ", 1)[1] for line in boot_one]
    assert any("respawned (boot 1): resuming" in text for text in texts)
    epochs = [int(text) for text in texts if text.isdigit()]
    assert epochs[0] > 1 and epochs[-1] == 12
    assert task.read().ranks[0].boots == 2
    task.destroy()
    assert (workdir / "results" / "epoch.txt").read_text().strip() == "12"
    assert tagged(task.id) == []


# ---------------------------------------------------------------- failure and cleanup


def test_failure_midway_rolls_back_everything(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ClientError

    def refuse(*args: Any) -> None:
        raise ClientError({"Error": {"Code": "ValidationError", "Message": "injected: no capacity"}},
                          "CreateAutoScalingGroup")  # fmt: skip

    monkeypatch.setattr(aws_group, "create_group", refuse)
    spec = build_spec(["name=aws-rollback", "tags=team=ml"], {"cloud": "aws"})
    with pytest.raises(TaskError) as raised:
        launch(spec, "#!/bin/bash\ntrue\n")
    message = str(raised.value)
    assert "\n" not in message
    assert "auto scaling group failed (ValidationError: injected: no capacity)" in message
    assert "everything created so far was removed" in message
    assert tagged(spec.id) == []
    assert state.records() == [] and not list((home / "tasks").glob("*.ssh-key"))
    assert client("s3").list_buckets().get("Buckets", []) == []


def test_stop_scales_to_zero_and_the_task_ends_failed(home: Path, workdir: Path) -> None:
    task = start(["name=aws-stop"], "#!/bin/bash\nsleep 60\n")
    assert len(group_instances(task.record["backend"]["group"])) == 1
    task.stop()
    assert group_instances(task.record["backend"]["group"], alive_only=False) == []
    assert task.read().status == "failed"  # stopped before any rank reported
    task.destroy()
    assert tagged(task.id) == []


def test_delete_tolerates_a_partial_record(home: Path) -> None:
    backend = AwsBackend()
    spec = TaskSpec(cloud="aws", name="gone")
    backend.delete(spec, AwsState())
    backend.delete(spec, AwsState(region="us-west-1", group="tpi-nothing", launch_template="lt-0123456789abcdef0",
                                  role="tpi-nothing", profile="tpi-nothing", security_group="sg-0123456789abcdef0",
                                  key_name="tpi-nothing", bucket="tpi-nothing-000000", bucket_created=True))  # fmt: skip


def test_sweep_finds_and_deletes_resources_of_gone_tasks(home: Path, workdir: Path) -> None:
    kept = start(["name=aws-kept"], "#!/bin/bash\ntrue\n")
    lost = start(["name=aws-lost"], "#!/bin/bash\ntrue\n")
    state.delete(lost.id)  # the registry forgot it: its resources are orphans
    out: list[str] = []
    run_verb(parse_words(["sweep", "aws"]), out.append)
    assert any(line.startswith(f"orphan {lost.id} (us-west-1): group ") for line in out), out
    assert any(line.startswith(f"orphan {lost.id} (global): ") and "bucket" in line for line in out), out
    assert not any(kept.id in line for line in out) and out[-1].startswith("nothing deleted")
    assert tagged(lost.id) != []
    cli = subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", "sweep", "aws"], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert cli.returncode == 0 and lost.id in cli.stdout and "nothing deleted" in cli.stdout, cli.stderr
    out.clear()
    run_verb(parse_words(["sweep", "aws", "--yes"]), out.append)
    assert any(line.startswith(f"deleted {lost.id}") for line in out)
    assert tagged(lost.id) == [] and tagged(kept.id) != []
    out.clear()
    run_verb(parse_words(["sweep", "aws"]), out.append)
    assert out == ["sweep aws: no resources of gone tasks"]
    kept.destroy()


def creator_tags(task: Task) -> set[str]:
    """The tpi-creator value of every kind of resource the task made (instances aside)."""
    aws, found = task.record["backend"], set()
    ec2, tag = client("ec2"), [{"Name": "tag:tpi-task", "Values": [task.id]}]
    kinds = [
        client("s3").get_bucket_tagging(Bucket=aws["bucket"])["TagSet"],
        client("iam").list_role_tags(RoleName=aws["role"])["Tags"],
        client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[aws["group"]])[
            "AutoScalingGroups"][0]["Tags"],
        ec2.describe_launch_templates(Filters=tag)["LaunchTemplates"][0]["Tags"],
        ec2.describe_security_groups(Filters=tag)["SecurityGroups"][0]["Tags"],
        ec2.describe_key_pairs(Filters=tag)["KeyPairs"][0]["Tags"],
    ]  # fmt: skip
    for tags in kinds:
        found |= {item["Value"] for item in tags if item["Key"] == "tpi-creator"} or {"(none)"}
    return found


def test_resources_name_their_creator_and_sweep_keeps_to_the_callers_own(
    home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iam = client("iam")
    alice = iam.create_user(UserName="alice")["User"]["Arn"]
    key = iam.create_access_key(UserName="alice")["AccessKey"]
    mine = start(["name=aws-mine"], "#!/bin/bash\ntrue\n")
    me = client("sts").get_caller_identity()["Arn"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])  # moto knows alice by her key
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    theirs = start(["name=aws-alice"], "#!/bin/bash\ntrue\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert creator_tags(mine) == {me} and creator_tags(theirs) == {alice} and me != alice
    state.delete(mine.id)
    state.delete(theirs.id)  # both forgotten: orphans

    out: list[str] = []
    run_verb(parse_words(["sweep", "aws"]), out.append)
    assert any(
        line.startswith(f"orphan {mine.id} (") and line.endswith(f"created by {me}") for line in out
    ), out
    assert not any(theirs.id in line for line in out), out
    assert f"left alone: what 1 gone task(s) of {alice} left; --all includes them" in out, out
    out.clear()
    run_verb(parse_words(["sweep", "aws", "--yes"]), out.append)
    assert tagged(mine.id) == [] and tagged(theirs.id) != []
    out.clear()
    run_verb(parse_words(["sweep", "aws", "--all"]), out.append)
    assert any(
        line.startswith(f"orphan {theirs.id} (") and line.endswith(f"created by {alice}") for line in out
    )
    run_verb(parse_words(["sweep", "aws", "--all", "--yes"]), out.append)
    assert tagged(theirs.id) == []


def test_users_container_gets_only_the_task_prefix(home: Path, workdir: Path) -> None:
    s3 = client("s3")
    s3.create_bucket(Bucket="my-data", CreateBucketConfiguration={"LocationConstraint": "us-west-1"})
    s3.put_object(Bucket="my-data", Key="keep/other.txt", Body=b"mine")
    task = start(["name=aws-cont", "container=my-data/runs", f"environment=TOKEN={SECRET}"], "#!/bin/bash\n")
    assert task.record["remote"] == f"s3://my-data/runs/{task.id}"
    env = s3.head_object(Bucket="my-data", Key=f"runs/{task.id}/.tpi/env")
    assert env.get("ServerSideEncryption") == "AES256"
    policy = client("iam").get_role_policy(RoleName=task.record["backend"]["role"], PolicyName="tpi-task")
    assert f"arn:aws:s3:::my-data/runs/{task.id}/*" in json.dumps(policy["PolicyDocument"])
    task.destroy()
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket="my-data").get("Contents", [])]
    assert keys == ["keep/other.txt"]
    assert tagged(task.id) == []


def test_dry_run_creates_nothing_and_plans_every_resource(home: Path) -> None:
    plan = launch(build_spec(["name=aws-plan", "spot=0", "parallelism=2"], {"cloud": "aws"}), "#!/bin/bash\n",
                  dry_run=True)  # fmt: skip
    text = str(plan)
    for word in ("bucket", "key pair", "security group", "instance profile", "launch template",
                 "Auto Scaling Group", "spot, capped at the on-demand price", "tpi-task="):  # fmt: skip
        assert word in text, text
    assert client("s3").list_buckets().get("Buckets", []) == []


def test_user_data_agent_line_is_runnable_here(tmp_path: Path) -> None:
    task_id = "tpi-ud-aaaaaaaa-bbbbbbbb"
    aws = AwsState(deadline=2_000_000_000, region="eu-west-1", bucket="tpi-aaaaaaaabbbbbbbb-abc123",
                   prefix=task_id, wheel_key=f"{task_id}/.tpi/agent/w.whl", lock_key=f"{task_id}/.tpi/agent/lock.txt")  # fmt: skip
    text = user_data(task_id, f"s3://{aws.bucket}/{task_id}", aws, "1.2.3")
    command = agent_command(text, tmp_path)
    assert command[:3] == [sys.executable, "-m", "tpi_jupyter.agent"]
    assert command[command.index("--remote") + 1] == f"s3://tpi-aaaaaaaabbbbbbbb-abc123/{task_id}"
    assert text.startswith("#!/bin/bash\n") and "AWS_SECRET" not in text and "AWS_ACCESS" not in text
