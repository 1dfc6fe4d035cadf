"""Credentials, the subscription, and the management clients of one task.

Credentials come from `DefaultAzureCredential` (environment, workload identity, managed
identity, Azure CLI...); the subscription from `AZURE_SUBSCRIPTION_ID`, else the Azure CLI
profile's default. `TPI_AZURE_RESOURCE_MANAGER` moves Resource Manager (the tests' contract
server on 127.0.0.1); bearer tokens then go over plain HTTP, which the SDK otherwise refuses.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from ...spec import SpecError

SCOPE = "https://management.azure.com/.default"
ENDPOINT_VARIABLE = "TPI_AZURE_RESOURCE_MANAGER"
INSTALL = "pip install 'tpi-jupyter[az]'"


def credential() -> Any:
    """The caller's credential (tests replace this function with a `get_token` stand-in)."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise SpecError(f"cloud: az needs azure-identity; accepted: {INSTALL}") from None
    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


def subscription() -> str:
    found = os.environ.get("AZURE_SUBSCRIPTION_ID", "")
    if found:
        return found
    profile = Path(os.environ.get("AZURE_CONFIG_DIR", Path.home() / ".azure")) / "azureProfile.json"
    try:
        data = json.loads(profile.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        data = {}
    for item in data.get("subscriptions", []):
        if item.get("isDefault"):
            return str(item["id"])
    raise SpecError(
        "cloud: az has no subscription; accepted: AZURE_SUBSCRIPTION_ID, or `az login` "
        "(the Azure CLI profile's default subscription)"
    )


class _PlainBearer:
    """A bearer token on a loopback HTTP endpoint (the SDK's own policy insists on HTTPS)."""

    def __init__(self, cred: Any):
        self.cred = cred

    def on_request(self, request: Any) -> None:
        token = self.cred.get_token(SCOPE).token
        request.http_request.headers["Authorization"] = f"Bearer {token}"

    def on_response(self, request: Any, response: Any) -> None:
        return None

    def on_exception(self, request: Any) -> None:
        return None


def client_options(cred: Any) -> dict[str, Any]:
    endpoint = os.environ.get(ENDPOINT_VARIABLE, "")
    if not endpoint:
        return {}
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class Policy(_PlainBearer, SansIOHTTPPolicy[Any, Any]):  # type: ignore[misc]
        pass

    return {"base_url": endpoint, "authentication_policy": Policy(cred)}


FACTORIES = {
    "resource": ("azure.mgmt.resource.resources", "ResourceManagementClient"),
    "compute": ("azure.mgmt.compute", "ComputeManagementClient"),
    "network": ("azure.mgmt.network", "NetworkManagementClient"),
    "storage": ("azure.mgmt.storage", "StorageManagementClient"),
    "msi": ("azure.mgmt.msi", "ManagedServiceIdentityClient"),
    "authorization": ("azure.mgmt.authorization", "AuthorizationManagementClient"),
}


class Clients:
    """One credential and one client per service for a task, made once under a lock."""

    def __init__(self) -> None:
        self._credential: Any = None
        self._subscription = ""
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def credential(self) -> Any:
        with self._lock:
            if self._credential is None:
                self._credential = credential()
            return self._credential

    @property
    def subscription(self) -> str:
        if not self._subscription:
            self._subscription = subscription()
        return self._subscription

    def __call__(self, service: str) -> Any:
        import importlib

        cred, sub = self.credential, self.subscription
        with self._lock:
            if service not in self._clients:
                module, name = FACTORIES[service]
                try:
                    factory = getattr(importlib.import_module(module), name)
                except ImportError:
                    raise SpecError(f"cloud: az needs {module}; accepted: {INSTALL}") from None
                self._clients[service] = factory(cred, sub, **client_options(cred))
            return self._clients[service]
