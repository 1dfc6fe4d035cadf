"""The AWS backend: a spot (or on-demand) Auto Scaling Group per task, its bucket, its role.

`create` checks first (credentials through STS, the region, the instance type offered there,
the image), then makes, concurrently where independent:

1. a private S3 bucket (public access blocked, default encryption, tagged) or uses `container`;
   a key pair from a fresh ed25519 key (private half 0600 next to the registry, never printed);
   a security group without inbound rules; an IAM role + instance profile that may only read and
   write this task's bucket prefix and release instances of this task's group (or the user's
   `permission_set`);
2. the agent wheel in the bucket, and a launch template whose user data is a short boot script
   (installs Python, fetches the wheel with the instance role, runs the agent); no secret in it;
3. an Auto Scaling Group at size 0 across the default VPC's subnets, MixedInstancesPolicy:
   spot capped at the on-demand price (`spot=0`), `spot>0` as max price, on-demand (`spot=-1`),
   capacity rebalancing for spot.

`start` scales the group to `parallelism` once task.py uploaded the workdir. A failure midway
through `create` deletes what was made and raises one line. Everything carries
`tpi-task=<id>` plus the user's `tags`; `sweep` finds what is left of tasks that are gone.

Credentials come from boto3's standard chain (environment, profiles, SSO, instance roles);
`AWS_ENDPOINT_URL` points every client at another endpoint (moto in the tests).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import agent_wheel, layout, ranks
from ..spec import REGIONS, SpecError, short_id
from ..sync import filesystem
from .base import GroupState, Machine

TAG = "tpi-task"
IAM_PATH = "/tpi/"  # our roles and instance profiles live here, so a sweep lists them cheaply
POLICY_NAME = "tpi-task"
MACHINE_DIR = "/opt/tpi"
AGENT_PREFIX = ".tpi/agent"
SSH_ENV = "TPI_AWS_SSH_CIDR"  # set to a CIDR (e.g. 203.0.113.7/32) to open port 22 from it
ALIVE_STATES = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
NOT_FOUND = (
    "NoSuchEntity", "NoSuchBucket", "NotFound", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
    "InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateId.Malformed",
)  # fmt: skip


class StepError(RuntimeError):
    """A create step that failed; the message is one line."""


def _code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _describe(error: BaseException) -> str:
    response = getattr(error, "response", None)
    if response:
        message = response.get("Error", {}).get("Message", "")
        text = f"{_code(error)}: {message}"
    else:
        text = f"{error.__class__.__name__}: {error}" if str(error) else error.__class__.__name__
    return " ".join(text.split())


def _not_found(error: BaseException) -> bool:
    code = _code(error)
    if code in NOT_FOUND or code.endswith(".NotFound") or code.endswith("NotFoundException"):
        return True
    message = str(getattr(error, "response", {}).get("Error", {}).get("Message", "")).lower()
    return code == "ValidationError" and ("not found" in message or "does not exist" in message)


def _tags(record: dict[str, Any]) -> dict[str, str]:
    tags = {TAG: record["id"], **dict(record["spec"].get("tags") or {})}
    tags.setdefault("Name", f"tpi-{short_id(record['id'])}")
    return tags


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def split_container(container: str) -> tuple[str, str]:
    bucket, _, prefix = container.partition("/")
    return bucket, prefix.strip("/")


def key_file(task_id: str) -> Path:
    from ..state import tasks_dir

    return tasks_dir() / f"{task_id}.ssh-key"


def pricing_text(spot: float) -> str:
    if spot < 0:
        return "on-demand"
    if spot == 0:
        return "spot, capped at the on-demand price"
    return f"spot, at most ${spot}/h"


def user_data(record: dict[str, Any], wheel_key: str, boto3_version: str) -> str:
    """The boot script: no credential or environment value, only names and addresses."""
    aws = record["aws"]
    region = aws["region"]
    remote = AwsBackend().remote_url(record)
    wheel = f"{MACHINE_DIR}/{wheel_key.rsplit('/', 1)[-1]}"
    download = f"import boto3; boto3.client('s3').download_file({aws['bucket']!r}, {wheel_key!r}, {wheel!r})"
    deadline = int(float(record["deadline"]))
    agent = [f"{MACHINE_DIR}/venv/bin/python", "-m", "tpi_jupyter.agent", "--remote", remote,
             "--rank", "auto", "--release", "aws", "--machine-dir", f"{MACHINE_DIR}/machine"]  # fmt: skip
    return f"""#!/bin/bash
# tpi-jupyter boot script for task {record["id"]}. It holds no secret: the machine reads the
# task (script, environment, data) from its bucket with its instance role.
set -u
mkdir -p {MACHINE_DIR}
exec >>/var/log/tpi-boot.log 2>&1
export AWS_DEFAULT_REGION={region} AWS_REGION={region}
# The deadline is absolute; give a late machine 10 minutes to report and release itself.
left=$(( {deadline} + 600 - $(date +%s) )); [ "$left" -lt 600 ] && left=600
( sleep "$left"; shutdown -h now ) &
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  if command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq python3-venv python3-pip
  elif command -v dnf >/dev/null; then dnf install -yq python3 python3-pip
  else yum install -yq python3 python3-pip; fi
fi
python3 -m venv {MACHINE_DIR}/venv
{MACHINE_DIR}/venv/bin/pip install -q 'boto3=={boto3_version}'
{shlex.join([f"{MACHINE_DIR}/venv/bin/python", "-c", download])}
{MACHINE_DIR}/venv/bin/pip install -q '{wheel}[aws]'
{shlex.join(agent)}
# The agent released this machine (or had nothing to do); if it could not, stop the machine.
shutdown -h now
"""


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
             "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
             "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}/*"},
            {"Sid": "ReleaseOwnInstance", "Effect": "Allow",
             "Action": "autoscaling:TerminateInstanceInAutoScalingGroup", "Resource": "*",
             "Condition": {"StringEquals": {f"autoscaling:ResourceTag/{TAG}": task_id}}},
        ],
    }  # fmt: skip


TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}


class AwsBackend:
    name = "aws"
    # Seconds to wait for AWS to settle; the tests against moto never wait.
    PROFILE_PROPAGATION = 120.0  # a new instance profile takes a while to be usable by Auto Scaling
    GROUP_DELETE_WAIT = 900.0
    DEPENDENCY_WAIT = 600.0  # a security group stays in use until the instances' interfaces go
    STOP_WAIT = 180.0
    POLL = 5.0

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], Any] = {}
        self._claims: dict[str, str] = {}

    # ------------------------------------------------------------ clients

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            try:
                import boto3
            except ImportError:
                raise SpecError("cloud: aws needs boto3; accepted: pip install 'tpi-jupyter[aws]'") from None
            self._clients[key] = boto3.session.Session().client(service, region_name=region)
        return self._clients[key]

    # ------------------------------------------------------------ names

    @staticmethod
    def base_name(record: dict[str, Any]) -> str:
        return f"tpi-{short_id(record['id'])}"

    def location(self, record: dict[str, Any]) -> tuple[str, str]:
        """(bucket, prefix) of the task's remote."""
        container = record["spec"].get("container")
        if container:
            bucket, prefix = split_container(container)
            return bucket, layout.join(prefix, record["id"]).strip("/")
        bucket = record.get("aws", {}).get("bucket") or f"{self.base_name(record)}-<random>"
        return bucket, record["id"]

    def remote_url(self, record: dict[str, Any]) -> str:
        bucket, prefix = self.location(record)
        return f"s3://{bucket}/{prefix}"

    def plan(self, record: dict[str, Any]) -> list[str]:
        spec = record["spec"]
        base = self.base_name(record)
        region = REGIONS["aws"].get(spec["region"], spec["region"])
        from ..spec import IMAGES, MACHINES

        machine = MACHINES["aws"].get(spec["machine"], spec["machine"])
        image = IMAGES["aws"].get(spec["image"], spec["image"])
        tags = ", ".join(f"{key}={value}" for key, value in _tags(record).items())
        storage = (
            f"storage: your bucket {self.remote_url(record)} (objects under the task prefix only)"
            if spec.get("container")
            else f"storage: a private, encrypted S3 bucket {self.location(record)[0]} in {region}"
        )
        identity = (
            f"permissions: your instance profile {spec['permission_set']}"
            if spec.get("permission_set")
            else f"permissions: IAM role and instance profile {base}, limited to the task's bucket prefix "
            "and to releasing its own instances"
        )
        return [
            f"checks first: credentials (STS), region {region}, {machine} offered there, image {image}",
            storage,
            f"ssh: key pair {base} from a fresh ed25519 key (private key 0600 in the registry)",
            f"network: security group {base} in the default VPC, no inbound rule",
            identity,
            f"launch template {base}: {machine}, boot script installs this tpi-jupyter's agent",
            f"machines: Auto Scaling Group {base}, 0 then {spec['parallelism']} x {machine}, "
            f"{pricing_text(float(spec['spot']))}, respawned when interrupted",
            f"tags: {tags}",
        ]

    # ------------------------------------------------------------ checks before anything exists

    def identity(self) -> dict[str, Any]:
        """STS caller identity; SpecError when the credential chain yields nothing usable."""
        import botocore.exceptions as boto_errors

        try:
            found: dict[str, Any] = self.client("sts", "us-east-1").get_caller_identity()
        except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
            raise SpecError(
                f"cloud: aws has no usable credentials ({_describe(error)}); accepted: AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or `aws sso login` (the standard boto3 chain)"
            ) from None
        return found

    def preflight(self, record: dict[str, Any]) -> dict[str, Any]:
        """Credentials, region, instance type, image, default VPC; SpecError names the key."""
        import botocore.exceptions as boto_errors

        spec = record["spec"]
        region = REGIONS["aws"].get(spec["region"], spec["region"])
        identity = self.identity()
        partition = identity["Arn"].split(":")[1]
        regions = {
            item["RegionName"]: item.get("OptInStatus", "opt-in-not-required")
            for item in self.client("ec2", "us-east-1").describe_regions(AllRegions=True)["Regions"]
        }
        if regions.get(region) in (None, "not-opted-in"):
            why = "is not enabled for this account" if region in regions else "is not an AWS region"
            enabled = sorted(name for name, status in regions.items() if status != "not-opted-in")
            raise SpecError(
                f"region: {spec['region']!r} ({region}) {why}; accepted: "
                f"{', '.join(REGIONS['aws'])}, or one of {', '.join(enabled)}"
            )
        ec2 = self.client("ec2", region)
        from ..spec import IMAGES, MACHINES

        machine = MACHINES["aws"].get(spec["machine"], spec["machine"])

        def offered(location_type: str) -> list[str]:
            pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
                LocationType=location_type, Filters=[{"Name": "instance-type", "Values": [machine]}]
            )
            return [item["Location"] for page in pages for item in page["InstanceTypeOfferings"]]

        if not offered("region"):
            raise SpecError(
                f"machine: {spec['machine']!r} ({machine}) is not offered in {region}; accepted: "
                f"{', '.join(MACHINES['aws'])}, or an EC2 instance type offered in {region}"
            )
        zones = set(offered("availability-zone"))
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise SpecError(
                f"region: {region} has no default VPC; accepted: a region with one (aws ec2 create-default-vpc)"
            )
        vpc = vpcs[0]["VpcId"]
        subnets = [
            item["SubnetId"]
            for item in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
            if item.get("DefaultForAz", True) and item["AvailabilityZone"] in zones
        ]
        if not subnets:
            raise SpecError(
                f"machine: {machine} is offered in no availability zone of the default VPC in {region}; "
                "accepted: another machine or region"
            )
        image_value = IMAGES["aws"].get(spec["image"], spec["image"])
        user, _, rest = image_value.partition("@")
        owner, architecture, pattern = rest.split(":", 2)
        filters = [{"Name": "name", "Values": [pattern]}, {"Name": "state", "Values": ["available"]}]
        if architecture != "*":
            filters.append({"Name": "architecture", "Values": [architecture]})
        query: dict[str, Any] = {"Filters": filters}
        if owner != "*":
            query["Owners"] = [owner]
        images = sorted(ec2.describe_images(**query)["Images"], key=lambda item: item.get("CreationDate", ""))
        if not images:
            raise SpecError(
                f"image: {spec['image']!r} matches no image in {region}; accepted: ubuntu, nvidia, "
                "or {user}@{owner}:{architecture}:{name pattern} of an available AMI"
            )
        if spec.get("container"):
            bucket, _ = split_container(spec["container"])
            try:
                self.client("s3", region).head_bucket(Bucket=bucket)
            except boto_errors.ClientError as error:
                raise SpecError(
                    f"container: bucket {bucket!r} is not reachable ({_describe(error)}); accepted: "
                    "an existing S3 bucket you can write to, bucket[/prefix]"
                ) from None
        if spec.get("permission_set"):
            name = spec["permission_set"].rsplit("/", 1)[-1]
            try:
                self.client("iam", region).get_instance_profile(InstanceProfileName=name)
            except boto_errors.ClientError as error:
                raise SpecError(
                    f"permission_set: {spec['permission_set']!r} is not usable ({_describe(error)}); "
                    "accepted: the ARN of an existing instance profile"
                ) from None
        newest = images[-1]
        return {
            "region": region, "account": identity["Account"], "partition": partition,
            "instance_type": machine, "vpc": vpc, "subnets": subnets, "image": newest["ImageId"],
            "image_name": newest.get("Name", ""), "root_device": newest.get("RootDeviceName", "/dev/sda1"),
            "user": user,
        }  # fmt: skip

    # ------------------------------------------------------------ create

    def create(self, record: dict[str, Any]) -> None:
        checked = self.preflight(record)
        base = self.base_name(record)
        aws = record["aws"] = {
            "region": checked["region"], "account": checked["account"], "name": base,
            "image": checked["image"], "instance_type": checked["instance_type"], "user": checked["user"],
        }  # fmt: skip
        if record["spec"].get("container"):
            aws["bucket"], aws["prefix"] = self.location(record)
        else:
            aws["bucket"], aws["prefix"] = f"{base}-{secrets.token_hex(3)}", record["id"]
        try:
            self._create(record, checked)
        except BaseException as error:
            with contextlib.suppress(Exception):
                self.delete(record)
            if isinstance(error, SpecError):
                raise
            if isinstance(error, StepError):
                raise StepError(f"{error}; everything created so far was removed") from error
            if isinstance(error, Exception):
                raise StepError(f"aws: {_describe(error)}; everything created so far was removed") from error
            raise
        finally:
            self._checkpoint(record)

    def _checkpoint(self, record: dict[str, Any]) -> None:
        """Keep what exists in the registry, so that a crash midway leaves a record to destroy."""
        from .. import state

        with contextlib.suppress(Exception):
            if state.load(record["id"]) is not None:
                state.save(record)

    def _step(self, label: str, action: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                action()
            except SpecError:
                raise
            except Exception as error:
                raise StepError(f"aws: creating the {label} failed ({_describe(error)})") from error

        return run

    def _create(self, record: dict[str, Any], checked: dict[str, Any]) -> None:
        aws = record["aws"]
        region = aws["region"]
        tags = _tags(record)
        for service in ("s3", "ec2", "iam", "autoscaling"):
            self.client(service, region)  # clients are thread-safe once made; sessions are not
        first = [self._step("bucket", lambda: self._create_bucket(record, tags)),
                 self._step("key pair", lambda: self._create_key_pair(record, tags)),
                 self._step("security group", lambda: self._create_security_group(record, checked, tags)),
                 self._step("IAM role and instance profile",
                            lambda: self._create_role(record, checked, tags))]  # fmt: skip
        self._run_all(first)
        self._checkpoint(record)
        wheel: dict[str, str] = {}
        second = [self._step("agent wheel upload", lambda: wheel.update(self._upload_wheel(record))),
                  self._step("launch template", lambda: self._create_launch_template(record, checked, tags))]  # fmt: skip
        self._run_all(second)
        self._checkpoint(record)
        self._step("auto scaling group", lambda: self._create_group(record, checked, tags))()

    @staticmethod
    def _run_all(steps: list[Callable[[], None]]) -> None:
        """Run steps concurrently; wait for all (so what was made is known), then raise the first error."""
        with ThreadPoolExecutor(max_workers=len(steps)) as pool:
            futures = [pool.submit(step) for step in steps]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error

    def _create_bucket(self, record: dict[str, Any], tags: dict[str, str]) -> None:
        aws = record["aws"]
        if record["spec"].get("container"):
            return
        s3 = self.client("s3", aws["region"])
        bucket = aws["bucket"]
        options = {} if aws["region"] == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": aws["region"]}}  # fmt: skip
        s3.create_bucket(Bucket=bucket, **options)
        aws["bucket_created"] = True
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True})  # fmt: skip
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})  # fmt: skip
        s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": _tag_list(tags)})

    def _create_key_pair(self, record: dict[str, Any], tags: dict[str, str]) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        aws = record["aws"]
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())  # fmt: skip
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        path = key_file(record["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "wb") as out:
            out.write(private)
        aws["key_file"] = str(path)
        aws["ssh_public_key"] = public.decode()
        self.client("ec2", aws["region"]).import_key_pair(
            KeyName=aws["name"], PublicKeyMaterial=public,
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": _tag_list(tags)}],
        )  # fmt: skip
        aws["key_name"] = aws["name"]

    def _create_security_group(
        self, record: dict[str, Any], checked: dict[str, Any], tags: dict[str, str]
    ) -> None:
        aws = record["aws"]
        ec2 = self.client("ec2", aws["region"])
        group = ec2.create_security_group(
            GroupName=aws["name"], VpcId=checked["vpc"],
            Description=f"tpi-jupyter task {record['id']}: no inbound rule",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": _tag_list(tags)}],
        )["GroupId"]  # fmt: skip
        aws["security_group"] = group
        cidr = os.environ.get(SSH_ENV, "").strip()
        if cidr:
            ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
                "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                "IpRanges": [{"CidrIp": cidr, "Description": "ssh, asked for with " + SSH_ENV}]}])  # fmt: skip
            aws["ssh_from"] = cidr

    def _create_role(self, record: dict[str, Any], checked: dict[str, Any], tags: dict[str, str]) -> None:
        aws = record["aws"]
        permission_set = record["spec"].get("permission_set")
        if permission_set:
            aws["profile_arn"] = permission_set
            return
        iam = self.client("iam", aws["region"])
        name = aws["name"]
        iam.create_role(RoleName=name, Path=IAM_PATH, AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                        Description=f"tpi-jupyter task {record['id']}", Tags=_tag_list(tags))  # fmt: skip
        aws["role"] = name
        policy = role_policy(checked["partition"], aws["bucket"], aws["prefix"], record["id"])
        iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        profile = iam.create_instance_profile(InstanceProfileName=name, Path=IAM_PATH, Tags=_tag_list(tags))
        aws["profile"] = name
        aws["profile_arn"] = profile["InstanceProfile"]["Arn"]
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)

    def _upload_wheel(self, record: dict[str, Any]) -> dict[str, str]:
        aws = record["aws"]
        name, data = agent_wheel.build()
        key = f"{aws['prefix']}/{AGENT_PREFIX}/{name}"
        self.client("s3", aws["region"]).put_object(Bucket=aws["bucket"], Key=key, Body=data,
                                                    ServerSideEncryption="AES256")  # fmt: skip
        aws["wheel_key"] = key
        return {"key": key}

    def _create_launch_template(
        self, record: dict[str, Any], checked: dict[str, Any], tags: dict[str, str]
    ) -> None:
        import boto3

        aws = record["aws"]
        wheel_key = f"{aws['prefix']}/{AGENT_PREFIX}/{agent_wheel.wheel_name()}"
        data: dict[str, Any] = {
            "ImageId": aws["image"], "InstanceType": aws["instance_type"], "KeyName": aws["name"],
            "SecurityGroupIds": [aws["security_group"]],
            "IamInstanceProfile": {"Arn": aws["profile_arn"]},
            "UserData": base64.b64encode(user_data(record, wheel_key, boto3.__version__).encode()).decode(),
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled",
                                "HttpPutResponseHopLimit": 1},
            "TagSpecifications": [{"ResourceType": kind, "Tags": _tag_list(tags)}
                                  for kind in ("instance", "volume")],
        }  # fmt: skip
        disk = int(record["spec"].get("disk_size", -1))
        if disk > 0:
            data["BlockDeviceMappings"] = [{"DeviceName": checked["root_device"], "Ebs": {
                "VolumeSize": disk, "VolumeType": "gp3", "DeleteOnTermination": True, "Encrypted": True}}]  # fmt: skip
        template = self.client("ec2", aws["region"]).create_launch_template(
            LaunchTemplateName=aws["name"], LaunchTemplateData=data,
            VersionDescription=f"tpi-jupyter task {record['id']}",
            TagSpecifications=[{"ResourceType": "launch-template", "Tags": _tag_list(tags)}],
        )["LaunchTemplate"]  # fmt: skip
        aws["launch_template"] = template["LaunchTemplateId"]

    def group_request(
        self, record: dict[str, Any], checked: dict[str, Any], tags: dict[str, str]
    ) -> dict[str, Any]:
        aws = record["aws"]
        spot = float(record["spec"]["spot"])
        distribution: dict[str, Any] = {"OnDemandBaseCapacity": 0,
                                        "OnDemandPercentageAboveBaseCapacity": 100 if spot < 0 else 0}  # fmt: skip
        if spot >= 0:
            distribution["SpotAllocationStrategy"] = "price-capacity-optimized"
        if spot > 0:
            distribution["SpotMaxPrice"] = f"{spot:g}"  # spot=0: no max price = the on-demand price
        return {
            "AutoScalingGroupName": aws["name"], "MinSize": 0,
            "MaxSize": int(record["spec"]["parallelism"]), "DesiredCapacity": 0,
            "VPCZoneIdentifier": ",".join(checked["subnets"]),
            "MixedInstancesPolicy": {
                "LaunchTemplate": {
                    "LaunchTemplateSpecification": {"LaunchTemplateId": aws["launch_template"],
                                                    "Version": "$Latest"},
                    "Overrides": [{"InstanceType": aws["instance_type"]}]},
                "InstancesDistribution": distribution},
            "CapacityRebalance": spot >= 0,
            "Tags": [{"Key": key, "Value": value, "PropagateAtLaunch": True, "ResourceId": aws["name"],
                      "ResourceType": "auto-scaling-group"} for key, value in tags.items()],
        }  # fmt: skip

    def _create_group(self, record: dict[str, Any], checked: dict[str, Any], tags: dict[str, str]) -> None:
        aws = record["aws"]
        autoscaling = self.client("autoscaling", aws["region"])
        request = self.group_request(record, checked, tags)
        give_up = time.monotonic() + self.PROFILE_PROPAGATION
        while True:
            try:
                autoscaling.create_auto_scaling_group(**request)
                break
            except Exception as error:  # a fresh instance profile is "invalid" until IAM propagates
                if "profile" not in _describe(error).lower() or time.monotonic() > give_up:
                    raise
                time.sleep(self.POLL)
        aws["group"] = aws["name"]
        # Rebalancing across zones would terminate running ranks; interruptions are handled by claims.
        autoscaling.suspend_processes(AutoScalingGroupName=aws["name"], ScalingProcesses=["AZRebalance"])

    # ------------------------------------------------------------ start / read / stop

    def start(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        s3 = self.client("s3", aws["region"])
        if record["spec"].get("container"):
            # The user's bucket may lack default encryption: rewrite the environment encrypted.
            key = f"{aws['prefix']}/{layout.ENV}"
            s3.copy_object(Bucket=aws["bucket"], Key=key, CopySource={"Bucket": aws["bucket"], "Key": key},
                           ServerSideEncryption="AES256", MetadataDirective="REPLACE")  # fmt: skip
        self.client("autoscaling", aws["region"]).set_desired_capacity(
            AutoScalingGroupName=aws["group"], DesiredCapacity=int(record["spec"]["parallelism"])
        )

    def _group(self, record: dict[str, Any]) -> dict[str, Any] | None:
        aws = record.get("aws") or {}
        if not aws.get("group"):
            return None
        found = self.client("autoscaling", aws["region"]).describe_auto_scaling_groups(
            AutoScalingGroupNames=[aws["group"]]
        )["AutoScalingGroups"]
        return found[0] if found else None

    def _instance_ranks(self, record: dict[str, Any]) -> dict[str, tuple[int, int]]:
        """instance id -> (rank, boot) from the claims in the bucket (the newest boot wins)."""
        fs, root = filesystem(self.remote_url(record))
        owners: dict[str, tuple[int, int]] = {}
        for (rank, boot), owner in sorted(ranks.read_claims(fs, root, self._claims).items()):
            owners[owner] = (rank, boot)
        return owners

    def read(self, record: dict[str, Any]) -> GroupState:
        aws = record.get("aws") or {}
        group = self._group(record)
        if group is None:
            return GroupState(exists=False)
        exists = group.get("Status") != "Delete in progress" and not aws.get("stopped")
        instances = {item["InstanceId"]: item["LifecycleState"] for item in group.get("Instances", [])}
        owners = self._instance_ranks(record) if instances else {}
        addresses: dict[str, str] = {}
        if instances:
            with contextlib.suppress(Exception):
                reservations = self.client("ec2", aws["region"]).describe_instances(
                    InstanceIds=list(instances))["Reservations"]  # fmt: skip
                for reservation in reservations:
                    for item in reservation["Instances"]:
                        addresses[item["InstanceId"]] = item.get("PublicIpAddress") or item.get(
                            "PrivateIpAddress", ""
                        )
        machines = []
        for instance, lifecycle in sorted(instances.items()):
            rank, boot = owners.get(instance, (-1, -1))  # -1: booting, no rank claimed yet
            machines.append(Machine(rank=rank, boot=boot, alive=lifecycle in ALIVE_STATES and exists,
                                    address=addresses.get(instance, "")))  # fmt: skip
        return GroupState(exists=exists, machines=machines, events=self._events(record, owners))

    def _events(self, record: dict[str, Any], owners: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
        aws = record["aws"]
        events = []
        with contextlib.suppress(Exception):
            activities = self.client("autoscaling", aws["region"]).describe_scaling_activities(
                AutoScalingGroupName=aws["group"], MaxRecords=100)["Activities"]  # fmt: skip
            for activity in activities:
                detail = activity.get("Description", "")
                if activity.get("StatusCode") not in (None, "Successful", "InProgress"):
                    detail += f" ({activity.get('StatusCode')}: {activity.get('StatusMessage', '')})"
                rank = next((r for instance, (r, _) in owners.items() if instance in detail), None)
                events.append({"time": activity["StartTime"].timestamp(), "kind": "scaling", "rank": rank,
                               "detail": " ".join(detail.split())})  # fmt: skip
        return events

    def stop(self, record: dict[str, Any], wait: float | None = None) -> None:
        """Scale to 0: instances get shut down (the agent's SIGTERM: sync back, report "stopped")."""
        aws = record.get("aws") or {}
        group = self._group(record)
        if group is None:
            return
        autoscaling = self.client("autoscaling", aws["region"])
        if group.get("DesiredCapacity") or group.get("Instances"):
            autoscaling.update_auto_scaling_group(
                AutoScalingGroupName=aws["group"], MinSize=0, DesiredCapacity=0
            )
        aws["stopped"] = True
        self._checkpoint(record)
        limit = time.monotonic() + (self.STOP_WAIT if wait is None else wait)
        while time.monotonic() < limit:
            group = self._group(record)
            if group is None or not group.get("Instances"):
                return
            time.sleep(self.POLL)

    def preempt(self, record: dict[str, Any], rank: int) -> None:
        """Terminate rank's instance outside the group, as EC2 reclaiming a spot instance does."""
        aws = record.get("aws") or {}
        group = self._group(record)
        live = {
            i["InstanceId"] for i in (group or {}).get("Instances", []) if i["LifecycleState"] in ALIVE_STATES
        }
        owners = self._instance_ranks(record)
        victims = [instance for instance, (r, _) in owners.items() if r == rank and instance in live]
        if not victims:
            raise RuntimeError(f"rank {rank} has no running instance to preempt")
        self.client("ec2", aws["region"]).terminate_instances(InstanceIds=victims)

    # ------------------------------------------------------------ delete

    def delete(self, record: dict[str, Any]) -> None:
        """Group, launch template, instance profile and role, security group, key pair, bucket.

        Idempotent: what is missing (or never made) counts as deleted.
        """
        aws = record.get("aws") or {}
        failures: list[str] = []
        if aws.get("region"):
            for label, action in (
                ("auto scaling group", self._delete_group), ("launch template", self._delete_template),
                ("instance profile and role", self._delete_role),
                ("security group", self._delete_security_group), ("key pair", self._delete_key_pair),
                ("bucket", self._delete_bucket),
            ):  # fmt: skip
                try:
                    action(record)
                except Exception as error:
                    if not _not_found(error):
                        failures.append(f"{label}: {_describe(error)}")
        with contextlib.suppress(OSError):
            if aws.get("key_file"):
                Path(aws["key_file"]).unlink(missing_ok=True)
        if failures:
            raise RuntimeError(
                f"aws: task {record['id']} could not be fully deleted ({'; '.join(failures)}); "
                "destroy again, or `tpi sweep aws --yes` later"
            )

    def _delete_group(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        if not aws.get("group"):
            return
        autoscaling = self.client("autoscaling", aws["region"])
        try:
            autoscaling.delete_auto_scaling_group(AutoScalingGroupName=aws["group"], ForceDelete=True)
        except Exception as error:
            if not _not_found(error) and "in progress" not in _describe(error).lower():
                raise
        limit = time.monotonic() + self.GROUP_DELETE_WAIT
        while self._group(record) is not None:
            if time.monotonic() > limit:
                raise RuntimeError(f"group {aws['group']} is still being deleted")
            time.sleep(self.POLL)

    def _delete_template(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        if aws.get("launch_template"):
            self.client("ec2", aws["region"]).delete_launch_template(LaunchTemplateId=aws["launch_template"])

    def _delete_role(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        iam = self.client("iam", aws["region"])
        profile, role = aws.get("profile"), aws.get("role")
        if profile:
            with contextlib.suppress(Exception):
                for item in iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]:
                    iam.remove_role_from_instance_profile(
                        InstanceProfileName=profile, RoleName=item["RoleName"]
                    )
            try:
                iam.delete_instance_profile(InstanceProfileName=profile)
            except Exception as error:
                if not _not_found(error):
                    raise
        if role:
            try:
                for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                    iam.delete_role_policy(RoleName=role, PolicyName=name)
                for item in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
                    iam.detach_role_policy(RoleName=role, PolicyArn=item["PolicyArn"])
                for item in iam.list_instance_profiles_for_role(RoleName=role)["InstanceProfiles"]:
                    iam.remove_role_from_instance_profile(
                        InstanceProfileName=item["InstanceProfileName"], RoleName=role)  # fmt: skip
                iam.delete_role(RoleName=role)
            except Exception as error:
                if not _not_found(error):
                    raise

    def _delete_security_group(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        if not aws.get("security_group"):
            return
        ec2 = self.client("ec2", aws["region"])
        limit = time.monotonic() + self.DEPENDENCY_WAIT
        while True:
            try:
                ec2.delete_security_group(GroupId=aws["security_group"])
                return
            except Exception as error:  # terminated instances' interfaces hold it for a while
                if _code(error) != "DependencyViolation" or time.monotonic() > limit:
                    raise
                time.sleep(self.POLL)

    def _delete_key_pair(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        if aws.get("key_name"):
            self.client("ec2", aws["region"]).delete_key_pair(KeyName=aws["key_name"])

    def _delete_bucket(self, record: dict[str, Any]) -> None:
        aws = record["aws"]
        if not aws.get("bucket") or not (aws.get("bucket_created") or record["spec"].get("container")):
            return
        s3 = self.client("s3", aws["region"])
        own = bool(aws.get("bucket_created")) and not record["spec"].get("container")
        prefix = "" if own else f"{aws['prefix'].strip('/')}/"
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=aws["bucket"], Prefix=prefix)
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=aws["bucket"], Delete={"Objects": keys, "Quiet": True})
        if own:
            s3.delete_bucket(Bucket=aws["bucket"])

    # ------------------------------------------------------------ sweep

    def sweep(self, live_ids: set[str], delete: bool, region: str | None = None) -> list[str]:
        """Resources tagged tpi-task whose task is not in live_ids; deleted when asked.

        Regional resources are looked for in `region` ("all" for every enabled region; default:
        the configured region and the generic default us-west-1); IAM and S3 are global.
        """
        import boto3

        self.identity()
        if region == "all":
            regions = sorted(
                item["RegionName"] for item in self.client("ec2", "us-east-1").describe_regions()["Regions"]
            )
        elif region:
            regions = [REGIONS["aws"].get(region, region)]
        else:
            configured = boto3.session.Session().region_name
            regions = sorted({REGIONS["aws"]["us-west"], *([configured] if configured else [])})
        found: dict[tuple[str, str], dict[str, Any]] = {}  # (task id, region) -> aws record part

        def note(task_id: str, where: str, **values: Any) -> None:
            if task_id and task_id not in live_ids:
                found.setdefault((task_id, where), {"region": where}).update(values)

        for where in regions:
            autoscaling, ec2 = self.client("autoscaling", where), self.client("ec2", where)
            tag_filter = [{"Name": "tag-key", "Values": [TAG]}]
            for page in autoscaling.get_paginator("describe_auto_scaling_groups").paginate(
                Filters=tag_filter
            ):
                for item in page["AutoScalingGroups"]:
                    note(_tag_value(item.get("Tags", [])), where, group=item["AutoScalingGroupName"])
            for item in ec2.describe_launch_templates(Filters=tag_filter).get("LaunchTemplates", []):
                note(_tag_value(item.get("Tags", [])), where, launch_template=item["LaunchTemplateId"])
            for item in ec2.describe_security_groups(Filters=tag_filter)["SecurityGroups"]:
                note(_tag_value(item.get("Tags", [])), where, security_group=item["GroupId"])
            for item in ec2.describe_key_pairs(Filters=tag_filter)["KeyPairs"]:
                note(_tag_value(item.get("Tags", [])), where, key_name=item["KeyName"])
        home = regions[0]
        iam = self.client("iam", home)
        role_tasks: dict[str, str] = {}
        for item in iam.list_roles(PathPrefix=IAM_PATH)["Roles"]:
            role_tasks[item["RoleName"]] = _tag_value(iam.list_role_tags(RoleName=item["RoleName"])["Tags"])
            note(role_tasks[item["RoleName"]], "global", role=item["RoleName"])
        for item in iam.list_instance_profiles(PathPrefix=IAM_PATH)["InstanceProfiles"]:
            name = item["InstanceProfileName"]
            tags = item.get("Tags")
            if tags is None:  # AWS lists profiles without tags; moto lacks list_instance_profile_tags
                try:
                    tags = iam.list_instance_profile_tags(InstanceProfileName=name)["Tags"]
                except Exception:
                    tags = []
            note(_tag_value(tags) or role_tasks.get(name, ""), "global", profile=name)
        s3 = self.client("s3", home)
        for item in s3.list_buckets().get("Buckets", []):
            if not item["Name"].startswith("tpi-"):
                continue
            try:
                tags = s3.get_bucket_tagging(Bucket=item["Name"])["TagSet"]
                where = s3.get_bucket_location(Bucket=item["Name"]).get("LocationConstraint") or "us-east-1"
            except Exception:
                continue
            note(_tag_value(tags), "global", bucket=item["Name"], bucket_created=True, bucket_region=where)
        lines = []
        for (task_id, where), values in sorted(found.items()):
            names = [f"{key.replace('_', ' ')} {value}" for key, value in values.items()
                     if key in ("group", "launch_template", "security_group", "key_name", "role", "profile",
                                "bucket")]  # fmt: skip
            lines.append(f"{'deleted' if delete else 'orphan'} {task_id} ({where}): {', '.join(names)}")
            if delete:
                part = dict(values)
                if where == "global":
                    part["region"] = part.pop("bucket_region", home)
                    if "bucket" not in part:
                        part["region"] = home
                self.delete({"id": task_id, "spec": {"container": ""}, "aws": part})
        return lines


def _tag_value(tags: list[dict[str, Any]]) -> str:
    for tag in tags:
        if tag.get("Key") == TAG:
            return str(tag.get("Value", ""))
    return ""
