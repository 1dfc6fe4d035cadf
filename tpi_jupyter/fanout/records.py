"""A run's results and events: per-writer chunks in the remote, folded into one view.

Every worker process writes only its own keys (`fanout/<writer>/<n>.jsonl`), each chunk once and
atomically, so machines never overwrite each other and a reader sees whole chunks only. A task's
result is its first final record ("done" or "failed"); a later duplicate (a message delivered
twice) is counted in `duplicates` and otherwise ignored, so every task id is recorded once.
No IPython or Jupyter imports: the writer runs on machines.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import layout

FINAL = ("done", "failed")
ERRORS_KEPT = 20


class Writer:
    """Buffers records and writes them as numbered chunks through `write(key, bytes)`."""

    def __init__(self, name: str, write: Callable[[str, bytes], None], secrets: list[str] | None = None):
        self.name, self._write = name, write
        self.lines: list[str] = []
        self.number = 0
        # A task's error or result may quote an imported environment value: blanked as in logs,
        # raw and as JSON escapes it.
        self.secrets = sorted({form for value in secrets or [] for form in (value, json.dumps(value)[1:-1])},
                              key=len, reverse=True)  # fmt: skip

    def add(self, kind: str, task: str | None = None, **details: Any) -> None:
        record = {"time": time.time(), "kind": kind, "task": task, "writer": self.name, **details}
        line = json.dumps(record, default=repr)
        for secret in self.secrets:
            line = line.replace(secret, "***")
        self.lines.append(line)

    def flush(self) -> None:
        if not self.lines:
            return
        data = ("\n".join(self.lines) + "\n").encode()
        self._write(layout.chunk_key(self.name, self.number), data)
        self.lines, self.number = [], self.number + 1


@dataclass
class Counts:
    total: int = 0
    done: int = 0
    failed: int = 0
    retrying: int = 0  # tasks re-queued at least once and not final yet
    in_flight: int = 0  # as the queue says
    duplicates: int = 0  # final records after the first for the same task (ignored)
    rate: float = 0.0  # final tasks per second over the last window
    eta: float | None = None  # seconds left at that rate

    @property
    def finished(self) -> int:
        return self.done + self.failed

    def text(self) -> str:
        eta = f", ETA {format_seconds(self.eta)}" if self.eta is not None else ""
        return (f"{self.finished}/{self.total} finished: {self.done} done, {self.failed} failed, "
                f"{self.retrying} retrying, {self.in_flight} in flight; {self.rate:.1f} tasks/s{eta}")  # fmt: skip


def format_seconds(seconds: float) -> str:
    """H:MM:SS, as the task widget shows elapsed time."""
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


@dataclass
class Fold:
    """Everything read so far; `add` takes records in any order, chunk by chunk."""

    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # task id -> first final record
    retried: set[str] = field(default_factory=set)
    errors: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=ERRORS_KEPT))
    events: list[dict[str, Any]] = field(default_factory=list)  # machine-level: notices, releases
    duplicates: int = 0
    finish_times: deque[float] = field(default_factory=lambda: deque(maxlen=2000))

    def add(self, record: dict[str, Any]) -> None:
        task, final = record.get("task"), record.get("final")
        if record.get("error"):
            self.errors.append(record)
        if record["kind"] == "retry" and task:
            self.retried.add(task)
        if task is None:
            self.events.append(record)
        if final not in FINAL or task is None:
            return
        first = self.results.get(task)
        if first is None or record["time"] < first["time"]:
            if first is not None:
                self.duplicates += 1
            self.results[task] = record
            self.finish_times.append(float(record["time"]))
        else:
            self.duplicates += 1

    def counts(self, total: int, in_flight: int, window: float = 10.0) -> Counts:
        done = sum(1 for record in self.results.values() if record["final"] == "done")
        failed = len(self.results) - done
        retrying = len(self.retried - self.results.keys())
        now = time.time()
        recent = [t for t in self.finish_times if t >= now - window]
        span = min(window, now - min(recent)) if recent else 0.0
        rate = len(recent) / span if span > 0.5 else 0.0
        left = total - done - failed
        eta = left / rate if rate > 0 and left > 0 else None
        return Counts(total, done, failed, retrying, in_flight, self.duplicates, rate, eta)


def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """One task's result as users read it (a DataFrame row, a JSONL line)."""
    return {"task_id": record["task"], "status": record["final"], "result": record.get("result"),
            "error": record.get("error"), "attempts": record.get("attempt"),
            "seconds": record.get("elapsed")}  # fmt: skip
