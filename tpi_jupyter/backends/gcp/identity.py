"""The task's service account: the machines' only identity.

What a machine can do with it, exactly:
- `roles/storage.objectAdmin` on the task's bucket, conditioned on the bucket itself (listing)
  and objects under the task's prefix (read, write, delete);
- `roles/pubsub.subscriber` on a map run's Pub/Sub subscription alone (pull, extend, ack), granted
  by the queue when it is made (`queue_binding`: Pub/Sub policies live on the subscription,
  which does not exist yet when the task's resources are created);
- `roles/compute.instanceAdmin.v1` on the project, conditioned on one resource: the task's
  own instance group manager. That lets a machine call `deleteInstances` on its group (the
  narrowest grant GCP has for it: groups have no IAM policy of their own); it also allows
  other calls on that one group (resize, delete), never on any other resource.

IAM and Resource Manager are called through google-auth's AuthorizedSession (the REST API);
`TPI_GCP_IAM_ENDPOINT`, `TPI_GCP_CRM_ENDPOINT` and
`TPI_GCP_STORAGE_IAM_ENDPOINT` move them (the tests' contract server).
"""

from __future__ import annotations

import os
import time
from typing import Any

from .common import Clients, GcpState

IAM = "https://iam.googleapis.com"
CRM = "https://cloudresourcemanager.googleapis.com"
STORAGE = "https://storage.googleapis.com"
BUCKET_ROLE = "roles/storage.objectAdmin"
RELEASE_ROLE = "roles/compute.instanceAdmin.v1"
QUEUE_ROLE = "roles/pubsub.subscriber"
ATTEMPTS = 5  # a project policy changed by someone else meanwhile (etag conflict)


def _base(variable: str, default: str) -> str:
    return os.environ.get(variable) or default


def _session(clients: Clients) -> Any:
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(clients.credentials()[0])  # type: ignore[no-untyped-call]


def _call(clients: Clients, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = _session(clients).request(method, url, json=body, timeout=60)
    if response.status_code == 404 and method == "DELETE":
        return {}
    response.raise_for_status()
    return dict(response.json() or {}) if response.content else {}


def account_body(state: GcpState, task_id: str) -> dict[str, Any]:
    """iam/v1 projects.serviceAccounts.create."""
    return {"accountId": state.name,
            "serviceAccount": {"displayName": state.name, "description": f"tpi-jupyter task {task_id}"}}  # fmt: skip


def create_account(clients: Clients, state: GcpState, task_id: str) -> None:
    url = f"{_base('TPI_GCP_IAM_ENDPOINT', IAM)}/v1/projects/{state.project}/serviceAccounts"
    found = _call(clients, "POST", url, account_body(state, task_id))
    state.service_account, state.service_account_created = str(found["email"]), True


def bucket_binding(state: GcpState) -> dict[str, Any]:
    objects = f"projects/_/buckets/{state.bucket}/objects/{state.prefix}/"
    return {
        "role": BUCKET_ROLE, "members": [f"serviceAccount:{state.service_account}"],
        "condition": {"title": state.name, "expression":
                      f'resource.name == "projects/_/buckets/{state.bucket}" || resource.name.startsWith("{objects}")'},
    }  # fmt: skip


def queue_binding(project: str, task_id: str) -> dict[str, Any]:
    """The task's service account (named as `create_account` names it) on its run's subscription."""
    from .common import base_name

    return {
        "role": QUEUE_ROLE,
        "members": [f"serviceAccount:{base_name(task_id)}@{project}.iam.gserviceaccount.com"],
    }


def release_binding(state: GcpState) -> dict[str, Any]:
    group = f"projects/{state.project}/zones/{state.zone}/instanceGroupManagers/{state.name}"
    return {
        "role": RELEASE_ROLE, "members": [f"serviceAccount:{state.service_account}"],
        "condition": {"title": state.name, "expression": f'resource.name == "{group}"'},
    }  # fmt: skip


def _edit_project_policy(clients: Clients, state: GcpState, add: dict[str, Any] | None) -> None:
    """Read-modify-write of the project policy; ours are the bindings whose condition title is ours."""
    base = f"{_base('TPI_GCP_CRM_ENDPOINT', CRM)}/v1/projects/{state.project}"
    for attempt in range(ATTEMPTS):
        policy = _call(clients, "POST", f"{base}:getIamPolicy", {"options": {"requestedPolicyVersion": 3}})
        bindings = [
            b for b in policy.get("bindings", []) if b.get("condition", {}).get("title") != state.name
        ]
        policy.update(bindings=bindings + ([add] if add else []), version=3)
        try:
            _call(clients, "POST", f"{base}:setIamPolicy", {"policy": policy})
            return
        except Exception as error:
            if getattr(getattr(error, "response", None), "status_code", 0) != 409 or attempt == ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)


def _edit_bucket_policy(clients: Clients, state: GcpState, add: dict[str, Any] | None) -> None:
    """storage/v1 buckets.getIamPolicy / setIamPolicy (the JSON API; `TPI_GCP_STORAGE_IAM_ENDPOINT`
    moves it, as fake-gcs-server has no IAM)."""
    url = f"{_base('TPI_GCP_STORAGE_IAM_ENDPOINT', STORAGE)}/storage/v1/b/{state.bucket}/iam"
    policy = _call(clients, "GET", f"{url}?optionsRequestedPolicyVersion=3")
    bindings = [b for b in policy.get("bindings", []) if b.get("condition", {}).get("title") != state.name]
    policy.update(bindings=bindings + ([add] if add else []), version=3)
    _call(clients, "PUT", url, policy)


def grant(clients: Clients, state: GcpState) -> None:
    _edit_bucket_policy(clients, state, bucket_binding(state))
    _edit_project_policy(clients, state, release_binding(state))


def delete_account(clients: Clients, state: GcpState) -> None:
    if not state.service_account_created:
        return
    _edit_project_policy(clients, state, None)
    if state.user_bucket:  # the user's bucket stays: only our binding goes
        _edit_bucket_policy(clients, state, None)
    url = f"{_base('TPI_GCP_IAM_ENDPOINT', IAM)}/v1/projects/{state.project}/serviceAccounts/{state.service_account}"
    _call(clients, "DELETE", url)
    state.service_account_created = False
