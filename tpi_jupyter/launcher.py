"""Which process is launching a task, so that a launch that died midway (a kernel restarted or a
client killed during the upload) reads as failed, not as queued forever."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

INTERRUPTED = "launch interrupted: the client ended before the machines started; destroy it and launch again"


def mark() -> dict[str, Any]:
    """The launching process, recorded in the registry until the task has started."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def interrupted(record: Mapping[str, Any]) -> bool:
    """The task never started and its launching process on this host is gone.

    A pid reused by another process since reads as alive: the task then stays queued, as before."""
    found = record.get("launcher")
    if record.get("started") or not isinstance(found, dict) or found.get("host") != socket.gethostname():
        return False
    if found.get("pid") == os.getpid():
        return False
    try:
        os.kill(int(found["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, KeyError, TypeError):
        return False
    return False
