"""AWS: on-demand prices from the public price list files, spot prices from EC2.

On-demand: `{url}/offers/v1.0/aws/AmazonEC2/current/region_index.json` names each region's
offer file (`currentVersionUrl`); that file (GBs for big regions) is read as a stream with
ijson, keeping Linux, shared-tenancy, no-preinstalled-software, used-capacity products of the
catalogue's types and their OnDemand hourly USD price. Spot: `DescribeSpotPriceHistory` (an
authenticated call: without AWS credentials the previous spot prices are kept, and said so),
the lowest current price among the region's zones.
"""

from __future__ import annotations

import datetime
from typing import IO, Any

from . import stamped
from .http import RefreshError, endpoint, get_json, open_url, where

INDEX = "/offers/v1.0/aws/AmazonEC2/current/region_index.json"
WANTED = {"operatingSystem": "Linux", "tenancy": "Shared", "preInstalledSw": "NA", "capacitystatus": "Used"}


def offer_files(base_url: str, regions: list[str]) -> dict[str, str]:
    index = get_json(base_url + INDEX)
    found = index.get("regions", {}) if isinstance(index, dict) else {}
    return {region: base_url + found[region]["currentVersionUrl"] for region in regions if region in found}


def on_demand(stream: IO[bytes], types: set[str]) -> dict[str, float]:
    """Instance type -> hourly USD, from one regional offer file read as a stream. Only the
    products wanted are kept as they end (a big region lists hundreds of thousands)."""
    import ijson

    wanted: dict[str, str] = {}  # sku -> instance type
    current: dict[str, str] = {}
    prices: dict[str, float] = {}
    units: dict[str, str] = {}
    for prefix, event, value in ijson.parse(stream):
        parts = prefix.split(".")
        if parts[0] == "products":
            if event == "string" and len(parts) == 4 and parts[2] == "attributes":
                current[parts[3]] = value
            elif event == "end_map" and len(parts) == 2:  # one product read whole
                if _wanted(current, types):
                    wanted[parts[1]] = current["instanceType"]
                current = {}
        elif (
            event == "string" and len(parts) > 3 and parts[:2] == ["terms", "OnDemand"] and parts[2] in wanted
        ):
            sku = parts[2]  # rate codes hold dots, SKUs do not
            if prefix.endswith(".unit"):
                units[sku] = value
            elif prefix.endswith(".pricePerUnit.USD") and float(value) > 0:
                prices[sku] = float(value)
    return {kind: prices[sku] for sku, kind in wanted.items() if sku in prices and units.get(sku) == "Hrs"}


def _wanted(attributes: dict[str, str], types: set[str]) -> bool:
    """Linux on shared hardware, nothing pre-installed, on-demand capacity (not reserved, not a
    capacity block) of a type in the catalogue."""
    return (
        attributes.get("instanceType") in types
        and all(attributes.get(key) == value for key, value in WANTED.items())
        and attributes.get("marketoption", "OnDemand") == "OnDemand"
    )


def spot(session: Any, region: str, types: list[str]) -> dict[str, float]:
    """Instance type -> the lowest current Linux spot price among the region's zones."""
    import botocore.exceptions

    client = session.client(
        "ec2", region_name=region, endpoint_url=endpoint("TPI_PRICES_AWS_EC2_URL") or None
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    found: dict[str, float] = {}
    try:
        pages = client.get_paginator("describe_spot_price_history").paginate(
            InstanceTypes=types, ProductDescriptions=["Linux/UNIX"], StartTime=now
        )
        for page in pages:
            for item in page["SpotPriceHistory"]:
                price = float(item["SpotPrice"])
                found[item["InstanceType"]] = min(price, found.get(item["InstanceType"], price))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise RefreshError(f"aws: DescribeSpotPriceHistory in {region} failed ({error.__class__.__name__}); "
                           "the previous catalogue is kept") from None  # fmt: skip
    return found


def fetch(base: dict[str, Any]) -> dict[str, Any]:
    import boto3

    session = boto3.session.Session()  # a fresh one: credentials are looked up now, not cached
    signed = session.get_credentials() is not None
    base_url = endpoint("TPI_PRICES_AWS_URL").rstrip("/")
    regions, types = sorted(base["prices"]), sorted(base["types"])
    files = offer_files(base_url, regions)
    missing = [region for region in regions if region not in files]
    if missing:
        raise RefreshError(f"aws: the price list index names no offer file for {', '.join(missing)}; "
                           "the previous catalogue is kept")  # fmt: skip
    notes: list[str] = []
    prices: dict[str, dict[str, list[float | None]]] = {}
    for region in regions:
        with open_url(files[region]) as stream:
            try:
                found = on_demand(stream, set(types))
            except Exception as error:  # ijson's errors, a cut connection
                raise RefreshError(f"aws: {where(files[region])} could not be read ({error.__class__.__name__}); "
                                   "the previous catalogue is kept") from None  # fmt: skip
        if signed:
            spots: dict[str, float | None] = dict(spot(session, region, sorted(found)))
        else:
            old = base["prices"].get(region, {})
            spots = {kind: (old[kind][1] if kind in old and len(old[kind]) > 1 else None) for kind in found}
            note = (
                f"spot prices kept from {base.get('taken')} (DescribeSpotPriceHistory needs AWS credentials)"
            )
            notes += [] if note in notes else [note]
        prices[region] = {kind: [price, spots.get(kind)] for kind, price in sorted(found.items())}
    data = stamped(base, f"{base_url}{INDEX} and EC2 DescribeSpotPriceHistory", notes)
    data["prices"] = {region: found for region, found in prices.items() if found}
    return data
