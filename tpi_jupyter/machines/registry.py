"""The machine registry: one JSON file per machine under `<home>/machines`, written atomically.

Machines (and the runners built on them) live apart from tasks, so `Task`'s registry and its
readers are untouched; the faces list both.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..state import home
from ..sync import atomic_write_bytes

_ID_SHAPE = re.compile(r"tpi-[a-z0-9-]+")


def machines_dir() -> Path:
    return home() / "machines"


def files_dir(machine_id: str) -> Path:
    """The machine's private files on this computer (its SSH key, a local machine's disk)."""
    return machines_dir() / _checked(machine_id)


def remove_files(machine_id: str) -> None:
    """The machine's key, known-hosts file and (local) disk; none is fine."""
    shutil.rmtree(files_dir(machine_id), ignore_errors=True)


def _checked(machine_id: str) -> str:
    if not _ID_SHAPE.fullmatch(machine_id):
        raise ValueError(f"not a machine id: {machine_id!r}")
    return machine_id


def _path(machine_id: str) -> Path:
    return machines_dir() / f"{_checked(machine_id)}.json"


def save(record: dict[str, Any]) -> None:
    machines_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(_path(record["id"]), json.dumps(record, indent=1, sort_keys=True).encode(), mode=0o600)


def load(machine_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(machine_id).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(machine_id: str) -> Iterator[None]:
    machines_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(machines_dir() / f".{_checked(machine_id)}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update(machine_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    with locked(machine_id):
        record = load(machine_id)
        if record is None:
            return None
        change(record)
        save(record)
        return record


def delete(machine_id: str) -> None:
    with locked(machine_id):
        _path(machine_id).unlink(missing_ok=True)
    (machines_dir() / f".{machine_id}.lock").unlink(missing_ok=True)


def records() -> list[dict[str, Any]]:
    """Every machine, oldest first; an unreadable file is skipped."""
    found = []
    for path in sorted(machines_dir().glob("tpi-*.json")) if machines_dir().is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if isinstance(record, dict) and record.get("id") == path.stem:
                found.append(record)
    return sorted(found, key=lambda record: float(record.get("created", 0)))
