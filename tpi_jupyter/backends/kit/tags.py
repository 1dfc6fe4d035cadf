"""Tags (labels) every resource of a task carries: the task, its creator, the user's own."""

from __future__ import annotations

import re

from ...spec import TaskSpec

TASK = "tpi-task"
CREATOR = "tpi-creator"


def task_tags(spec: TaskSpec, creator: str) -> dict[str, str]:
    """The user's tags, then ours (ours win: a sweep relies on them)."""
    return {**spec.tags, TASK: spec.id, CREATOR: creator}


def label_value(text: str, limit: int = 63) -> str:
    """A value that label-restricted clouds accept (lowercase letters, digits, - and _)."""
    return re.sub(r"[^a-z0-9_-]+", "_", text.lower())[:limit]
