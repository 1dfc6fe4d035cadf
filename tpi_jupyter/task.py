"""Task lifecycle: launch / read / logs / stop / pull / destroy, status collapse and events.

The faces (magics, CLI, widgets, server) are thin over this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from fsspec.utils import get_protocol

from . import launcher, layout, state
from .backends.base import Backend, EnvironmentHolder, GroupState, Sweepable, get_backend
from .backends.base import pricing_text as pricing_text  # the faces' one pricing label
from .backends.kit import sweep as kit_sweep
from .backends.kit.steps import Steps
from .output import MASK_MIN
from .prices.estimate import plan_price_lines, price_line, price_warnings
from .prices.usage import machine_seconds
from .spec import SpecError, TaskSpec, random_name, resolve_environment
from .sync import Excluder, ProgressCallback, download, filesystem, is_local, scan_local, upload

FINAL = ("succeeded", "failed", "timeout", "destroyed")
RESULT_STATE = {"success": "succeeded", "failure": "failed", "timeout": "timeout"}
FAST_POLL, YOUNG = 0.025, 5.0  # seconds: how often, and how long after launch, faces poll fast
PLAN_FILES = 50  # upload lines a dry run shows without --files
TIMEOUT_GRACE = 120.0  # seconds past the deadline before an unreported task counts as timed out


# The last read of each task in this process (monotonic time, snapshot): every Task object of a
# task (kernel, widgets, REST handlers) shares it, so the cloud is read at most once per interval.
_RECENT: dict[str, tuple[float, Snapshot]] = {}


class TaskError(Exception):
    """A failure to report in one line (unknown task, a cloud refusing, a failed step)."""


@dataclass
class RankState:
    rank: int
    state: str  # queued provisioning running preempted succeeded failed stopped timeout lost
    boots: int = 0
    code: int | None = None
    reason: str = ""
    finished: float | None = None  # when the rank reported, epoch seconds
    stopped_by: int | None = None  # the failed rank that stopped this one (the task's policy)


@dataclass
class Snapshot:
    status: str
    ranks: list[RankState] = field(default_factory=list)
    group: GroupState | None = None
    log_sizes: dict[str, int] = field(default_factory=dict)  # log key -> bytes (all its chunks)
    log_parts: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # log key -> (path, size)


@dataclass
class Listed:
    """A task in a listing, read or not: one unreadable task must not hide the others."""

    task: Task
    snapshot: Snapshot | None
    error: Exception | None = None

    @property
    def status(self) -> str:
        if self.snapshot is not None:
            return self.snapshot.status
        return f"unknown ({self.error.__class__.__name__})"


@dataclass
class Plan:
    """What a launch would create (`--dry-run`)."""

    task_id: str
    lines: list[str]
    files: int
    bytes: int
    uploads: list[tuple[str, int]] = field(default_factory=list)  # (relpath, size) in path order
    requests: list[dict[str, Any]] = field(default_factory=list)  # create requests, for backends that say

    def json(self) -> str:
        """`--dry-run --json`: the plan, and the body of every create request a backend would send."""
        return json.dumps({"task_id": self.task_id, "plan": self.lines, "files": self.files, "bytes": self.bytes,
                           "requests": self.requests}, indent=1)  # fmt: skip

    def text(self, all_files: bool = False) -> str:
        """The plan; the upload list is cut at PLAN_FILES lines unless all_files."""
        shown = self.uploads if all_files else self.uploads[:PLAN_FILES]
        lines = [*self.lines, *(f"      {relpath}  {human_bytes(size)}" for relpath, size in shown)]
        if len(shown) < len(self.uploads):
            lines.append(
                f"      ... and {len(self.uploads) - len(shown)} more files (--dry-run --files lists all)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


READ_ATTEMPTS = 5  # consecutive failed reads of the remote before a follow or wait gives up


class LogTail:
    """Reads only the new bytes of every rank's logs since the last call.

    A (rank, boot) log is the concatenation of its chunks (object stores) or one appended file
    (local directories); its offset counts bytes of that whole. Offsets move past complete
    lines only, so they alone are the cursor (the REST API hands them to the browser and back).
    """

    def __init__(self, task: Task, offsets: Mapping[str, int] | None = None):
        self.task = task
        self.offsets: dict[str, int] = dict(offsets or {})

    def _read(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a log, across its chunks as last listed."""
        fs, _ = self.task.remote
        parts, data, base = self.task.log_parts.get(key, []), [], 0
        for path, size in parts:
            if base + size > start and base < end:
                data.append(fs.cat_file(path, start=max(0, start - base), end=min(size, end - base)))
            base += size
        return b"".join(data)

    def poll(self, sizes: Mapping[str, int] | None = None) -> list[tuple[int, str, str]]:
        """New (rank, timestamp, text) lines, merged across ranks in time order."""
        if sizes is None:
            sizes = self.task.read(fresh=True).log_sizes
        lines: list[tuple[int, str, str]] = []
        moved: dict[str, int] = {}  # offsets move only once every read succeeded: a retry loses nothing
        for key, size in sorted(sizes.items()):
            offset = self.offsets.get(key, 0)
            parsed = layout.parse_report(key)
            if size <= offset or parsed is None:
                continue
            try:
                chunk = self._read(key, offset, size)
            except FileNotFoundError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            if not complete:
                continue  # a line still being written: read it whole next time
            moved[key] = offset + len(complete)
            rank = parsed.rank
            for raw in complete[:-1].split(b"\n"):
                stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
                lines.append((rank, stamp, text))
        self.offsets.update(moved)
        lines.sort(key=lambda line: line[1])
        return lines


class Task:
    """One task, found in the registry; every method works after a kernel restart."""

    def __init__(self, record: dict[str, Any], backend: Backend[Any] | None = None):
        self.record = record
        self._backend = backend
        self._state: Any = None
        self._remote: tuple[Any, str] | None = None
        self.log_parts: dict[str, list[tuple[str, int]]] = {}

    # -- lookup

    @classmethod
    def find(cls, name_or_id: str) -> Task:
        record = state.find(name_or_id)
        if record is None:
            known = ", ".join(r.get("name") or r["id"] for r in state.records()) or "none"
            raise TaskError(f"task: no task named {name_or_id!r}; known tasks: {known}")
        return cls(record)

    @classmethod
    def all(cls) -> list[Task]:
        return [cls(record) for record in state.records()]

    @classmethod
    def all_safe(cls) -> list[Listed]:
        """Every task with its snapshot, or the error that kept it from being read."""
        listed = []
        for task in cls.all():
            try:
                listed.append(Listed(task, task.read()))
            except Exception as error:  # one unreadable task must not hide the others
                listed.append(Listed(task, None, error))
        return listed

    # -- properties

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def name(self) -> str:
        return str(self.record.get("name") or self.id)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.record["spec"])

    @property
    def task_spec(self) -> TaskSpec:
        return TaskSpec.from_public(self.record["spec"])

    @property
    def destroyed(self) -> bool:
        """The registry is the source: a task destroyed through another handle is destroyed here too."""
        return self._refresh() is None

    def _refresh(self) -> dict[str, Any] | None:
        """Reload the record (events and status other handles saved); None once destroyed."""
        stored = state.load(self.id)
        if stored is not None:
            self.record = stored
        return stored

    @property
    def backend(self) -> Backend[Any]:
        if self._backend is None:
            self._backend = get_backend(self.record["cloud"])
        return self._backend

    @property
    def backend_state(self) -> Any:
        """The backend's typed state, rebuilt once from the record (older records: record[cloud])."""
        if self._state is None:
            stored = self.record.get("backend", self.record.get(self.record["cloud"], {}))
            self._state = self.backend.state_type(**stored)
        return self._state

    @property
    def poll_interval(self) -> float:
        """The least seconds between two reads of this task's cloud (the backend declares it)."""
        return float(self.backend.capabilities.poll_interval)

    def _save_state(self) -> None:
        """Persist the backend's state (it changed); a deleted task stays deleted."""
        backend = asdict(self.backend_state)
        self.record["backend"] = backend
        with contextlib.suppress(OSError):
            state.update(self.id, lambda record: record.update(backend=backend))

    @property
    def remote(self) -> tuple[Any, str]:
        if self._remote is None:
            self._remote = filesystem(self.record["remote"])
        return self._remote

    # -- reading

    def read(self, fresh: bool = False) -> Snapshot:
        """The task now; within the backend's poll interval the last read answers (unless fresh)."""
        if self._refresh() is None:
            return Snapshot("destroyed")
        cached = _RECENT.get(self.id)
        if not fresh and cached and time.monotonic() - cached[0] < self.poll_interval:
            self.log_parts = cached[1].log_parts
            return cached[1]
        group = self.backend.read(self.task_spec, self.backend_state)
        statuses, boots, parts = self._read_reports()
        group.events.extend(self._restarts)  # launch=mpi: whole-job restarts, as events
        self.log_parts = parts
        log_sizes = {key: sum(size for _, size in chunks) for key, chunks in parts.items()}
        ranks = self._ranks(group, statuses, boots)
        snapshot = Snapshot(self._collapse(ranks, group), ranks, group, log_sizes, parts)
        _RECENT[self.id] = (time.monotonic(), snapshot)
        if snapshot.status != self.record.get("status"):
            self.record["status"] = snapshot.status
            with contextlib.suppress(OSError):
                state.update(self.id, lambda record: record.update(status=snapshot.status))
        return snapshot

    def _read_reports(
        self,
    ) -> tuple[dict[int, dict[str, Any]], dict[int, set[int]], dict[str, list[tuple[str, int]]]]:
        """Statuses, boots per rank and every log's parts (chunks in order), from one listing."""
        fs, root = self.remote
        reports = layout.join(root, layout.REPORTS)
        try:
            listing = fs.find(reports, detail=True) if fs.exists(reports) else {}
        except FileNotFoundError:
            listing = {}
        statuses: dict[int, dict[str, Any]] = {}
        boots: dict[int, set[int]] = {}
        chunks: dict[str, list[tuple[int, str, int]]] = {}
        self._restarts: list[dict[str, Any]] = []
        for key, path in layout.parse_reports(root, listing):
            if key.boot is None and key.name == layout.RESTARTS:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    self._restarts = [{**found, "kind": "job-restarted", "rank": None}
                                      for found in json.loads(fs.cat_file(path))]  # fmt: skip
            if key.boot is None and key.name == layout.STATUS:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    statuses[key.rank] = json.loads(fs.cat_file(path))
            elif key.boot is not None:
                boots.setdefault(key.rank, set()).add(key.boot)
                if key.is_log:
                    number = -1 if key.chunk is None else key.chunk
                    chunks.setdefault(key.log_key, []).append(
                        (number, path, int(listing[path].get("size") or 0))
                    )
        parts = {log: [(path, size) for _, path, size in sorted(found)] for log, found in chunks.items()}
        return statuses, boots, parts

    def _ranks(
        self, group: GroupState, statuses: dict[int, dict[str, Any]], boots: dict[int, set[int]]
    ) -> list[RankState]:
        alive = {machine.rank for machine in group.machines if machine.alive}
        ranks = []
        for rank in range(int(self.spec["parallelism"])):
            count = len(boots.get(rank, ()))
            if rank in statuses:
                outcome = statuses[rank]
                finished = None
                with contextlib.suppress(KeyError, ValueError):
                    finished = layout.parse_timestamp(outcome["finished"])
                stopped_by = outcome.get("stopped_by")
                result = (
                    "stopped"
                    if isinstance(stopped_by, int)
                    else RESULT_STATE.get(outcome.get("result", ""), "failed")
                )
                ranks.append(RankState(rank, result, count, outcome.get("code"), outcome.get("reason", ""),
                                       finished, stopped_by if isinstance(stopped_by, int) else None))  # fmt: skip
            elif rank in alive:
                ranks.append(RankState(rank, "running" if count else "provisioning", count))
            elif launcher.interrupted(self.record):  # before the group: it exists from create on
                ranks.append(RankState(rank, "failed", count, reason=launcher.INTERRUPTED))
            elif group.exists:
                ranks.append(RankState(rank, "preempted" if count else "queued", count))
            else:
                ranks.append(RankState(rank, "lost" if self.record.get("started") else "queued", count))
        return ranks

    def _collapse(self, ranks: list[RankState], group: GroupState) -> str:
        states = [rank.state for rank in ranks]
        if "failed" in states or "stopped" in states:
            return "failed"
        if "timeout" in states:
            return "timeout"
        if all(s == "succeeded" for s in states):
            return "succeeded"
        if time.time() > float(self.record["deadline"]) + TIMEOUT_GRACE:
            return "timeout"
        if "lost" in states:
            return "failed"
        if "preempted" in states:
            return "preempted"
        if "running" in states:
            return "running"
        return "provisioning" if group.exists else "queued"

    @property
    def status(self) -> str:
        return self.read().status

    def events(self, snapshot: Snapshot | None = None) -> list[dict[str, Any]]:
        """Client events (created, pulled, ...) merged with the machine group's and the ranks'
        outcomes (which rank failed, which were stopped for it), oldest first."""
        snapshot = snapshot or self.read()
        group = snapshot.group.events if snapshot.group else []
        ranks = rank_events(snapshot.ranks)
        return sorted([*self.record.get("events", []), *group, *ranks], key=lambda event: event["time"])

    def logs(self) -> list[str]:
        """The whole log of every rank (all boots), one string per machine as in TPI."""
        tail = LogTail(self)
        per_rank: dict[int, list[str]] = {rank: [] for rank in range(int(self.spec["parallelism"]))}
        for rank, stamp, text in tail.poll():
            per_rank.setdefault(rank, []).append(f"{stamp} {text}")
        return ["\n".join(lines) for _, lines in sorted(per_rank.items())]

    def follow(self, poll: float = 0.25, until: float | None = None) -> Iterator[tuple[int, str, str]]:
        """New log lines as they arrive, until the task is final and every log is read.

        `until` (a time.monotonic() value) ends the stream early, even while the script is silent.
        """
        tail = LogTail(self)
        failures, lines = 0, []  # lines read but not yet given out (kept across a failed read)
        while True:
            try:
                snapshot = self.read()
                lines += tail.poll(snapshot.log_sizes)
                if snapshot.status in FINAL:
                    lines += tail.poll()  # whatever was flushed before the status
            except TaskError:
                raise
            except Exception:  # a storage read failed after its client's own retries: read again
                failures += 1
                if failures >= READ_ATTEMPTS:
                    raise
                time.sleep(min(0.5 * 2**failures, 8.0))
                continue
            failures, given = 0, lines
            lines = []
            yield from given
            if snapshot.status in FINAL:
                return
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                return
            pause = self.next_poll(poll, tail)
            time.sleep(pause if left is None else min(pause, left))

    def next_poll(self, interval: float, tail: LogTail) -> float:
        """A face's next poll: fast in the task's first seconds until its first line was read, so
        that line shows at once (a poll of a local task costs well under a millisecond of CPU)."""
        young = time.time() - float(self.record["created"]) < YOUNG
        fast = max(self.poll_interval, min(interval, FAST_POLL))  # never faster than the backend allows
        return fast if young and not tail.offsets else interval

    def wait(
        self, timeout: float | None = None, on_line: Callable[[int, str, str], None] | None = None
    ) -> str:
        until = None if timeout is None else time.monotonic() + timeout
        for line in self.follow(until=until):
            if on_line:
                on_line(*line)
        status = self.status
        if status not in FINAL:
            raise TaskError(f"task {self.name}: still {status} after {timeout or 0:.0f} s")
        return status

    def tail_text(self, lines: int = 20) -> str:
        width = int(self.spec["parallelism"])
        merged = [format_line(rank, text, width) for rank, _, text in sorted(
            LogTail(self).poll(), key=lambda line: line[1])]  # fmt: skip
        return "\n".join(merged[-lines:])

    # -- acting

    def _event(self, kind: str, detail: str = "") -> None:
        event = {"time": time.time(), "kind": kind, "rank": None, "detail": detail}
        # a locked read-modify-write: another handle's events (or status) are kept, not overwritten
        stored = state.update(self.id, lambda record: record.setdefault("events", []).append(event))
        if stored is not None:
            self.record = stored
        else:
            self.record.setdefault("events", []).append(event)

    def stop(self) -> None:
        if self.destroyed:
            return
        self.backend.stop(self.task_spec, self.backend_state)
        self._save_state()
        _RECENT.pop(self.id, None)  # the next read sees the stop
        self._event("stopped")

    def preempt(self, rank: int = 0) -> None:
        """Interrupt a rank as a spot reclaim would; only spot tasks (spot >= 0) are preemptible."""
        self.check_preemptible(rank)
        try:
            self.backend.preempt(self.task_spec, self.backend_state, rank)
        except RuntimeError as error:
            raise TaskError(f"task {self.name}: {error}") from None
        _RECENT.pop(self.id, None)
        self._event("preempt-requested", f"rank {rank}")

    def check_preemptible(self, rank: int) -> None:
        """TaskError unless `rank` of this task may be preempted (a map run asks before its notice)."""
        if float(self.spec["spot"]) < 0:
            raise TaskError(
                f"spot: task {self.name} runs on-demand (spot=-1); accepted: a task launched with spot>=0"
            )
        if not 0 <= rank < int(self.spec["parallelism"]):
            raise TaskError(f"rank: {rank} is out of range; accepted: 0..{int(self.spec['parallelism']) - 1}")

    def pull(self, progress: ProgressCallback | None = None) -> list[str]:
        """Download `output` (a directory or a file) into the workdir without destroying; returns
        the files fetched. TaskError when a file cannot be fetched or output is not on the remote."""
        return self._pull(progress, "pull")

    def _pull(self, progress: ProgressCallback | None, verb: str) -> list[str]:
        if self.destroyed:
            raise TaskError(f"task {self.name}: destroyed; nothing to pull")
        workdir, output = self.record.get("workdir"), self.spec.get("output")
        if not workdir or not output:
            return []
        fs, root = self.remote
        kept = "; nothing was deleted: fix that and destroy again" if verb == "destroy" else ""
        try:
            result = download(fs, layout.join(root, layout.DATA), workdir, subdir=output,
                              exclude=self.spec.get("exclude", []), progress=progress)  # fmt: skip
        except Exception as error:  # SyncError names the file; others are the remote's, one line too
            raise TaskError(f"{verb} of task {self.name}: {error}{kept}") from None
        if not result.files and not result.skipped and not result.dirs:
            if verb == "pull":
                raise TaskError(
                    f"pull of task {self.name}: output {output!r} is not on the remote (yet); nothing pulled"
                )
            self._event("pulled", f"nothing: output {output} was not on the remote")
            return []
        here = f" ({result.skipped} already here)" if result.skipped else ""
        self._event("pulled", f"{len(result.files)} file(s), {human_bytes(result.bytes)}{here}")
        return result.files

    def destroy(self, progress: ProgressCallback | None = None) -> list[str]:
        """Stop machines, download `output`, remove every resource and the registry entry.

        Idempotent; if the download fails nothing is deleted.
        """
        if self.destroyed:
            return []
        spec, backend_state = self.task_spec, self.backend_state
        self.backend.stop(spec, backend_state)
        self._save_state()
        fetched = self._pull(progress, "destroy") if self.record.get("remote") else []
        try:
            self.backend.delete(spec, backend_state)
        except RuntimeError as error:  # e.g. a process of the task survived: say so, keep the entry
            raise TaskError(f"task {self.name}: destroy incomplete: {error}") from None
        if "map" in self.record:  # a map run's queue lives outside the backend's resources
            from .fanout.run import delete_queue

            delete_queue(self.record)
        state.delete(self.id)
        _RECENT.pop(self.id, None)
        self.record["status"] = "destroyed"
        self.record.setdefault("events", []).append(
            {"time": time.time(), "kind": "destroyed", "rank": None, "detail": ""}
        )
        return fetched

    # -- display

    def elapsed(self, snapshot: Snapshot) -> float:
        """Seconds since creation; a final task stops the clock when its last rank reported."""
        finished = [rank.finished for rank in snapshot.ranks if rank.finished]
        end = max(finished) if snapshot.status in FINAL and finished else time.time()
        return max(0.0, end - float(self.record["created"]))

    def cost_text(self, snapshot: Snapshot) -> str:
        """Cost so far, from the backend ("n/a" where no price lookup exists)."""
        seconds = (
            machine_seconds(self, snapshot) if self.backend.capabilities.prices else self.elapsed(snapshot)
        )
        return self.backend.cost(self.task_spec, self.backend_state, seconds)

    def summary(self) -> str:
        spec = self.spec
        snapshot = self.read()
        pricing = pricing_text(float(spec["spot"]))
        outcome = failure_text(snapshot.ranks) if snapshot.status in ("failed", "timeout") else ""
        lines = [
            f"Task {self.name}  {self.id}",
            f"cloud {spec['cloud']} · machine {spec['machine']} x {spec['parallelism']} · {pricing} · status {snapshot.status}"
            + (f": {outcome}" if outcome else ""),
        ]
        lines.append(price_line(self.task_spec))
        if int(spec["parallelism"]) > 1:
            lines.append(f"policy: {FAILURE_POLICY}")
        if not self.record.get("shebang", True):
            lines.append(
                "note: the script has no shebang, so it runs under /bin/bash (/bin/sh in an image without bash)"
            )
        lines.append(f"logs: %tpi logs {self.name} --follow · results: %tpi destroy {self.name}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Task {self.name} {self.id} {self.record.get('cloud')} {self.record.get('status')}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.summary())


FAILURE_POLICY = "a rank that fails stops the other ranks"


def failure_text(ranks: list[RankState]) -> str:
    """Which rank failed, and which were stopped for it: "rank 1 failed with code 3; ..."."""
    parts = [
        f"rank {r.rank} {r.state}" + (f" with code {r.code}" if r.code is not None else "")
        + (f" ({r.reason})" if r.reason else "")
        for r in ranks if r.state in ("failed", "timeout")
    ]  # fmt: skip
    stopped = [str(r.rank) for r in ranks if r.state == "stopped"]
    if stopped:
        parts.append(f"rank(s) {', '.join(stopped)} stopped ({FAILURE_POLICY})")
    return "; ".join(parts)


def rank_events(ranks: list[RankState]) -> list[dict[str, Any]]:
    """Events that the ranks' reports tell: a failure, and the ranks it stopped."""
    events = []
    multi = len(ranks) > 1
    for r in ranks:
        if r.state == "failed" and multi and not r.reason.startswith("stopped"):
            code = f"code {r.code}" if r.code is not None else (r.reason or "no code")
            events.append({"time": r.finished or 0.0, "kind": "rank-failed", "rank": r.rank,
                           "detail": f"{code}; the other ranks are stopped ({FAILURE_POLICY})"})  # fmt: skip
        elif r.state == "stopped":
            events.append({"time": r.finished or 0.0, "kind": "rank-stopped", "rank": r.rank,
                           "detail": f"because rank {r.stopped_by} failed"})  # fmt: skip
    return events


def format_line(rank: int, text: str, world_size: int) -> str:
    return f"[{rank}] {text}" if world_size > 1 else text


# ---------------------------------------------------------------- launching


def launch(
    spec: TaskSpec,
    script: str,
    *,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    local_env: Mapping[str, str] | None = None,
    hooks: LaunchHooks | None = None,
) -> Task | Plan:
    """Create the task's resources, upload, and start its machines; roll back on failure."""
    if not script.strip():
        raise SpecError("script: empty; accepted: the cell body (or --script FILE) with the commands to run")
    if not spec.name:
        spec = spec.with_name(random_name())
    try:
        backend: Backend[Any] | None = get_backend(
            spec.cloud
        )  # a missing backend fails before anything exists
    except SpecError:
        if not dry_run:
            raise
        backend = None  # a dry run still shows what the spec asks for
    existing = state.load(spec.id)
    if existing is not None and not dry_run:
        raise TaskError(
            f"name: task {spec.name!r} ({spec.id}) already exists with status {existing.get('status')}; "
            f"accepted: a new name, or destroy it first (%tpi destroy {spec.name})"
        )
    values = resolve_environment(spec.environment, os.environ if local_env is None else local_env)
    masked = sorted(name for name in values if not spec.environment.get(name))
    now = time.time()
    record: dict[str, Any] = {
        "id": spec.id, "name": spec.name, "cloud": spec.cloud, "spec": spec.public_dict(),
        "workdir": spec.workdir, "created": now, "deadline": now + spec.timeout,
        "shebang": script.startswith("#!"), "status": "provisioning", "launcher": launcher.mark(),
        # imported from the local environment (likely credentials): masked in logs by the agent
        "masked": masked, "warnings": short_secrets(masked, values) + price_warnings(spec),
        "events": [{"time": now, "kind": "created", "rank": None, "detail": ""}],
    }  # fmt: skip
    record["events"] += [
        {"time": now, "kind": "warning", "rank": None, "detail": w} for w in record["warnings"]
    ]
    if backend is None:
        return _plan(spec, None, None)
    backend_state = backend.new_state(spec, record["deadline"])
    record["timing"] = asdict(backend.capabilities.timing)
    record["backend"] = asdict(backend_state)
    if dry_run:
        return _plan(spec, backend, backend_state)
    return _create(spec, backend, backend_state, record, script, values, progress, hooks)


@dataclass
class LaunchHooks:
    """What a kind of task (a map run) adds to a launch: `before_start(record)` once the remote
    holds everything and before machines start, `rollback(record)` when the launch fails."""

    before_start: Callable[[dict[str, Any]], None]
    rollback: Callable[[dict[str, Any]], None]


def _create(
    spec: TaskSpec, backend: Backend[Any], backend_state: Any, record: dict[str, Any], script: str,
    values: dict[str, str], progress: ProgressCallback | None, hooks: LaunchHooks | None = None,
) -> Task:  # fmt: skip
    def checkpoint() -> None:  # what exists is in the registry before the next step can fail
        record["backend"] = asdict(backend_state)
        state.save(record)

    state.save(record)
    try:
        backend.create(spec, backend_state, Steps(spec.cloud, checkpoint))
        record["remote"] = backend.remote_url(spec, backend_state)
        checkpoint()
        if backend.capabilities.holds_environment:  # e.g. a Kubernetes Secret: never in the remote
            cast(EnvironmentHolder, backend).hold_environment(spec, backend_state, values)
        _write_remote(record, script, None if backend.capabilities.holds_environment else values, progress)
        if hooks is not None:
            hooks.before_start(record)
            checkpoint()
        backend.start(spec, backend_state)
        record["started"] = time.time()
        record["events"].append({"time": record["started"], "kind": "started", "rank": None, "detail": ""})
        checkpoint()
    except BaseException as error:
        if hooks is not None:
            with contextlib.suppress(Exception):  # the backend's rollback below still runs
                hooks.rollback(record)
        cleaned = _rollback(backend, spec, backend_state, record)
        if isinstance(error, SpecError):
            raise
        if isinstance(error, Exception):
            raise TaskError(f"launch of {spec.name} failed: {_one_line(error)}; {cleaned}") from error
        raise
    return Task(record, backend)


def short_secrets(masked: list[str], values: Mapping[str, str]) -> list[str]:
    """Imported values too short to be masked in logs (names only, never values)."""
    return [
        f"environment: {name} is shorter than {MASK_MIN} characters, so logs do not mask it"
        for name in masked if len(values[name].strip()) < MASK_MIN
    ]  # fmt: skip


def _write_remote(
    record: dict[str, Any], script: str, values: dict[str, str] | None, progress: ProgressCallback | None
) -> None:
    """The task, script, environment (None: the backend holds it) and workdir, into the remote."""
    fs, root = filesystem(record["remote"])
    fs.makedirs(layout.join(root, ".tpi"), exist_ok=True)
    public = {key: record[key] for key in ("id", "name", "spec", "created", "deadline", "timing", "masked")}
    fs.pipe_file(layout.join(root, layout.TASK_JSON), json.dumps(public).encode())
    fs.pipe_file(layout.join(root, layout.SCRIPT), script.encode())
    env_path = layout.join(root, layout.ENV)
    private: list[str] = []
    if values is not None:  # None: the backend holds the environment (holds_environment)
        fs.pipe_file(env_path, json.dumps(values).encode())
        private.append(env_path)
    if record["spec"].get("launch") == "mpi":
        from .mpi_launch import make_key  # a fresh key per task, as private as the environment

        private.append(layout.join(root, layout.SSH_KEY))
        fs.makedirs(private[-1].rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(private[-1], make_key())
    if is_local(fs):
        for path in private:
            os.chmod(path, 0o600)
    if record["workdir"]:
        result = upload(
            record["workdir"],
            fs,
            layout.join(root, layout.DATA),
            exclude=record["spec"]["exclude"],
            exclude_paths=own_paths(record["spec"], record["remote"]),
            progress=progress,
        )
        record["events"] += [{"time": time.time(), "kind": "upload-warning", "rank": None, "detail": warning}
                             for warning in result.warnings]  # fmt: skip
    else:
        fs.makedirs(layout.join(root, layout.DATA), exist_ok=True)


def own_paths(spec: Mapping[str, Any], remote: str | None) -> list[str]:
    """What tpi-jupyter writes on this machine (registry, keys, local remotes): never uploaded,
    even from a workdir that holds it (a notebook in $HOME with workdir=.)."""
    paths = [str(state.home())]
    for place in (spec.get("container"), remote):
        if place and get_protocol(place) == "file":
            paths.append(os.path.abspath(place.removeprefix("file://")))
    return paths


def _rollback(backend: Backend[Any], spec: TaskSpec, backend_state: Any, record: dict[str, Any]) -> str:
    """Delete what was made; the registry entry goes only when nothing is left behind."""
    try:
        backend.delete(spec, backend_state)
    except Exception as error:
        record["backend"] = asdict(backend_state)
        with contextlib.suppress(OSError):
            state.save(record)
        return f"rollback incomplete ({_one_line(error)}); the task stays listed: destroy it to retry"
    state.delete(record["id"])
    return "everything created so far was removed"


def _one_line(error: BaseException) -> str:
    """A storage client's message on one line (gcsfs puts the server's message on a second)."""
    return " ".join(str(error).split()) or type(error).__name__


def _generic_plan(spec: TaskSpec) -> list[str]:
    pricing = pricing_text(spec.spot)
    where = spec.native_region or "any node"
    return [
        f"machines: {spec.parallelism} x {spec.native_machine}, image {spec.native_image}, in {where}, {pricing}",
        f"! cloud={spec.cloud} has no backend in this version: launching it is refused",
    ]


def _plan(spec: TaskSpec, backend: Backend[Any] | None, backend_state: Any) -> Plan:
    files = size = 0
    warnings: list[str] = []
    found: dict[str, Any] = {}
    if spec.workdir:
        remote = None
        with contextlib.suppress(Exception):  # a cloud may need created state to say where
            remote = backend.remote_url(spec, backend_state) if backend else None
        exclude_paths = own_paths(spec.public_dict(), remote)
        found, _ = scan_local(spec.workdir, Excluder(spec.exclude, spec.workdir), warnings, exclude_paths)
        files, size = len(found), sum(item.size for item in found.values())
    resources = backend.plan(spec, backend_state) if backend else _generic_plan(spec)
    lines = [
        f"dry run: nothing was created. Task {spec.name} ({spec.id}) would create:",
        *(f"  - {line}" for line in resources),
        f"  - upload: {files} files, {human_bytes(size)} from {spec.workdir}" if spec.workdir
        else "  - upload: nothing (no workdir)",
        f"  - environment: {', '.join(sorted(spec.environment)) or 'none'} (values are never shown)",
        *(f"  ! {warning}" for warning in warnings),
        *(f"  {line}" for line in plan_price_lines(spec)),
    ]  # fmt: skip
    if found:
        lines.append("  - files to upload:")
    # A backend may show its create requests (`--dry-run --json`); without the method, none.
    requests = getattr(backend, "plan_requests", None)
    return Plan(spec.id, lines, files, size, [(relpath, found[relpath].size) for relpath in sorted(found)],
                requests(spec, backend_state) if requests else [])  # fmt: skip


# ---------------------------------------------------------------- sweeping


def sweep(cloud: str, *, delete: bool, region: str | None = None, everyone: bool = False) -> list[str]:
    """What tasks gone from the registry left in `cloud` (the caller's unless `everyone`)."""
    backend = get_backend(cloud)
    if not backend.capabilities.sweep:
        raise TaskError(
            f"sweep: cloud {cloud} leaves nothing to sweep; accepted: a cloud backend such as aws"
        )
    sweeper: Sweepable = backend  # type: ignore[assignment]
    live = state.known_ids()  # every registry file, even one too broken to list, counts as live
    try:
        return kit_sweep.sweep(sweeper, live, region=region, everyone=everyone, delete=delete)
    except RuntimeError as error:
        raise TaskError(str(error)) from None
