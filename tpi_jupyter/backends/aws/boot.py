"""The AWS boot script (user data): the shared boot script (kit/boot.py) with AWS's fragment.

AWS contributes its region, boto3 at the client's version, and a helper that reads and writes
the task's bucket prefix with the instance role, asks IMDSv2 for the instance id
(`TPI_IMDS_URL` moves it, for tests), and releases the instance from its group. The script
holds no secret: the machine reads the task (script, environment, data) from its bucket.
"""

from __future__ import annotations

from ..kit import boot_failures
from ..kit.boot import BootPlan, CloudBoot, script
from .common import AwsState

HELPER = """
import os
import urllib.request

import boto3

BUCKET = @BUCKET@
PREFIX = @PREFIX@
IMDS = os.environ.get("TPI_IMDS_URL") or "http://169.254.169.254/latest"


def _imds(path):
    ask = urllib.request.Request(
        IMDS + "/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(ask, timeout=5) as response:
        token = response.read().decode()
    get = urllib.request.Request(IMDS + "/meta-data/" + path, headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(get, timeout=5) as response:
        return response.read().decode()


def machine_id():
    return os.environ.get("TPI_INSTANCE_ID") or _imds("instance-id")


def _key(key):
    return PREFIX + "/" + key


def read(key):
    return boto3.client("s3").get_object(Bucket=BUCKET, Key=_key(key))["Body"].read()


def write(key, data):
    boto3.client("s3").put_object(Bucket=BUCKET, Key=_key(key), Body=data, ServerSideEncryption="AES256")


def keys(prefix):
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=_key(prefix))
    return [item["Key"][len(_key("")):] for page in pages for item in page.get("Contents", [])]


def release(instance_id):
    boto3.client("autoscaling").terminate_instance_in_auto_scaling_group(
        InstanceId=instance_id, ShouldDecrementDesiredCapacity=True
    )
"""


def cloud_boot(region: str, bucket: str, prefix: str, boto3_version: str) -> CloudBoot:
    helper = HELPER.replace("@BUCKET@", repr(bucket)).replace("@PREFIX@", repr(prefix.strip("/")))
    return CloudBoot(
        name="aws",
        environment={"AWS_REGION": region, "AWS_DEFAULT_REGION": region},
        bootstrap=(f"boto3=={boto3_version}",),
        helper=helper,
    )


def _relative(state: AwsState, key: str) -> str:
    return key[len(state.prefix) + 1 :] if key.startswith(f"{state.prefix}/") else key


def user_data(task_id: str, remote: str, state: AwsState, boto3_version: str, parallelism: int = 1) -> str:
    plan = BootPlan(
        task_id=task_id, remote=remote, deadline=state.deadline, wheel_key=_relative(state, state.wheel_key),
        lock_key=_relative(state, state.lock_key), failed_boot_limit=boot_failures.limit(parallelism),
    )  # fmt: skip
    return script(plan, cloud_boot(state.region, state.bucket, state.prefix, boto3_version))
