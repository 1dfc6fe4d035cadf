"""What every Azure module shares: the task's state, names, tags, one-line errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...spec import TaskSpec, short_id
from ..kit import tags as kit_tags


@dataclass
class AzState:
    """Everything the Azure backend made or looked up for one task; persisted by task.py."""

    deadline: float = 0.0
    subscription: str = ""
    region: str = ""
    creator: str = ""  # the caller's object id (or name), tagged on every resource
    name: str = ""  # tpi-<short id>: group, identity, network, scale set
    size: str = ""
    image: str = ""  # publisher:offer:sku:version
    user: str = ""
    group: str = ""  # the resource group: deleting it deletes everything else
    group_asked: bool = False  # its creation was requested (it may exist even if the answer failed)
    account: str = ""
    container: str = ""
    prefix: str = ""
    user_container: bool = False  # the container is the user's: only our prefix is ours
    account_group: str = ""  # the resource group of the user's storage account
    identity_id: str = ""
    user_identities: list[str] = field(default_factory=list)  # `permission_set`: also attached, never deleted
    identity_client_id: str = ""
    identity_principal_id: str = ""
    subnet_id: str = ""
    ssh_from: str = ""  # TPI_AZ_SSH_CIDR: the one range allowed tcp/22; "" for no inbound rule
    ranks_prefix: str = ""  # multi-node tasks: the subnet whose machines reach each other (cluster.py)
    key_file: str = ""
    ssh_public_key: str = ""
    scale_set: str = ""
    release_role: str = ""  # the custom role definition's name (a uuid), in the subscription
    assignments: list[str] = field(default_factory=list)  # role assignment ids
    wheel_key: str = ""  # keys relative to the remote
    lock_key: str = ""
    stopped: bool = False


def base_name(task_id: str) -> str:
    return f"tpi-{short_id(task_id)}"


def account_name(task_id: str) -> str:
    """Storage account names: 3-24 lowercase letters and digits, unique in all of Azure."""
    return ("tpi" + re.sub(r"[^a-z0-9]", "", short_id(task_id).lower()))[:24]


def tags(spec: TaskSpec, creator: str) -> dict[str, str]:
    return kit_tags.task_tags(spec, creator)


def describe(error: BaseException) -> str:
    """An Azure SDK error as one line: its code and message."""
    inner = getattr(error, "error", None)
    if inner is not None and getattr(inner, "code", None):
        text = f"{inner.code}: {getattr(inner, 'message', '')}"
    else:
        text = f"{error.__class__.__name__}: {error}" if str(error) else error.__class__.__name__
    return " ".join(text.split())[:500]


def not_found(error: BaseException) -> bool:
    return getattr(error, "status_code", None) == 404
