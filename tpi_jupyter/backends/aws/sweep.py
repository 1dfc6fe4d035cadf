"""Finding what forgotten tasks left on AWS: resources tagged tpi-task, with their creator.

Regional resources are looked for in the given regions; IAM (under /tpi/) and S3 (tpi-*
buckets) are global. Every listing is paginated.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...spec import REGIONS
from ..kit.sweep import Orphan
from ..kit.tags import CREATOR, TASK
from .common import IAM_PATH, Clients, tag_value

RESOURCE_LABELS = {"group": "group", "launch_template": "launch template", "security_group": "security group",
                   "key_name": "key name", "placement_group": "placement group", "role": "role",
                   "profile": "profile", "bucket": "bucket", "queue": "queue"}  # fmt: skip


def regions(clients: Clients, region: str | None) -> list[str]:
    """ "all": every enabled region; default: the configured region and the generic default."""
    if region == "all":
        return sorted(
            item["RegionName"] for item in clients("ec2", "us-east-1").describe_regions()["Regions"]
        )
    if region:
        return [REGIONS["aws"].get(region, region)]
    configured = clients.session.region_name
    return sorted({REGIONS["aws"]["us-west"], *([configured] if configured else [])})


class Found:
    """Orphans by (task id, where), filled resource by resource."""

    def __init__(self) -> None:
        self.orphans: dict[tuple[str, str], Orphan] = {}

    def note(self, found_tags: list[dict[str, Any]], where: str, region: str, **handle: Any) -> None:
        task_id = tag_value(found_tags, TASK)
        if not task_id:
            return
        orphan = self.orphans.setdefault((task_id, where), Orphan(task_id, where, "", {}, {"region": region}))
        orphan.creator = orphan.creator or tag_value(found_tags, CREATOR)
        if "bucket" in handle:
            orphan.handle["region"] = region  # S3 calls go to the bucket's own region; IAM is global
        for key, value in handle.items():
            orphan.handle[key] = value
            if key in RESOURCE_LABELS:
                orphan.resources[RESOURCE_LABELS[key]] = str(value)


def _pages(client: Any, operation: str, key: str, **query: Any) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator(operation).paginate(**query):
        yield from page.get(key, [])


def _regional(clients: Clients, where: str, found: Found) -> None:
    autoscaling, ec2 = clients("autoscaling", where), clients("ec2", where)
    tag_filter = [{"Name": "tag-key", "Values": [TASK]}]
    for item in _pages(autoscaling, "describe_auto_scaling_groups", "AutoScalingGroups", Filters=tag_filter):
        found.note(item.get("Tags", []), where, where, group=item["AutoScalingGroupName"])
    for item in _pages(ec2, "describe_launch_templates", "LaunchTemplates", Filters=tag_filter):
        found.note(item.get("Tags", []), where, where, launch_template=item["LaunchTemplateId"])
    for item in _pages(ec2, "describe_security_groups", "SecurityGroups", Filters=tag_filter):
        found.note(item.get("Tags", []), where, where, security_group=item["GroupId"])
    for item in ec2.describe_key_pairs(Filters=tag_filter)["KeyPairs"]:  # not paginated by AWS
        found.note(item.get("Tags", []), where, where, key_name=item["KeyName"])
    for item in ec2.describe_placement_groups(Filters=tag_filter)["PlacementGroups"]:  # not paginated
        found.note(item.get("Tags", []), where, where, placement_group=item["GroupName"])
    _queues(clients("sqs", where), where, found)


def _queues(sqs: Any, where: str, found: Found) -> None:
    """Map runs' queues (`tpi-` names, tagged by the queue itself with the task only)."""
    for url in _pages(sqs, "list_queues", "QueueUrls", QueueNamePrefix="tpi-"):
        queue_tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        found.note([{"Key": key, "Value": value} for key, value in queue_tags.items()], where, where,
                   queue=str(url).rsplit("/", 1)[-1])  # fmt: skip


def _iam(clients: Clients, home: str, found: Found) -> None:
    iam = clients("iam", home)
    role_tags: dict[str, list[dict[str, Any]]] = {}
    for item in _pages(iam, "list_roles", "Roles", PathPrefix=IAM_PATH):
        name = item["RoleName"]
        role_tags[name] = list(_pages(iam, "list_role_tags", "Tags", RoleName=name))
        found.note(role_tags[name], "global", home, role=name)
    for item in _pages(iam, "list_instance_profiles", "InstanceProfiles", PathPrefix=IAM_PATH):
        name = item["InstanceProfileName"]
        profile_tags = item.get("Tags")
        if profile_tags is None:  # AWS lists profiles without tags; moto lacks list_instance_profile_tags
            try:
                profile_tags = list(
                    _pages(iam, "list_instance_profile_tags", "Tags", InstanceProfileName=name)
                )
            except Exception:
                profile_tags = []
        found.note(profile_tags or role_tags.get(name, []), "global", home, profile=name)


def _buckets(clients: Clients, home: str, found: Found) -> None:
    s3 = clients("s3", home)
    for item in s3.list_buckets().get("Buckets", []):
        if not item["Name"].startswith("tpi-"):
            continue
        try:
            bucket_tags = s3.get_bucket_tagging(Bucket=item["Name"])["TagSet"]
            where = s3.get_bucket_location(Bucket=item["Name"]).get("LocationConstraint") or "us-east-1"
        except Exception:
            continue
        found.note(bucket_tags, "global", where, bucket=item["Name"], bucket_created=True)


def orphans(clients: Clients, region: str | None) -> list[Orphan]:
    """Every task-tagged resource in the regions asked for, grouped by task and place."""
    places = regions(clients, region)
    found = Found()
    for where in places:
        _regional(clients, where, found)
    _iam(clients, places[0], found)
    _buckets(clients, places[0], found)
    return [orphan for _, orphan in sorted(found.orphans.items())]
