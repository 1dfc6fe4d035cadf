"""Network settings every cloud reads the same way."""

from __future__ import annotations

import ipaddress
import os

from ...spec import SpecError


def ssh_cidr(variable: str) -> str:
    """The SSH source range asked for with `variable`, normalised; "" when unset (no SSH)."""
    raw = os.environ.get(variable, "").strip()
    if not raw:
        return ""
    try:
        return str(ipaddress.ip_network(raw, strict=True))
    except ValueError:
        raise SpecError(
            f"{variable}: {raw!r} is not an address range; accepted: a CIDR such as 203.0.113.7/32, "
            "or unset for no SSH"
        ) from None
