"""The local backend: real processes on this machine, behaving like a cloud's machine group.

`start` launches a detached group process (the stand-in for a scaling group) that outlives the
kernel. It runs one agent per rank, each in a scratch machine directory of its own; when a
machine dies without having written its status (a spot interruption, see `preempt`), the group
respawns it with the next boot number. Each machine releases only itself; the group ends when
every rank has reported. The remote is a local directory (or the user's `container`) reached
through fsspec, exactly as a bucket would be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout
from ..agent import Remote
from ..spec import TaskSpec
from ..state import home
from ..sync import atomic_write_bytes, filesystem
from .base import Capabilities, GroupState, Machine, Timing
from .kit.steps import Steps

STOP_GRACE = 30.0  # seconds a stopping agent gets for its last sync before it is killed
RESPAWN_DELAY = 0.5
POLL = 0.2


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


def _kill_group(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


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
        log = open(base / "group.log", "ab")  # noqa: SIM115 - handed to the child
        command = [
            sys.executable, "-m", "tpi_jupyter.backends.local", "--detach",
            "--base", str(base), "--remote", self.remote_url(spec, state),
            "--parallelism", str(spec.parallelism),
        ]  # fmt: skip
        with log:
            launcher = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
            launcher.wait(timeout=60)  # returns at once: the group forks away from it
        deadline = time.time() + 30
        while not (base / "group.json").exists():
            if time.time() > deadline:
                raise RuntimeError(f"the local machine group did not start; see {base / 'group.log'}")
            time.sleep(0.02)

    def _group_pid(self, base: Path) -> int | None:
        info = _read_json(base / "group.json")
        return int(info["pid"]) if info else None

    def read(self, spec: TaskSpec, state: LocalState) -> GroupState:
        base = self.base(state)
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

    def stop(self, spec: TaskSpec, state: LocalState, wait: float = STOP_GRACE + 10) -> None:
        base = self.base(state)
        pid = self._group_pid(base)
        if not pid or not _alive(pid, str(base)):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.time() + wait
        while _alive(pid, str(base)) and time.time() < deadline:
            time.sleep(0.1)
        if _alive(pid, str(base)):
            self._kill_everything(base, pid)

    def _kill_everything(self, base: Path, group_pid: int | None) -> None:
        _kill_group(group_pid, signal.SIGKILL)
        for rank, info in (_read_json(base / "machines.json") or {}).items():
            _kill_group(info.get("pid"), signal.SIGKILL)
            _kill_group(_script_pid(base, int(rank)), signal.SIGKILL)

    def delete(self, spec: TaskSpec, state: LocalState) -> None:
        if not state.base:
            return  # nothing was made
        base = self.base(state)
        pid = self._group_pid(base)
        if pid and _alive(pid, str(base)):
            self._kill_everything(base, pid)
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
        _kill_group(info["pid"], signal.SIGKILL)
        _kill_group(_script_pid(base, rank), signal.SIGKILL)

    def cost(self, spec: TaskSpec, state: LocalState, seconds: float) -> str:
        return "$0.00 (local)"


def _machine_dir(base: Path, rank: int) -> Path:
    return base / "machines" / str(rank)


def _script_pid(base: Path, rank: int) -> int | None:
    try:
        return int((_machine_dir(base, rank) / "script.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


# ---------------------------------------------------------------- the group process


class Group:
    """Plays the scaling group: keeps one agent per rank alive until the rank reports."""

    def __init__(self, base: Path, remote: str, parallelism: int):
        self.base, self.remote, self.parallelism = base, remote, parallelism
        self.remote_store = Remote(remote)
        self.stopping = False
        self.machines: dict[int, dict[str, Any]] = {}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def event(self, kind: str, rank: int | None = None, detail: str = "") -> None:
        line = json.dumps({"time": time.time(), "kind": kind, "rank": rank, "detail": detail})
        with open(self.base / "events.jsonl", "a") as handle:
            handle.write(line + "\n")

    def save_machines(self) -> None:
        atomic_write_bytes(self.base / "machines.json", json.dumps(self.machines).encode())

    def has_status(self, rank: int) -> bool:
        return bool(self.remote_store.fs.exists(self.remote_store.key(layout.status(rank))))

    def spawn(self, rank: int, boot: int) -> None:
        machine_dir = _machine_dir(self.base, rank)
        shutil.rmtree(machine_dir, ignore_errors=True)  # a fresh machine
        machine_dir.mkdir(parents=True)
        with open(self.base / f"agent-{rank}-{boot}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tpi_jupyter.agent", "--remote", self.remote,
                 "--rank", str(rank), "--boot", str(boot), "--machine-dir", str(machine_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.processes[rank] = process
        self.machines[rank] = {"boot": boot, "pid": process.pid, "alive": True, "started": time.time()}
        self.save_machines()
        self.event("machine-started", rank, f"boot {boot}, pid {process.pid}")

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        atomic_write_bytes(
            self.base / "group.json", json.dumps({"pid": os.getpid(), "started": time.time()}).encode()
        )
        self.event("group-scaled", None, f"to {self.parallelism}")
        for rank in range(self.parallelism):
            if not self.has_status(rank):
                self.spawn(rank, self._next_boot(rank))
        stop_sent = 0.0
        while self.processes:
            if self.stopping and not stop_sent:
                self.event("stopping")
                for process in self.processes.values():
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
                stop_sent = time.time()
            if stop_sent and time.time() - stop_sent > STOP_GRACE:
                for rank, process in self.processes.items():
                    _kill_group(process.pid, signal.SIGKILL)
                    _kill_group(_script_pid(self.base, rank), signal.SIGKILL)
            for rank, process in list(self.processes.items()):
                code = process.poll()
                if code is not None:
                    self._machine_ended(rank, code)
            time.sleep(POLL)
        self.event("group-released")

    def _next_boot(self, rank: int) -> int:
        boots = layout.boots(self.remote_store.fs, self.remote_store.key(layout.rank_dir(rank)))
        return max(boots) + 1 if boots else 0

    def _machine_ended(self, rank: int, code: int) -> None:
        del self.processes[rank]
        boot = self.machines[rank]["boot"]
        self.machines[rank]["alive"] = False
        self.save_machines()
        # Whatever the machine ran dies with it.
        _kill_group(_script_pid(self.base, rank), signal.SIGKILL)
        if self.has_status(rank):
            self.event("machine-released", rank, f"boot {boot}")
        elif code < 0 and not self.stopping:
            self.event("preempted", rank, f"boot {boot} ended by signal {-code} without a status")
            time.sleep(RESPAWN_DELAY)
            self.spawn(rank, boot + 1)
            self.event("respawned", rank, f"boot {boot + 1}")
        else:
            reason = (
                "stopped before it reported"
                if self.stopping
                else f"agent exited with code {code} without a status"
            )
            status = {"result": "failure", "code": None, "reason": reason, "rank": rank, "boot": boot,
                      "finished": layout.timestamp()}  # fmt: skip
            self.remote_store.write(layout.status(rank), json.dumps(status).encode())
            self.event("machine-failed", rank, reason)

    def _on_term(self, *_: Any) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpi_jupyter.backends.local")
    parser.add_argument("--base", required=True)
    parser.add_argument("--remote", required=True)
    parser.add_argument("--parallelism", type=int, required=True)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args(argv)
    if args.detach and os.fork() > 0:
        os._exit(0)  # the launcher returns at once; the group is re-parented away from the kernel
    Group(Path(args.base), args.remote, args.parallelism).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
