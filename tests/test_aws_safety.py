"""AWS safe on a real account: pre-flight checks, the no-paid-loop rule, spot notices.

Pre-flight checks run against moto where moto implements the call (route tables, images). moto
implements neither Service Quotas nor `iam:SimulatePrincipalPolicy`: those two calls are answered
by botocore's Stubber with the documented response shapes, and each test says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from tpi_jupyter.backends.aws import checks
from tpi_jupyter.spec import SpecError

from .aws_moto import REGION, aws_env, client, moto_endpoint  # noqa: F401 - fixtures


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
