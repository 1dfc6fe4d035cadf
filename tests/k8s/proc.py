"""Process identity for the test bed: a pid plus its kernel start time, so that a recycled pid
is never mistaken for a process the bed started."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def start_time(pid: int) -> str | None:
    """The start time of a live pid (None when gone or a zombie that only waits to be reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def alive(entry: dict[str, Any]) -> bool:
    """entry = {"pid": N, "start": start_time(N) when it was started}."""
    return entry.get("start") is not None and start_time(int(entry["pid"])) == entry["start"]
