"""No paid loop: the client's half of the failed-boot rule of the shared boot script.

A machine whose boot fails writes `.tpi/machines/<machine-id>/failed` and its boot log (see
boot.py), then powers off, and its group would start another. Once the task has
`MAX_FAILED_BOOTS` failed boots per rank, the client gives up: every rank without a status gets
one, `failure` with the newest boot log as its reason (so the widget, the CLI and the REST API
show it), and the backend scales its group to 0. Machines apply the same limit on their own
(they release themselves instead of being respawned), so a sleeping client costs nothing either.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from ... import layout
from ...ranks import create_exclusive
from .boot import MACHINES

MAX_FAILED_BOOTS = 3  # per rank
LOG_LINES = 15  # of the newest failed boot's log, in the rank's reason


def limit(parallelism: int) -> int:
    return MAX_FAILED_BOOTS * max(1, parallelism)


@dataclass(frozen=True)
class FailedBoot:
    machine_id: str
    reason: str
    modified: float


def failed_boots(fs: Any, root: str) -> list[FailedBoot]:
    """The task's failed boots, oldest first (fs is an fsspec filesystem, root the remote)."""
    with contextlib.suppress(AttributeError):
        fs.invalidate_cache()
    try:
        listing = fs.find(layout.join(root, MACHINES), detail=True)
    except FileNotFoundError:
        return []
    found = []
    for path, info in listing.items():
        parts = str(path).rstrip("/").split("/")
        if parts[-1] != "failed":
            continue
        modified = info.get("LastModified") or info.get("mtime") or 0
        stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
        try:
            reason = bytes(fs.cat_file(path)).decode("utf-8", "replace")
        except FileNotFoundError:
            continue
        found.append(FailedBoot(parts[-2], reason, stamp))
    return sorted(found, key=lambda item: item.modified)


def boot_log_tail(fs: Any, root: str, machine_id: str) -> str:
    try:
        text = bytes(fs.cat_file(layout.join(root, MACHINES, machine_id, "boot-log"))).decode(
            "utf-8", "replace"
        )
    except FileNotFoundError:
        return "(no boot log reached the remote)"
    return "\n".join(text.rstrip("\n").splitlines()[-LOG_LINES:])


def give_up(fs: Any, root: str, parallelism: int) -> str | None:
    """When the limit is reached: fail every unreported rank and return the reason; else None."""
    failed = failed_boots(fs, root)
    if len(failed) < limit(parallelism):
        return None
    newest = failed[-1]
    reason = (
        f"{len(failed)} boots failed without starting the agent (limit {limit(parallelism)}); "
        f"boot log of {newest.machine_id} ({newest.reason}):\n{boot_log_tail(fs, root, newest.machine_id)}"
    )
    outcome = {"result": "failure", "code": None, "reason": reason, "finished": layout.timestamp()}
    for rank in range(parallelism):
        data = json.dumps({**outcome, "rank": rank}).encode()
        create_exclusive(fs, layout.join(root, layout.status(rank)), data)  # never over a real status
    return reason
