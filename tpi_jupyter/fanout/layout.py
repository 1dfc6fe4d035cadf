"""A map run's keys in the task's remote and its config, shared by the client and the machines.

```
<remote>/.tpi/map.json                 MapConfig: queue, worker reference, limits
<remote>/.tpi/map-worker.pkl           a notebook function, cloudpickled (worker "pickle")
<remote>/.tpi/map-tasks.jsonl          every task of the run, for --continue and the totals
<remote>/.tpi/control/notice-<rank>    a spot notice for one rank (`tpi preempt` on local)
<remote>/fanout/<writer>/<n>.jsonl     records: results and events, per writer, chunk n (immutable)
```
No IPython or Jupyter imports: this runs on machines.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

MAP_JSON = ".tpi/map.json"
WORKER_PICKLE = ".tpi/map-worker.pkl"
TASKS = ".tpi/map-tasks.jsonl"
RECORDS = "fanout"
PICKLED = "pickle"  # the worker reference of a shipped function


def notice_key(rank: int) -> str:
    return f".tpi/control/notice-{rank}"


def chunk_key(writer: str, number: int) -> str:
    return f"{RECORDS}/{writer}/{number:06d}.jsonl"


@dataclass
class MapConfig:
    queue_cloud: str
    queue_url: str
    worker: str  # "module:function", or PICKLED
    style: str = "rms"  # "rms": f(task_id, data, worker_data) -> (retry, result); "plain": f(data) -> result
    total: int = 0
    workers: int = 0  # worker processes per machine; 0: one per core
    task_timeout: float = 3600.0  # seconds
    retries: int = 3  # how often `retry=True` re-queues a task before it is recorded failed
    memory_gb: float | None = None  # per worker process (RLIMIT_AS); None: no limit
    visibility: float = 60.0  # seconds a received message stays hidden; renewed at a third of it
    flush_interval: float = 1.0  # seconds between two chunks of records
    idle_poll: float = 0.2  # seconds between two looks at an empty queue (each may be a request)
    fresh_process: bool = False  # a new worker process per task, as rms-cloud-tasks (slower)
    grace: float = 2.0  # seconds running tasks get to finish after a spot notice or a stop
    previous: str = ""  # the run this one continues (its finished tasks are not queued)
    queue_class: str = ""  # "module:Class" of the cloud's queue, as the client's entry point named it

    def json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def parse(cls, text: str) -> MapConfig:
        data: dict[str, Any] = json.loads(text)
        known = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})
