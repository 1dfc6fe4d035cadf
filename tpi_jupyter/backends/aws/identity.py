"""Who the machines are: a fresh ed25519 key pair per task, and an IAM role + instance profile
that may only touch this task's bucket prefix and release this task's instances."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ...fanout.cloudqueue import queue_name
from ...spec import TaskSpec
from ..kit.tags import TASK
from .common import IAM_PATH, AwsState, Clients, not_found, tag_list

POLICY_NAME = "tpi-task"
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


def key_file(task_id: str) -> Path:
    from ...state import tasks_dir

    return tasks_dir() / f"{task_id}.ssh-key"


def role_policy(partition: str, bucket: str, prefix: str, task_id: str) -> dict[str, Any]:
    """Only this task's bucket prefix, and only releasing instances of this task's group."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ListTaskPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
             "Resource": f"arn:{partition}:s3:::{bucket}",
             "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}},
            {"Sid": "BucketRegion", "Effect": "Allow", "Action": "s3:GetBucketLocation",
             "Resource": f"arn:{partition}:s3:::{bucket}"},
            {"Sid": "ReadWriteTaskPrefix", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
             "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*"},
            {"Sid": "ReleaseOwnInstance", "Effect": "Allow",
             "Action": "autoscaling:TerminateInstanceInAutoScalingGroup", "Resource": "*",
             "Condition": {"StringEquals": {f"autoscaling:ResourceTag/{TASK}": task_id}}},
        ],
    }  # fmt: skip


# What a machine does with a map run's queue: find it, receive, extend, ack, release (never send).
QUEUE_ACTIONS = ["sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage"]


def queue_statement(partition: str, region: str, account: str, task_id: str) -> dict[str, Any]:
    """The task's own SQS queue only (a map run makes it later, named after the task)."""
    arn = f"arn:{partition}:sqs:{region}:{account}:{queue_name(task_id)}"
    return {"Sid": "TaskQueue", "Effect": "Allow", "Action": QUEUE_ACTIONS, "Resource": arn}


def create_key_pair(clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = key_file(spec.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(private)
    state.key_file, state.ssh_public_key = str(path), public.decode()
    clients("ec2", state.region).import_key_pair(
        KeyName=state.name, PublicKeyMaterial=public,
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": tag_list(tags)}],
    )  # fmt: skip
    state.key_name = state.name


def delete_key_pair(clients: Clients, state: AwsState) -> None:
    if state.key_name:
        clients("ec2", state.region).delete_key_pair(KeyName=state.key_name)


def remove_key_file(state: AwsState) -> None:
    if state.key_file:
        with contextlib.suppress(OSError):
            Path(state.key_file).unlink(missing_ok=True)


def create_role(clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str]) -> None:
    if spec.permission_set:
        state.profile_arn = spec.permission_set
        return
    iam = clients("iam", state.region)
    name = state.name
    iam.create_role(RoleName=name, Path=IAM_PATH, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                    Description=f"tpi-jupyter task {spec.id}", Tags=tag_list(tags))  # fmt: skip
    state.role = name
    policy = role_policy(state.partition, state.bucket, state.prefix, spec.id)
    policy["Statement"].append(queue_statement(state.partition, state.region, state.account, spec.id))
    iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
    profile = iam.create_instance_profile(InstanceProfileName=name, Path=IAM_PATH, Tags=tag_list(tags))
    state.profile = name
    state.profile_arn = profile["InstanceProfile"]["Arn"]
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)


def _delete_profile(iam: Any, profile: str) -> None:
    with contextlib.suppress(Exception):
        for item in iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]:
            iam.remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=item["RoleName"])
    try:
        iam.delete_instance_profile(InstanceProfileName=profile)
    except Exception as error:
        if not not_found(error):
            raise


def _delete_role(iam: Any, role: str) -> None:
    try:
        for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
            iam.delete_role_policy(RoleName=role, PolicyName=name)
        for item in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=role, PolicyArn=item["PolicyArn"])
        for item in iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]:
            iam.remove_role_from_instance_profile(
                InstanceProfileName=item["InstanceProfileName"], RoleName=role
            )
        iam.delete_role(RoleName=role)
    except Exception as error:
        if not not_found(error):
            raise


def delete_role(clients: Clients, state: AwsState) -> None:
    iam = clients("iam", state.region)
    if state.profile:
        _delete_profile(iam, state.profile)
    if state.role:
        _delete_role(iam, state.role)
