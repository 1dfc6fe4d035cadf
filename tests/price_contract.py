"""A contract server for the public price sources (no emulator exists for any of them).

It answers the documented shapes, pages as the real services do, records every request and
rejects what the real service would not take:
- AWS price list files: `/offers/v1.0/aws/AmazonEC2/current/region_index.json` and the regional
  offer files it names (`products`, `terms.OnDemand`), with Windows, dedicated, reserved-capacity
  and pre-installed-software products and Reserved terms as distractors.
- EC2 Query API `DescribeSpotPriceHistory` (POST form, XML answer, `NextToken` paging); every
  parameter is checked against botocore's own EC2 service model.
- Azure Retail Prices API: `$filter` parsed (only documented fields, `eq` clauses joined by
  `and`/`or`), `Items`/`NextPageLink`/`Count` pages of PAGE items, Windows, Low Priority and
  DevTest items as distractors.
- Google Cloud Billing Catalog API: `/v1/services/6F81-5844-456A/skus` with an API key header,
  `pageSize`/`pageToken`/`currencyCode`, `nextPageToken`, prices as `units` + `nanos`, commitment
  and other-SKU distractors; every page is checked with google-cloud-billing's own
  `ListSkusResponse` type before it is sent.
What it serves comes from `truth`: {cloud: {region: {name: (on_demand, spot)}}} (GCP names are
families as "n1.cpu" / "n1.memory" and GPUs as "gpu.t4").
"""

from __future__ import annotations

import functools
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

import botocore.session
from google.cloud import billing_v1

Truth = dict[str, dict[str, dict[str, tuple[float, float | None]]]]
PAGE = 7  # small pages, so that every refresh pages several times
# The documented filter fields, and the query parameters the API takes.
AZURE_FIELDS = {"armRegionName", "location", "meterId", "meterName", "productId", "skuId", "productName",
                "skuName", "serviceName", "serviceId", "serviceFamily", "priceType", "armSkuName"}  # fmt: skip
AZURE_PARAMS = {"api-version", "$filter", "$skip", "meterRegion", "currencyCode"}
GCP_PARAMS = {"currencyCode", "pageSize", "pageToken", "startTime", "endTime"}
API_KEY = "contract-test-key"
GCP_FAMILY = {"n1": "N1 Predefined", "n1-custom": "Custom", "n2": "N2", "n2-custom": "N2 Custom", "e2": "E2",
              "g2": "G2", "a2": "A2"}  # fmt: skip
GCP_GPU = {"t4": "Nvidia Tesla T4", "v100": "Nvidia Tesla V100", "p100": "Nvidia Tesla P100", "l4": "Nvidia L4",
           "a100": "Nvidia Tesla A100"}  # fmt: skip


@dataclass
class PriceServer:
    truth: Truth
    fail_on: str = ""  # a path fragment: the request after the first such one answers HTTP 500
    requests: list[tuple[str, str, dict[str, str]]] = field(
        default_factory=list
    )  # method, path+query, headers
    _seen: int = 0

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else each answer waits 200 ms on a delayed ACK

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server.answer(self, "GET", b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.answer(self, "POST", body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    # ------------------------------------------------------------ dispatch

    def answer(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        self.requests.append((method, handler.path, dict(handler.headers)))
        parts = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        if self.fail_on and self.fail_on in handler.path:
            self._seen += 1
            if self._seen > 1:
                return self._send(handler, 500, b'{"error": "injected failure"}', "application/json")
        try:
            status, data, kind = self._route(method, parts.path, query, body, handler.headers)
        except ContractViolation as error:
            status, data, kind = 400, json.dumps({"error": str(error)}).encode(), "application/json"
        self._send(handler, status, data, kind)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, kind: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes,
               headers: Any) -> tuple[int, bytes, str]:  # fmt: skip
        if method == "POST" and path == "/":
            scope = re.search(r"Credential=[^/]+/\d+/([a-z0-9-]+)/ec2/", headers.get("Authorization", ""))
            if scope is None:
                raise ContractViolation("EC2 calls are signed (SigV4 for ec2 in a region)")
            return 200, self.spot_history(dict(urllib.parse.parse_qsl(body.decode())), scope[1]), "text/xml"
        if path == "/offers/v1.0/aws/AmazonEC2/current/region_index.json":
            return 200, json.dumps(self.region_index()).encode(), "application/json"
        if match := re.fullmatch(
            r"/offers/v1\.0/aws/AmazonEC2/20250601000000/([a-z0-9-]+)/index\.json", path
        ):
            return 200, json.dumps(self.offer_file(match[1])).encode(), "application/json"
        if path == "/api/retail/prices":
            return 200, json.dumps(self.azure_page(query)).encode(), "application/json"
        if path == "/v1/services/6F81-5844-456A/skus":
            if headers.get("X-Goog-Api-Key") != API_KEY:
                return 403, b'{"error": {"code": 403, "status": "PERMISSION_DENIED"}}', "application/json"
            return 200, json.dumps(self.gcp_page(query)).encode(), "application/json"
        return 404, b"{}", "application/json"

    # ------------------------------------------------------------ AWS price list files

    def region_index(self) -> dict[str, Any]:
        return {"formatVersion": "v1.0", "disclaimer": "contract", "publicationDate": "2025-06-01T00:00:00Z",
                "regions": {region: {"regionCode": region, "currentVersionUrl":
                                     f"/offers/v1.0/aws/AmazonEC2/20250601000000/{region}/index.json"}
                            for region in self.truth["aws"]}}  # fmt: skip

    def offer_file(self, region: str) -> dict[str, Any]:
        products: dict[str, Any] = {}
        terms: dict[str, Any] = {}
        for number, (kind, (price, _)) in enumerate(sorted(self.truth["aws"].get(region, {}).items())):
            variants = [("Linux", "Shared", "NA", "Used", price), ("Windows", "Shared", "NA", "Used", price * 2),
                        ("Linux", "Dedicated", "NA", "Used", price * 3), ("Linux", "Shared", "SQL Std", "Used", price * 4),
                        ("Linux", "Shared", "NA", "AllocatedCapacityReservation", price * 5)]  # fmt: skip
            variants.append(("Linux", "Shared", "NA", "Used", price * 6))  # a capacity block (below)
            for variant, (system, tenancy, software, capacity, amount) in enumerate(variants):
                sku = f"SKU{number:04d}V{variant}"
                market = "CapacityBlock" if variant == len(variants) - 1 else "OnDemand"
                products[sku] = {"sku": sku, "productFamily": "Compute Instance", "attributes": {
                    "instanceType": kind, "operatingSystem": system, "tenancy": tenancy, "preInstalledSw": software,
                    "capacitystatus": capacity, "regionCode": region, "licenseModel": "No License required",
                    "marketoption": market}}  # fmt: skip
                code = f"{sku}.JRTCKXETXF"
                terms[sku] = {code: {"offerTermCode": "JRTCKXETXF", "sku": sku, "priceDimensions": {
                    f"{code}.6YS6EN2CT7": {"unit": "Hrs", "pricePerUnit": {"USD": f"{amount:.10f}"},
                                           "description": f"${amount} per On Demand {system} {kind} Instance Hour"}}}}  # fmt: skip
        products["STORAGE1"] = {
            "sku": "STORAGE1",
            "productFamily": "Storage",
            "attributes": {"volumeType": "gp3"},
        }
        terms["STORAGE1"] = {"STORAGE1.JRTCKXETXF": {"priceDimensions": {"STORAGE1.JRTCKXETXF.6YS6EN2CT7": {
            "unit": "GB-Mo", "pricePerUnit": {"USD": "0.08"}}}}}  # fmt: skip
        reserved = {sku: {f"{sku}.4NA7Y494T4": {"priceDimensions": {f"{sku}.4NA7Y494T4.6YS6EN2CT7": {
            "unit": "Hrs", "pricePerUnit": {"USD": "0.0001"}}}}} for sku in products}  # fmt: skip
        return {"formatVersion": "v1.0", "offerCode": "AmazonEC2", "version": "20250601000000",
                "products": products, "terms": {"OnDemand": terms, "Reserved": reserved}}  # fmt: skip

    # ------------------------------------------------------------ EC2 DescribeSpotPriceHistory

    def spot_history(self, form: dict[str, str], region: str) -> bytes:
        check_ec2(form)
        types = [value for key, value in form.items() if key.startswith("InstanceType.")]
        items = [(kind, lowest + extra, zone) for kind, (_, lowest) in sorted(self.truth["aws"].get(region, {}).items())
                 if lowest is not None and (not types or kind in types)
                 for zone, extra in (("a", 0.01), ("b", 0.0))]  # fmt: skip
        start = int(form.get("NextToken", "0") or 0)
        page = items[start : start + PAGE]
        rows = "".join(
            f"<item><instanceType>{escape(kind)}</instanceType><productDescription>Linux/UNIX</productDescription>"
            f"<spotPrice>{spot:.6f}</spotPrice><timestamp>2025-06-01T00:00:00.000Z</timestamp>"
            f"<availabilityZone>zone-{zone}</availabilityZone></item>"
            for kind, spot, zone in page
        )
        token = f"<nextToken>{start + PAGE}</nextToken>" if start + PAGE < len(items) else "<nextToken/>"
        return (f'<?xml version="1.0" encoding="UTF-8"?><DescribeSpotPriceHistoryResponse '
                f'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>r-1</requestId>'
                f"<spotPriceHistorySet>{rows}</spotPriceHistorySet>{token}</DescribeSpotPriceHistoryResponse>").encode()  # fmt: skip

    # ------------------------------------------------------------ Azure Retail Prices

    def azure_items(self) -> list[dict[str, Any]]:
        items = []
        for region, found in sorted(self.truth["az"].items()):
            for size, (price, spot) in sorted(found.items()):
                name = size.removeprefix("Standard_").replace("_", " ")
                rows = [(name, "Virtual Machines " + name.split()[0] + " Series", price, "Consumption"),
                        (name, "Virtual Machines " + name.split()[0] + " Series Windows", price * 2, "Consumption"),
                        (name + " Low Priority", "Virtual Machines " + name.split()[0] + " Series", price / 10, "Consumption"),
                        (name, "Virtual Machines " + name.split()[0] + " Series", price / 3, "DevTestConsumption")]  # fmt: skip
                if spot is not None:
                    rows.append(
                        (
                            name + " Spot",
                            "Virtual Machines " + name.split()[0] + " Series",
                            spot,
                            "Consumption",
                        )
                    )
                items += [{"currencyCode": "USD", "tierMinimumUnits": 0.0, "retailPrice": amount, "unitPrice": amount,
                           "armRegionName": region, "location": region, "effectiveStartDate": "2025-06-01T00:00:00Z",
                           "meterName": sku, "productName": product, "skuName": sku, "serviceName": "Virtual Machines",
                           "serviceFamily": "Compute", "unitOfMeasure": "1 Hour", "type": kind,
                           "isPrimaryMeterRegion": True, "armSkuName": size}
                          for sku, product, amount, kind in rows]  # fmt: skip
        return items

    def azure_page(self, query: dict[str, str]) -> dict[str, Any]:
        unknown = set(query) - AZURE_PARAMS
        if unknown:
            raise ContractViolation(f"unknown query parameters {sorted(unknown)}")
        if query.get("meterRegion", "'primary'") != "'primary'":
            raise ContractViolation("meterRegion takes 'primary'")
        clauses = parse_filter(query.get("$filter", ""))
        items = [item for item in self.azure_items() if matches(item, clauses)]
        skip = int(query.get("$skip", "0"))
        page = items[skip : skip + PAGE]
        following = None
        if skip + PAGE < len(items):
            following = f"{self.url}/api/retail/prices?" + urllib.parse.urlencode(
                {**query, "$skip": str(skip + PAGE)}, quote_via=urllib.parse.quote)  # fmt: skip
        return {"BillingCurrency": "USD", "CustomerEntityId": "Default", "CustomerEntityType": "Retail",
                "Items": page, "NextPageLink": following, "Count": len(page)}  # fmt: skip

    # ------------------------------------------------------------ GCP Billing Catalog

    def gcp_skus(self) -> list[dict[str, Any]]:
        skus = []
        for region, found in sorted(self.truth["gcp"].items()):
            for name, (price, spot) in sorted(found.items()):
                group, part = name.split(".")
                if group == "gpu":
                    base = f"{GCP_GPU[part]} GPU running in {region}"
                else:
                    base = f"{GCP_FAMILY[group]} Instance {'Core' if part == 'cpu' else 'Ram'} running in {region}"
                unit = "GiBy.h" if part == "memory" else "h"
                skus.append(_sku(base, region, "OnDemand", price, unit))
                if spot is not None:
                    skus.append(_sku("Spot Preemptible " + base, region, "Preemptible", spot, unit))
                skus.append(_sku("Commitment v1: " + base.replace("running", "for 1 Year"), region, "Commit1Yr",
                                 price / 2, unit))  # fmt: skip
            skus.append(
                _sku(
                    f"N2 Custom Extended Instance Ram running in {region}", region, "OnDemand", 9.0, "GiBy.h"
                )
            )
            skus.append(_sku(f"Nvidia Tesla A100 80GB GPU running in {region}", region, "OnDemand", 9.0, "h"))
        return skus

    def gcp_page(self, query: dict[str, str]) -> dict[str, Any]:
        unknown = set(query) - GCP_PARAMS
        if unknown:
            raise ContractViolation(f"unknown query parameters {sorted(unknown)}")
        if not 0 < int(query.get("pageSize", "5000")) <= 5000:
            raise ContractViolation("pageSize out of range")
        skus = self.gcp_skus()
        start = int(query.get("pageToken") or 0)
        following = str(start + PAGE) if start + PAGE < len(skus) else ""
        page = {"skus": skus[start : start + PAGE], "nextPageToken": following}
        # What is served is what the API's own types accept (unknown fields refused).
        billing_v1.ListSkusResponse.from_json(json.dumps(page), ignore_unknown_fields=False)
        return page


class ContractViolation(ValueError):
    """A request the real service would refuse."""


def _sku(description: str, region: str, usage: str, price: float, unit: str) -> dict[str, Any]:
    units, nanos = int(price), round((price - int(price)) * 1e9)
    return {
        "name": f"services/6F81-5844-456A/skus/{abs(hash(description)) % 10**12:012d}",
        "skuId": f"{abs(hash(description)) % 10**12:012d}", "description": description,
        "category": {"serviceDisplayName": "Compute Engine", "resourceFamily": "Compute",
                     "resourceGroup": "CPU", "usageType": usage},
        "serviceRegions": [region],
        "pricingInfo": [{"effectiveTime": "2025-06-01T00:00:00Z", "pricingExpression": {
            "usageUnit": unit, "displayQuantity": 1, "baseUnit": "s", "tieredRates": [
                {"startUsageAmount": 0, "unitPrice": {"currencyCode": "USD", "units": str(units), "nanos": nanos}}]},
            "currencyConversionRate": 1}],
        "serviceProviderName": "Google",
    }  # fmt: skip


def check_ec2(form: dict[str, str]) -> None:
    """The form's parameters against botocore's EC2 model of DescribeSpotPriceHistory."""
    if form.get("Action") != "DescribeSpotPriceHistory":
        raise ContractViolation(f"unexpected Action {form.get('Action')!r}")
    version, names = _ec2_model()
    if form.get("Version") != version:
        raise ContractViolation(f"Version {form.get('Version')!r} is not {version}")
    for key in form:
        if key in ("Action", "Version"):
            continue
        if key.split(".")[0] not in names:
            raise ContractViolation(f"DescribeSpotPriceHistory has no parameter {key!r}")


@functools.cache
def _ec2_model() -> tuple[str, set[str]]:
    """The API version and the query names of DescribeSpotPriceHistory's parameters (botocore's model)."""
    model = botocore.session.get_session().get_service_model("ec2")
    members = model.operation_model("DescribeSpotPriceHistory").input_shape.members
    names = {shape.serialization.get("queryName") or _cap(shape.serialization.get("name", name))
             for name, shape in members.items()}  # fmt: skip
    return model.api_version, names


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


_TOKEN = re.compile(r"\s*(\(|\)|and\b|or\b|[A-Za-z]+ eq '[^']*')\s*")


def parse_filter(text: str) -> list[list[tuple[str, str]]]:
    """`a eq 'x' and (b eq 'y' or b eq 'z')`: AND-ed groups, each a clause or a parenthesised
    OR of clauses (the OData subset the Retail Prices API documents for these fields)."""
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ContractViolation(f"$filter: cannot parse {text[position:]!r}")
        tokens.append(match[1])
        position = match.end()
    groups: list[list[tuple[str, str]]] = []
    index = 0
    while index < len(tokens):
        if tokens[index] == "(":
            close = tokens.index(")", index)
            inner = tokens[index + 1 : close]
            if inner[1::2] != ["or"] * (len(inner) // 2):
                raise ContractViolation("$filter: a group must be clauses joined by or")
            groups.append([_clause(token) for token in inner[0::2]])
            index = close + 1
        else:
            groups.append([_clause(tokens[index])])
            index += 1
        if index < len(tokens):
            if tokens[index] != "and":
                raise ContractViolation(f"$filter: expected and, got {tokens[index]!r}")
            index += 1
    return groups


def _clause(token: str) -> tuple[str, str]:
    name, _, value = token.partition(" eq ")
    if name not in AZURE_FIELDS or not value.startswith("'"):
        raise ContractViolation(f"$filter: {token!r} is not a clause on a documented field")
    return name, value.strip("'")


def matches(item: dict[str, Any], groups: list[list[tuple[str, str]]]) -> bool:
    field = {"priceType": "type"}  # the filter's name for the items' `type`
    return all(
        any(str(item.get(field.get(name, name))) == value for name, value in group) for group in groups
    )


def truth_from(shipped: dict[str, dict[str, Any]], factor: float) -> Truth:
    """Served prices: the shipped catalogues' times `factor` (so a refresh is visible)."""
    truth: Truth = {}
    for cloud in ("aws", "az"):
        truth[cloud] = {region: {name: (round(p[0] * factor, 6), None if p[1] is None else round(p[1] * factor, 6))
                                 for name, p in found.items()} for region, found in shipped[cloud]["prices"].items()}  # fmt: skip
    truth["gcp"] = {}
    for region, rates in shipped["gcp"]["rates"].items():
        entries: dict[str, tuple[float, float | None]] = {}
        for family, parts in rates.items():
            for part, price in parts.items():
                entries[f"{family}.{part}"] = (round(price[0] * factor, 6), round(price[1] * factor, 6))
        truth["gcp"][region] = entries
    return truth


def iter_regions(truth: Truth, cloud: str) -> Iterator[str]:
    yield from sorted(truth[cloud])
