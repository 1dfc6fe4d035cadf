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
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import layout
from .agent_watch import Check, Watch, shutting_down, stop_requested
from .backends.base import Timing
from .fanout.layout import MAP_JSON
from .output import MASK_MIN as MASK_MIN  # documented in the README
from .output import Lines, mask, mask_values, read_output

# Variables a machine's own environment contributes to the script; nothing else leaks in.
BASE_ENVIRONMENT = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
KILL_GRACE = 5.0
SETTLE = 0.2  # seconds a file must rest before a push made while the script runs takes it
PROCESS_MARK = "TPI_PROCESS_MARK"  # set by a supervisor that finds its processes by environment


class RemoteGone(Exception):
    """The task's remote was removed (the task was destroyed): nothing may recreate it."""


def _sync() -> Any:
    """The syncer, imported on first use: a plain local task starts without fsspec's import."""
    from . import sync

    return sync


def write_atomic(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Readers see the old or the new content; the directory must exist. `durable=False` skips
    the fsync, for bookkeeping that a crash makes moot (a pid file)."""
    temp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(temp, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temp, path)


class Remote:
    """The task's remote (bucket prefix or directory) as the agent writes to it.

    A plain directory is reached with os calls (no fsspec import on the way to the script);
    writes there never create the remote's root, so a destroyed task stays destroyed.
    """

    def __init__(self, url: str):
        self.url, self.local = url, "://" not in url
        self.gone = False  # set once the remote was seen removed: from then on nothing is written
        self._fs: Any = None
        if self.local:
            self.root = os.path.abspath(url)
        else:
            self._fs, self.root = _sync().filesystem(url)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, _ = _sync().filesystem(self.url)
        return self._fs

    @fs.setter
    def fs(self, fs: Any) -> None:  # a test may wrap it (to count requests)
        self._fs = fs

    def key(self, key: str) -> str:
        return layout.join(self.root, key)

    def read_text(self, key: str) -> str:
        if self.local:
            return Path(self.key(key)).read_text(encoding="utf-8")
        return self.fs.cat_file(self.key(key)).decode("utf-8")  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        return os.path.exists(self.key(key)) if self.local else bool(self.fs.exists(self.key(key)))

    def names(self, key: str) -> list[str]:
        """The entries directly below key (none when it does not exist)."""
        try:
            if self.local:
                return os.listdir(self.key(key))
            return [
                str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.key(key), detail=False)
            ]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def check(self, thorough: bool = False) -> None:
        """Raise RemoteGone if the remote was removed; `thorough` asks an object store too."""
        if not self.gone and (self.local or thorough):
            self.gone = not self.exists(layout.TASK_JSON)
        if self.gone:
            raise RemoteGone(f"the task's remote {self.url} was removed")

    def _local_parent(self, key: str) -> str:
        path = self.key(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def write(self, key: str, data: bytes) -> None:
        self.check()
        if self.local:
            write_atomic(self._local_parent(key), data)
        else:
            self.fs.pipe_file(self.key(key), data)  # one put: atomic on object stores

    def append(self, key: str, data: bytes, number: int) -> None:
        """Local files grow by appending; object stores get chunk `number` as a new object
        (`log.000017`), so the bytes uploaded grow with the log, not with its square."""
        self.check()
        if self.local:
            with open(self._local_parent(key), "ab") as handle:
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
        echo: TextIO | None = None,
    ):
        self.remote, self.key, self.local_copy, self.interval = remote, key, local_copy, interval
        self.echo = echo  # the machine's own console too (a pod's log), masked as the remote copy
        self.secrets = mask_values(secrets)
        self._pending: list[bytes] = []
        self._chunks = 0  # chunks flushed so far: the next chunk's number
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a line after a quiet spell is flushed at once
        self._flushed_at = 0.0
        self._thread = threading.Thread(target=self._loop, name="tpi-log", daemon=True)
        local_copy.parent.mkdir(parents=True, exist_ok=True)
        local_copy.write_bytes(b"")

    def start(self) -> None:
        self._thread.start()

    def line(self, text: str) -> None:
        text = mask(text, self.secrets)
        stamped = f"{layout.timestamp()} {text.rstrip(chr(10))}\n".encode("utf-8", "replace")
        with self._lock:
            self._pending.append(stamped)
            if self.echo is not None:
                with contextlib.suppress(OSError, ValueError):
                    self.echo.write(stamped.decode("utf-8", "replace"))
                    self.echo.flush()
        if time.monotonic() - self._flushed_at >= self.interval:
            self._wake.set()

    def flush(self) -> None:
        with self._lock:
            self._flushed_at = time.monotonic()
            chunk = b"".join(self._pending)
            if not chunk:
                return
            # The remote first; the lines stay pending until it has them, so a flaky store loses
            # none (the next flush sends them again as the same chunk number, a superset).
            self.remote.append(self.key, chunk, self._chunks)
            self._pending, self._chunks = [], self._chunks + 1
            # a full machine disk: the remote has the lines
            with contextlib.suppress(OSError), open(self.local_copy, "ab") as handle:
                handle.write(chunk)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as error:  # a flaky remote must not kill the task; retry next tick
                print(f"tpi-agent: log flush failed: {error}", file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
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
    env["PYTHONUNBUFFERED"] = "1"  # lines reach the live log as a terminal would show them
    if os.environ.get(PROCESS_MARK):  # how the local group finds every process of the task
        env[PROCESS_MARK] = os.environ[PROCESS_MARK]
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


# The agent's own way to its cloud: endpoints, the metadata service, the credential chain.
CLOUD_ACCESS = ("AWS_", "GOOGLE_", "GCE_", "GCSFS_", "CLOUDSDK_", "AZURE_", "MSI_", "IDENTITY_",
                "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "NO_GCE_CHECK")  # fmt: skip


def cloud_access_environment() -> dict[str, str]:
    """What the agent itself uses to reach the remote and the queue, for a map run's worker (our
    code, not the user's script). On a cloud machine these name the machine's own identity, which
    any process there reaches through the metadata service anyway; on Kubernetes they are the
    store's credentials the task's Secret gives the agent."""
    return {name: value for name, value in os.environ.items() if name.startswith(CLOUD_ACCESS)}


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
        self._signalled_ns = 0  # when the script was last told to stop (its files may be torn)
        self.interruption = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.command: Callable[[Path], list[str]] = script_command  # a machine hook may choose another
        self.reported: set[str] = set()  # sync warnings already logged
        self._next_control = 0.0
        self._stop_outcome: dict[str, Any] = {}
        self.cloud = ""  # the cloud whose machine hooks apply (`--release`), "" locally
        self.echo: TextIO | None = None  # where the log is also written as it comes (a pod's stdout)

    def interrupt(self, reason: str) -> None:
        self.interruption = self.interruption or reason
        self.interrupted.set()

    def _watch(self, interval: float) -> Watch:
        checks = {
            "stop": (
                stop_requested(self.remote.exists),  # a local remote: no fsspec on the way
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
        self.manifest: Any = None  # None: the work directory started empty
        if self.remote.local and not self.remote.names(layout.DATA):
            return  # nothing to fetch: the syncer is imported at the first push
        sync = _sync()
        sync.download(self.remote.fs, self.remote.key(layout.DATA), self.work, exclude=self.exclude)
        self.manifest = sync.local_manifest(self.work, self.exclude, str(self.private / "manifest.json"))
        self.manifest.writer = self.manifest.written.writer = f"rank{self.rank}-boot{self.boot}"

    def push(self, settle: float = 0.0, torn: tuple[int, int] | None = None, defer: bool = True) -> bool:
        """Sync the work directory back; files it cannot sync are skipped and logged once each.

        The pushes while the script runs settle (see sync.upload); the final one takes everything
        but what the script may have been halfway through writing when it was killed (`torn`)."""
        self.remote.check()
        sync = _sync()
        if self.manifest is None:  # what local_manifest says of an empty directory
            self.manifest = sync.Manifest(
                str(self.private / "manifest.json"), f"rank{self.rank}-boot{self.boot}"
            )
        result = sync.upload(
            self.work,
            self.remote.fs,
            self.remote.key(layout.DATA),
            exclude=self.exclude,
            manifest=self.manifest,
            settle=settle,
            defer=defer,
            torn=torn,
        )
        if result.held:
            self.log.line(f"[tpi] kept as last synced (being written when the script was stopped): "
                          f"{', '.join(result.held[:5])}{' ...' if len(result.held) > 5 else ''}")  # fmt: skip
        for warning in result.warnings:
            if warning not in self.reported:
                self.reported.add(warning)
                self.log.line(f"[tpi] {warning}")
        return bool(result.deferred)

    def run(self) -> dict[str, Any]:
        timing = Timing(**self.task.get("timing", {}))  # the backend's cadence, written at launch
        deadline = float(self.task["deadline"])
        secrets = [self.values[name] for name in self.task.get("masked", []) if name in self.values]
        self.log = LogStream(self.remote, layout.log(self.rank, self.boot), self.private / "log",
                             timing.log_interval, secrets, self.echo)  # fmt: skip
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
            why = self._stop_reason()
            if why:  # a rank failed (or the task was stopped) before this one started
                self.log.line(f"[tpi] {why}; not starting the script")
                return {"result": "failure", "code": None, **self._stop_outcome}
            from .agent_multinode import run as run_ranks  # multi-node: rendezvous, launch mode

            return run_ranks(self, deadline, timing.sync_interval)
        finally:
            watch.close()
            self.interruption = self.interruption or watch.reasons.get("notice", "")
            self.log.close()
            heartbeat.close()

    def _run_script(
        self, deadline: float, sync_interval: float, extra_env: dict[str, str] | None = None,
        restart: Callable[[], str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Run the script to its end; `restart` may end it early to run it again (launch=mpi)."""
        from .multinode import netns_prefix

        command = [*netns_prefix(), *self.command(self.script)]
        env = {**script_environment(self.task, self.values, self.rank), **(extra_env or {})}
        env["TPI_REMOTE"] = self.remote.url  # where a map run's worker finds its config (no secret)
        env["TPI_AGENT_PYTHON"] = sys.executable  # the interpreter that has tpi_jupyter (map runs)
        if self.remote.exists(MAP_JSON):  # the script is our map worker: it reads remote and queue
            env = {**cloud_access_environment(), **env}
        self.process = subprocess.Popen(
            command, cwd=self.work, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        exited, (wake_read, wake_write) = threading.Event(), os.pipe()
        reader = threading.Thread(
            target=self._read_output, args=(exited, wake_read), name="tpi-output", daemon=True
        )
        reader.start()
        write_atomic(self.machine_dir / "script.pid", str(self.process.pid).encode(), durable=False)
        result, restart_why = "success", ""
        next_sync, quick = time.time() + sync_interval, False
        while self.process.poll() is None:
            now = time.time()
            if now >= deadline:
                self.log.line("[tpi] timeout: the task's deadline passed; stopping the script")
                self._kill_script()
                result = "timeout"
                break
            if self.interrupted.is_set():
                self.log.line("[tpi] the cloud is taking this machine; syncing back, the rank respawns")
                # While the script still runs: a file it rewrites often is then fresh in the remote,
                # not as old as the last interval's copy, which the push after the kill keeps.
                self._push_quietly(defer=False)
                self._kill_script()
                result = "interrupted"
                break
            why = self._stop_reason()
            if why:
                self.log.line(f"[tpi] {why}; stopping the script")
                self._kill_script()
                result = "stopped"
                break
            restart_why = restart() if restart is not None else ""
            if restart_why:
                self.log.line(f"[tpi] {restart_why}; ending the script")
                self._kill_script()
                result = "restart"
                break
            if now >= next_sync:
                # A file deferred as too young is taken by the next round: run that round as soon
                # as it has settled, once, so a file rewritten often still syncs every interval.
                quick = self._push_quietly() and not quick
                next_sync = time.time() + (2 * SETTLE if quick else sync_interval)
            time.sleep(min(0.05, max(0.01, deadline - now)))
        code = self.process.wait()
        # The task ends with the script, not when its background children close the pipe.
        exited.set()
        os.write(wake_write, b"x")
        reader.join()
        self._end_leftovers()
        for end in (wake_read, wake_write):
            os.close(end)
        if code < 0:
            code = 128 - code  # shell convention for a signal
        if result == "success" and code != 0:
            result = "failure"
        self.push(torn=self._torn_window())  # the last sync completes before the machine releases itself
        if result == "interrupted":
            return {"result": None, "interrupted": True}
        if result == "restart":
            return {"result": None, "restart": restart_why}
        if result == "stopped":
            return {"result": "failure", "code": code, **self._stop_outcome}
        return {"result": result, "code": code}

    def _stop_reason(self) -> str:
        """Why the script must stop now (a user stop, a failed rank, a destroyed task), or ""."""
        if self.stopping.is_set():
            self._stop_outcome = {"reason": "stopped"}
            return "stop requested"
        now = time.monotonic()
        if now < self._next_control:
            return ""
        timing = Timing(**self.task.get("timing", {}))  # a local disk is looked at as often as logs
        self._next_control = now + (timing.log_interval if self.remote.local else timing.heartbeat_interval)
        try:
            names = self.remote.names(".tpi")
            if "task.json" not in names and not self.remote.exists(layout.TASK_JSON):  # asked twice
                self.remote.gone = True
                self._stop_outcome = {"reason": "stopped: the task was destroyed"}
                return "the task's remote was removed (destroyed)"
            if "control" not in names:
                return ""
            request = json.loads(self.remote.read_text(layout.CONTROL_FAILED))
        except (FileNotFoundError, ValueError):
            return ""
        except Exception as error:  # a flaky remote: look again next time
            print(f"tpi-agent: reading the stop request failed: {error}", file=sys.stderr)
            return ""
        failed = request.get("rank")
        if not isinstance(failed, int) or failed == self.rank:
            return ""
        self._stop_outcome = {"reason": f"stopped: rank {failed} failed", "stopped_by": failed}
        return f"rank {failed} failed; policy: a failed rank stops the others"

    def _push_quietly(self, defer: bool = True) -> bool:
        """One push while the script runs; whether it deferred a file that was still being written."""
        try:
            return self.push(settle=SETTLE, defer=defer)
        except Exception as error:  # try again at the next interval; the final push is strict
            self.log.line(f"[tpi] sync back failed, will retry: {error}")
            return False

    def _read_output(self, exited: threading.Event, wake_fd: int) -> None:
        assert self.process is not None and self.process.stdout is not None
        interval = Timing(**self.task.get("timing", {})).log_interval
        read_output(self.process.stdout.fileno(), Lines(self.log.line, interval), exited, wake_fd)
        self.process.stdout.close()  # a background child still writing gets EPIPE, not a full pipe

    def _end_leftovers(self) -> None:
        """The script has exited: what it left running in its process group ends with it."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def _torn_window(self) -> tuple[int, int] | None:
        """Around the moment the script was signalled: a file it wrote then may be half-written
        (`echo 7 | tee epoch.txt` empties the file first); what a trap writes after that is taken."""
        if not self._signalled_ns:
            return None
        margin = int(SETTLE * 1e9)
        return self._signalled_ns - margin, self._signalled_ns + margin

    def _kill_script(self) -> None:
        assert self.process is not None
        self._signalled_ns = time.time_ns()
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
        self.remote.check(thorough=True)  # one look before the last write: never recreate it
        outcome.update(rank=self.rank, boot=self.boot, finished=layout.timestamp())
        parallelism = int(self.task["spec"]["parallelism"]) if hasattr(self, "task") else 1
        stop_others(self.remote, self.rank, parallelism, outcome)
        self.remote.write(layout.status(self.rank), json.dumps(outcome).encode())


def stop_others(remote: Remote, rank: int, parallelism: int, outcome: dict[str, Any]) -> None:
    """The task's policy: a rank that failed on its own stops the others (they bill on a cloud).

    One stop request in the remote, which every agent watches; the first failure names it.
    """
    failed = outcome.get("result") == "failure" and not str(outcome.get("reason", "")).startswith("stopped")
    if parallelism > 1 and failed and not remote.exists(layout.CONTROL_FAILED):
        request = {"rank": rank, "reason": f"rank {rank} failed", "time": layout.timestamp()}
        remote.write(layout.CONTROL_FAILED, json.dumps(request).encode())


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
    hooks = _hooks(args.release) if args.release else None
    agent = Agent(args.remote, rank, boot, args.machine_dir, getattr(hooks, "notice", None))
    agent.command = getattr(hooks, "script_command", script_command)
    agent.cloud = args.release
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
    try:
        agent.report(outcome)
    except RemoteGone as error:  # destroyed meanwhile: report nothing, recreate nothing
        print(f"tpi-agent: {error}; not reporting", file=sys.stderr)
    try:
        release(args.release, owner)  # only after the status is written; only this machine
    except Exception as error:  # already leaving its group (a stop scaled it away): it powers off
        print(f"tpi-agent: release failed: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
