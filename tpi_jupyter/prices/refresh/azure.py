"""Azure Retail Prices API: `GET {url}?$filter=...`, pages followed by `NextPageLink`; primary
meters only (`meterRegion='primary'`), as the API documents for one price per meter and region.

Linux pay-as-you-go items (`type` Consumption, no `Windows` in productName, not Low Priority)
give on-demand prices; those whose skuName ends in ` Spot` give spot prices.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from . import stamped
from .http import RefreshError, endpoint, get_json, where

API_VERSION = "2023-01-01-preview"
MAX_PAGES = 1000  # a paging loop that never ends is a broken source


def query_filter(regions: list[str], sizes: list[str]) -> str:
    def any_of(field: str, values: list[str]) -> str:
        return "(" + " or ".join(f"{field} eq '{value}'" for value in values) + ")"

    return (f"serviceName eq 'Virtual Machines' and priceType eq 'Consumption' and "
            f"{any_of('armRegionName', regions)} and {any_of('armSkuName', sizes)}")  # fmt: skip


def items(regions: list[str], sizes: list[str]) -> list[dict[str, Any]]:
    base = endpoint("TPI_PRICES_AZURE_URL")
    url: str | None = (
        base
        + "?"
        + urllib.parse.urlencode(
            {"api-version": API_VERSION, "meterRegion": "'primary'", "$filter": query_filter(regions, sizes)},
            quote_via=urllib.parse.quote,
        )
    )
    found: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if not url:
            return found
        page = get_json(url)
        if not isinstance(page, dict) or not isinstance(page.get("Items"), list):
            raise RefreshError(f"{where(base)}: a page without Items; the previous catalogue is kept")
        found += page["Items"]
        url = page.get("NextPageLink")
    raise RefreshError(f"{where(base)}: more than {MAX_PAGES} pages; the previous catalogue is kept")


def fetch(base: dict[str, Any]) -> dict[str, Any]:
    regions, sizes = sorted(base["prices"]), sorted(base["types"])
    prices: dict[str, dict[str, list[float | None]]] = {}
    for item in items(regions, sizes):
        kind = _kind(item)
        region, size = str(item.get("armRegionName")), str(item.get("armSkuName"))
        if kind is None or region not in regions or size not in sizes:
            continue
        entry = prices.setdefault(region, {}).setdefault(size, [None, None])
        entry[kind] = float(item["retailPrice"])
    priced = {region: {size: [p[0], p[1]] for size, p in found.items() if p[0] is not None}
              for region, found in prices.items()}  # fmt: skip
    data = stamped(base, where(endpoint("TPI_PRICES_AZURE_URL")), [])
    data["prices"] = {region: found for region, found in priced.items() if found}
    return data


def _kind(item: dict[str, Any]) -> int | None:
    """0: on-demand Linux, 1: spot Linux, None: anything else (Windows, Low Priority, reservations)."""
    sku, product = str(item.get("skuName", "")), str(item.get("productName", ""))
    if item.get("type") != "Consumption" or item.get("unitOfMeasure") != "1 Hour":
        return None
    if "Windows" in product or "Low Priority" in sku or item.get("currencyCode", "USD") != "USD":
        return None
    return 1 if sku.endswith(" Spot") else 0
