"""The machines' identity: a user-assigned managed identity with Storage Blob Data Contributor on
this task's container only, and a role on this task's scale set only (to delete its own
instance); and a fresh ed25519 SSH key (Azure requires one for Linux machines), private half 0600."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from ...state import tasks_dir
from .clients import Clients
from .common import AzState

BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
VM_CONTRIBUTOR = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"


def identity_body(state: AzState, labels: dict[str, str]) -> Any:
    from azure.mgmt.msi import models

    return models.Identity(location=state.region, tags=labels)


def create_identity(clients: Clients, state: AzState, labels: dict[str, str]) -> None:
    made = clients("msi").user_assigned_identities.create_or_update(
        state.group, state.name, identity_body(state, labels)
    )
    state.identity_id, state.identity_client_id = str(made.id), str(made.client_id)
    state.identity_principal_id = str(made.principal_id)


def assignment_body(state: AzState, role: str) -> Any:
    from azure.mgmt.authorization.v2022_04_01 import models

    return models.RoleAssignmentCreateParameters(
        role_definition_id=f"/subscriptions/{state.subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}",
        principal_id=state.identity_principal_id, principal_type="ServicePrincipal",
    )  # fmt: skip


def assign(clients: Clients, state: AzState, scope: str, role: str) -> None:
    name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{scope}|{role}|{state.identity_principal_id}"))
    clients("authorization").role_assignments.create(scope, name, assignment_body(state, role))


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
