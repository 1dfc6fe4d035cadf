"""The local backend: real processes on this machine, behaving like a cloud's machine group.

`start` launches a detached group process (the stand-in for a scaling group, see local_group.py)
that outlives the kernel. The remote is a local directory (or the user's `container`) reached
as a bucket would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import layout
from ..agent import PROCESS_MARK, write_atomic
from ..state import home
from ..sync import filesystem
from .base import GroupState, Machine
from .local_group import STOP_GRACE, kill_group, kill_marked, script_pid


def _alive(pid: int, marker: str) -> bool:
    """Whether pid runs and is ours (the marker guards against a reused pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        if not text:
            return False  # a zombie
        return marker.encode() in text
    return True


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


class LocalBackend:
    name = "local"

    @staticmethod
    def base(record: dict[str, Any]) -> Path:
        return Path(record.get("local", {}).get("base") or home() / "local" / record["id"])

    def remote_url(self, record: dict[str, Any]) -> str:
        container = record["spec"].get("container")
        if container:
            return layout.join(container, record["id"])
        return str(self.base(record) / "bucket")

    def plan(self, record: dict[str, Any]) -> list[str]:
        count = record["spec"]["parallelism"]
        return [
            f"machines: a local group of {count} process(es) on this machine, respawned when preempted",
            f"storage: {self.remote_url(record)}",
        ]

    def create(self, record: dict[str, Any]) -> None:
        base = self.base(record)
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o700)
        record["local"] = {"base": str(base)}

    def start(self, record: dict[str, Any]) -> None:
        base = self.base(record)
        command = [
            sys.executable, "-m", "tpi_jupyter.backends.local_group",
            "--base", str(base), "--remote", self.remote_url(record),
            "--parallelism", str(record["spec"]["parallelism"]),
        ]  # fmt: skip
        with open(base / "group.log", "ab") as log:
            group = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, env={**os.environ, PROCESS_MARK: str(base)},
            )  # fmt: skip
        # Popen returns once the group runs: it is known at once, without waiting for it to report.
        write_atomic(
            base / "group.json", json.dumps({"pid": group.pid, "started": time.time()}).encode(), False
        )
        threading.Thread(target=group.wait, name="tpi-reap", daemon=True).start()  # no zombie left

    def _group_pid(self, base: Path) -> int | None:
        info = _read_json(base / "group.json")
        return int(info["pid"]) if info else None

    def read(self, record: dict[str, Any]) -> GroupState:
        base = self.base(record)
        pid = self._group_pid(base)
        running = bool(pid) and _alive(pid, str(base))  # type: ignore[arg-type]
        machines = [
            Machine(rank=int(rank), boot=info["boot"], alive=running and info["alive"], address="127.0.0.1")
            for rank, info in (_read_json(base / "machines.json") or {}).items()
        ]
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in (base / "events.jsonl").read_text().splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return GroupState(exists=running, machines=machines, events=events)

    def stop(self, record: dict[str, Any], wait: float = STOP_GRACE + 10) -> None:
        base = self.base(record)
        pid = self._group_pid(base)
        if pid and _alive(pid, str(base)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.time() + wait
            while _alive(pid, str(base)) and time.time() < deadline:
                time.sleep(0.1)
        self._kill_everything(base, pid)  # a dead group's orphans and setsid escapees too

    def _kill_everything(self, base: Path, group_pid: int | None) -> list[str]:
        """Kill every process of the task; what is still running afterwards."""
        kill_group(group_pid, signal.SIGKILL)
        for rank, info in (_read_json(base / "machines.json") or {}).items():
            kill_group(info.get("pid"), signal.SIGKILL)
            kill_group(script_pid(base, int(rank)), signal.SIGKILL)
        return kill_marked(str(base))

    def delete(self, record: dict[str, Any]) -> None:
        base = self.base(record)
        left = self._kill_everything(base, self._group_pid(base))
        if left:  # nothing is removed while a process of the task could still write into it
            raise RuntimeError(
                f"{len(left)} process(es) of the task are still running: {', '.join(left)}; "
                "nothing was removed (run destroy again, or kill them)"
            )
        if record["spec"].get("container"):
            fs, root = filesystem(self.remote_url(record))
            if fs.exists(root):
                fs.rm(root, recursive=True)
        shutil.rmtree(base, ignore_errors=True)

    def preempt(self, record: dict[str, Any], rank: int) -> None:
        base = self.base(record)
        info = (_read_json(base / "machines.json") or {}).get(str(rank))
        if not info or not info.get("alive"):
            raise RuntimeError(f"rank {rank} has no running machine to preempt")
        # The whole machine goes at once, without warning: agent and script alike.
        kill_group(info["pid"], signal.SIGKILL)
        kill_group(script_pid(base, rank), signal.SIGKILL)
