"""`tpi prices refresh [aws|gcp|az]`: the user's catalogue from the public price sources.

Each source prices the types and regions of the current catalogue (the user's copy, else the
shipped one); the new catalogue is checked, then written atomically, so a refresh that fails
midway leaves the previous catalogue as it was. Endpoints: see `http.ENDPOINTS`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from ..catalogue import PRICED_CLOUDS, CatalogueError, check, load, user_path
from .http import RefreshError

Fetch = Callable[[dict[str, Any]], dict[str, Any]]
MIN_SHARE = 0.5  # fewer new prices than this share of the old ones: the source answered wrongly


def _source(cloud: str) -> Fetch:
    if cloud == "aws":
        from .aws import fetch
    elif cloud == "gcp":
        from .gcp import fetch
    else:
        from .azure import fetch
    return fetch


def refresh(clouds: list[str], out: Callable[[str], None]) -> None:
    """Refresh each cloud (all three without names); a cloud that fails keeps its previous
    catalogue, the others go on, and the failures end as one RefreshError line."""
    for cloud in clouds:
        if cloud not in PRICED_CLOUDS:
            raise RefreshError(f"CLOUD: {cloud!r} has no price source; accepted: {', '.join(PRICED_CLOUDS)}")
    failures = []
    for cloud in clouds or list(PRICED_CLOUDS):
        try:
            out(refresh_one(cloud))
        except RefreshError as error:
            text = str(error)
            failures.append(text if text.startswith(f"{cloud}:") else f"{cloud}: {text}")
    if failures:
        raise RefreshError("; ".join(failures))


def refresh_one(cloud: str) -> str:
    catalogue = load(cloud)
    assert catalogue is not None
    try:
        data = check(_source(cloud)(catalogue.data), cloud)
    except CatalogueError as error:
        raise RefreshError(f"{error}; the previous catalogue is kept") from None
    old, new = count(catalogue.data), count(data)
    if new < MIN_SHARE * old:
        raise RefreshError(f"{cloud}: the source priced only {new} of {old} machine types and regions; "
                           "the previous catalogue is kept")  # fmt: skip
    write(cloud, data)
    notes = "".join(f"; {note}" for note in data.get("notes", []))
    return f"{cloud}: {new} prices ({data['taken']}) written to {user_path(cloud)}{notes}"


def count(data: dict[str, Any]) -> int:
    """Priced entries: (region, type) for AWS and Azure, (region, family or GPU) for GCP."""
    if data["cloud"] == "gcp":
        return sum(len(rates) - 1 + len(rates.get("gpu", {})) for rates in data["rates"].values())
    return sum(len(prices) for prices in data["prices"].values())


def write(cloud: str, data: dict[str, Any]) -> None:
    from ...sync_engines import atomic_write_bytes

    path = user_path(cloud)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o644)


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def stamped(base: dict[str, Any], source: str, notes: list[str]) -> dict[str, Any]:
    """The new catalogue's head: today's date, where it came from, what could not be refreshed."""
    return {"cloud": base["cloud"], "taken": today(), "source": source, "currency": "USD",
            "note": f"Fetched from {source} on {today()} by tpi prices refresh.", "notes": notes,
            "types": base["types"]}  # fmt: skip
