"""Machine constraints: `machine=cpu>=8,memory>=32,gpu=t4` picks the cheapest matching type.

Syntax: comma-separated conditions, all of which must hold.
  cpu, memory (GiB), gpus (count), gpu_memory (GB per GPU)  with  >=  <=  >  <  =  and a number
  gpu=KIND  (t4, v100, a100, l4, ...; gpu=none: no GPU)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .catalogue import GCP_ACCELERATORS, Offer, load

NUMERIC = ("cpu", "memory", "gpus", "gpu_memory")
KEYS = (*NUMERIC, "gpu")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "=": operator.eq,
}  # fmt: skip
ACCEPTED = ("comma-separated conditions such as cpu>=8,memory>=32,gpu=t4: cpu, memory (GiB), gpus, "
            "gpu_memory (GB) with >=, <=, >, <, = and a number; gpu=KIND (t4, v100, a100, l4, a10g, h100) "
            "or gpu=none")  # fmt: skip
_CONDITION = re.compile(r"\s*([a-z_]+)\s*(>=|<=|=|>|<)\s*([A-Za-z0-9.]+)\s*")
RUNNERS_UP = 3


class ConstraintError(ValueError):
    """A malformed or unsatisfiable constraint; one line naming the key and the accepted form."""


@dataclass(frozen=True)
class Condition:
    key: str
    op: str
    value: float | str

    def holds(self, offer: Offer) -> bool:
        if self.key == "gpu":
            kind = offer.gpu.kind if offer.gpu else "none"
            return kind == self.value
        actual = {
            "cpu": offer.cpu, "memory": offer.memory, "gpus": offer.gpu.count if offer.gpu else 0,
            "gpu_memory": offer.gpu.memory if offer.gpu else 0.0,
        }[self.key]  # fmt: skip
        return OPERATORS[self.op](actual, float(self.value))

    def __str__(self) -> str:
        value = self.value if isinstance(self.value, str) else f"{self.value:g}"
        return f"{self.key}{self.op}{value}"


def is_query(value: str) -> bool:
    """A machine value is a constraint when it compares (no native or generic name has =, < or >)."""
    return any(char in value for char in "=<>")


def parse(value: str, key: str = "machine") -> list[Condition]:
    conditions = []
    for part in value.split(","):
        match = _CONDITION.fullmatch(part)
        if match is None:
            raise ConstraintError(f"{key}: {part.strip()!r} is not a condition; accepted: {ACCEPTED}")
        name, op, text = match.groups()
        if name not in KEYS:
            raise ConstraintError(
                f"{key}: unknown constraint {name!r}; accepted: {', '.join(KEYS)} ({ACCEPTED})"
            )
        if name == "gpu":
            if op != "=" or not re.fullmatch(r"[a-z][a-z0-9]*", text.lower()):
                raise ConstraintError(
                    f"{key}: {part.strip()!r}: gpu takes = and a kind; accepted: {ACCEPTED}"
                )
            conditions.append(Condition(name, op, text.lower()))
            continue
        if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            raise ConstraintError(f"{key}: {part.strip()!r}: {name} takes a number; accepted: {ACCEPTED}")
        conditions.append(Condition(name, op, float(text)))
    return conditions


def matching(offers: Iterable[Offer], conditions: list[Condition]) -> list[Offer]:
    return [offer for offer in offers if all(condition.holds(offer) for condition in conditions)]


def cheapest(offers: Iterable[Offer], spot: bool) -> list[Offer]:
    """Offers with a price for this pricing, cheapest first (ties: fewer vCPUs, less memory, name)."""
    priced = [offer for offer in offers if offer.price(spot) is not None]
    return sorted(priced, key=lambda o: (o.price(spot), o.cpu, o.memory, o.cloud, o.region, o.machine))


@dataclass(frozen=True)
class Pick:
    query: str
    chosen: Offer
    runners_up: list[Offer]
    spot: bool


def pick(query: str, cloud: str, region: str, spot: bool) -> Pick:
    """The cheapest type in `region` meeting every condition, for on-demand or spot pricing."""
    conditions = parse(query)
    catalogue = load(cloud)
    if catalogue is None:
        raise ConstraintError(f"machine: constraints need a price catalogue, and cloud={cloud} has none; "
                              "accepted: a generic or native machine, or cloud=aws, gcp, az, k8s")  # fmt: skip
    if _region_key(cloud, region) not in catalogue.regions():
        raise ConstraintError(f"machine: the {cloud} catalogue has no prices for region {region}; "
                              f"accepted: a region among {', '.join(catalogue.regions())}, or a native machine")  # fmt: skip
    found = cheapest(matching(catalogue.offers(_region_key(cloud, region)), conditions), spot)
    if not found:
        pricing = "spot" if spot else "on-demand"
        raise ConstraintError(
            f"machine: no {cloud} type in {region} meets {query} with a {pricing} price in the catalogue; "
            f"accepted: constraints a type there meets (see tpi prices {query})"
        )
    return Pick(query, found[0], found[1 : 1 + RUNNERS_UP], spot)


def _region_key(cloud: str, region: str) -> str:
    return re.sub(r"-[a-z]$", "", region) if cloud == "gcp" else region


def k8s_request(query: str) -> str:
    """Kubernetes has no types: the constraints' lower bounds become the pod's request."""
    conditions = parse(query)
    lower = {c.key: float(c.value) for c in conditions if c.key in NUMERIC and c.op in (">=", "=", ">")}
    gpu = next((str(c.value) for c in conditions if c.key == "gpu"), "none")
    cpu = lower.get("cpu", 1.0)
    # the k8s native form counts memory in MB; without a bound, 2 GB per vCPU (a general-purpose ratio)
    memory = int(lower.get("memory", 2.0 * cpu) * 1000)
    text = f"{cpu:g}-{memory}"
    count = int(lower.get("gpus", 1 if gpu != "none" else 0))
    if count:
        if gpu == "none":
            raise ConstraintError(f"machine: {query}: gpus>0 needs gpu=KIND on k8s; accepted: {ACCEPTED}")
        text += f"+{GCP_ACCELERATORS.get(gpu, 'nvidia-' + gpu)}*{count}"
    return text
