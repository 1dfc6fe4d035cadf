"""The machines' identity: a user-assigned managed identity with Storage Blob Data Contributor on
this task's container only, Storage Queue Data Contributor on its map-run queue only (the least
built-in role that may update a message: Message Processor cannot extend a visibility), and a custom role on this task's scale set only that reads and
deletes its instances (nothing else: no scaling, no reimaging); and a fresh ed25519 SSH key
(Azure requires one for Linux machines), private half 0600.

A custom role definition lives in the subscription, not the resource group: `delete` removes
its assignment and the definition itself after the group."""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...spec import SpecError, TaskSpec
from ...state import tasks_dir
from .clients import Clients
from .common import AzState

BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
RELEASE_ACTIONS = [
    "Microsoft.Compute/virtualMachineScaleSets/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/delete",
]


def identity_body(state: AzState, labels: dict[str, str]) -> Any:
    from azure.mgmt.msi import models

    return models.Identity(location=state.region, tags=labels)


def user_identities(spec: TaskSpec) -> list[str]:
    return [found for found in spec.permission_set.split(",") if found]


def check_user_identities(clients: Clients, spec: TaskSpec, state: AzState) -> None:
    """`permission_set`: the user's identities, attached to the scale set beside the task's own
    (which alone holds the task's data and release roles); each must exist in this subscription."""
    accepted = "user-assigned identity resource ids in this subscription"
    for found in user_identities(spec):
        parts = found.split("/")
        if len(parts) != 9 or parts[2] != state.subscription or parts[3].lower() != "resourcegroups":
            raise SpecError(f"permission_set: {found!r} is not an identity in subscription {state.subscription}; "
                            f"accepted: {accepted}")  # fmt: skip
        try:
            clients("msi").user_assigned_identities.get(parts[4], parts[8])
        except Exception as error:
            if getattr(error, "status_code", None) != 404:
                raise
            raise SpecError(
                f"permission_set: identity {found!r} does not exist; accepted: {accepted}"
            ) from None
    state.user_identities = user_identities(spec)


def create_identity(clients: Clients, state: AzState, labels: dict[str, str]) -> None:
    made = clients("msi").user_assigned_identities.create_or_update(
        state.group, state.name, identity_body(state, labels)
    )
    state.identity_id, state.identity_client_id = str(made.id), str(made.client_id)
    state.identity_principal_id = str(made.principal_id)


def role_id(state: AzState, role: str) -> str:
    return f"/subscriptions/{state.subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}"


def group_id(state: AzState) -> str:
    return f"/subscriptions/{state.subscription}/resourceGroups/{state.group}"


def release_role_body(state: AzState, scale_set_id: str) -> Any:
    """Assignable in the task's group (custom roles take no resource scope); assigned on the set only."""
    from azure.mgmt.authorization.v2022_04_01 import models

    return models.RoleDefinition(
        role_name=f"tpi-release-{state.name}", role_type="CustomRole",
        description=f"tpi-jupyter task machines: delete instances of {scale_set_id} only",
        permissions=[models.Permission(actions=RELEASE_ACTIONS)], assignable_scopes=[group_id(state)],
    )  # fmt: skip


def queue_scope(container_scope: str, name: str) -> str:
    """The task's map-run queue (`tpi-<short id>`, the task's base name) in its container's account;
    granted before a map run makes it."""
    return f"{container_scope.split('/blobServices/', 1)[0]}/queueServices/default/queues/{name}"


def release_role_name(scale_set_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scale_set_id}|release"))


def _assignment_name(scope: str, role: str, principal: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope}|{role}|{principal}"))


def recover(clients: Clients, state: AzState, container_scope: str, scale_set_id: str) -> None:
    """For a sweep: the role objects a forgotten task made, from the names they are derived from."""
    state.release_role = release_role_name(scale_set_id)
    try:
        found = clients("msi").user_assigned_identities.get(state.group, state.name)
    except Exception as error:
        if getattr(error, "status_code", None) == 404:
            return
        raise
    state.identity_principal_id = str(found.principal_id)
    queue = queue_scope(container_scope, state.name)
    wanted = [(container_scope, BLOB_DATA_CONTRIBUTOR, state.identity_principal_id),
              (queue, QUEUE_DATA_CONTRIBUTOR, state.identity_principal_id),
              (scale_set_id, state.release_role, state.identity_principal_id)]  # fmt: skip
    if state.creator and state.creator != "unknown":
        wanted += [
            (container_scope, BLOB_DATA_CONTRIBUTOR, state.creator),
            (queue, QUEUE_DATA_CONTRIBUTOR, state.creator),
        ]
    derived = [
        f"{scope}/providers/Microsoft.Authorization/roleAssignments/{_assignment_name(scope, role, principal)}"
        for scope, role, principal in wanted
    ]
    # The identity's roles elsewhere (a user's container), which the group's names cannot say.
    listed = clients("authorization").role_assignments.list_for_subscription(
        filter=f"principalId eq '{state.identity_principal_id}'"
    )
    state.assignments = list(dict.fromkeys([*derived, *(str(found.id) for found in listed)]))


def complete(clients: Clients, state: AzState, container_scope: str, scale_set_id: str) -> None:
    """Before a destroy: add the role objects derived from the task's names to those recorded. A
    client killed between a role request and the registry's next save left them unrecorded, and
    once the group is gone a sweep can no longer derive them."""
    found = replace(state, assignments=[])
    recover(clients, found, container_scope, scale_set_id)
    state.release_role = state.release_role or found.release_role
    state.assignments = list(dict.fromkeys([*state.assignments, *found.assignments]))


def create_release_role(clients: Clients, state: AzState, scale_set_id: str) -> None:
    """The custom role, then its assignment to the identity on the scale set."""
    name = release_role_name(scale_set_id)
    state.release_role = name  # recorded before the request: delete removes it even if the answer fails
    clients("authorization").role_definitions.create_or_update(
        f"/subscriptions/{state.subscription}", name, release_role_body(state, scale_set_id)
    )
    assign(clients, state, scale_set_id, name)


def delete_release_role(clients: Clients, state: AzState) -> None:
    if state.release_role:
        try:
            clients("authorization").role_definitions.delete(
                f"/subscriptions/{state.subscription}", state.release_role
            )
        except Exception as error:
            if getattr(error, "status_code", None) != 404:
                raise


def assignment_body(
    state: AzState, role: str, principal: str = "", kind: str | None = "ServicePrincipal"
) -> Any:
    from azure.mgmt.authorization.v2022_04_01 import models

    return models.RoleAssignmentCreateParameters(
        role_definition_id=role_id(state, role),
        principal_id=principal or state.identity_principal_id, principal_type=kind,  # type: ignore[arg-type]
    )  # fmt: skip


def assign(clients: Clients, state: AzState, scope: str, role: str, principal: str = "") -> None:
    """`role` on `scope` for the task's identity (or another principal: the caller)."""
    principal = principal or state.identity_principal_id
    name = _assignment_name(scope, role, principal)
    kind = "ServicePrincipal" if principal == state.identity_principal_id else None
    clients("authorization").role_assignments.create(
        scope, name, assignment_body(state, role, principal, kind)
    )
    state.assignments = [
        *state.assignments,
        f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}",
    ]


def delete_assignments(clients: Clients, state: AzState) -> None:
    """Role assignments outlive the resources they are on: removed first, one by one."""
    for assignment in state.assignments:
        try:
            clients("authorization").role_assignments.delete_by_id(assignment)
        except Exception as error:
            if getattr(error, "status_code", None) != 404:
                raise


def create_key(task_id: str, state: AzState) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path = tasks_dir() / f"{task_id}.ssh-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(private)
    state.key_file, state.ssh_public_key = str(path), public.decode()


def remove_key(state: AzState) -> None:
    if state.key_file:
        with contextlib.suppress(OSError):
            Path(state.key_file).unlink(missing_ok=True)
