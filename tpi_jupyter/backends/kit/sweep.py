"""The sweep driver: what forgotten tasks left behind, whose it is, and deleting it.

A backend lists orphans (resources tagged with a task id); the driver keeps those whose task is
not in the registry and, unless `everyone`, only the caller's own, and deletes through the backend.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..base import Sweepable


@dataclass
class Orphan:
    task_id: str
    where: str  # a region, or "global"
    creator: str  # the creator tag ("" when the resource has none)
    resources: dict[str, str] = field(default_factory=dict)  # kind -> name, in the order found
    handle: dict[str, Any] = field(default_factory=dict)  # what the backend needs to delete them

    def text(self, verb: str) -> str:
        names = ", ".join(f"{kind} {name}" for kind, name in self.resources.items())
        return f"{verb} {self.task_id} ({self.where}): {names}; created by {self.creator or 'unknown'}"


def sweep(
    backend: Sweepable, live_ids: Collection[str], *, region: str | None, everyone: bool, delete: bool
) -> list[str]:
    """One line per orphaned task (deleted when asked), plus a line on others' orphans left alone."""
    caller = backend.caller()
    found = [orphan for orphan in backend.orphans(region) if orphan.task_id not in live_ids]
    mine = [orphan for orphan in found if everyone or orphan.creator == caller]
    lines = []
    for orphan in mine:
        if delete:
            backend.delete_orphan(orphan)
        lines.append(orphan.text("deleted" if delete else "orphan"))
    others = [orphan for orphan in found if orphan not in mine]
    if others:
        creators = ", ".join(sorted({orphan.creator or "unknown" for orphan in others}))
        count = len({orphan.task_id for orphan in others})
        lines.append(f"left alone: what {count} gone task(s) of {creators} left; --all includes them")
    return lines
