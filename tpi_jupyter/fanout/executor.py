"""A worker process: runs one task at a time for its machine's supervisor, isolated from the
other tasks (a crash, a timeout or the memory limit ends this process, not the supervisor).

`WorkerData` offers what rms-cloud-tasks' `WorkerData` offers to tasks, by the same names.
No IPython or Jupyter imports: this runs on machines.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from . import layout

Worker = Callable[..., Any]


class WorkerData:
    """What a task may ask about its worker (the attributes of rms-cloud-tasks' WorkerData)."""

    def __init__(self, config: layout.MapConfig, num_cpus: int, termination: Any, shutdown: Any):
        self.args = None
        self.provider: str | None = config.queue_cloud.upper()
        self.job_id: str | None = os.environ.get("TPI_TASK_ID")
        self.queue_name: str | None = config.queue_url
        self.instance_type: str | None = os.environ.get("TPI_MACHINE")
        self.num_cpus: int | None = num_cpus
        self.memory_gb: float | None = _memory_gb()
        self.is_spot = False
        self.price_per_hour: float | None = None
        self.num_simultaneous_tasks = config.workers or num_cpus  # worker processes on this machine
        self.num_machines = int(os.environ.get("TPI_WORLD_SIZE", "1"))
        self.machine_rank = int(os.environ.get("TPI_RANK", "0"))
        self.num_tasks = config.total  # tasks in the run
        self.max_runtime = config.task_timeout
        self.max_memory_allowed_per_task = config.memory_gb
        self.shutdown_grace_period = config.grace
        self.retry_on_exit = self.retry_on_exception = self.retry_on_timeout = False
        self.termination_event, self.shutdown_event = termination, shutdown

    @property
    def received_termination_notice(self) -> bool:
        """A spot notice (or maintenance) came: the machine is about to go."""
        return bool(self.termination_event is not None and self.termination_event.is_set())

    @property
    def received_shutdown_request(self) -> bool:
        """The user stopped the run."""
        return bool(self.shutdown_event is not None and self.shutdown_event.is_set())


def _memory_gb() -> float | None:
    with contextlib.suppress(ImportError, OSError):
        import psutil

        return float(psutil.virtual_memory().total) / 1024**3
    return None


class WorkerLoadError(Exception):
    """The worker reference names no usable function (one line)."""


def load_worker(reference: str, pickled: bytes | None = None) -> Worker:
    """`module:function` imported from the working directory, or a cloudpickled function."""
    if reference == layout.PICKLED:
        import cloudpickle

        try:
            function: Worker = cloudpickle.loads(pickled or b"")
        except Exception as error:  # e.g. a module the function needs is missing on this machine
            raise WorkerLoadError(
                f"worker: cannot load the shipped function: {error.__class__.__name__}: {error}"
            ) from None
        return function
    module_name, _, function_name = reference.partition(":")
    function_name = function_name or "process_task"
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # the module's own import error, in one line
        raise WorkerLoadError(
            f"worker: cannot import {module_name!r}: {error.__class__.__name__}: {error}"
        ) from None
    found = getattr(module, function_name, None)
    if not callable(found):
        raise WorkerLoadError(f"worker: module {module_name!r} has no function {function_name!r}")
    return found  # type: ignore[no-any-return]


def style_of(function: Worker) -> str:
    """ "rms" for process_task(task_id, task_data, worker_data), "plain" for f(data)."""
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return "plain"
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return "rms" if len(positional) >= 3 else "plain"


def call(function: Worker, style: str, task_id: str, data: Any, worker_data: WorkerData) -> tuple[bool, Any]:
    if style == "plain":
        return False, function(data)
    answer = function(task_id, data, worker_data)
    if not (isinstance(answer, tuple) and len(answer) == 2):
        raise TypeError(f"process_task returned {type(answer).__name__}; expected a (retry, result) tuple")
    return bool(answer[0]), answer[1]


def serve(conn: Any, function: Worker, style: str, worker_data: WorkerData, memory_gb: float | None,
          once: bool = False) -> None:  # fmt: skip
    """The worker process's loop: (task_id, data) in, (kind, retry, result-or-error JSON) out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the supervisor decides when tasks end
    if memory_gb:
        import resource

        limit = int(memory_gb * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    while True:
        try:
            task_id, data = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        try:
            retry, result = call(function, style, task_id, data, worker_data)
            conn.send(("ok", retry, json.dumps(result, default=repr)))
        except MemoryError:
            conn.send(("memory", False, json.dumps("the task exceeded the memory limit")))
            os._exit(0)  # a fresh process for the next task
        except BaseException as error:  # SystemExit and KeyboardInterrupt in a task end the task only
            text = "".join(traceback.format_exception_only(type(error), error)).strip()
            trace = traceback.format_exc(limit=-5)
            conn.send(("exception", False, json.dumps(f"{text}\n{trace}")))
        if once:  # --fresh-process: the next task gets a new process
            os._exit(0)
