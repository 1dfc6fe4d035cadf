"""Map runs from the client: launch (a task whose script is the fan-out worker), progress,
results, continue, and the queue's removal on destroy.

A map run IS a task: same backends, registry, widgets' lifecycle, stop and destroy. Its record
holds `map` (the queue's cloud and url, the totals); its remote holds the config and records
(fanout/layout.py). The queue is created and filled once the remote holds everything and before
any machine starts, and removed on a failed launch and on destroy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from .. import task as task_module
from ..agent import write_atomic
from ..spec import SpecError, TaskSpec, random_name, resolve_environment
from ..sync import filesystem
from ..task import FINAL, LaunchHooks, Task, TaskError
from . import layout, tasks
from .executor import style_of
from .queue import TaskQueue, open_queue, queue_class
from .records import Counts, Fold, result_row

SCRIPT = '#!/bin/sh\nexec "${TPI_AGENT_PYTHON:-python3}" -m tpi_jupyter.fanout.worker\n'
CHECK_WORKER = """
import importlib, inspect, sys
sys.path.insert(0, '.')
module, _, name = sys.argv[1].partition(':')
found = getattr(importlib.import_module(module), name or 'process_task', None)
if not callable(found):
    sys.exit(f"worker: module {module!r} has no function {name or 'process_task'!r}")
"""


class MapRun:
    """One map run: its task, progress and results; works after a kernel restart (`attach`)."""

    def __init__(self, task: Task):
        if "map" not in task.record:
            raise TaskError(f"task {task.name} is not a map run; accepted: a run started with %tpi map")
        self.task = task
        self.fold = Fold()
        self._read: set[str] = set()
        self._queue: Any = None

    @classmethod
    def find(cls, name: str) -> MapRun:
        return cls(Task.find(name))

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def total(self) -> int:
        return int(self.task.record["map"]["total"])

    def poll(self) -> Fold:
        """Read the records written since the last poll (whole chunks only: each is written once)."""
        fs, root = self.task.remote
        base = f"{root.rstrip('/')}/{layout.RECORDS}"
        try:
            found = sorted(fs.find(base)) if fs.exists(base) else []
        except FileNotFoundError:
            found = []
        for path in found:
            if path in self._read or not path.endswith(".jsonl"):
                continue
            try:
                text = fs.cat_file(path).decode("utf-8")
            except FileNotFoundError:
                continue
            self._read.add(path)
            for line in text.splitlines():
                if line.strip():
                    self.fold.add(json.loads(line))
        return self.fold

    def in_flight(self) -> int:
        try:
            if self._queue is None:
                spec = self.task.record["map"]
                self._queue = open_queue(spec["queue_cloud"], spec["queue_url"])
            return int(self._queue.depth().in_flight)
        except Exception:  # a deleted queue (finished, destroyed) has nothing in flight
            return 0

    def counts(self) -> Counts:
        return self.poll().counts(self.total, self.in_flight())

    def status(self) -> str:
        return self.task.read().status

    def finished(self) -> bool:
        return self.counts().finished >= self.total or self.status() in FINAL

    def wait(self, timeout: float | None = None, poll: float = 0.25) -> Counts:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.finished():
            if end is not None and time.monotonic() > end:
                raise TaskError(
                    f"map run {self.name}: not finished after {timeout:g} s ({self.counts().text()})"
                )
            time.sleep(poll)
        return self.counts()

    def results(
        self, wait: bool = True, timeout: float | None = None, poll: float = 0.25
    ) -> list[dict[str, Any]]:
        """One row per finished task, in task order: `pandas.DataFrame(run.results())` works."""
        if wait:
            self.wait(timeout, poll)
        found = self.poll().results
        return [result_row(found[task_id]) for task_id in self.task_ids() if task_id in found]

    def task_ids(self) -> list[str]:
        fs, root = self.task.remote
        text = fs.cat_file(f"{root.rstrip('/')}/{layout.TASKS}").decode("utf-8")
        return [json.loads(line)["task_id"] for line in text.splitlines() if line.strip()]

    def to_jsonl(self, path: str, wait: bool = True) -> str:
        """Write the results as JSON lines (atomically); returns the path."""
        lines = [json.dumps(row, default=repr) for row in self.results(wait=wait)]
        write_atomic(path, ("\n".join(lines) + "\n").encode() if lines else b"")
        return path

    def errors(self) -> list[dict[str, Any]]:
        return list(self.poll().errors)

    def preempt(self, rank: int = 0, grace: float = 30.0) -> None:
        """A spot notice to one machine, then the reclaim (as a cloud does, with less warning)."""
        self.task.check_preemptible(rank)
        fs, root = self.task.remote
        before = sum(1 for e in self.poll().events if e["kind"] == "machine-released")
        key = f"{root.rstrip('/')}/{layout.notice_key(rank)}"
        put(fs, key, f"{time.time()}\n".encode())
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if sum(1 for e in self.poll().events if e["kind"] == "machine-released") > before:
                break
            time.sleep(0.1)
        try:
            self.task.preempt(rank)
        finally:
            fs.rm_file(key)  # a machine that was not taken goes back to work

    def summary(self) -> str:
        return f"map run {self.name} ({self.task.id}): {self.status()}; {self.counts().text()}"

    def __repr__(self) -> str:
        return f"<MapRun {self.name} {self.task.id}>"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        from ..textview import widgets_enabled

        if widgets_enabled():
            from .view import MapWidget

            display(MapWidget(self))  # type: ignore[no-untyped-call]
        else:
            print(self.summary())


# ---------------------------------------------------------------- launching


def resolve_worker(worker: Any, cwd: str, spec: TaskSpec) -> tuple[str, str, bytes | None]:
    """(reference, style, pickled function or None); a bad worker is one line (SpecError).

    On the local backend the module is imported as the machines will (the workdir, the task's
    environment); elsewhere machines may hold packages this computer lacks: the module's file
    in the workdir is enough."""
    if callable(worker):
        import cloudpickle

        return layout.PICKLED, style_of(worker), cloudpickle.dumps(worker)
    if not isinstance(worker, str) or not worker.strip() or worker.count(":") > 1:
        raise SpecError(
            f"worker: {worker!r} is not a worker; accepted: module:function, or a Python function"
        )
    module = worker.partition(":")[0]
    reference = worker if ":" in worker else f"{worker}:process_task"
    if spec.cloud != "local":
        top = os.path.join(cwd, *module.split(".")[:1])
        if not (os.path.exists(f"{top}.py") or os.path.isdir(top)):
            raise SpecError(f"worker: no module {module!r} in the workdir {cwd}; accepted: module:function "
                            "of a .py file (or package) in the workdir")  # fmt: skip
        return reference, "rms", None
    env = {**os.environ, **resolve_environment(spec.environment, os.environ)}
    check = subprocess.run([sys.executable, "-c", CHECK_WORKER, worker], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    if check.returncode != 0:
        lines = [line for line in check.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {check.returncode}"
        if not last.startswith("worker:"):
            last = f"worker: cannot import {module!r} from {cwd}: {last}"
        raise SpecError(f"{last}; accepted: module:function importable from the workdir")
    return reference, "rms", None


def map_tasks(
    worker: Any, source: Any = None, *, name: str | None = None, workers: int = 0,
    task_timeout: float = 3600.0, retries: int = 3, memory_gb: float | None = None,
    visibility: float = 60.0, grace: float = 2.0, fresh_process: bool = False, cwd: str | None = None,
    previous: str = "",
    **arguments: Any,
) -> MapRun:  # fmt: skip
    """Fan `source` (a tasks file, URL or iterable) out to `worker` on the task's machines.

    `worker`: "module:function" (rms-cloud-tasks' process_task signature) or a Python function
    (process_task's signature, or f(data) -> result). `arguments`: the task's key=value arguments
    (cloud, parallelism, machine, spot, workdir, environment, ...).
    """
    cwd = cwd or os.getcwd()
    _check_options(
        workers=workers, task_timeout=task_timeout, retries=retries, visibility=visibility, grace=grace
    )
    if memory_gb is not None and (not isinstance(memory_gb, (int, float)) or memory_gb <= 0):
        raise SpecError(f"memory_gb: {memory_gb!r} is out of range; accepted: a number of GB > 0")
    raw = {"cloud": "local", **{key: str(value) if not isinstance(value, (list, dict)) else value
                                for key, value in arguments.items()}}  # fmt: skip
    if name:
        raw["name"] = name
    spec = TaskSpec.from_args(raw, cwd=cwd)
    if not spec.name:  # the queue is named after the task id, known before the launch names it
        spec = spec.with_name(random_name())
    try:
        queue_type = queue_class(spec.cloud)  # a cloud without a queue is refused before anything exists
    except ValueError as error:
        raise SpecError(str(error).replace("queue:", "cloud:", 1)) from None
    pairs = source if previous else tasks.load(source)  # a continued run gets its old run's pairs
    finished = MapRun.find(previous).poll().results if previous else {}
    queued = [pair for pair in pairs if pair[0] not in finished]
    reference, style, pickled = resolve_worker(worker, spec.workdir or cwd, spec)
    config = layout.MapConfig(queue_cloud=spec.cloud, queue_url="", worker=reference, style=style,
                              total=len(pairs), workers=int(workers), task_timeout=float(task_timeout),
                              retries=int(retries), memory_gb=memory_gb, visibility=float(visibility),
                              grace=float(grace), fresh_process=bool(fresh_process), previous=previous)  # fmt: skip
    # Machines import the queue's class by name: scanning entry points costs them a quarter second.
    config.queue_class = f"{queue_type.__module__}:{queue_type.__qualname__}"
    hooks = LaunchHooks(
        lambda record: _prepare(record, spec, config, queue_type, pairs, queued, pickled), _rollback
    )
    launched = task_module.launch(spec, SCRIPT, hooks=hooks)
    assert isinstance(launched, Task)
    return MapRun(launched)


def _check_options(**options: Any) -> None:
    for key, value in options.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{key}: {value!r} is out of range; accepted: a number >= 0")


def _prepare(record: dict[str, Any], spec: TaskSpec, config: layout.MapConfig, queue_type: type[TaskQueue],
             pairs: list[tuple[str, Any]], queued: list[tuple[str, Any]], pickled: bytes | None) -> None:  # fmt: skip
    """The queue filled and the run's files in the remote, before any machine starts."""
    timing = record.get("timing", {})
    config.flush_interval = max(0.25, float(timing.get("log_interval", 1.0)))  # the backend's cadence
    config.idle_poll = 0.2 if spec.cloud == "local" else config.flush_interval
    queue = queue_type.for_task(spec.id, record["remote"], spec.native_region or "")
    config.queue_url = queue.url
    record["map"] = {"queue_cloud": spec.cloud, "queue_url": queue.url, "total": len(pairs),
                     "previous": config.previous}  # fmt: skip
    state_save(record)  # the queue is known to the registry before it exists: destroy finds it
    fs, root = filesystem(record["remote"])
    root = root.rstrip("/")
    lines = "".join(json.dumps({"task_id": task_id, "data": data}) + "\n" for task_id, data in pairs)
    fs.pipe_file(f"{root}/{layout.TASKS}", lines.encode())
    if pickled is not None:
        fs.pipe_file(f"{root}/{layout.WORKER_PICKLE}", pickled)
    if config.previous:
        _carry(config.previous, fs, root)
    fs.pipe_file(f"{root}/{layout.MAP_JSON}", config.json())
    queue.create()
    queue.send(queued)


def put(fs: Any, path: str, data: bytes) -> None:
    """One whole object; a local remote's directories are made first (a no-op on object stores)."""
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


def state_save(record: dict[str, Any]) -> None:
    from .. import state

    state.save(record)


def _rollback(record: dict[str, Any]) -> None:
    if "map" in record:
        delete_queue(record)


def delete_queue(record: dict[str, Any]) -> None:
    spec = record["map"]
    try:
        open_queue(spec["queue_cloud"], spec["queue_url"]).delete()
    except Exception as error:
        raise TaskError(f"task {record.get('name')}: deleting its queue failed: {error}") from None


# ---------------------------------------------------------------- continuing


def _carry(previous: str, fs: Any, root: str) -> None:
    """The previous run's final records, as one chunk of this run: its tasks count as finished."""
    old = MapRun.find(previous)
    rows = [json.dumps(record) for record in old.poll().results.values()]
    if rows:
        put(fs, f"{root}/{layout.chunk_key('previous-' + old.task.id, 0)}", ("\n".join(rows) + "\n").encode())


def continue_run(name: str, **overrides: Any) -> MapRun:
    """A new run of the tasks a stopped (or failed) run did not finish; finished ones are carried."""
    old = MapRun.find(name)
    status = old.status()
    if status not in FINAL:
        raise TaskError(
            f"map run {old.name} is {status}; accepted: a stopped run (%tpi stop {old.name} first)"
        )
    fs, root = old.task.remote
    config = layout.MapConfig.parse(fs.cat_file(f"{root.rstrip('/')}/{layout.MAP_JSON}").decode())
    data = _task_data(old)
    if len(old.poll().results) >= len(data):
        raise TaskError(f"map run {old.name}: every task is finished; nothing to continue")
    worker: Any = config.worker
    if config.worker == layout.PICKLED:
        import cloudpickle

        worker = cloudpickle.loads(fs.cat_file(f"{root.rstrip('/')}/{layout.WORKER_PICKLE}"))
    spec = old.task.spec
    arguments = {key: spec[key] for key in ("cloud", "machine", "parallelism", "spot", "region", "timeout")
                 if spec.get(key) not in (None, "")}  # fmt: skip
    arguments.update(overrides)
    options = {key: getattr(config, key) for key in ("workers", "task_timeout", "retries", "memory_gb",
                                                     "visibility", "grace", "fresh_process")}  # fmt: skip
    run_name = overrides.pop("name", None) or next_name(old.name)
    arguments.pop("name", None)
    return map_tasks(worker, list(data.items()), name=run_name, previous=old.name, cwd=old.task.record.get("workdir") or None,
                     workdir=old.task.record.get("workdir") or "", **options, **arguments)  # fmt: skip


def _task_data(run: MapRun) -> dict[str, Any]:
    """Every task's data, from the run's queue file copy (`.tpi/map-tasks.jsonl` keeps ids only)."""
    fs, root = run.task.remote
    text = fs.cat_file(f"{root.rstrip('/')}/{layout.TASKS}").decode("utf-8")
    return {
        entry["task_id"]: entry.get("data") for entry in map(json.loads, filter(str.strip, text.splitlines()))
    }


def next_name(name: str) -> str:
    from .. import state

    base, _, number = name.rpartition("-")
    stem, start = (base, int(number) + 1) if base and number.isdigit() else (name, 2)
    for index in range(start, start + 1000):
        candidate = f"{stem}-{index}"
        if state.find(candidate) is None:
            return candidate
    raise TaskError(f"map run {name}: no free name to continue under; accepted: name=NEW")


__all__ = ["MapRun", "continue_run", "map_tasks"]
