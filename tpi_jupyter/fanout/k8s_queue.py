"""A map run on Kubernetes uses the queue of its object store's cloud: SQS for `container=s3://`,
Pub/Sub for `gs://`, an Azure Storage queue for `az://`. The pods already get that store's
credentials (backends/k8s/storage.py), and these queues have the deliveries, visibility and
redelivery a fan-out needs. A run on a volume claim (no `container`) is refused: SQLite's
locking is not safe on a network filesystem, and a queue served by the transfer pod would be a
second queue service to keep alive and correct.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .queue import TaskQueue, queue_class

STORE_CLOUDS = {"s3": "aws", "gs": "gcp", "gcs": "gcp", "az": "az", "abfs": "az", "abfss": "az"}
QUEUE_CLOUDS = {"sqs": "aws", "pubsub": "gcp", "azqueue": "az"}


class K8sQueue:
    """Not a queue of its own: it opens the queue of the cloud the task's remote is in."""

    url: str

    def __new__(cls, url: str, **options: Any) -> Any:
        scheme = urlsplit(url).scheme
        if scheme not in QUEUE_CLOUDS:
            raise ValueError(
                f"queue: {url!r} is not a queue url; accepted: {', '.join(f'{s}://' for s in QUEUE_CLOUDS)}"
            )
        return queue_class(QUEUE_CLOUDS[scheme])(url, **options)  # type: ignore[call-arg]

    @classmethod
    def for_task(cls, task_id: str, remote_url: str, region: str) -> TaskQueue:
        scheme = urlsplit(remote_url).scheme
        if scheme not in STORE_CLOUDS:
            raise ValueError(
                "container: a map run on k8s needs an object-store container (its cloud's queue); "
                "accepted: container=s3://bucket[/prefix], gs://bucket[/prefix] or az://container[/prefix]"
            )
        return queue_class(STORE_CLOUDS[scheme]).for_task(task_id, remote_url, region)
