"""Checks before anything exists: credentials, region, instance type, default VPC, image, and the
user's container and permission set. Each refusal is one SpecError line naming the key."""

from __future__ import annotations

from typing import Any

from ...spec import MACHINES, REGIONS, SpecError, TaskSpec
from . import checks
from .common import AwsState, Clients, describe

PARTITION_HOMES = {"aws": "us-east-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}


def lookup_region(region: str) -> str:
    """Where to ask STS and EC2 about the task: its own region when botocore knows it, else the
    home region of its partition (an unknown name still gets a clear refusal)."""
    import boto3

    partition = checks.partition_of(region)
    known = boto3.session.Session().get_available_regions("ec2", partition_name=partition)
    return region if region in known else PARTITION_HOMES.get(partition, "us-east-1")


def split_container(container: str) -> tuple[str, str]:
    bucket, _, prefix = container.partition("/")
    return bucket, prefix.strip("/")


def caller_identity(clients: Clients, region: str = "us-east-1") -> dict[str, Any]:
    """STS caller identity; SpecError when the credential chain yields nothing usable."""
    import botocore.exceptions as boto_errors

    try:
        found: dict[str, Any] = clients("sts", region).get_caller_identity()
    except (boto_errors.BotoCoreError, boto_errors.ClientError) as error:
        raise SpecError(
            f"cloud: aws has no usable credentials ({describe(error)}); accepted: AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or `aws sso login` (the standard boto3 chain)"
        ) from None
    return found


def _check_region(clients: Clients, spec: TaskSpec, region: str) -> None:
    regions = {
        item["RegionName"]: item.get("OptInStatus", "opt-in-not-required")
        for item in clients("ec2", lookup_region(region)).describe_regions(AllRegions=True)["Regions"]
    }
    if regions.get(region) in (None, "not-opted-in"):
        why = "is not enabled for this account" if region in regions else "is not an AWS region"
        enabled = sorted(name for name, status in regions.items() if status != "not-opted-in")
        raise SpecError(
            f"region: {spec.region!r} ({region}) {why}; accepted: "
            f"{', '.join(REGIONS['aws'])}, or one of {', '.join(enabled)}"
        )


def _zones_offering(ec2: Any, spec: TaskSpec, region: str) -> set[str]:
    machine = spec.native_machine

    def offered(location_type: str) -> list[str]:
        pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
            LocationType=location_type, Filters=[{"Name": "instance-type", "Values": [machine]}]
        )
        return [item["Location"] for page in pages for item in page["InstanceTypeOfferings"]]

    if not offered("region"):
        raise SpecError(
            f"machine: {spec.machine!r} ({machine}) is not offered in {region}; accepted: "
            f"{', '.join(MACHINES['aws'])}, or an EC2 instance type offered in {region}"
        )
    return set(offered("availability-zone"))


def _network(ec2: Any, spec: TaskSpec, region: str, zones: set[str], state: AwsState) -> None:
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise SpecError(
            f"region: {region} has no default VPC; accepted: a region with one (aws ec2 create-default-vpc)"
        )
    state.vpc = vpcs[0]["VpcId"]
    subnets = [
        item
        for item in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [state.vpc]}])["Subnets"]
        if item.get("DefaultForAz", True) and item["AvailabilityZone"] in zones
    ]
    if not subnets:
        raise SpecError(
            f"machine: {spec.native_machine} is offered in no availability zone of the default VPC in "
            f"{region}; accepted: another machine or region"
        )
    state.subnets = checks.internet_subnets(ec2, region, state.vpc, subnets)


def _image(ec2: Any, spec: TaskSpec, region: str, state: AwsState) -> None:
    user, _, rest = spec.native_image.partition("@")
    owner, architecture, pattern = rest.split(":", 2)
    checks.check_image_owner(spec.image, owner)
    filters = [{"Name": "name", "Values": [pattern]}, {"Name": "state", "Values": ["available"]}]
    if architecture != "*":
        filters.append({"Name": "architecture", "Values": [architecture]})
    query: dict[str, Any] = {"Filters": filters, "Owners": [owner]}
    images = sorted(ec2.describe_images(**query)["Images"], key=lambda item: item.get("CreationDate", ""))
    if not images:
        raise SpecError(
            f"image: {spec.image!r} matches no image in {region}; accepted: ubuntu, nvidia, "
            "or {user}@{owner}:{architecture}:{name pattern} of an available AMI"
        )
    newest = images[-1]
    checks.check_image_python(spec.image, newest.get("Name", ""))
    checks.check_disk(spec.disk_size, newest)
    state.image, state.user = newest["ImageId"], user
    state.root_device = newest.get("RootDeviceName", "/dev/sda1")


def _user_resources(clients: Clients, spec: TaskSpec, region: str) -> None:
    import botocore.exceptions as boto_errors

    if spec.container:
        bucket, _ = split_container(spec.container)
        try:
            clients("s3", region).head_bucket(Bucket=bucket)
        except boto_errors.ClientError as error:
            raise SpecError(
                f"container: bucket {bucket!r} is not reachable ({describe(error)}); accepted: "
                "an existing S3 bucket you can write to, bucket[/prefix]"
            ) from None
    if spec.permission_set:
        name = spec.permission_set.rsplit("/", 1)[-1]
        try:
            clients("iam", region).get_instance_profile(InstanceProfileName=name)
        except boto_errors.ClientError as error:
            raise SpecError(
                f"permission_set: {spec.permission_set!r} is not usable ({describe(error)}); "
                "accepted: the ARN of an existing instance profile"
            ) from None


def _quota(clients: Clients, ec2: Any, spec: TaskSpec, region: str) -> None:
    if checks.GPU_QUOTAS.get(checks.family(spec.native_machine)) is None:
        return
    found = ec2.describe_instance_types(InstanceTypes=[spec.native_machine])["InstanceTypes"]
    vcpus = int(found[0]["VCpuInfo"]["DefaultVCpus"]) if found else 1
    checks.check_gpu_quota(
        clients("service-quotas", region), spec.native_machine, vcpus, spec.spot >= 0, region
    )


def preflight(clients: Clients, spec: TaskSpec, state: AwsState) -> None:
    """Fill `state` with what was looked up; SpecError (one line, naming the key) on a refusal."""
    region = spec.native_region
    identity = caller_identity(clients, lookup_region(region))
    state.account, state.creator = identity["Account"], identity["Arn"]
    state.partition = identity["Arn"].split(":")[1]
    _check_region(clients, spec, region)
    state.region = region
    ec2 = clients("ec2", region)
    zones = _zones_offering(ec2, spec, region)
    state.instance_type = spec.native_machine
    _network(ec2, spec, region, zones, state)
    _image(ec2, spec, region, state)
    _quota(clients, ec2, spec, region)
    _user_resources(clients, spec, region)


__all__ = ["caller_identity", "preflight", "split_container"]
