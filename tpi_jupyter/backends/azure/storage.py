"""The task's Blob storage: a private account (no shared keys, no public blobs) and a container,
or a prefix of the user's `container` (`account/container[/prefix]`), reached with Entra ID."""

from __future__ import annotations

from typing import Any

from ...spec import TaskSpec
from .clients import Clients
from .common import AzState, account_name


def choose(spec: TaskSpec, state: AzState) -> None:
    if spec.container:
        parts = spec.container.split("/", 2)
        state.account, state.container, state.user_container = parts[0], parts[1], True
        state.prefix = "/".join(p for p in (parts[2] if len(parts) > 2 else "", spec.id) if p).strip("/")
    else:
        state.account, state.container, state.prefix = account_name(spec.id), "tpi", spec.id


def url(state: AzState) -> str:
    return f"abfs://{state.container}@{state.account}.dfs.core.windows.net/{state.prefix}"


def account_body(state: AzState, labels: dict[str, str]) -> Any:
    from azure.mgmt.storage import models

    return models.StorageAccountCreateParameters(
        sku=models.Sku(name="Standard_LRS"), kind="StorageV2", location=state.region, tags=labels,
        properties=models.StorageAccountPropertiesCreateParameters(
            allow_blob_public_access=False, allow_shared_key_access=False, minimum_tls_version="TLS1_2",
            enable_https_traffic_only=True,
        ),
    )  # fmt: skip


def container_body() -> Any:
    from azure.mgmt.storage import models

    return models.BlobContainer(container_properties=models.ContainerProperties(public_access="None"))


def locate(clients: Clients, state: AzState) -> None:
    """The resource group of the user's storage account, where the machines' data role goes."""
    from ...spec import SpecError

    for account in clients("storage").storage_accounts.list():
        if str(account.name) == state.account:
            state.account_group = str(account.id).split("/")[4]
            return
    raise SpecError(
        f"container: storage account {state.account!r} is not in subscription {state.subscription}; "
        "accepted: {storage account}/{container}[/prefix] of an account in this subscription"
    )


def container_id(state: AzState) -> str:
    return (
        f"/subscriptions/{state.subscription}/resourceGroups/{state.account_group or state.group}/providers/"
        f"Microsoft.Storage/storageAccounts/{state.account}/blobServices/default/containers/{state.container}"
    )


def create(clients: Clients, state: AzState, labels: dict[str, str]) -> None:
    storage = clients("storage")
    storage.storage_accounts.begin_create(state.group, state.account, account_body(state, labels)).result()
    storage.blob_containers.create(state.group, state.account, state.container, container_body())
