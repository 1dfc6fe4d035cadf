"""The spec's one call into prices: a constraint `machine` value becomes the cheapest native type."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .catalogue import Offer
from .constraints import ConstraintError, Pick, k8s_request, parse, pick
from .estimate import money

if TYPE_CHECKING:
    from ..spec import TaskSpec


def resolve(spec: TaskSpec) -> TaskSpec:
    """The spec with `machine` set to the pick and `machine_query` to the constraints; SpecError
    (one line) when they are malformed or nothing in the region meets them."""
    from dataclasses import replace

    from ..spec import SpecError

    query = spec.machine
    try:
        if spec.cloud == "local":  # local machines are processes here: checked, nothing to pick
            parse(query)
            machine = query
        elif spec.cloud == "k8s":
            machine = k8s_request(query)
        else:
            machine = pick(query, spec.cloud, spec.native_region, spec.spot >= 0).chosen.machine
    except ConstraintError as error:
        raise SpecError(str(error)) from None
    return replace(spec, machine=machine, machine_query=query)


def picked(spec: TaskSpec) -> Pick | None:
    """The pick and its runners-up, for the plan (None when no constraints chose the machine)."""
    if not spec.machine_query or spec.cloud in ("k8s", "local"):
        return None
    try:
        return pick(spec.machine_query, spec.cloud, spec.native_region, spec.spot >= 0)
    except ConstraintError:
        return None


def describe(offer: Offer) -> str:
    gpu = f", {offer.gpu}" if offer.gpu else ""
    return f"{offer.machine} ({offer.cpu:g} vCPU, {offer.memory:g} GiB{gpu})"


def pick_line(spec: TaskSpec) -> str | None:
    """`machine: cpu>=8,... picked X (...) at $0.75/h spot; runners-up: Y $0.9/h, ...` for the plan."""
    chosen = picked(spec)
    if chosen is None:
        return None
    pricing = "spot" if chosen.spot else "on-demand"
    rate = chosen.chosen.price(chosen.spot) or 0.0
    others = ", ".join(f"{o.machine} {money(o.price(chosen.spot) or 0.0)}/h" for o in chosen.runners_up)
    return (f"machine: {chosen.query} picked {describe(chosen.chosen)} at {money(rate)}/h {pricing} in "
            f"{chosen.chosen.region}; runners-up: {others or 'none'}")  # fmt: skip
