"""What a task costs: its hourly price, the most it can cost by its deadline, cost so far, and a
warning for a spot bid below the catalogue's spot price. One line each, the same in every face."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .catalogue import NO_CATALOGUE, Catalogue, Offer, load

if TYPE_CHECKING:
    from ..spec import TaskSpec


@dataclass(frozen=True)
class Estimate:
    offer: Offer | None
    catalogue: Catalogue | None
    machines: int
    hours: float  # from creation to the deadline
    spot: float  # the spec's spot argument

    @property
    def rate(self) -> float | None:
        """Expected USD per machine-hour: the spot price for spot tasks, else on-demand."""
        return None if self.offer is None else self.offer.price(self.spot >= 0)

    @property
    def ceiling(self) -> float | None:
        """The most a machine-hour can be billed: the bid (below on-demand) or on-demand."""
        if self.offer is None:
            return None
        cap = self.offer.on_demand
        return min(self.spot, cap) if self.spot > 0 else cap

    @property
    def most(self) -> float | None:
        ceiling = self.ceiling
        return None if ceiling is None else ceiling * self.machines * self.hours


def estimate(spec: TaskSpec) -> Estimate:
    catalogue = load(spec.cloud)
    offer = catalogue.offer(spec.native_region, spec.native_machine) if catalogue else None
    return Estimate(offer, catalogue, spec.parallelism, spec.timeout / 3600, spec.spot)


def money(amount: float) -> str:
    """$1.23 from a dollar up; below, up to four decimals ($0.0104, $0.526, $0.10)."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    text = f"{amount:.4f}".rstrip("0")
    return "$" + (text + "0" if len(text.partition(".")[2]) < 2 else text)


def unpriced(spec: TaskSpec) -> str:
    """Why there is no price, in a few words."""
    if spec.cloud in NO_CATALOGUE:
        return NO_CATALOGUE[spec.cloud]
    return f"the {spec.cloud} catalogue has no price for {spec.native_machine} in {spec.native_region}"


def price_line(spec: TaskSpec) -> str:
    """`price: $0.526/h per machine (...), $1.05/h for 2; at most $25.25 by the deadline (24 h)`."""
    if spec.cloud == "local":
        return "price: $0 (local machines are processes here)"
    found = estimate(spec)
    if found.rate is None or found.offer is None or found.catalogue is None:
        pricing = "spot" if spec.spot >= 0 and found.offer is not None else "this pricing"
        reason = f"no {pricing} price for {spec.native_machine}" if found.offer else unpriced(spec)
        return f"price: n/a ({reason})"
    pricing = "spot" if spec.spot >= 0 else "on-demand"
    task = f", {money(found.rate * found.machines)}/h for {found.machines}" if found.machines > 1 else ""
    return (f"price: {money(found.rate)}/h per machine ({found.offer.machine} in {found.offer.region}, "
            f"{pricing}){task}; at most {money(found.most or 0)} by the deadline ({found.hours:g} h); "
            f"{found.catalogue.label}")  # fmt: skip


def spot_warning(spec: TaskSpec) -> str | None:
    """A bid (spot>0) below the catalogue's spot price: machines may never start."""
    if spec.spot <= 0:
        return None
    found = estimate(spec)
    if found.offer is None or found.offer.spot is None or found.catalogue is None:
        return None
    if spec.spot >= found.offer.spot:
        return None
    return (f"spot: a bid of {money(spec.spot)}/h is below the spot price of {found.offer.machine} in "
            f"{found.offer.region} ({money(found.offer.spot)}/h, {found.catalogue.label}): machines may not start")  # fmt: skip


def cost_text(spec: TaskSpec, machine_seconds: float) -> str:
    """Cost so far from machine-seconds run: `$0.42 so far · $1.05/h (3 x $0.35) · at most $25.25`."""
    found = estimate(spec)
    if found.rate is None:
        return f"n/a ({unpriced(spec)})" if found.offer is None else "n/a (no spot price)"
    so_far = found.rate * machine_seconds / 3600
    each = f" ({found.machines} x {money(found.rate)})" if found.machines > 1 else ""
    hourly = f"{money(found.rate * found.machines)}/h{each}"
    return f"{money(so_far)} so far · {hourly} · at most {money(found.most or 0)}"


def price_warnings(spec: TaskSpec) -> list[str]:
    warning = spot_warning(spec)
    return [warning] if warning else []


def plan_price_lines(spec: TaskSpec) -> list[str]:
    """The dry run's price lines: the pick (constraints), the price, a bid warning."""
    from .choose import pick_line

    lines = [f"- {line}" for line in (pick_line(spec), price_line(spec)) if line]
    return lines + [f"! {warning}" for warning in price_warnings(spec)]
