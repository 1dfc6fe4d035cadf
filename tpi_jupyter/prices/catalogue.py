"""The price catalogue: machine types with vCPUs, memory, GPUs and hourly prices per region.

One JSON file per cloud ships in `prices/data/` (approximate list prices of the date it names);
`tpi prices refresh` writes the user's copy under the tpi-jupyter home, which wins when present.
AWS and Azure files hold a price per type and region; GCP bills per vCPU, GiB and GPU hour, so
its file holds those rates per region and prices a shape (predefined, custom, + GPUs) from them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

PRICED_CLOUDS = ("aws", "gcp", "az")
NO_CATALOGUE = {
    "k8s": "k8s: no price catalogue; the cluster's nodes are billed by whoever runs them",
    "local": "local: free (this machine)",
}
# GCP accelerator names (as in `+nvidia-tesla-t4*1`) by the catalogue's GPU kind.
GCP_ACCELERATORS = {
    "t4": "nvidia-tesla-t4", "v100": "nvidia-tesla-v100", "p100": "nvidia-tesla-p100",
    "l4": "nvidia-l4", "a100": "nvidia-tesla-a100",
}  # fmt: skip
_GCP_KIND = {name: kind for kind, name in GCP_ACCELERATORS.items()}
_GCP_SHAPE = re.compile(r"(?P<base>[a-z0-9-]+?)(\+(?P<accel>[a-z0-9-]+)\*(?P<count>\d+))?")
_GCP_CUSTOM = re.compile(r"(?P<family>[a-z0-9]+)-custom-(?P<cpu>\d+)-(?P<mb>\d+)")


class CatalogueError(ValueError):
    """A catalogue file that cannot be read or has the wrong shape (one line)."""


@dataclass(frozen=True)
class Gpu:
    kind: str  # t4, v100, a100, l4, a10g, ...
    count: int
    memory: float  # GB per GPU

    def __str__(self) -> str:
        return f"{self.count}x {self.kind.upper()} {self.memory:g}GB"


@dataclass(frozen=True)
class Offer:
    """One machine type in one region and what an hour of it costs (USD)."""

    cloud: str
    region: str
    machine: str  # the native type name
    cpu: float
    memory: float  # GiB
    gpu: Gpu | None
    on_demand: float
    spot: float | None  # None: no spot price known

    def price(self, spot: bool) -> float | None:
        return self.spot if spot else self.on_demand


@dataclass(frozen=True)
class Catalogue:
    cloud: str
    taken: str  # the month (or date) the prices reflect
    origin: str  # "shipped" or the user copy's path
    data: dict[str, Any]

    @property
    def label(self) -> str:
        where = "shipped" if self.origin == "shipped" else "refreshed"
        return f"{self.cloud} prices of {self.taken} ({where})"

    def regions(self) -> list[str]:
        return sorted(self.data["rates" if self.cloud == "gcp" else "prices"])

    def offer(self, region: str, machine: str) -> Offer | None:
        """The type in the region, or None when the catalogue does not price it there."""
        if self.cloud == "gcp":
            return _gcp_offer(self, _gcp_region(region), machine)
        price = self.data["prices"].get(region, {}).get(machine)
        shape = self.data["types"].get(machine)
        if price is None or shape is None:
            return None
        return Offer(self.cloud, region, machine, float(shape["cpu"]), float(shape["memory"]),
                     _gpu(shape.get("gpu")), float(price[0]), _spot(price))  # fmt: skip

    def offers(self, region: str | None = None) -> list[Offer]:
        """Every priced type (GCP: predefined shapes and shapes with attachable GPUs)."""
        found = []
        for where in [region] if region else self.regions():
            for machine in self.candidates():
                offer = self.offer(where, machine)
                if offer is not None:
                    found.append(offer)
        return found

    def candidates(self) -> list[str]:
        names = list(self.data["types"])
        if self.cloud == "gcp":  # N1 shapes take T4, V100 and P100 GPUs, 1 to 8 of them
            names += [f"{name}+{GCP_ACCELERATORS[kind]}*{count}" for name in names if name.startswith("n1-")
                      for kind in ("t4", "v100", "p100") for count in (1, 2, 4, 8)
                      if _n1_fits(self.data["types"][name], kind, count)]  # fmt: skip
        return names


def _gpu(data: dict[str, Any] | None) -> Gpu | None:
    return None if not data else Gpu(str(data["kind"]), int(data["count"]), float(data["memory"]))


def _spot(price: list[Any]) -> float | None:
    return float(price[1]) if len(price) > 1 and price[1] is not None else None


def _gcp_region(zone_or_region: str) -> str:
    """`us-east1-c` -> `us-east1` (GCP prices are per region; the task names a zone)."""
    return re.sub(r"-[a-z]$", "", zone_or_region)


def _n1_fits(shape: dict[str, Any], kind: str, count: int) -> bool:
    """N1 GPU limits: at most 24 vCPUs per T4/P100 and 12 per V100 (the documented ratios, rounded)."""
    per_gpu = 12 if kind == "v100" else 24
    return float(shape["cpu"]) <= per_gpu * count and float(shape["cpu"]) >= 1


def _gcp_offer(catalogue: Catalogue, region: str, machine: str) -> Offer | None:
    rates = catalogue.data["rates"].get(region)
    match = _GCP_SHAPE.fullmatch(machine)
    if rates is None or match is None:
        return None
    shape = _gcp_shape(catalogue.data["types"], match["base"])
    if shape is None or shape["family"] not in rates:
        return None
    gpu = _gpu(shape.get("gpu"))
    if match["accel"]:
        kind = _GCP_KIND.get(match["accel"])
        if kind is None or gpu is not None:
            return None
        gpu = Gpu(kind, int(match["count"]), float(catalogue.data["gpus"].get(kind, 0)))
    if gpu is not None and gpu.kind not in rates.get("gpu", {}):
        return None
    family = rates[shape["family"]]
    billed = float(shape.get("billed_cpu", shape["cpu"]))
    prices: list[float | None] = []
    for index in (0, 1):
        parts = [(billed, family["cpu"][index]), (float(shape["memory"]), family["memory"][index])]
        if gpu is not None:
            parts.append((gpu.count, rates["gpu"][gpu.kind][index]))
        known = all(rate is not None for _, rate in parts)  # a refresh may lack a spot rate
        prices.append(round(sum(amount * rate for amount, rate in parts), 6) if known else None)
    if prices[0] is None:
        return None
    return Offer(
        "gcp", region, machine, float(shape["cpu"]), float(shape["memory"]), gpu, prices[0], prices[1]
    )


def _gcp_shape(types: dict[str, Any], base: str) -> dict[str, Any] | None:
    if base in types:
        return dict(types[base])
    custom = _GCP_CUSTOM.fullmatch(base)
    if custom is None:
        return None
    family = custom["family"]
    family = family if family == "e2" else f"{family}-custom"  # E2 custom costs as predefined
    return {"cpu": int(custom["cpu"]), "memory": int(custom["mb"]) / 1024, "family": family}


# ---------------------------------------------------------------- loading


def user_path(cloud: str) -> Path:
    """Where `tpi prices refresh` keeps the user's copy."""
    from ..state import home

    return home() / "prices" / f"{cloud}.json"


def shipped(cloud: str) -> dict[str, Any]:
    text = resources.files("tpi_jupyter.prices").joinpath("data").joinpath(f"{cloud}.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def check(data: Any, cloud: str) -> dict[str, Any]:
    """The catalogue's shape, checked before it is used or written."""
    table = "rates" if cloud == "gcp" else "prices"
    if not isinstance(data, dict) or data.get("cloud") != cloud or not isinstance(data.get(table), dict):
        raise CatalogueError(f"{cloud}: not a price catalogue of {cloud} (no {table!r} table)")
    if not isinstance(data.get("types"), dict) or not data["types"] or not data[table]:
        raise CatalogueError(f"{cloud}: the catalogue has no machine types or no regions")
    return data


def load(cloud: str) -> Catalogue | None:
    """The user's refreshed copy if there is a valid one, else the shipped catalogue; None for
    clouds without one (k8s, local)."""
    if cloud not in PRICED_CLOUDS:
        return None
    path = user_path(cloud)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return _load(cloud, str(path), stamp)


@lru_cache(maxsize=16)
def _load(cloud: str, path: str, stamp: int) -> Catalogue:
    if stamp:
        try:
            data = check(json.loads(Path(path).read_text("utf-8")), cloud)
            return Catalogue(cloud, str(data.get("taken", "?")), path, data)
        except (OSError, ValueError):
            pass  # a broken user copy falls back to the shipped one
    data = shipped(cloud)
    return Catalogue(cloud, str(data["taken"]), "shipped", data)


def offer_for(cloud: str, region: str, machine: str) -> tuple[Offer | None, Catalogue | None]:
    catalogue = load(cloud)
    return (catalogue.offer(region, machine) if catalogue else None), catalogue
