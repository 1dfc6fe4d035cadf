"""The create requests a launch would send, with their bodies (for `--dry-run --json`).

The bodies come from the same functions `create` uses; what only Azure can say before then
(identity and subnet ids, the principal) is shown as a placeholder in capitals.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ...spec import TaskSpec
from . import cluster, identity, network, scaleset, storage
from .boot import bootstrap_versions, custom_data
from .common import AzState, tags
from .identity import user_identities

PROVIDERS = "/subscriptions/SUBSCRIPTION/resourceGroups/{group}/providers"
ENDPOINT = "https://management.azure.com"


def _plain(model: Any) -> Any:
    return model.serialize() if hasattr(model, "serialize") else model.as_dict()


def planned(spec: TaskSpec, state: AzState) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every create request, in order."""
    from azure.mgmt.resource.resources import models

    shown = replace(
        state, subscription="SUBSCRIPTION", region=spec.native_region, size=spec.native_machine,
        user=spec.native_image.split("@", 1)[0], image=spec.native_image.split("@", 1)[1],
        identity_id=f"{PROVIDERS.format(group=state.group)}/Microsoft.ManagedIdentity/userAssignedIdentities/{state.name}",
        identity_client_id="IDENTITY-CLIENT-ID", identity_principal_id="IDENTITY-PRINCIPAL-ID",
        subnet_id=f"{PROVIDERS.format(group=state.group)}/Microsoft.Network/virtualNetworks/{state.name}/subnets/machines",
        ssh_public_key="ssh-ed25519 FRESH-KEY", user_identities=user_identities(spec), ssh_from=network.ssh_cidr(),
        ranks_prefix=cluster.ranks_prefix(spec),
    )  # fmt: skip
    if not shown.account:
        storage.choose(spec, shown)
    if shown.user_container:
        shown.account_group = "ACCOUNT-GROUP"  # looked up at launch
    labels = tags(spec, "CALLER-OBJECT-ID")
    base = PROVIDERS.format(group=state.group)
    scale_set_id = f"{base}/Microsoft.Compute/virtualMachineScaleSets/{state.name}"
    found: list[tuple[str, str, Any]] = [
        ("PUT", f"/subscriptions/SUBSCRIPTION/resourceGroups/{state.group}", models.ResourceGroup(location=shown.region, tags=labels)),
        ("PUT", f"{base}/Microsoft.ManagedIdentity/userAssignedIdentities/{state.name}", identity.identity_body(shown, labels)),
        ("PUT", f"{base}/Microsoft.Network/networkSecurityGroups/{state.name}", network.security_group_body(shown, labels)),
        ("PUT", f"{base}/Microsoft.Network/virtualNetworks/{state.name}",
         network.network_body(shown, labels, f"{base}/Microsoft.Network/networkSecurityGroups/{state.name}")),
    ]  # fmt: skip
    if not spec.container:
        found += [
            ("PUT", f"{base}/Microsoft.Storage/storageAccounts/{shown.account}", storage.account_body(shown, labels)),
            ("PUT", f"{base}/Microsoft.Storage/storageAccounts/{shown.account}/blobServices/default/containers/{shown.container}",
             storage.container_body()),
        ]  # fmt: skip
    text = custom_data(spec.id, storage.url(shown), shown, bootstrap_versions(), spec.parallelism)
    queue = identity.queue_scope(storage.container_id(shown), state.name)
    found += [
        ("PUT", f"{storage.container_id(shown)}/providers/Microsoft.Authorization/roleAssignments/NEW-UUID",
         identity.assignment_body(shown, identity.BLOB_DATA_CONTRIBUTOR)),
        ("PUT", f"{queue}/providers/Microsoft.Authorization/roleAssignments/NEW-UUID",
         identity.assignment_body(shown, identity.QUEUE_DATA_CONTRIBUTOR)),
    ]  # fmt: skip
    if not spec.container:  # the caller's data roles; on their own container they have them
        found.append(("PUT", f"{storage.container_id(shown)}/providers/Microsoft.Authorization/roleAssignments/NEW-UUID",
                      identity.assignment_body(shown, identity.BLOB_DATA_CONTRIBUTOR, "CALLER-OBJECT-ID", None)))  # fmt: skip
        found.append(("PUT", f"{queue}/providers/Microsoft.Authorization/roleAssignments/NEW-UUID",
                      identity.assignment_body(shown, identity.QUEUE_DATA_CONTRIBUTOR, "CALLER-OBJECT-ID", None)))  # fmt: skip
    found += [
        ("PUT", f"{base}/Microsoft.Compute/virtualMachineScaleSets/{state.name}", scaleset.body(spec, shown, labels, text)),
        ("PUT", "/subscriptions/SUBSCRIPTION/providers/Microsoft.Authorization/roleDefinitions/NEW-UUID", identity.release_role_body(shown, scale_set_id)),
        ("PUT", f"{scale_set_id}/providers/Microsoft.Authorization/roleAssignments/NEW-UUID",
         identity.assignment_body(shown, "RELEASE-ROLE")),
    ]  # fmt: skip
    return [(method, path, _plain(body)) for method, path, body in found]


def as_json(spec: TaskSpec, state: AzState) -> list[dict[str, Any]]:
    """`--dry-run --json`: {method, url, body} of every create request, in order."""
    return [
        {"method": method, "url": f"{ENDPOINT}{path}", "body": body}
        for method, path, body in planned(spec, state)
    ]


def lines(spec: TaskSpec, state: AzState) -> list[str]:
    return [
        f"request: {method} {path} {json.dumps(body, sort_keys=True)}"
        for method, path, body in planned(spec, state)
    ]
