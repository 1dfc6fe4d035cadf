"""The queue contract every cloud's task queue meets, and how a queue is found by cloud.

A queue holds one message per task id. Delivery is at least once: a received message is hidden
for `visibility` seconds, extended while its task runs, deleted by `ack`, and delivered again when
its visibility lapses (the worker died) or on `release` (a spot notice). Results are recorded once
per task id by the run's result store, not by the queue, so a duplicate delivery is harmless.
Queues run on machines: this module and its implementations import nothing from Jupyter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

ENTRY_POINT_GROUP = "tpi_jupyter.queues"  # cloud name -> a class meeting `TaskQueue`


@dataclass(frozen=True)
class Message:
    task_id: str
    data: Any  # JSON-compatible task data
    receipt: str  # opaque handle for extend/ack/release (SQS receipt, Pub/Sub ack id, ...)
    deliveries: int  # 1 on first delivery (where the service counts; else at least 1)


@dataclass(frozen=True)
class Depth:
    """Approximate counts, as the services report them."""

    waiting: int
    in_flight: int


class TaskQueue(Protocol):
    """One run's queue. `url` is what machines get to reopen it (no secret in it).

    A run's queue is named after its task id (`for_task`), so a cloud backend can grant the
    task's machine identity access to it before the queue exists.
    """

    url: str

    @classmethod
    def for_task(cls, task_id: str, remote_url: str, region: str) -> TaskQueue:
        """The queue of task `task_id` whose remote is `remote_url` (not created yet)."""

    def create(self) -> None:
        """Create the queue (and its subscription, where the service has one); idempotent."""

    def send(self, tasks: Iterable[tuple[str, Any]]) -> int:
        """Enqueue (task_id, data) pairs in service-sized batches; returns how many were sent."""

    def receive(self, max_messages: int, visibility: float) -> list[Message]:
        """Up to `max_messages` messages, each hidden for `visibility` seconds; [] when none."""

    def extend(self, message: Message, visibility: float) -> None:
        """Keep a running task's message hidden for `visibility` more seconds."""

    def ack(self, message: Message) -> None:
        """The task is finished (done or failed for good): never deliver it again."""

    def release(self, message: Message) -> None:
        """Give the message back at once (spot notice, retry): visible to other workers."""

    def depth(self) -> Depth: ...

    def delete(self) -> None:
        """Remove the queue and everything in it; idempotent."""


def queue_class(cloud: str) -> type[TaskQueue]:
    """The queue class of `cloud` (entry point `tpi_jupyter.queues`)."""
    from importlib.metadata import entry_points

    found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if cloud not in found:
        raise ValueError(f"queue: no queue for cloud {cloud!r}; accepted: {', '.join(sorted(found))}")
    loaded: type[TaskQueue] = found[cloud].load()
    return loaded


def open_queue(cloud: str, url: str, **options: Any) -> TaskQueue:
    """Reopen a queue from its `url` (on a machine, or in a later client session)."""
    return queue_class(cloud)(url, **options)  # type: ignore[call-arg]
