"""AWS pre-flight checks: pure functions of boto3 clients, run before anything is created.

Each raises `SpecError` with one line naming the argument and what is accepted, or returns what
the next step needs. None of them creates, changes or deletes anything.
"""

from __future__ import annotations

import re
from typing import Any

from ...spec import SpecError

# Images whose distribution ships no Python 3.10+ that the boot script can install
# (Ubuntu 18.04/20.04, Debian 10/11, Amazon Linux 2 with yum only, CentOS 7).
OLD_PYTHON_IMAGES = re.compile(
    r"ubuntu-(bionic|focal)|ubuntu[ /-]?(18|20)\.04|debian-1[01]-|amzn2-ami|amzn-ami|centos-?7", re.I
)

# Service Quotas codes of the vCPU quotas of accelerated families (on-demand, spot).
# From the Service Quotas console, service "Amazon Elastic Compute Cloud (Amazon EC2)".
GPU_QUOTAS: dict[str, tuple[str, str, str]] = {
    "g": ("G and VT instances", "L-DB2E81BA", "L-3819A6DF"),
    "vt": ("G and VT instances", "L-DB2E81BA", "L-3819A6DF"),
    "p": ("P instances", "L-417A185B", "L-7212CCBC"),
    "inf": ("Inf instances", "L-1945791B", "L-B5D1601B"),
    "trn": ("Trn instances", "L-2C3B7624", "L-5480EFD2"),
    "dl": ("DL instances", "L-6E869C2A", "L-85EED4F7"),
    "f": ("F instances", "L-74FC7D96", "L-88CF9481"),
}

# What the agent on a machine calls: the task prefix, and releasing its own instance.
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
BUCKET_ACTIONS = ("s3:ListBucket",)
RELEASE_ACTIONS = ("autoscaling:TerminateInstanceInAutoScalingGroup",)


def partition_of(region: str) -> str:
    """aws, aws-cn, aws-us-gov, ...: from botocore's endpoint data, for the task's region."""
    try:
        import boto3

        return str(boto3.session.Session().get_partition_for_region(region))
    except Exception:  # an unknown region: the region check names it
        if region.startswith("cn-"):
            return "aws-cn"
        return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def check_image_owner(image: str, owner: str) -> None:
    if "*" in owner:
        raise SpecError(
            f"image: {image!r} matches AMIs of any owner ('*'), so anyone's public image could be "
            "picked; accepted: {user}@{owner}:{architecture}:{name} with the owner's account id"
        )


def check_image_python(image: str, image_name: str) -> None:
    if OLD_PYTHON_IMAGES.search(image_name):
        raise SpecError(
            f"image: {image!r} resolves to {image_name!r}, whose distribution has no Python 3.10+ for "
            "the agent; accepted: ubuntu, nvidia, or an image with Python 3.10+ (or apt/dnf providing it)"
        )


def check_disk(disk_size: int, image: dict[str, Any]) -> None:
    """`disk_size` (GiB, -1 = the image's) must hold the image's root snapshot."""
    if disk_size <= 0:
        return
    root = image.get("RootDeviceName")
    for mapping in image.get("BlockDeviceMappings", []):
        size = int(mapping.get("Ebs", {}).get("VolumeSize") or 0)
        if mapping.get("DeviceName") == root and size > disk_size:
            raise SpecError(
                f"disk_size: {disk_size} GB is smaller than the image's root snapshot "
                f"({image.get('ImageId', '?')}: {size} GB); accepted: -1 (the image's size) or {size} and more"
            )


def _reaches_internet(table: dict[str, Any], public_ip: bool) -> bool:
    for route in table.get("Routes", []):
        if route.get("DestinationCidrBlock") != "0.0.0.0/0" or route.get("State") == "blackhole":
            continue
        if route.get("NatGatewayId") or (public_ip and str(route.get("GatewayId", "")).startswith("igw-")):
            return True
    return False


def internet_subnets(ec2: Any, region: str, vpc: str, subnets: list[dict[str, Any]]) -> list[str]:
    """The subnets whose machines reach the internet (package mirrors, the bucket, the cloud APIs)."""
    tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"]
    main: dict[str, Any] = next(
        (t for t in tables if any(a.get("Main") for a in t.get("Associations", []))), {"Routes": []}
    )
    explicit = {
        a["SubnetId"]: table for table in tables for a in table.get("Associations", []) if a.get("SubnetId")
    }
    found = [
        item["SubnetId"]
        for item in subnets
        if _reaches_internet(explicit.get(item["SubnetId"], main), bool(item.get("MapPublicIpOnLaunch")))
    ]
    if not found:
        raise SpecError(
            f"region: the default VPC {vpc} in {region} has no subnet with a route to the internet "
            "(0.0.0.0/0 to an internet gateway with public addresses, or a NAT gateway); accepted: "
            "a region whose default VPC reaches the internet (aws ec2 create-default-vpc)"
        )
    return found


def family(instance_type: str) -> str:
    return re.sub(r"\d.*$", "", instance_type.split(".", 1)[0].lower())


def check_gpu_quota(quotas: Any, instance_type: str, vcpus: int, spot: bool, region: str) -> None:
    """An accelerated family whose vCPU quota cannot hold one machine is refused up front."""
    known = GPU_QUOTAS.get(family(instance_type))
    if known is None:
        return
    label, on_demand, spot_code = known
    code = spot_code if spot else on_demand
    try:
        value = float(quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"])
    except Exception:  # no permission to read quotas, or an unknown code: launching will tell
        return
    if value < vcpus:
        kind = "Spot" if spot else "On-Demand"
        raise SpecError(
            f"machine: {instance_type} needs {vcpus} vCPUs of the {kind} '{label}' quota ({code}), which is "
            f"{value:.0f} in {region}; accepted: another machine or region, or ask for more in Service Quotas"
        )


def _denied(
    iam: Any, role_arn: str, actions: tuple[str, ...], resource: str, context: list[Any]
) -> list[str]:
    result = iam.simulate_principal_policy(
        PolicySourceArn=role_arn, ActionNames=list(actions), ResourceArns=[resource], ContextEntries=context
    )
    return [
        item["EvalActionName"] for item in result["EvaluationResults"] if item["EvalDecision"] != "allowed"
    ]


def check_permission_set(
    iam: Any, permission_set: str, partition: str, bucket: str, prefix: str, task_id: str
) -> None:
    """The instance profile's role must allow what the agent calls; checked by IAM's simulator."""
    name = permission_set.rsplit("/", 1)[-1]
    try:
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    except Exception as error:
        raise SpecError(
            f"permission_set: {permission_set!r} is not usable ({error}); accepted: the ARN of an existing "
            "instance profile"
        ) from None
    if not roles:
        raise SpecError(
            f"permission_set: {permission_set!r} has no role; accepted: an instance profile with a role"
        )
    role = roles[0]["Arn"]
    tag = [{"ContextKeyName": "autoscaling:ResourceTag/tpi-task", "ContextKeyValues": [task_id],
            "ContextKeyType": "string"}]  # fmt: skip
    try:
        missing = _denied(iam, role, OBJECT_ACTIONS, f"arn:{partition}:s3:::{bucket}/{prefix}/x", [])
        missing += _denied(iam, role, BUCKET_ACTIONS, f"arn:{partition}:s3:::{bucket}", [])
        missing += _denied(iam, role, RELEASE_ACTIONS, "*", tag)
    except Exception as error:
        code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("AccessDenied", "AccessDeniedException"):
            return  # the caller may not simulate: the machines will tell
        raise
    if missing:
        raise SpecError(
            f"permission_set: the role of {permission_set!r} lacks {', '.join(missing)} on the task's "
            f"bucket prefix s3://{bucket}/{prefix}; accepted: an instance profile whose role allows "
            f"{', '.join(OBJECT_ACTIONS + BUCKET_ACTIONS + RELEASE_ACTIONS)}"
        )
