"""The agent that runs on every machine of a task.

It pulls `data/` into a fresh work directory, runs the script with the task's environment,
streams the log to `reports/<rank>/<boot>/log`, pushes what changed in the work directory back
to `data/` while the script runs and once more at exit, enforces the absolute deadline and
writes `reports/<rank>/status.json` last. Then the machine may release itself.

`python -m tpi_jupyter.agent --remote URL --rank N --boot B --machine-dir DIR`
`python -m tpi_jupyter.agent --remote URL --rank auto --release aws --machine-dir DIR` (scaling groups)

No IPython or Jupyter imports here: this runs on bare machines.
"""

from __future__ import annotations

import argparse
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

from . import layout
from .agent_watch import Check, Watch, shutting_down, stop_requested
from .backends.base import Timing
from .sync import atomic_write_bytes, download, filesystem, is_local, local_manifest, upload

# Variables a machine's own environment contributes to the script; nothing else leaks in.
BASE_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
KILL_GRACE = 5.0
MASK_MIN = 4  # shorter imported values are not masked: "1" would blank every digit


class Remote:
    """The task's remote (bucket prefix or directory) as the agent writes to it."""

    def __init__(self, url: str):
        self.fs, self.root = filesystem(url)

    def key(self, key: str) -> str:
        return layout.join(self.root, key)

    def read_text(self, key: str) -> str:
        return self.fs.cat_file(self.key(key)).decode("utf-8")  # type: ignore[no-any-return]

    def write(self, key: str, data: bytes) -> None:
        if is_local(self.fs):
            atomic_write_bytes(self.key(key), data)
        else:
            self.fs.pipe_file(self.key(key), data)  # one put: atomic on object stores

    def append(self, key: str, data: bytes, number: int) -> None:
        """Local files grow by appending; object stores get chunk `number` as a new object
        (`log.000017`), so the bytes uploaded grow with the log, not with its square."""
        if is_local(self.fs):
            path = self.key(key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(data)
        else:
            self.fs.pipe_file(self.key(layout.log_chunk(key, number)), data)


class LogStream:
    """Collects output lines, stamps them, and flushes them to the remote in chunks."""

    def __init__(
        self,
        remote: Remote,
        key: str,
        local_copy: Path,
        interval: float,
        secrets: tuple[str, ...] | list[str] = (),
    ):
        self.remote, self.key, self.local_copy, self.interval = remote, key, local_copy, interval
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        self._pending: list[bytes] = []
        self._chunks = 0  # chunks flushed so far: the next chunk's number
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tpi-log", daemon=True)
        local_copy.parent.mkdir(parents=True, exist_ok=True)
        local_copy.write_bytes(b"")

    def start(self) -> None:
        self._thread.start()

    def line(self, text: str) -> None:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        stamped = f"{layout.timestamp()} {text.rstrip(chr(10))}\n".encode("utf-8", "replace")
        with self._lock:
            self._pending.append(stamped)

    def flush(self) -> None:
        with self._lock:
            chunk, self._pending = b"".join(self._pending), []
            if not chunk:
                return
            with open(self.local_copy, "ab") as handle:
                handle.write(chunk)
            self.remote.append(self.key, chunk, self._chunks)
            self._chunks += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception as error:  # a flaky remote must not kill the task; retry next tick
                print(f"tpi-agent: log flush failed: {error}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()


class Heartbeat:
    def __init__(self, remote: Remote, key: str, interval: float):
        self.remote, self.key, self.interval = remote, key, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tpi-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        self.remote.write(self.key, layout.timestamp().encode())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as error:
                print(f"tpi-agent: heartbeat failed: {error}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def private_agent() -> bool:
    """On a cloud machine the agent's venv is its own (TPI_PRIVATE_AGENT, set by the boot
    script's unit): the script gets the machine's Python, HOME and a login shell instead."""
    return bool(os.environ.get("TPI_PRIVATE_AGENT"))


def script_environment(task: dict[str, Any], values: dict[str, str], rank: int) -> dict[str, str]:
    env = {name: os.environ[name] for name in BASE_ENVIRONMENT if name in os.environ}
    python_bin = os.path.dirname(sys.executable)
    if private_agent():  # a `pip install` in the script must not reach the agent's venv
        path = [item for item in env.get("PATH", os.defpath).split(os.pathsep) if item and item != python_bin]
        env["PATH"] = os.pathsep.join(path)
        env.setdefault("HOME", os.path.expanduser("~"))
    else:  # locally the script runs with the notebook's Python, as the user expects
        env["PATH"] = python_bin + os.pathsep + env.get("PATH", os.defpath)
    env.update(values)
    env.update(
        TPI_TASK="true",
        TPI_TASK_ID=task["id"],
        TPI_REGION=task["spec"]["region"],
        TPI_MACHINE=task["spec"]["machine"],
        TPI_RANK=str(rank),
        TPI_WORLD_SIZE=str(task["spec"]["parallelism"]),
    )
    return env


def script_command(script: Path) -> list[str]:
    shebang = script.read_bytes().startswith(b"#!")
    if private_agent():  # a login shell: the image's profile (conda, CUDA paths) applies
        return (
            ["/bin/bash", "-l", "-c", 'exec "$0"', str(script)]
            if shebang
            else ["/bin/bash", "-l", str(script)]
        )
    return [str(script)] if shebang else ["/bin/bash", str(script)]


class Agent:
    def __init__(self, remote_url: str, rank: int, boot: int, machine_dir: str, notice: Check | None = None):
        self.remote = Remote(remote_url)
        self.rank, self.boot = rank, boot
        self.machine_dir = Path(machine_dir)
        self.work = self.machine_dir / "work"
        self.private = self.machine_dir / "agent"
        self.stopping = threading.Event()  # a user stop: report "stopped", release
        self.interrupted = threading.Event()  # the cloud takes the machine: push, no status, no release
        self.notice = notice  # the cloud's interruption notice, when it has one
        self.interruption = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.reported: set[str] = set()  # sync warnings already logged

    def interrupt(self, reason: str) -> None:
        self.interruption = self.interruption or reason
        self.interrupted.set()

    def _watch(self, interval: float) -> Watch:
        checks = {
            "stop": (
                stop_requested(lambda key: bool(self.remote.fs.exists(self.remote.key(key)))),
                self.stopping,
            )
        }
        if self.notice is not None:
            checks["notice"] = (self.notice, self.interrupted)
        watch = Watch(interval, checks)
        watch.poll()  # a stop given before this machine started counts at once
        return watch.start()

    # -- steps

    def prepare(self) -> None:
        # A respawned machine is a fresh machine: nothing survives but what was synced.
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.private.mkdir(parents=True, exist_ok=True)
        os.chmod(self.private, 0o700)
        self.task = json.loads(self.remote.read_text(layout.TASK_JSON))
        self.exclude = list(self.task["spec"].get("exclude", []))
        script = self.private / "script"
        script.write_text(self.remote.read_text(layout.SCRIPT))
        os.chmod(script, 0o700)
        self.script = script
        try:
            self.values: dict[str, str] = json.loads(self.remote.read_text(layout.ENV))
        except FileNotFoundError:
            self.values = {}

    def pull(self) -> None:
        download(self.remote.fs, self.remote.key(layout.DATA), self.work, exclude=self.exclude)
        self.manifest = local_manifest(self.work, self.exclude, str(self.private / "manifest.json"))
        self.manifest.writer = self.manifest.written.writer = f"rank{self.rank}-boot{self.boot}"

    def push(self) -> None:
        """Sync the work directory back; files it cannot sync are skipped and logged once each."""
        result = upload(
            self.work,
            self.remote.fs,
            self.remote.key(layout.DATA),
            exclude=self.exclude,
            manifest=self.manifest,
        )
        for warning in result.warnings:
            if warning not in self.reported:
                self.reported.add(warning)
                self.log.line(f"[tpi] {warning}")

    def run(self) -> dict[str, Any]:
        timing = Timing(**self.task.get("timing", {}))  # the backend's cadence, written at launch
        deadline = float(self.task["deadline"])
        secrets = [
            self.values[name]
            for name in self.task.get("masked", [])
            if len(self.values.get(name, "")) >= MASK_MIN
        ]
        self.log = LogStream(self.remote, layout.log(self.rank, self.boot), self.private / "log",
                             timing.log_interval, secrets)  # fmt: skip
        heartbeat = Heartbeat(self.remote, layout.heartbeat(self.rank, self.boot),
                              timing.heartbeat_interval)  # fmt: skip
        heartbeat.start()
        self.log.start()
        watch = self._watch(timing.heartbeat_interval)
        try:
            if self.stopping.is_set():
                self.log.line("[tpi] stop requested before the script started")
                return {"result": "failure", "code": None, "reason": "stopped"}
            if time.time() >= deadline:
                self.log.line("[tpi] the task's deadline has passed: not starting")
                return {"result": "timeout", "code": None}
            self.pull()
            if self.boot > 0:
                self.log.line(f"[tpi] machine respawned (boot {self.boot}): resuming from synced data")
            return self._run_script(deadline, timing.sync_interval)
        finally:
            watch.close()
            self.interruption = self.interruption or watch.reasons.get("notice", "")
            self.log.close()
            heartbeat.close()

    def _run_script(self, deadline: float, sync_interval: float) -> dict[str, Any]:
        command = script_command(self.script)
        env = script_environment(self.task, self.values, self.rank)
        self.process = subprocess.Popen(
            command, cwd=self.work, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        atomic_write_bytes(self.machine_dir / "script.pid", str(self.process.pid).encode())
        reader = threading.Thread(target=self._read_output, name="tpi-output", daemon=True)
        reader.start()
        result = "success"
        next_sync = time.time() + sync_interval
        while self.process.poll() is None:
            now = time.time()
            if now >= deadline:
                self.log.line("[tpi] timeout: the task's deadline passed; stopping the script")
                self._kill_script()
                result = "timeout"
                break
            if self.interrupted.is_set():
                self.log.line("[tpi] the cloud is taking this machine; syncing back, the rank respawns")
                self._kill_script()
                result = "interrupted"
                break
            if self.stopping.is_set():
                self.log.line("[tpi] stop requested; stopping the script")
                self._kill_script()
                result = "stopped"
                break
            if now >= next_sync:
                self._push_quietly()
                next_sync = time.time() + sync_interval
            time.sleep(min(0.2, max(0.01, deadline - now)))
        code = self.process.wait()
        reader.join(timeout=10)
        if code < 0:
            code = 128 - code  # shell convention for a signal
        if result == "success" and code != 0:
            result = "failure"
        self.push()  # the last sync completes before the machine releases itself
        if result == "interrupted":
            return {"result": None, "interrupted": True}
        if result == "stopped":
            return {"result": "failure", "code": code, "reason": "stopped"}
        return {"result": result, "code": code}

    def _push_quietly(self) -> None:
        try:
            self.push()
        except Exception as error:  # try again at the next interval; the final push is strict
            self.log.line(f"[tpi] sync back failed, will retry: {error}")

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in iter(self.process.stdout.readline, b""):
            self.log.line(raw.decode("utf-8", "replace"))

    def _kill_script(self) -> None:
        assert self.process is not None
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=KILL_GRACE)
                return
            except subprocess.TimeoutExpired:
                continue

    def report(self, outcome: dict[str, Any]) -> None:
        outcome.update(rank=self.rank, boot=self.boot, finished=layout.timestamp())
        self.remote.write(layout.status(self.rank), json.dumps(outcome).encode())


# ---------------------------------------------------------------- scaling-group machines
# `--rank auto` and `--release CLOUD`: machines of a cloud scaling group do not know their rank
# and release themselves. Hooks per cloud (a module with identity() and release(machine_id)) are
# found by entry point (`tpi_jupyter.machines`), loaded only on machines that ask for them.


def _hooks(cloud: str) -> Any:
    from .backends.base import machine_hooks
    from .spec import SpecError

    try:
        return machine_hooks(cloud)
    except SpecError as error:
        raise SystemExit(f"tpi-agent: {error}") from None


def machine_id(cloud: str) -> str:
    """This machine's id: TPI_INSTANCE_ID, else the cloud's, else host and process."""
    if os.environ.get("TPI_INSTANCE_ID"):
        return os.environ["TPI_INSTANCE_ID"]
    if cloud:
        return str(_hooks(cloud).identity())
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def claim(remote_url: str, owner: str) -> tuple[int, int] | None:
    """Claim a free rank and its next boot (see ranks.py); None when nothing is left to do."""
    from .ranks import STALE_HEARTBEATS, claim_rank

    remote = Remote(remote_url)
    task = json.loads(remote.read_text(layout.TASK_JSON))
    interval = Timing(**task.get("timing", {})).heartbeat_interval
    found = claim_rank(remote.fs, remote.root, int(task["spec"]["parallelism"]), owner,
                       STALE_HEARTBEATS * interval + 1, give_up_at=float(task["deadline"]) + 60)  # fmt: skip
    return None if found is None else (found.rank, found.boot)


def release(cloud: str, owner: str) -> None:
    if cloud:
        _hooks(cloud).release(owner)


def _on_sigterm(agent: Agent) -> None:
    """SIGTERM while the OS shuts down is the cloud taking the machine, not a user stop."""
    if shutting_down():
        agent.interrupt("the machine is shutting down")
    else:
        agent.stopping.set()


def copy_boot_log(agent: Agent, path: str) -> None:
    if path and os.path.isfile(path):
        try:
            agent.remote.write(layout.boot_log(agent.rank, agent.boot), Path(path).read_bytes())
        except Exception as error:  # the machine-id copy is already in the remote
            print(f"tpi-agent: boot log copy failed: {error}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpi_jupyter.agent")
    parser.add_argument("--remote", required=True)
    parser.add_argument("--rank", required=True, help="a rank number, or auto: claim the lowest free rank")
    parser.add_argument("--boot", type=int, help="the boot number (required with a rank number)")
    parser.add_argument("--machine-dir", required=True)
    parser.add_argument("--release", default="", metavar="CLOUD",
                        help="after reporting, release this machine from its group (aws)")  # fmt: skip
    parser.add_argument("--boot-log", default="", help="the boot script's log, copied to the rank's boot")
    args = parser.parse_args(argv)
    owner = machine_id(args.release) if args.rank == "auto" or args.release else ""
    if args.rank == "auto":
        claimed = claim(args.remote, owner)
        if claimed is None:  # every rank has reported: this machine has nothing to do
            release(args.release, owner)
            return 0
        rank, boot = claimed
    elif args.rank.isdigit() and args.boot is not None:
        rank, boot = int(args.rank), args.boot
    else:
        parser.error("--rank takes a number (with --boot) or auto")
    notice = getattr(_hooks(args.release), "notice", None) if args.release else None
    agent = Agent(args.remote, rank, boot, args.machine_dir, notice)
    signal.signal(signal.SIGTERM, lambda *_: _on_sigterm(agent))
    copy_boot_log(agent, args.boot_log)
    try:
        agent.prepare()
        outcome = agent.run()
    except Exception as error:  # a status even then: a machine without one would be respawned forever
        outcome = {"result": "failure", "code": None, "reason": f"agent error: {error}"}
    if outcome.get("interrupted"):  # no status, no release: the group respawns the rank
        print(
            f"tpi-agent: interrupted ({agent.interruption or 'shutdown'}); data synced, rank left to respawn"
        )
        return 0
    agent.report(outcome)
    try:
        release(args.release, owner)  # only after the status is written; only this machine
    except Exception as error:  # already leaving its group (a stop scaled it away): it powers off
        print(f"tpi-agent: release failed: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
