"""`tpi prices [QUERY]` and `%tpi prices QUERY`: matching machines across clouds and regions,
cheapest first, as `sky show-gpus` lists accelerators.

QUERY: a generic machine (m+t4: each cloud's type for it), a GPU kind (t4), a native type
(g4dn.xlarge), or constraints (cpu>=8,memory>=32,gpu=t4). None: every priced type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..spec import GENERIC_MACHINES, GENERIC_REGIONS, MACHINES, REGIONS
from .catalogue import NO_CATALOGUE, PRICED_CLOUDS, Catalogue, Offer, load
from .constraints import ConstraintError, cheapest, is_query, matching, parse
from .estimate import money

DEFAULT_ROWS = 30
HEADER = ("CLOUD", "REGION", "MACHINE", "VCPU", "MEMORY", "GPU", "ON-DEMAND", "SPOT")


@dataclass(frozen=True)
class Query:
    text: str = ""
    cloud: str = ""
    region: str = ""
    spot: bool = False  # sort by spot price (rows without one go)
    rows: int = DEFAULT_ROWS  # 0: all


def offers(query: Query) -> list[Offer]:
    """Every offer the query matches, cheapest first."""
    if query.cloud and query.cloud not in PRICED_CLOUDS:
        why = NO_CATALOGUE.get(query.cloud, f"{query.cloud!r} is not a cloud")
        raise ConstraintError(f"--cloud: {why}; accepted: {', '.join(PRICED_CLOUDS)}")
    clouds = [query.cloud] if query.cloud else list(PRICED_CLOUDS)
    found: list[Offer] = []
    for cloud in clouds:
        catalogue = load(cloud)
        if catalogue is not None:
            found += _of_cloud(catalogue, query)
    return cheapest(found, query.spot)


def _regions(catalogue: Catalogue, region: str) -> list[str]:
    regions = catalogue.regions()
    if not region:
        return regions
    if region in GENERIC_REGIONS:
        region = REGIONS[catalogue.cloud][region]
    if catalogue.cloud == "gcp":
        region = region[:-2] if region[-2:-1] == "-" else region  # a zone names its region
    return [region] if region in regions else []


def _of_cloud(catalogue: Catalogue, query: Query) -> list[Offer]:
    text, cloud = query.text.strip(), catalogue.cloud
    regions = _regions(catalogue, query.region)
    if text in GENERIC_MACHINES:
        machine = MACHINES[cloud][text]
        return [offer for region in regions if (offer := catalogue.offer(region, machine))]
    if not text or is_query(text) or re.fullmatch(r"[a-z][a-z0-9]*", text):  # a GPU kind: t4, a100
        conditions = parse(text if is_query(text) else f"gpu={text}" if text else "cpu>=0", key="QUERY")
        return [o for region in regions for o in matching(catalogue.offers(region), conditions)]
    return [offer for region in regions if (offer := catalogue.offer(region, text))]


def render(query: Query) -> str:
    found = offers(query)
    if not found:
        raise ConstraintError(
            f"QUERY: nothing in the catalogues matches {query.text!r}; accepted: a generic machine "
            f"({' '.join(GENERIC_MACHINES)}), a GPU kind (t4, a100), a native type (g4dn.xlarge), or "
            "constraints (cpu>=8,memory>=32,gpu=t4)"
        )
    shown = found if query.rows <= 0 else found[: query.rows]
    rows = [HEADER, *(_row(offer) for offer in shown)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    if len(shown) < len(found):
        lines.append(f"... and {len(found) - len(shown)} more (--all lists every one)")
    clouds = [query.cloud] if query.cloud else [*PRICED_CLOUDS, "k8s"]
    notes = [load(cloud).label if cloud in PRICED_CLOUDS else NO_CATALOGUE[cloud] for cloud in clouds]  # type: ignore[union-attr]
    lines.append("prices in USD per hour; " + "; ".join(notes) + " (tpi prices refresh updates them)")
    return "\n".join(lines)


def _row(offer: Offer) -> tuple[str, ...]:
    spot = money(offer.spot) if offer.spot is not None else "-"
    return (offer.cloud, offer.region, offer.machine, f"{offer.cpu:g}", f"{offer.memory:g} GiB",
            str(offer.gpu) if offer.gpu else "-", money(offer.on_demand), spot)  # fmt: skip
