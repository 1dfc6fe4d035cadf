"""The task's security group: no inbound rule unless asked for (TPI_AWS_SSH_CIDR)."""

from __future__ import annotations

import os

from ...spec import TaskSpec
from .common import AwsState, Clients, retry_busy, tag_list

SSH_ENV = "TPI_AWS_SSH_CIDR"  # set to a CIDR (e.g. 203.0.113.7/32) to open port 22 from it


def create_security_group(clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str]) -> None:
    ec2 = clients("ec2", state.region)
    state.security_group = ec2.create_security_group(
        GroupName=state.name, VpcId=state.vpc, Description=f"tpi-jupyter task {spec.id}: no inbound rule",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list(tags)}],
    )["GroupId"]  # fmt: skip
    cidr = os.environ.get(SSH_ENV, "").strip()
    if cidr:
        ec2.authorize_security_group_ingress(GroupId=state.security_group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
            "IpRanges": [{"CidrIp": cidr, "Description": "ssh, asked for with " + SSH_ENV}]}])  # fmt: skip
        state.ssh_from = cidr


def delete_security_group(clients: Clients, state: AwsState, wait: float, poll: float) -> None:
    """Terminated instances' network interfaces hold the group for a while: retry until `wait`."""
    if not state.security_group:
        return
    ec2 = clients("ec2", state.region)
    retry_busy(
        lambda: ec2.delete_security_group(GroupId=state.security_group), "DependencyViolation", wait, poll
    )
