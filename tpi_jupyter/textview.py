"""The task as plain text, for terminals, nbconvert and nbval, and whether widgets can show."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from .task import Snapshot, Task, pricing_text


def widgets_enabled() -> bool:
    """Widgets need a kernel (not terminal IPython); TPI_JUPYTER_NONINTERACTIVE=1 forces text."""
    if os.environ.get("TPI_JUPYTER_NONINTERACTIVE") == "1":
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def elapsed_text(task: Task, snapshot: Snapshot) -> str:
    seconds = int(task.elapsed(snapshot))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def cost_text(task: Task, snapshot: Snapshot) -> str:
    """Cost so far, as the task's backend prices it."""
    try:
        return task.cost_text(snapshot)
    except Exception:  # a backend missing here (uninstalled extra) must not break the report
        return "n/a"


MAX_LINE_BYTES = 10_000  # one log line as displayed; the rest is cut (a progress bar without newlines)
CUT_MARK = re.compile(r" … \[line cut: \d+ more bytes\]\Z")


def clip_line(text: str, limit: int = MAX_LINE_BYTES) -> str:
    """The line itself when short, else its first `limit` bytes and how many bytes were cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit or len(CUT_MARK.sub("", text).encode("utf-8", "replace")) <= limit:
        return text  # short, or cut already (the widget cuts, then its text report sees the line)
    kept = encoded[:limit].decode("utf-8", "ignore")  # never half a character
    return f"{kept} … [line cut: {len(encoded) - len(kept.encode())} more bytes]"


def text_report(task: Task, snapshot: Snapshot, log_lines: list[str]) -> str:
    """Everything the widget shows, as plain text (terminals, nbconvert, nbval)."""
    spec = task.spec
    lines = [
        f"{task.name}  {task.id}  [{snapshot.status}]",
        f"cloud {spec['cloud']} · machine {spec['machine']} x {spec['parallelism']} · {pricing_text(float(spec['spot']))}"
        f" · elapsed {elapsed_text(task, snapshot)} · cost {cost_text(task, snapshot)}",
    ]
    for rank in snapshot.ranks:
        code = "-" if rank.code is None else str(rank.code)
        lines.append(f"  rank {rank.rank}: {rank.state}, boots {rank.boots}, exit code {code}")
    for event in task.events(snapshot):
        lines.append(f"  {clock(event['time'])} {event_text(event)}")
    if log_lines:
        lines += ["--- log ---", *(clip_line(line) for line in log_lines)]
    return "\n".join(lines)


def clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def event_text(event: dict[str, Any]) -> str:
    rank = "" if event.get("rank") is None else f" rank {event['rank']}"
    detail = f": {event['detail']}" if event.get("detail") else ""
    return f"{event['kind']}{rank}{detail}"
