"""Where a run's tasks come from: a JSON, JSONL or YAML file (local or any fsspec URL) of
`{"task_id", "data"}` entries as rms-cloud-tasks reads them, or a Python iterable.

Every problem is one line naming the entry and what is accepted (`TasksError`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..spec import SpecError

ACCEPTED = 'a list of {"task_id": ..., "data": ...} entries in a .json, .jsonl, .yaml or .yml file'


class TasksError(SpecError):
    """A tasks source that cannot be used, in one line."""


def load_file(url: str) -> list[tuple[str, Any]]:
    """(task_id, data) pairs from a tasks file at a local path or fsspec URL."""
    import fsspec

    try:
        with fsspec.open(url, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, ValueError, ImportError) as error:
        raise TasksError(f"tasks: cannot read {url}: {error}; accepted: {ACCEPTED}") from None
    return from_entries(_parse(url, text), url)


def _parse(url: str, text: str) -> Any:
    lower = url.lower()
    try:
        if lower.endswith((".yaml", ".yml")):
            import yaml

            return yaml.safe_load(text)
        if lower.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except ValueError as error:  # json and yaml errors both say where
        first = str(error).splitlines()[0]
        raise TasksError(f"tasks: {url} is malformed ({first}); accepted: {ACCEPTED}") from None


def from_entries(entries: Any, where: str) -> list[tuple[str, Any]]:
    """Validate `{"task_id", "data"}` entries: ids are non-empty strings (or ints), unique."""
    if not isinstance(entries, list):
        raise TasksError(f"tasks: {where} holds a {type(entries).__name__}; accepted: {ACCEPTED}")
    pairs = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "task_id" not in entry:
            raise TasksError(f"tasks: entry {index} of {where} has no task_id; accepted: {ACCEPTED}")
        pairs.append((_task_id(entry["task_id"], index, where), entry.get("data")))
    return unique(pairs, where)


def _task_id(value: Any, index: int, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) == "":
        raise TasksError(
            f"tasks: entry {index} of {where} has task_id {value!r}; accepted: a non-empty string or integer"
        )
    return str(value)


def from_iterable(items: Iterable[Any]) -> list[tuple[str, Any]]:
    """Items that are `{"task_id", "data"}` dicts keep their ids; any other item is the data of
    a task whose id is its position ("0", "1", ...)."""
    pairs = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and "task_id" in item and set(item) <= {"task_id", "data"}:
            pairs.append((_task_id(item["task_id"], index, "the iterable"), item.get("data")))
        else:
            pairs.append((str(index), item))
    return unique(pairs, "the iterable")


def unique(pairs: list[tuple[str, Any]], where: str) -> list[tuple[str, Any]]:
    seen: set[str] = set()
    for task_id, data in pairs:
        if task_id in seen:
            raise TasksError(f"tasks: task_id {task_id!r} appears twice in {where}; accepted: unique ids")
        seen.add(task_id)
        try:
            json.dumps(data)
        except (TypeError, ValueError):
            raise TasksError(
                f"tasks: the data of task {task_id!r} is not JSON ({type(data).__name__}); "
                "accepted: JSON values (numbers, strings, lists, dicts)"
            ) from None
    if not pairs:
        raise TasksError(f"tasks: {where} holds no tasks; accepted: {ACCEPTED}")
    return pairs


def load(source: Any) -> list[tuple[str, Any]]:
    """A file path / URL (str or os.PathLike) or an iterable of tasks."""
    import os

    if isinstance(source, (str, os.PathLike)):
        return load_file(os.fspath(source))
    if isinstance(source, Iterable):
        return from_iterable(source)
    raise TasksError(
        f"tasks: {type(source).__name__} is not a tasks source; accepted: a file, URL or iterable"
    )
