"""The local registry: one JSON file per task, written atomically; listing and lookup."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import platformdirs

from .spec import is_task_id, task_id
from .sync import atomic_write_bytes

log = logging.getLogger(__name__)
_ID_SHAPE = re.compile(r"tpi-[a-z0-9-]+")
_warned: set[tuple[str, str]] = set()


def home() -> Path:
    """Where tpi-jupyter keeps its files (`TPI_JUPYTER_HOME` overrides the user data dir)."""
    override = os.environ.get("TPI_JUPYTER_HOME")
    path = Path(override) if override else Path(platformdirs.user_data_dir("tpi-jupyter", appauthor=False))
    return path


def tasks_dir() -> Path:
    return home() / "tasks"


def _path(task_id: str) -> Path:
    if not _ID_SHAPE.fullmatch(task_id):
        raise ValueError(f"not a task id: {task_id!r}")
    return tasks_dir() / f"{task_id}.json"


def save(record: dict[str, Any]) -> None:
    # The registry holds no environment values: the spec keeps only variable names.
    assert not isinstance(record.get("spec", {}).get("environment"), dict), "environment values in registry"
    tasks_dir().mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(_path(record["id"]), json.dumps(record, indent=1, sort_keys=True).encode(), mode=0o600)


@contextlib.contextmanager
def _locked(task_id: str) -> Iterator[None]:
    tasks_dir().mkdir(parents=True, exist_ok=True)
    with open(tasks_dir() / f".{task_id}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update(task_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """Apply change to the stored record under a lock; a deleted task stays deleted (None)."""
    with _locked(task_id):
        record = load(task_id)
        if record is None:
            return None
        change(record)
        save(record)
        return record


def load(task_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(task_id).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def delete(task_id: str) -> None:
    with _locked(task_id):
        _path(task_id).unlink(missing_ok=True)
    (tasks_dir() / f".{task_id}.lock").unlink(missing_ok=True)


# What every face reads from a record; a file without them is skipped (with a warning).
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "cloud": str,
    "spec": dict,
    "created": (int, float),
    "deadline": (int, float),
}
REQUIRED_SPEC = ("cloud", "machine", "parallelism", "spot")


def _problem(path: Path, record: Any) -> str:
    """Why a registry file cannot be used, or "" when it can."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [key for key, kind in REQUIRED.items() if not isinstance(record.get(key), kind)]
    missing += (
        [f"spec.{key}" for key in REQUIRED_SPEC if key not in record.get("spec", {})] if not missing else []
    )
    if missing:
        return f"missing or invalid {', '.join(missing)}"
    if not _ID_SHAPE.fullmatch(record["id"]):
        return f"{record['id']!r} is not a task id"
    return "" if record["id"] == path.stem else f"its id {record['id']!r} is not its file name"


def records() -> list[dict[str, Any]]:
    """Every task, oldest first; an unreadable or incomplete file is skipped with a warning."""
    found = []
    for path in sorted(tasks_dir().glob("tpi-*.json")) if tasks_dir().is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # destroyed while listing
        except (OSError, ValueError) as error:
            record, problem = None, f"unreadable ({error})"
        else:
            problem = _problem(path, record)
        if problem:
            if (str(path), problem) not in _warned:  # once per process: panels list every few seconds
                _warned.add((str(path), problem))
                log.warning("tpi: skipping registry file %s: %s", path, problem)
            continue
        found.append(record)
    return sorted(found, key=lambda record: record["created"])


def known_ids() -> set[str]:
    """Every id with a registry file, readable or not: what a sweep must never treat as gone."""
    return {path.stem for path in tasks_dir().glob("tpi-*.json")} if tasks_dir().is_dir() else set()


def find(name_or_id: str) -> dict[str, Any] | None:
    """A task by id, by name, or by the id its name gives (newest first on a name clash)."""
    if not name_or_id:
        return None
    # Only an id ever names a file: a name such as ../x is never joined to a path.
    record = (load(name_or_id) if is_task_id(name_or_id) else None) or load(task_id(name_or_id))
    if record:
        return record
    matches = [r for r in records() if r.get("name") == name_or_id]
    return matches[-1] if matches else None
