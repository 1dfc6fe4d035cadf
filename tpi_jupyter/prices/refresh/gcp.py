"""Google Cloud Billing Catalog API: the Compute Engine service's SKUs
(`GET {url}/v1/services/6F81-5844-456A/skus?currencyCode=USD`, pages by `nextPageToken`).

Per region, the per-vCPU and per-GiB hour rates of each machine family and the per-GPU hour
rates, from SKU descriptions such as "N1 Predefined Instance Core running in Americas" (usage
type OnDemand) and "Spot Preemptible Nvidia Tesla T4 GPU running in ..." (Preemptible). A price
is `units + nanos / 1e9` of the pricing expression's first tier. The API needs a key
(TPI_PRICES_GCP_API_KEY, sent as a header) or Application Default Credentials.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

from . import stamped
from .http import RefreshError, endpoint, get_json, where

SERVICE = "6F81-5844-456A"  # Compute Engine
MAX_PAGES = 1000
FAMILIES = {"N1 Predefined": "n1", "Custom": "n1-custom", "N2 Custom": "n2-custom", "N2": "n2", "E2": "e2",
            "G2": "g2", "A2": "a2"}  # fmt: skip
GPUS = {"T4": "t4", "V100": "v100", "P100": "p100", "L4": "l4", "A100": "a100"}
_MACHINE = re.compile(
    r"(?:(?:Spot )?Preemptible )?(N1 Predefined|N2 Custom|Custom|N2|E2|G2|A2) Instance (Core|Ram) running in .*"
)
_GPU = re.compile(r"(?:(?:Spot )?Preemptible )?Nvidia (?:Tesla )?(T4|V100|P100|L4|A100) GPU running in .*")
USAGE = {"OnDemand": 0, "Preemptible": 1}


def _headers() -> dict[str, str]:
    key = os.environ.get("TPI_PRICES_GCP_API_KEY")
    if key:
        return {"X-Goog-Api-Key": key}
    try:
        import google.auth
        import google.auth.transport.requests

        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-billing.readonly"]
        )
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except Exception:
        raise RefreshError("gcp: the Cloud Billing Catalog API needs TPI_PRICES_GCP_API_KEY or Application "
                           "Default Credentials (gcloud auth application-default login); the previous "
                           "catalogue is kept") from None  # fmt: skip
    return {"Authorization": f"Bearer {credentials.token}"}


def skus() -> list[dict[str, Any]]:
    base = endpoint("TPI_PRICES_GCP_URL").rstrip("/") + f"/v1/services/{SERVICE}/skus"
    headers, token, found = _headers(), "", []
    for _ in range(MAX_PAGES):
        query = {"currencyCode": "USD", "pageSize": "5000", **({"pageToken": token} if token else {})}
        page = get_json(base + "?" + urllib.parse.urlencode(query), headers)
        if not isinstance(page, dict):
            raise RefreshError(f"{where(base)}: a page that is not an object; the previous catalogue is kept")
        found += page.get("skus", [])
        token = page.get("nextPageToken", "")
        if not token:
            return found
    raise RefreshError(f"{where(base)}: more than {MAX_PAGES} pages; the previous catalogue is kept")


def unit_price(sku: dict[str, Any]) -> float | None:
    """The hourly price of the SKU's first tier, from its `units` and `nanos`."""
    try:
        rates = sku["pricingInfo"][0]["pricingExpression"]["tieredRates"]
        money = min(rates, key=lambda rate: float(rate.get("startUsageAmount", 0)))["unitPrice"]
        return int(money.get("units", 0) or 0) + int(money.get("nanos", 0) or 0) / 1e9
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _entry(sku: dict[str, Any]) -> tuple[str, str, int] | None:
    """(family or "gpu", cpu | memory | GPU kind, 0 on-demand / 1 spot) of a SKU we use."""
    index = USAGE.get(sku.get("category", {}).get("usageType", ""))
    description = str(sku.get("description", ""))
    if index is None:
        return None
    if machine := _MACHINE.fullmatch(description):
        return FAMILIES[machine[1]], "cpu" if machine[2] == "Core" else "memory", index
    if gpu := _GPU.fullmatch(description):
        return "gpu", GPUS[gpu[1]], index
    return None


def fetch(base: dict[str, Any]) -> dict[str, Any]:
    regions = sorted(base["rates"])
    rates: dict[str, dict[str, dict[str, list[float | None]]]] = {region: {} for region in regions}
    for sku in skus():
        entry, price = _entry(sku), unit_price(sku)
        if entry is None or price is None:
            continue
        group, part, index = entry
        for region in sku.get("serviceRegions", []):
            if region in rates:
                rates[region].setdefault(group, {}).setdefault(part, [None, None])[index] = price
    data = stamped(base, where(endpoint("TPI_PRICES_GCP_URL")), [])
    data["gpus"] = base.get("gpus", {})
    data["rates"] = {region: _complete(found) for region, found in rates.items() if _complete(found)}
    return data


def _complete(found: dict[str, dict[str, list[float | None]]]) -> dict[str, Any]:
    """Families with both a vCPU and a memory rate on demand, and GPUs with an on-demand rate."""
    out: dict[str, Any] = {family: {"cpu": parts["cpu"], "memory": parts["memory"]}
                           for family, parts in found.items() if family != "gpu"
                           and parts.get("cpu", [None])[0] is not None and parts.get("memory", [None])[0] is not None}  # fmt: skip
    gpus = {kind: price for kind, price in found.get("gpu", {}).items() if price[0] is not None}
    if out or gpus:
        out["gpu"] = gpus
    return out
