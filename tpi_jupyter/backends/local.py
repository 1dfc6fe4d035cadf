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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..agent import PROCESS_MARK, write_atomic
from ..spec import TaskSpec
from ..state import home
from ..sync import filesystem
from . import local_net
from .base import Capabilities, GroupState, Machine, Timing
from .kit.steps import Steps
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


@dataclass
class LocalState:
    base: str = ""  # the task's directory: the group's files, machine directories, the bucket


class LocalBackend:
    name = "local"
    state_type = LocalState
    capabilities = Capabilities(
        preemption=True, sweep=False, ranks="index", prices=True, poll_interval=0.0,
        env_protection="a 0600 file in the task's 0700 directory, owned by this user",
        timing=Timing(log_interval=0.25, heartbeat_interval=2.0, sync_interval=2.0),
    )  # fmt: skip

    def new_state(self, spec: TaskSpec, deadline: float) -> LocalState:
        return LocalState(base=str(home() / "local" / spec.id))

    @staticmethod
    def base(state: LocalState) -> Path:
        return Path(state.base)

    def remote_url(self, spec: TaskSpec, state: LocalState) -> str:
        if spec.container:
            return layout.join(spec.container, spec.id)
        return str(self.base(state) / "bucket")

    def plan(self, spec: TaskSpec, state: LocalState) -> list[str]:
        return [
            f"machines: a local group of {spec.parallelism} process(es) on this machine, respawned when preempted",
            f"storage: {self.remote_url(spec, state)}",
        ]

    def create(self, spec: TaskSpec, state: LocalState, steps: Steps) -> None:
        def make() -> None:
            base = self.base(state)
            base.mkdir(parents=True, exist_ok=True)
            os.chmod(base, 0o700)

        steps.run("task directory", make)

    def start(self, spec: TaskSpec, state: LocalState) -> None:
        base = self.base(state)
        command = [
            sys.executable, "-m", "tpi_jupyter.backends.local_group",
            "--base", str(base), "--remote", self.remote_url(spec, state),
            "--parallelism", str(spec.parallelism),
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

    def read(self, spec: TaskSpec, state: LocalState) -> GroupState:
        base = self.base(state)
        pid = self._group_pid(base)
        running = bool(pid) and _alive(pid, str(base))  # type: ignore[arg-type]
        places = (local_net.load(base) or {}).get("ranks", {})  # multi-node: each rank's namespace
        machines = [
            Machine(
                rank=int(rank),
                boot=info["boot"],
                alive=running and info["alive"],
                address=places.get(rank, {}).get("address", "127.0.0.1"),
            )
            for rank, info in (_read_json(base / "machines.json") or {}).items()
        ]
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in (base / "events.jsonl").read_text().splitlines():
                with contextlib.suppress(ValueError):
                    events.append(json.loads(line))
        return GroupState(exists=running, machines=machines, events=events)

    def stop(self, spec: TaskSpec, state: LocalState, wait: float = STOP_GRACE + 10) -> None:
        if not state.base:
            return  # nothing was made
        base = self.base(state)
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
        left = kill_marked(str(base))
        local_net.destroy(base)  # multi-node: namespaces (and what runs in them), veths, bridge
        return left

    def delete(self, spec: TaskSpec, state: LocalState) -> None:
        if not state.base:
            return  # nothing was made
        base = self.base(state)
        left = self._kill_everything(base, self._group_pid(base))
        if left:  # nothing is removed while a process of the task could still write into it
            raise RuntimeError(
                f"{len(left)} process(es) of the task are still running: {', '.join(left)}; "
                "nothing was removed (run destroy again, or kill them)"
            )
        if spec.container:
            fs, root = filesystem(self.remote_url(spec, state))
            if fs.exists(root):
                fs.rm(root, recursive=True)
        shutil.rmtree(base, ignore_errors=True)

    def preempt(self, spec: TaskSpec, state: LocalState, rank: int) -> None:
        base = self.base(state)
        info = (_read_json(base / "machines.json") or {}).get(str(rank))
        if not info or not info.get("alive"):
            raise RuntimeError(f"rank {rank} has no running machine to preempt")
        # The whole machine goes at once, without warning: agent and script alike.
        kill_group(info["pid"], signal.SIGKILL)
        kill_group(script_pid(base, rank), signal.SIGKILL)

    def cost(self, spec: TaskSpec, state: LocalState, seconds: float) -> str:
        return "$0.00 (local)"
