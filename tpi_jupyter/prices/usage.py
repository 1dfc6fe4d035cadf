"""Machine-seconds actually run, from the remote's reports: each boot runs from its claim (or the
group's `machine-started` event, or the task's start) to its rank's status, its last heartbeat,
or now while its heartbeat is fresh. Closed intervals are cached; the listing is re-read at most
every REREAD seconds, and open intervals run on to `now` in between."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

from .. import layout
from ..ranks import CLAIM, STALE_HEARTBEATS, claim_key

if TYPE_CHECKING:
    from ..task import Snapshot, Task

REREAD = 30.0  # seconds between two listings of a running task's reports
Interval = tuple[float, float | None]  # (start, end); end None: still running
ENDED = ("succeeded", "failed", "timeout")  # read once more at the end, then never again
_CACHE: dict[str, tuple[float, list[Interval], bool]] = {}  # task id -> (read at, intervals, ended)
_STAMPS: dict[str, float | None] = {}  # claim files never change: read once


def machine_seconds(task: Task, snapshot: Snapshot, now: float | None = None) -> float:
    now = time.time() if now is None else now
    return sum(
        max(0.0, (now if end is None else end) - start) for start, end in intervals(task, snapshot, now)
    )


def intervals(task: Task, snapshot: Snapshot, now: float) -> list[Interval]:
    cached = _CACHE.get(task.id)
    if cached is not None:
        read_at, found, ended = cached
        if ended or (time.monotonic() - read_at < REREAD and _settled(found, snapshot)):
            return found
    found = _read(task, snapshot, now)
    _CACHE[task.id] = (time.monotonic(), found, snapshot.status in ENDED)
    return found


def _settled(cached: list[Interval], snapshot: Snapshot) -> bool:
    """A cached reading stays good until a rank gains a boot or the task ends."""
    return len(cached) >= sum(rank.boots for rank in snapshot.ranks) and snapshot.status not in ENDED


def _read(task: Task, snapshot: Snapshot, now: float) -> list[Interval]:
    fs, root = task.remote
    reports = layout.join(root, layout.REPORTS)
    try:
        listing = fs.find(reports) if fs.exists(reports) else []
    except FileNotFoundError:
        listing = []
    boots: dict[tuple[int, int], set[str]] = {}
    for key, _ in layout.parse_reports(root, listing):
        if key.boot is not None:
            boots.setdefault((key.rank, key.boot), set()).add(key.name)
    finished = {rank.rank: rank.finished for rank in snapshot.ranks if rank.finished}
    last = {rank: max(b for r, b in boots if r == rank) for rank, _ in boots}
    started = _started(task, snapshot)
    interval = float(task.record.get("timing", {}).get("heartbeat_interval", 10.0))
    found = []
    for (rank, boot), names in sorted(boots.items()):
        start = _claimed(fs, root, rank, boot, names) or started.get(rank) or _task_start(task)
        if boot == last[rank] and rank in finished:
            end: float | None = finished[rank]
        else:
            beat = _stamp(fs, layout.join(root, layout.heartbeat(rank, boot)), 0, cache=False)
            # only a rank's last boot can still run, while its heartbeat is fresh and the task not over
            fresh = beat is not None and now - beat < STALE_HEARTBEATS * interval and boot == last[rank]
            end = None if fresh and snapshot.status not in ENDED else (beat or start)
        found.append((start, end))
    return found


def _task_start(task: Task) -> float:
    return float(task.record.get("started") or task.record["created"])


def _started(task: Task, snapshot: Snapshot) -> dict[int, float]:
    """Ranks the platform numbers (k8s) have no claim: their machine-started events say when."""
    group = snapshot.group.events if snapshot.group else []
    return {
        int(e["rank"]): float(e["time"])
        for e in group
        if e.get("kind") == "machine-started" and e.get("rank") is not None
    }


def _claimed(fs: Any, root: str, rank: int, boot: int, names: set[str]) -> float | None:
    if CLAIM not in names:
        return None
    return _stamp(fs, layout.join(root, claim_key(rank, boot)), 1, cache=True)


def _stamp(fs: Any, path: str, line: int, cache: bool) -> float | None:
    """The RFC 3339 time on a line of a small report file (claims: line 1; heartbeats: line 0)."""
    if cache and path in _STAMPS:
        return _STAMPS[path]
    stamp = None
    with contextlib.suppress(FileNotFoundError, IndexError, ValueError, UnicodeDecodeError):
        stamp = layout.parse_timestamp(fs.cat_file(path).decode().splitlines()[line].strip())
    if cache:
        _STAMPS[path] = stamp
    return stamp
