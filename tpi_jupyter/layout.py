"""The remote key layout, shared by the client and the agent.

```
<remote>/data/...                         the workdir mirror
<remote>/.tpi/task.json                   spec without secret values, id, created, deadline
<remote>/.tpi/script                      the script
<remote>/.tpi/env                         environment values (private)
<remote>/reports/<rank>/<boot>/log        "<RFC3339 UTC> <line>" lines, appended in chunks
<remote>/reports/<rank>/<boot>/heartbeat  rewritten every few seconds while alive
<remote>/reports/<rank>/status.json       {"result": success|failure|timeout, "code": N, ...}
<remote>/.tpi/sync/data/<writer>.json     per-writer sync metadata: modes, mtimes, empty dirs
                                          (writers: "client", "rank<r>-boot<b>"; see sync.py)
```
Keys are relative; every rank writes only below its own `reports/<rank>/`.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

DATA = "data"
TASK_JSON = ".tpi/task.json"
SCRIPT = ".tpi/script"
ENV = ".tpi/env"
CONTROL_STOP = ".tpi/control/stop"  # a stop request every agent watches: {"rank": N, "reason": ...}
REPORTS = "reports"
RESULTS = ("success", "failure", "timeout")


def join(remote: str, *keys: str) -> str:
    return "/".join([remote.rstrip("/"), *(key.strip("/") for key in keys if key)])


def data(path: str = "") -> str:
    return f"{DATA}/{path}".rstrip("/")


def rank_dir(rank: int) -> str:
    return f"{REPORTS}/{rank}"


def boot_dir(rank: int, boot: int) -> str:
    return f"{REPORTS}/{rank}/{boot}"


def log(rank: int, boot: int) -> str:
    return f"{boot_dir(rank, boot)}/log"


def heartbeat(rank: int, boot: int) -> str:
    return f"{boot_dir(rank, boot)}/heartbeat"


def status(rank: int) -> str:
    return f"{rank_dir(rank)}/status.json"


def boots(fs: Any, rank_directory: str) -> list[int]:
    """Boot numbers present under `reports/<rank>/` (fs is an fsspec filesystem)."""
    try:
        entries = fs.ls(rank_directory, detail=False)
    except FileNotFoundError:
        return []
    names = (str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries)
    return sorted(int(name) for name in names if name.isdigit())


def timestamp(seconds: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds, the prefix of every log line."""
    moment = datetime.fromtimestamp(time.time() if seconds is None else seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_timestamp(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
