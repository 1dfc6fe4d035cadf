"""The remote key layout, shared by the client and the agent.

```
<remote>/data/...                         the workdir mirror
<remote>/.tpi/task.json                   spec without secret values, id, created, deadline
<remote>/.tpi/script                      the script
<remote>/.tpi/env                         environment values (private)
<remote>/reports/<rank>/<boot>/log        "<RFC3339 UTC> <line>" lines, appended (local directories)
<remote>/reports/<rank>/<boot>/log.NNNNNN one chunk per flush (object stores); the log is their
                                          concatenation in chunk order
<remote>/reports/<rank>/<boot>/heartbeat  rewritten every few seconds while alive
<remote>/reports/<rank>/<boot>/boot-log   the boot script's log, copied by the agent that claimed
<remote>/.tpi/machines/<machine>/boot-log the boot script's log under the machine id (cloud
<remote>/.tpi/machines/<machine>/failed   machines; see backends/kit/boot.py), and a failed boot
<remote>/.tpi/control/stop                a user stop, watched by the agents (not a signal)
<remote>/.tpi/control/failed              {"rank": N, ...}: a rank failed, the others stop (policy)
<remote>/reports/<rank>/status.json       {"result": success|failure|timeout, "code": N, ...}
<remote>/.tpi/sync/data/<writer>.json     per-writer sync metadata: modes, mtimes, empty dirs
                                          (writers: "client", "rank<r>-boot<b>"; see sync.py)
```
Keys are relative; every rank writes only below its own `reports/<rank>/`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

DATA = "data"
TASK_JSON = ".tpi/task.json"
SCRIPT = ".tpi/script"
ENV = ".tpi/env"
CONTROL_FAILED = ".tpi/control/failed"  # the first rank that failed; every agent watches it
REPORTS = "reports"
RESULTS = ("success", "failure", "timeout")
LOG = "log"
STATUS = "status.json"
ADDRESS = "address"
RESTARTS = "restarts.json"
SSH_KEY = ".tpi/ssh/id_ed25519"


def join(remote: str, *keys: str) -> str:
    return "/".join([remote.rstrip("/"), *(key.strip("/") for key in keys if key)])


def data(path: str = "") -> str:
    return f"{DATA}/{path}".rstrip("/")


def rank_dir(rank: int) -> str:
    return f"{REPORTS}/{rank}"


def boot_dir(rank: int, boot: int) -> str:
    return f"{REPORTS}/{rank}/{boot}"


def log(rank: int, boot: int) -> str:
    return f"{boot_dir(rank, boot)}/{LOG}"


def log_chunk(log_key: str, number: int) -> str:
    """The key of a log's chunk number `number` (object stores: one new object per flush)."""
    return f"{log_key}.{number:06d}"


def heartbeat(rank: int, boot: int) -> str:
    return f"{boot_dir(rank, boot)}/heartbeat"


def boot_log(rank: int, boot: int) -> str:
    """The boot script's log of the machine that took this boot (copied by its agent)."""
    return f"{boot_dir(rank, boot)}/boot-log"


def status(rank: int) -> str:
    return f"{rank_dir(rank)}/{STATUS}"


def address(rank: int) -> str:
    return f"{rank_dir(rank)}/{ADDRESS}"


def restarts() -> str:
    return f"{rank_dir(0)}/{RESTARTS}"


@dataclass(frozen=True)
class ReportKey:
    """A parsed key below `reports/`: `reports/<rank>/<name>` or `reports/<rank>/<boot>/<name>`."""

    rank: int
    boot: int | None  # None for the rank's own keys (status.json, address)
    name: str  # status.json, address, claim, heartbeat, boot-log, log, or log.NNNNNN
    chunk: int | None = None  # the number of a log chunk

    @property
    def is_log(self) -> bool:
        return self.boot is not None and (self.name == LOG or self.chunk is not None)

    @property
    def log_key(self) -> str:
        """The log this key belongs to (chunks and the appended file alike)."""
        assert self.boot is not None
        return log(self.rank, self.boot)


def relative(root: str, path: str) -> str:
    """A listed path as a key relative to the remote's root."""
    path, root = str(path), root.rstrip("/")
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def parse_report(key: str) -> ReportKey | None:
    """The one parser of report keys; None for anything else."""
    parts = key.strip("/").split("/")
    if parts[-1].startswith("."):  # a writer's temporary file, not a report
        return None
    if parts[0] != REPORTS or len(parts) not in (3, 4) or not parts[1].isdigit():
        return None
    if len(parts) == 3:
        return ReportKey(int(parts[1]), None, parts[2])
    if not parts[2].isdigit():
        return None
    name, _, number = parts[3].partition(".")
    chunk = int(number) if name == LOG and number.isdigit() else None
    return ReportKey(int(parts[1]), int(parts[2]), parts[3], chunk)


def parse_reports(root: str, paths: Iterable[str]) -> list[tuple[ReportKey, str]]:
    """(parsed key, path) for every listed path that is a report key."""
    found = []
    for path in paths:
        parsed = parse_report(relative(root, path))
        if parsed is not None:
            found.append((parsed, str(path)))
    return found


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
