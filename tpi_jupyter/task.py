"""Task lifecycle: launch / read / logs / stop / pull / destroy, status collapse and events.

The faces (magics, CLI, widgets, server) are thin over this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import layout, state
from .backends.base import Backend, GroupState, get_backend
from .output import MASK_MIN
from .spec import SpecError, TaskSpec, random_name, resolve_environment
from .sync import Excluder, ProgressCallback, download, filesystem, is_local, scan_local, upload

FINAL = ("succeeded", "failed", "timeout", "destroyed")
RESULT_STATE = {"success": "succeeded", "failure": "failed", "timeout": "timeout"}
FAST_POLL, YOUNG = 0.025, 5.0  # seconds: how often, and how long after launch, faces poll fast
TIMEOUT_GRACE = 120.0  # seconds past the deadline before an unreported task counts as timed out

# How often machines report, per backend: the local backend is fast, clouds pay per request.
TIMING = {
    "local": {"log_interval": 0.25, "heartbeat_interval": 2, "sync_interval": 2, "control_interval": 0.25},
    "default": {"log_interval": 2, "heartbeat_interval": 10, "sync_interval": 30},
}


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
    log_sizes: dict[str, int] = field(default_factory=dict)  # log key -> bytes


@dataclass
class Plan:
    """What a launch would create (`--dry-run`)."""

    task_id: str
    lines: list[str]
    files: int
    bytes: int

    def __str__(self) -> str:
        return "\n".join(self.lines)


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


class LogTail:
    """Reads only the new bytes of every rank's logs since the last call.

    Offsets move past complete lines only, so they alone are the cursor (the REST API hands
    them to the browser and back).
    """

    def __init__(self, task: Task, offsets: Mapping[str, int] | None = None):
        self.task = task
        self.offsets: dict[str, int] = dict(offsets or {})

    def poll(self, sizes: Mapping[str, int] | None = None) -> list[tuple[int, str, str]]:
        """New (rank, timestamp, text) lines, merged across ranks in time order."""
        if sizes is None:
            sizes = self.task.read().log_sizes
        fs, root = self.task.remote
        lines: list[tuple[int, str, str]] = []
        for key, size in sorted(sizes.items()):
            offset = self.offsets.get(key, 0)
            if size <= offset:
                continue
            try:
                chunk = fs.cat_file(layout.join(root, key), start=offset, end=size)
            except FileNotFoundError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]
            if not complete:
                continue  # a line still being written: read it whole next time
            self.offsets[key] = offset + len(complete)
            rank = int(key.split("/")[1])
            for raw in complete[:-1].split(b"\n"):
                stamp, _, text = raw.decode("utf-8", "replace").partition(" ")
                lines.append((rank, stamp, text))
        lines.sort(key=lambda line: line[1])
        return lines


class Task:
    """One task, found in the registry; every method works after a kernel restart."""

    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.destroyed = False
        self._backend: Backend | None = None
        self._remote: tuple[Any, str] | None = None

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
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = get_backend(self.record["cloud"])
        return self._backend

    @property
    def remote(self) -> tuple[Any, str]:
        if self._remote is None:
            self._remote = filesystem(self.record["remote"])
        return self._remote

    # -- reading

    def read(self) -> Snapshot:
        if self.destroyed:
            return Snapshot("destroyed")
        group = self.backend.read(self.record)
        fs, root = self.remote
        reports = layout.join(root, layout.REPORTS)
        try:
            listing = fs.find(reports, detail=True) if fs.exists(reports) else {}
        except FileNotFoundError:
            listing = {}
        statuses: dict[int, dict[str, Any]] = {}
        boots: dict[int, set[int]] = {}
        log_sizes: dict[str, int] = {}
        for path, info in listing.items():
            key = path[len(root) :].lstrip("/") if path.startswith(root) else path
            parts = key.split("/")  # reports/<rank>/<boot>/log | reports/<rank>/status.json
            if len(parts) < 3 or not parts[1].isdigit():
                continue
            rank = int(parts[1])
            if parts[2] == "status.json":
                with contextlib.suppress(FileNotFoundError, ValueError):
                    statuses[rank] = json.loads(fs.cat_file(path))
            elif parts[2].isdigit():
                boots.setdefault(rank, set()).add(int(parts[2]))
                if len(parts) == 4 and parts[3] == "log":
                    log_sizes[key] = int(info.get("size") or 0)
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
            elif group.exists:
                ranks.append(RankState(rank, "preempted" if count else "queued", count))
            else:
                ranks.append(RankState(rank, "lost" if self.record.get("started") else "queued", count))
        snapshot = Snapshot(self._collapse(ranks, group), ranks, group, log_sizes)
        if snapshot.status != self.record.get("status"):
            self.record["status"] = snapshot.status
            with contextlib.suppress(OSError):
                state.update(self.id, lambda record: record.update(status=snapshot.status))
        return snapshot

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
        if snapshot is None and not self.destroyed:
            snapshot = self.read()
        group = snapshot.group.events if snapshot and snapshot.group else []
        ranks = rank_events(snapshot.ranks) if snapshot else []
        return sorted([*self.record.get("events", []), *group, *ranks], key=lambda event: event["time"])

    def logs(self) -> list[str]:
        """The whole log of every rank (all boots), one string per machine as in TPI."""
        tail = LogTail(self)
        per_rank: dict[int, list[str]] = {rank: [] for rank in range(int(self.spec["parallelism"]))}
        for rank, stamp, text in tail.poll():
            per_rank.setdefault(rank, []).append(f"{stamp} {text}")
        return ["\n".join(lines) for _, lines in sorted(per_rank.items())]

    def follow(self, poll: float = 0.25) -> Iterator[tuple[int, str, str]]:
        """New log lines as they arrive, until the task is final and every log is read."""
        tail = LogTail(self)
        while True:
            snapshot = self.read()
            yield from tail.poll(snapshot.log_sizes)
            if snapshot.status in FINAL:
                yield from tail.poll()  # whatever was flushed before the status
                return
            time.sleep(self.poll_interval(poll, tail))

    def poll_interval(self, interval: float, tail: LogTail) -> float:
        """A face's next poll: fast in the task's first seconds until its first line was read, so
        that line shows at once (a poll of a local task costs well under a millisecond of CPU)."""
        young = time.time() - float(self.record["created"]) < YOUNG
        return min(interval, FAST_POLL) if young and not tail.offsets else interval

    def wait(
        self, timeout: float | None = None, on_line: Callable[[int, str, str], None] | None = None
    ) -> str:
        limit = None if timeout is None else time.time() + timeout
        for line in self.follow():
            if on_line:
                on_line(*line)
            if limit and time.time() > limit:
                raise TaskError(f"task {self.name}: still {self.status} after {timeout:.0f} s")
        return self.status

    def tail_text(self, lines: int = 20) -> str:
        width = int(self.spec["parallelism"])
        merged = [format_line(rank, text, width) for rank, _, text in sorted(
            LogTail(self).poll(), key=lambda line: line[1])]  # fmt: skip
        return "\n".join(merged[-lines:])

    # -- acting

    def _event(self, kind: str, detail: str = "") -> None:
        self.record.setdefault("events", []).append(
            {"time": time.time(), "kind": kind, "rank": None, "detail": detail}
        )
        if state.load(self.id) is not None:
            state.save(self.record)

    def stop(self) -> None:
        if self.destroyed:
            return
        self.backend.stop(self.record)
        self._event("stopped")

    def preempt(self, rank: int = 0) -> None:
        """Interrupt a rank as a spot reclaim would; only spot tasks (spot >= 0) are preemptible."""
        if float(self.spec["spot"]) < 0:
            raise TaskError(
                f"spot: task {self.name} runs on-demand (spot=-1); accepted: a task launched with spot>=0"
            )
        if not 0 <= rank < int(self.spec["parallelism"]):
            raise TaskError(f"rank: {rank} is out of range; accepted: 0..{int(self.spec['parallelism']) - 1}")
        try:
            self.backend.preempt(self.record, rank)
        except RuntimeError as error:
            raise TaskError(f"task {self.name}: {error}") from None
        self._event("preempt-requested", f"rank {rank}")

    def pull(self, progress: ProgressCallback | None = None) -> list[str]:
        """Download `output` into the workdir without destroying; returns the files fetched."""
        if self.destroyed:
            raise TaskError(f"task {self.name}: destroyed; nothing to pull")
        workdir, output = self.record.get("workdir"), self.spec.get("output")
        if not workdir or not output:
            return []
        fs, root = self.remote
        result = download(fs, layout.join(root, layout.DATA), workdir, subdir=output,
                          exclude=self.spec.get("exclude", []), progress=progress)  # fmt: skip
        self._event("pulled", f"{len(result.files)} files, {human_bytes(result.bytes)}")
        return result.files

    def destroy(self, progress: ProgressCallback | None = None) -> list[str]:
        """Stop machines, download `output`, remove every resource and the registry entry.

        Idempotent; if the download fails nothing is deleted.
        """
        if self.destroyed:
            return []
        self.backend.stop(self.record)
        fetched = self.pull(progress) if self.record.get("remote") else []
        try:
            self.backend.delete(self.record)
        except RuntimeError as error:  # e.g. a process of the task survived: say so, keep the entry
            raise TaskError(f"task {self.name}: destroy incomplete: {error}") from None
        state.delete(self.id)
        self.destroyed = True
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
        if int(spec["parallelism"]) > 1:
            lines.append(f"policy: {FAILURE_POLICY}")
        if not self.record.get("shebang", True):
            lines.append("note: the script has no shebang, so it runs under /bin/bash")
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


def pricing_text(spot: float) -> str:
    return "on-demand" if spot < 0 else ("spot" if spot == 0 else f"spot <= ${spot}/h")


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
) -> Task | Plan:
    """Create the task's resources, upload, and start its machines; roll back on failure."""
    if not script.strip():
        raise SpecError("script: empty; accepted: the cell body (or --script FILE) with the commands to run")
    if not spec.name:
        spec = spec.with_name(random_name())
    try:
        backend: Backend | None = get_backend(spec.cloud)  # a missing backend fails before anything exists
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
        "shebang": script.startswith("#!"), "status": "provisioning",
        "timing": TIMING.get(spec.cloud, TIMING["default"]),
        # imported from the local environment (likely credentials): masked in logs by the agent
        "masked": masked, "warnings": short_secrets(masked, values),
        "events": [{"time": now, "kind": "created", "rank": None, "detail": ""}],
    }  # fmt: skip
    record["events"] += [
        {"time": now, "kind": "warning", "rank": None, "detail": w} for w in record["warnings"]
    ]
    if dry_run:
        return _plan(spec, record, backend)
    assert backend is not None
    state.save(record)
    try:
        backend.create(record)
        record["remote"] = backend.remote_url(record)
        state.save(record)
        _write_remote(record, script, values, progress)
        backend.start(record)
        record["started"] = time.time()
        record["events"].append({"time": record["started"], "kind": "started", "rank": None, "detail": ""})
        state.save(record)
    except BaseException as error:
        _rollback(backend, record)
        if isinstance(error, (SpecError, TaskError)):
            raise
        if isinstance(error, Exception):
            raise TaskError(f"launch of {spec.name} failed and was rolled back: {error}") from error
        raise
    return Task(record)


def short_secrets(masked: list[str], values: Mapping[str, str]) -> list[str]:
    """Imported values too short to be masked in logs (names only, never values)."""
    return [
        f"environment: {name} is shorter than {MASK_MIN} characters, so logs do not mask it"
        for name in masked if len(values[name].strip()) < MASK_MIN
    ]  # fmt: skip


def _write_remote(
    record: dict[str, Any], script: str, values: dict[str, str], progress: ProgressCallback | None
) -> None:
    fs, root = filesystem(record["remote"])
    fs.makedirs(layout.join(root, ".tpi"), exist_ok=True)
    public = {key: record[key] for key in ("id", "name", "spec", "created", "deadline", "timing", "masked")}
    fs.pipe_file(layout.join(root, layout.TASK_JSON), json.dumps(public).encode())
    fs.pipe_file(layout.join(root, layout.SCRIPT), script.encode())
    env_path = layout.join(root, layout.ENV)
    fs.pipe_file(env_path, json.dumps(values).encode())
    if is_local(fs):
        os.chmod(env_path, 0o600)
    if record["workdir"]:
        upload(
            record["workdir"],
            fs,
            layout.join(root, layout.DATA),
            exclude=record["spec"]["exclude"],
            progress=progress,
        )
    else:
        fs.makedirs(layout.join(root, layout.DATA), exist_ok=True)


def _rollback(backend: Backend, record: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        backend.delete(record)
    state.delete(record["id"])


def _generic_plan(spec: TaskSpec) -> list[str]:
    pricing = pricing_text(spec.spot)
    where = spec.native_region or "any node"
    return [
        f"machines: {spec.parallelism} x {spec.native_machine}, image {spec.native_image}, in {where}, {pricing}",
        f"! cloud={spec.cloud} has no backend in this version: launching it is refused",
    ]


def _plan(spec: TaskSpec, record: dict[str, Any], backend: Backend | None) -> Plan:
    files = size = 0
    warnings: list[str] = list(record.get("warnings", []))
    if spec.workdir:
        found, _ = scan_local(spec.workdir, Excluder(spec.exclude, spec.workdir), warnings)
        files, size = len(found), sum(item.size for item in found.values())
    lines = [
        f"dry run: nothing was created. Task {spec.name} ({spec.id}) would create:",
        *(f"  - {line}" for line in (backend.plan(record) if backend else _generic_plan(spec))),
        f"  - upload: {files} files, {human_bytes(size)} from {spec.workdir}" if spec.workdir
        else "  - upload: nothing (no workdir)",
        f"  - environment: {', '.join(sorted(spec.environment)) or 'none'} (values are never shown)",
        *(f"  ! {warning}" for warning in warnings),
    ]  # fmt: skip
    return Plan(spec.id, lines, files, size)
