"""Checks before anything exists, each a one-line `SpecError` naming the key: credentials and
subscription, the region, the size offered there, a vCPU quota above 0, the image's syntax."""

from __future__ import annotations

import base64
import json
from typing import Any

from ...spec import SpecError, TaskSpec
from . import storage
from .clients import SCOPE, Clients
from .common import AzState, describe
from .identity import check_user_identities
from .network import ssh_cidr

CREDENTIALS = "`az login`, AZURE_CLIENT_ID + AZURE_TENANT_ID with a federated token or certificate, or a managed identity"


def caller(clients: Clients) -> str:
    """The caller's object id (or name) from its token: the creator tag of its resources."""
    try:
        token = clients.credential.get_token(SCOPE).token
    except SpecError:
        raise
    except Exception as error:
        raise SpecError(
            f"cloud: az found no usable credentials ({error.__class__.__name__}); accepted: {CREDENTIALS}"
        ) from None
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return "unknown"
    return str(claims.get("oid") or claims.get("upn") or claims.get("appid") or "unknown")


def _normal(location: str) -> str:
    return location.replace(" ", "").lower()


def check_region(clients: Clients, region: str) -> None:
    provider = clients("resource").providers.get("Microsoft.Compute")
    offered: set[str] = set()
    for kind in provider.resource_types or []:
        if kind.resource_type == "virtualMachineScaleSets":
            offered = {_normal(location) for location in kind.locations or []}
    if region not in offered:
        raise SpecError(
            f"region: {region!r} offers no scale sets to this subscription; accepted: {', '.join(sorted(offered))}"
        )


def check_size(clients: Clients, region: str, size: str) -> Any:
    """The size's SKU record; refuses a size the region does not offer (or restricts)."""
    offered = {}
    for sku in clients("compute").resource_skus.list(filter=f"location eq '{region}'"):
        if sku.resource_type == "virtualMachines" and not any(
            r.type == "Location" for r in sku.restrictions or []
        ):
            offered[str(sku.name)] = sku
    if size not in offered:
        sample = ", ".join(sorted(offered)[:8])
        raise SpecError(
            f"machine: {size!r} is not offered in {region} to this subscription; accepted: {sample}"
        )
    return offered[size]


def check_quota(clients: Clients, region: str, size: str, family: str, spot: bool) -> None:
    wanted = "lowPriorityCores" if spot else family
    for usage in clients("compute").usage.list(region):
        if usage.name.value == wanted and int(usage.limit) <= 0:
            kind = "Spot vCPUs" if spot else f"vCPUs of {family}"
            raise SpecError(
                f"machine: {size} needs {kind}, and the quota in {region} is 0; accepted: a size with "
                "quota, another region, or a quota increase (Azure portal, Quotas)"
            )


def preflight(clients: Clients, spec: TaskSpec, state: AzState) -> None:
    state.ssh_from = ssh_cidr()  # a bad range is refused before anything is asked of Azure
    state.creator = caller(clients)
    state.subscription = clients.subscription
    state.region, state.size = spec.native_region, spec.native_machine
    state.user, state.image = spec.native_image.split("@", 1)
    try:
        check_region(clients, state.region)
        sku = check_size(clients, state.region, state.size)
        check_quota(clients, state.region, state.size, str(sku.family or ""), spec.spot >= 0)
        if spec.container:
            storage.choose(spec, state)
            storage.locate(clients, state)
        check_user_identities(clients, spec, state)
    except SpecError:
        raise
    except Exception as error:
        raise SpecError(
            f"cloud: az pre-flight checks failed ({describe(error)}); accepted: {CREDENTIALS}"
        ) from None
