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


CHUNK = 1 << 20


def on_demand(stream: IO[bytes], types: set[str]) -> dict[str, float]:
    """Instance type -> hourly USD, from one regional offer file read once as a stream: two
    ijson pipelines (products, OnDemand terms) take the same chunks and build their objects in
    C; only the wanted products are kept (a big region lists hundreds of thousands)."""
    import ijson

    products, terms = ijson.sendable_list(), ijson.sendable_list()
    pipelines = [ijson.kvitems_coro(products, "products"), ijson.kvitems_coro(terms, "terms.OnDemand")]
    wanted: dict[str, str] = {}  # sku -> instance type
    prices: dict[str, float] = {}
    while chunk := stream.read(CHUNK):
        for pipeline in pipelines:
            pipeline.send(chunk)
        for sku, product in products:
            if _wanted(product.get("attributes", {}), types):
                wanted[sku] = product["attributes"]["instanceType"]
        for sku, offers in terms:  # products come first in the file, so `wanted` is complete
            if sku in wanted and (price := _hourly(offers)) is not None:
                prices[sku] = price
        del products[:], terms[:]
    for pipeline in pipelines:
        pipeline.close()
    return {kind: prices[sku] for sku, kind in wanted.items() if sku in prices}


def _hourly(offers: dict[str, Any]) -> float | None:
    """The USD price per hour of an OnDemand term (`priceDimensions`, unit `Hrs`)."""
    for offer in offers.values():
        for dimension in offer.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if dimension.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                return float(usd)
    return None


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
