"""The Backend protocol: what a cloud driver does for `task.py`, and how drivers are found."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

from ..spec import SpecError

ENTRY_POINT_GROUP = "tpi_jupyter.backends"
BUILTIN = {"local": "tpi_jupyter.backends.local:LocalBackend"}


@dataclass
class Machine:
    rank: int
    boot: int
    alive: bool
    address: str = ""


@dataclass
class GroupState:
    """What the cloud says about a task's machines (the bucket's reports are read by task.py)."""

    exists: bool  # the group (or its local stand-in) is still there and may run machines
    machines: list[Machine] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # {"time", "kind", "rank", "detail"}


class Backend(Protocol):
    name: str

    def remote_url(self, record: dict[str, Any]) -> str:
        """Where the task's remote lives (bucket prefix, container or directory)."""

    def create(self, record: dict[str, Any]) -> None:
        """Create storage and a machine group of size 0. May add backend keys to `record`."""

    def start(self, record: dict[str, Any]) -> None:
        """Scale the group to `parallelism` once the remote holds everything."""

    def plan(self, record: dict[str, Any]) -> list[str]:
        """What create + start would make, one line per resource (for `--dry-run`)."""

    def read(self, record: dict[str, Any]) -> GroupState: ...

    def stop(self, record: dict[str, Any]) -> None:
        """Ask every machine to stop (they sync back and report); idempotent."""

    def delete(self, record: dict[str, Any]) -> None:
        """Remove every cloud resource of the task, storage included; idempotent."""

    def preempt(self, record: dict[str, Any], rank: int) -> None:
        """Interrupt one rank's machine as the cloud reclaiming a spot machine would."""


def available() -> dict[str, str]:
    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.value
    return found


def get_backend(cloud: str) -> Backend:
    targets = available()
    if cloud not in targets:
        raise SpecError(
            f"cloud: {cloud!r} has no backend installed in this version; accepted: {', '.join(sorted(targets))}"
        )
    module_name, _, attribute = targets[cloud].partition(":")
    module = __import__(module_name, fromlist=[attribute])
    backend: Backend = getattr(module, attribute)()
    return backend
