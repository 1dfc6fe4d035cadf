"""The machines: a launch template and an Auto Scaling group (mixed instances, spot or
on-demand); reading, stopping, preempting and deleting them."""

from __future__ import annotations

import base64
import contextlib
import time
from datetime import datetime, timezone
from typing import Any

from ...spec import TaskSpec
from ..base import GroupState, Machine
from ..kit.boot import GRACE
from .common import AwsState, Clients, code, describe, not_found, tag_list

DEADLINE_ACTION = "tpi-deadline"  # the group scales itself to 0 at deadline + grace
EVENTS_MAX_AGE = 60.0  # seconds a cached list of scaling activities may be reused unchanged

ALIVE_STATES = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")


def create_launch_template(
    clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str], boot_script: str
) -> None:
    data: dict[str, Any] = {
        "ImageId": state.image, "InstanceType": state.instance_type, "KeyName": state.name,
        "SecurityGroupIds": [state.security_group], "IamInstanceProfile": {"Arn": state.profile_arn},
        "InstanceInitiatedShutdownBehavior": "terminate",  # a machine that powers off stops costing
        "UserData": base64.b64encode(boot_script.encode()).decode(),
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [{"ResourceType": kind, "Tags": tag_list(tags)} for kind in ("instance", "volume", "network-interface")],
    }  # fmt: skip
    if spec.disk_size > 0:
        data["BlockDeviceMappings"] = [{"DeviceName": state.root_device, "Ebs": {
            "VolumeSize": spec.disk_size, "VolumeType": "gp3", "DeleteOnTermination": True, "Encrypted": True}}]  # fmt: skip
    template = clients("ec2", state.region).create_launch_template(
        LaunchTemplateName=state.name, LaunchTemplateData=data, VersionDescription=f"tpi-jupyter task {spec.id}",
        TagSpecifications=[{"ResourceType": "launch-template", "Tags": tag_list(tags)}],
    )["LaunchTemplate"]  # fmt: skip
    state.launch_template = template["LaunchTemplateId"]


def fixed_price(price: float) -> str:
    """A price in fixed notation (AWS refuses "1e-05")."""
    return f"{price:.6f}".rstrip("0").rstrip(".")


def group_request(spec: TaskSpec, state: AwsState, tags: dict[str, str]) -> dict[str, Any]:
    distribution: dict[str, Any] = {"OnDemandBaseCapacity": 0,
                                    "OnDemandPercentageAboveBaseCapacity": 100 if spec.spot < 0 else 0}  # fmt: skip
    if spec.spot >= 0:
        distribution["SpotAllocationStrategy"] = "price-capacity-optimized"
    if spec.spot > 0:
        distribution["SpotMaxPrice"] = fixed_price(spec.spot)  # spot=0: no max price = the on-demand price
    placement = {"PlacementGroup": state.placement_group} if state.placement_group else {}
    return {
        **placement,
        "AutoScalingGroupName": state.name, "MinSize": 0, "MaxSize": spec.parallelism, "DesiredCapacity": 0,
        "VPCZoneIdentifier": ",".join(state.subnets),
        "MixedInstancesPolicy": {
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateId": state.launch_template, "Version": "$Latest"},
                "Overrides": [{"InstanceType": state.instance_type}]},
            "InstancesDistribution": distribution},
        # Off: a rebalance terminates the old machine without a drain hook; a rebalance
        # recommendation reaches the agent through IMDS instead, and it exits without a status.
        "CapacityRebalance": False,
        "Tags": [{"Key": key, "Value": value, "PropagateAtLaunch": True, "ResourceId": state.name,
                  "ResourceType": "auto-scaling-group"} for key, value in tags.items()],
    }  # fmt: skip


def create_group(
    clients: Clients, spec: TaskSpec, state: AwsState, tags: dict[str, str], propagation: float, poll: float
) -> None:
    autoscaling = clients("autoscaling", state.region)
    request = group_request(spec, state, tags)
    give_up = time.monotonic() + propagation
    while True:
        try:
            autoscaling.create_auto_scaling_group(**request)
            break
        except Exception as error:  # a fresh instance profile is "invalid" until IAM propagates
            if code(error) == "AlreadyExists":
                state.group = state.name  # a retried call that had worked: rollback must find it
                raise
            if "profile" not in describe(error).lower() or time.monotonic() > give_up:
                raise
            time.sleep(poll)
    state.group = state.name
    # Rebalancing across zones would terminate running ranks; interruptions are handled by claims.
    autoscaling.suspend_processes(AutoScalingGroupName=state.name, ScalingProcesses=["AZRebalance"])
    # A stop that needs no client: the group scales itself to 0 after the deadline.
    autoscaling.put_scheduled_update_group_action(
        AutoScalingGroupName=state.name, ScheduledActionName=DEADLINE_ACTION,
        StartTime=datetime.fromtimestamp(state.deadline + GRACE, tz=timezone.utc),
        MinSize=0, MaxSize=0, DesiredCapacity=0,
    )  # fmt: skip


def set_capacity(clients: Clients, state: AwsState, count: int) -> None:
    clients("autoscaling", state.region).set_desired_capacity(
        AutoScalingGroupName=state.group, DesiredCapacity=count
    )


def describe_group(clients: Clients, state: AwsState) -> dict[str, Any] | None:
    if not state.group:
        return None
    found = clients("autoscaling", state.region).describe_auto_scaling_groups(
        AutoScalingGroupNames=[state.group]
    )["AutoScalingGroups"]
    return found[0] if found else None


def _addresses(clients: Clients, state: AwsState, instances: list[str]) -> dict[str, str]:
    addresses: dict[str, str] = {}
    with contextlib.suppress(Exception):
        reservations = clients("ec2", state.region).describe_instances(InstanceIds=instances)["Reservations"]
        for reservation in reservations:
            for item in reservation["Instances"]:
                addresses[item["InstanceId"]] = item.get("PublicIpAddress") or item.get(
                    "PrivateIpAddress", ""
                )
    return addresses


class EventCache:
    """Scaling activities, fetched again only when the group changed or the copy is old."""

    def __init__(self) -> None:
        self.signature: object = None
        self.fetched = 0.0
        self.events: list[dict[str, Any]] = []

    def get(
        self, clients: Clients, state: AwsState, owners: dict[str, tuple[int, int]], signature: object
    ) -> list[dict[str, Any]]:
        if signature != self.signature or time.monotonic() - self.fetched > EVENTS_MAX_AGE:
            self.events = events(clients, state, owners)
            self.signature, self.fetched = signature, time.monotonic()
        return self.events


def read(
    clients: Clients,
    state: AwsState,
    owners: dict[str, tuple[int, int]],
    cache: EventCache,
    with_addresses: bool = False,
) -> GroupState:
    """The group's machines, ranked by `owners` (instance id -> (rank, boot) from the claims).

    `describe_instances` is called only `with_addresses` (no face shows them; multi-node ranks
    publish theirs in the remote)."""
    group = describe_group(clients, state)
    if group is None:
        return GroupState(exists=False)
    exists = group.get("Status") != "Delete in progress" and not state.stopped
    instances = {item["InstanceId"]: item["LifecycleState"] for item in group.get("Instances", [])}
    addresses = _addresses(clients, state, list(instances)) if instances and with_addresses else {}
    machines = []
    for instance, lifecycle in sorted(instances.items()):
        rank, boot = owners.get(instance, (-1, -1))  # -1: booting, no rank claimed yet
        machines.append(Machine(rank=rank, boot=boot, alive=lifecycle in ALIVE_STATES and exists,
                                address=addresses.get(instance, "")))  # fmt: skip
    signature = (sorted(instances.items()), group.get("DesiredCapacity"), sorted(owners.items()))
    return GroupState(exists=exists, machines=machines, events=cache.get(clients, state, owners, signature))


def events(clients: Clients, state: AwsState, owners: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    found = []
    with contextlib.suppress(Exception):
        activities = clients("autoscaling", state.region).describe_scaling_activities(
            AutoScalingGroupName=state.group, MaxRecords=100)["Activities"]  # fmt: skip
        for activity in activities:
            detail = activity.get("Description", "")
            if activity.get("StatusCode") not in (None, "Successful", "InProgress"):
                detail += f" ({activity.get('StatusCode')}: {activity.get('StatusMessage', '')})"
            rank = next((r for instance, (r, _) in owners.items() if instance in detail), None)
            found.append({"time": activity["StartTime"].timestamp(), "kind": "scaling", "rank": rank,
                          "detail": " ".join(detail.split())})  # fmt: skip
    return found


def scale_to_zero(clients: Clients, state: AwsState) -> None:
    """No machine may start again (MaxSize 0), whatever the desired capacity said."""
    clients("autoscaling", state.region).update_auto_scaling_group(
        AutoScalingGroupName=state.group, MinSize=0, MaxSize=0, DesiredCapacity=0
    )


def stop(clients: Clients, state: AwsState, wait: float, poll: float) -> None:
    """Scale to 0: instances shut down (agents still running push their data, without a status)."""
    group = describe_group(clients, state)
    if group is None:
        return
    if group.get("DesiredCapacity") or group.get("Instances"):
        clients("autoscaling", state.region).update_auto_scaling_group(
            AutoScalingGroupName=state.group, MinSize=0, DesiredCapacity=0
        )
    state.stopped = True
    limit = time.monotonic() + wait
    while time.monotonic() < limit:
        group = describe_group(clients, state)
        if group is None or not group.get("Instances"):
            return
        time.sleep(poll)


def preempt(clients: Clients, state: AwsState, owners: dict[str, tuple[int, int]], rank: int) -> None:
    """Terminate rank's instance outside the group, as EC2 reclaiming a spot instance does."""
    group = describe_group(clients, state) or {}
    live = {i["InstanceId"] for i in group.get("Instances", []) if i["LifecycleState"] in ALIVE_STATES}
    victims = [instance for instance, (r, _) in owners.items() if r == rank and instance in live]
    if not victims:
        raise RuntimeError(f"rank {rank} has no running instance to preempt")
    clients("ec2", state.region).terminate_instances(InstanceIds=victims)


def delete_group(clients: Clients, state: AwsState, wait: float, poll: float) -> None:
    if not state.group:
        return
    try:
        clients("autoscaling", state.region).delete_auto_scaling_group(
            AutoScalingGroupName=state.group, ForceDelete=True
        )
    except Exception as error:
        if not not_found(error) and "in progress" not in describe(error).lower():
            raise
    limit = time.monotonic() + wait
    while describe_group(clients, state) is not None:
        if time.monotonic() > limit:
            raise RuntimeError(f"group {state.group} is still being deleted")
        time.sleep(poll)


def delete_template(clients: Clients, state: AwsState) -> None:
    if state.launch_template:
        clients("ec2", state.region).delete_launch_template(LaunchTemplateId=state.launch_template)
