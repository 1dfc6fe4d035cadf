"""What every AWS module shares: the task's state, one boto3 session per task, error helpers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...spec import SpecError, TaskSpec, short_id
from ..kit import tags as kit_tags
from ..kit.steps import describe

IAM_PATH = "/tpi/"  # our roles and instance profiles live here, so a sweep lists them cheaply
NOT_FOUND = (
    "NoSuchEntity", "NoSuchBucket", "NotFound", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound",
    "InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException",
    "InvalidLaunchTemplateId.Malformed",
)  # fmt: skip


@dataclass
class AwsState:
    """Everything the AWS backend made or looked up for one task; persisted by task.py."""

    deadline: float = 0.0
    region: str = ""
    account: str = ""
    partition: str = "aws"
    creator: str = ""  # the caller's ARN, tagged on every resource
    name: str = ""  # tpi-<short id>: group, template, key pair, security group, role
    image: str = ""
    instance_type: str = ""
    user: str = ""
    vpc: str = ""
    subnets: list[str] = field(default_factory=list)
    zone: str = ""  # multi-node tasks: the one availability zone of all their machines
    root_device: str = "/dev/sda1"
    bucket: str = ""
    prefix: str = ""
    bucket_created: bool = False
    user_bucket: bool = False  # the bucket is the user's `container`: only our prefix is ours
    key_file: str = ""
    key_name: str = ""
    ssh_public_key: str = ""
    security_group: str = ""
    ssh_from: str = ""
    role: str = ""
    profile: str = ""
    profile_arn: str = ""
    wheel_key: str = ""  # full S3 keys of the agent wheel and its lock
    lock_key: str = ""
    launch_template: str = ""
    placement_group: str = ""  # placement=cluster
    group: str = ""
    stopped: bool = False

    @property
    def own_bucket(self) -> bool:
        """The bucket is the task's (created for it), not the user's container."""
        return self.bucket_created and not self.user_bucket


def base_name(task_id: str) -> str:
    return f"tpi-{short_id(task_id)}"


def tags(spec: TaskSpec, creator: str) -> dict[str, str]:
    """The kit's tags (task, creator, the user's), and a Name the console shows."""
    found = kit_tags.task_tags(spec, creator)
    found.setdefault("Name", base_name(spec.id))
    return found


def tag_list(values: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in values.items()]


def tag_value(found: list[dict[str, Any]], key: str = kit_tags.TASK) -> str:
    for tag in found:
        if tag.get("Key") == key:
            return str(tag.get("Value", ""))
    return ""


def code(error: BaseException) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def not_found(error: BaseException) -> bool:
    found = code(error)
    if found in NOT_FOUND or found.endswith(".NotFound") or found.endswith("NotFoundException"):
        return True
    message = str(getattr(error, "response", {}).get("Error", {}).get("Message", "")).lower()
    return found == "ValidationError" and ("not found" in message or "does not exist" in message)


def retry_busy(action: Callable[[], object], busy: str, wait: float, poll: float) -> None:
    """`action` again while AWS answers `busy` (a resource still in use), until `wait` seconds."""
    limit = time.monotonic() + wait
    while True:
        try:
            action()
            return
        except Exception as error:
            if code(error) != busy or time.monotonic() > limit:
                raise
            time.sleep(poll)


class Clients:
    """One boto3 session for a task; clients made once per (service, region), under a lock
    (sessions are not thread-safe, clients are)."""

    def __init__(self) -> None:
        self._session: Any = None
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                try:
                    import boto3
                except ImportError:
                    raise SpecError(
                        "cloud: aws needs boto3; accepted: pip install 'tpi-jupyter[aws]'"
                    ) from None
                self._session = boto3.session.Session()
            return self._session

    def __call__(self, service: str, region: str) -> Any:
        session = self.session
        with self._lock:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = session.client(service, region_name=region)
            return self._clients[key]


__all__ = [
    "AwsState",
    "Clients",
    "base_name",
    "code",
    "describe",
    "not_found",
    "tag_list",
    "tag_value",
    "tags",
]
