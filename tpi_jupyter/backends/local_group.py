"""The local backend's machine group: a detached process that plays a cloud's scaling group.

It forks one agent per rank (no new interpreter: the first log line comes sooner), each in a
scratch machine directory of its own; a machine that dies without having written its status (a
spot interruption, see `LocalBackend.preempt`) is respawned with the next boot number. Each
machine releases only itself; the group ends when every rank has reported.

Every process of a task carries `TPI_PROCESS_MARK=<the task's local base>` in its environment:
the group's (set by `LocalBackend.start`), the agents' (inherited) and the scripts' (passed on by
the agent). A process group or session is not enough: a script may `setsid` away from it, and a
supervisor killed with -9 leaves its machines orphaned. The environment survives both, so stop
and destroy find every process by scanning it (psutil). A per-task cgroup would be stronger, but
is not writable for a normal user on most machines (nor on macOS).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .. import layout
from ..agent import PROCESS_MARK, Remote, RemoteGone, stop_others, write_atomic
from . import local_net

STOP_GRACE = 30.0  # seconds a stopping agent gets for its last sync before it is killed
RESPAWN_DELAY = 0.5
POLL = 0.05


def marked_processes(mark: str, rank: int | None = None) -> list[Any]:
    """Every process (but this one) whose environment carries the task's mark (and rank)."""
    import psutil

    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            env = process.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone, a zombie (dead already), or not ours to see
        if env.get(PROCESS_MARK) == mark and (rank is None or env.get("TPI_RANK") == str(rank)):
            found.append(process)
    return found


def kill_marked(mark: str, rank: int | None = None) -> list[str]:
    """SIGKILL every marked process; what still runs afterwards, as "pid (name)" texts."""
    import psutil

    found = marked_processes(mark, rank)
    for process in found:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(found, timeout=5)
    left = []
    for process in marked_processes(mark, rank):
        with contextlib.suppress(psutil.Error):
            left.append(f"{process.pid} ({process.name()})")
    return left


def kill_group(pid: int | None, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def machine_dir(base: Path, rank: int) -> Path:
    return base / "machines" / str(rank)


def script_pid(base: Path, rank: int) -> int | None:
    try:
        return int((machine_dir(base, rank) / "script.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def exit_code(status: int) -> int:
    """A waitpid status as Popen.returncode would say it (negative: ended by that signal)."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


class Group:
    """Plays the scaling group: keeps one agent per rank alive until the rank reports."""

    def __init__(self, base: Path, remote: str, parallelism: int):
        self.base, self.remote, self.parallelism = base, remote, parallelism
        self.remote_store = Remote(remote)
        self.stopping = False
        self.machines: dict[int, dict[str, Any]] = {}
        self.processes: dict[int, int] = {}  # rank -> the agent's pid
        self.network: dict[str, Any] | None = None  # multi-node: a namespace per rank (local_net.py)

    def event(self, kind: str, rank: int | None = None, detail: str = "") -> None:
        line = json.dumps({"time": time.time(), "kind": kind, "rank": rank, "detail": detail})
        with open(self.base / "events.jsonl", "a") as handle:
            handle.write(line + "\n")

    def save_machines(self) -> None:
        write_atomic(self.base / "machines.json", json.dumps(self.machines).encode())

    def has_status(self, rank: int) -> bool:
        return self.remote_store.exists(layout.status(rank))

    def spawn(self, rank: int, boot: int) -> None:
        directory = machine_dir(self.base, rank)
        shutil.rmtree(directory, ignore_errors=True)  # a fresh machine
        directory.mkdir(parents=True)
        log = self.base / f"agent-{rank}-{boot}.log"
        pid = os.fork()
        if pid == 0:  # the machine: its own session, as a machine of its own would be
            self._machine(rank, boot, directory, log)
        self.processes[rank] = pid
        self.machines[rank] = {"boot": boot, "pid": pid, "alive": True, "started": time.time()}
        self.save_machines()
        self.event("machine-started", rank, f"boot {boot}, pid {pid}")

    def _machine(self, rank: int, boot: int, directory: Path, log: Path) -> None:
        code = 1
        try:
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(handle, 1)
            os.dup2(handle, 2)
            if self.parallelism > 1:
                os.environ.update(local_net.rank_environment(self.network, rank))
            from ..agent import main as agent_main

            code = agent_main(["--remote", self.remote, "--rank", str(rank), "--boot", str(boot),
                               "--machine-dir", str(directory)])  # fmt: skip
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        write_atomic(
            self.base / "group.json", json.dumps({"pid": os.getpid(), "started": time.time()}).encode()
        )
        self.event("group-scaled", None, f"to {self.parallelism}")
        if self.parallelism > 1:
            self.network, note = local_net.for_group(self.base, self.parallelism)
            self.event("network", None, note)
        try:
            self._run_machines()
        finally:
            kill_marked(str(self.base))  # nothing outlives the group
            local_net.destroy(self.base)
        self.event("group-released")

    def _run_machines(self) -> None:
        for rank in range(self.parallelism):
            if not self.has_status(rank):
                self.spawn(rank, self._next_boot(rank))
        stop_sent = 0.0
        while self.processes:
            if self.stopping and not stop_sent:
                self.event("stopping")
                for pid in self.processes.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                stop_sent = time.time()
            if stop_sent and time.time() - stop_sent > STOP_GRACE:
                for rank, pid in self.processes.items():
                    kill_group(pid, signal.SIGKILL)
                    kill_group(script_pid(self.base, rank), signal.SIGKILL)
            for rank, pid in list(self.processes.items()):
                ended, status = os.waitpid(pid, os.WNOHANG)
                if ended:
                    self._machine_ended(rank, exit_code(status))
            time.sleep(POLL)

    def _next_boot(self, rank: int) -> int:
        boots = [int(name) for name in self.remote_store.names(layout.rank_dir(rank)) if name.isdigit()]
        return max(boots) + 1 if boots else 0

    def _machine_ended(self, rank: int, code: int) -> None:
        del self.processes[rank]
        boot = self.machines[rank]["boot"]
        self.machines[rank]["alive"] = False
        self.save_machines()
        # Whatever the machine ran dies with it, including what escaped its session.
        kill_group(script_pid(self.base, rank), signal.SIGKILL)
        kill_marked(str(self.base), rank)
        local_net.end_rank(self.network, rank)
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
            with contextlib.suppress(RemoteGone):
                stop_others(self.remote_store, rank, self.parallelism, status)
                self.remote_store.write(layout.status(rank), json.dumps(status).encode())
            self.event("machine-failed", rank, reason)

    def _on_term(self, *_: Any) -> None:
        self.stopping = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpi_jupyter.backends.local_group")
    parser.add_argument("--base", required=True)
    parser.add_argument("--remote", required=True)
    parser.add_argument("--parallelism", type=int, required=True)
    args = parser.parse_args(argv)
    Group(Path(args.base), args.remote, args.parallelism).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
