"""A run's queue on GCP: a Pub/Sub topic `tpi-<short id>` and a pull subscription of the same name.

`modify_ack_deadline` sets a received message's visibility and extends it, `acknowledge` acks,
deadline 0 releases. Pub/Sub counts deliveries (`delivery_attempt`) only on a subscription with
a dead-letter policy, so the subscription has one: topic `tpi-<short id>-dead`, after the most
attempts the service allows (100; the run's retry limit is far lower). `create` grants the task's
service account `roles/pubsub.subscriber` on that subscription alone (machines pull, extend and
ack; they never publish). Pub/Sub has no call for a backlog: `depth` reads Cloud Monitoring's
subscription metrics (a minute or two behind). `PUBSUB_EMULATOR_HOST` points the clients at an
emulator (pstest in the tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from concurrent import futures
from typing import Any

from ..backends.kit.tags import TASK
from .cloudqueue import Address, Bodies, queue_name
from .queue import Depth, Message

SCHEME = "pubsub"
LIMIT = 9_000_000  # a message's data is at most 10 MB, and so is a publish request with it
ACK_DEADLINE = 60  # the subscription's default; `receive` sets each message's own at once
MAX_DEADLINE = 600
DEAD_LETTER_ATTEMPTS = 100  # the service's most
PULL_WAIT = 5.0  # seconds an empty pull may wait


def _seconds(visibility: float) -> int:
    return max(0, min(MAX_DEADLINE, round(visibility)))


def default_project() -> str:
    from ..backends.gcp.settings import configured_project

    found = configured_project()
    if not found:
        import google.auth

        found = google.auth.default()[1] or ""  # type: ignore[no-untyped-call]
    if not found:
        raise ValueError(
            "queue: no Google Cloud project; accepted: GOOGLE_CLOUD_PROJECT or %config GcpSettings.project"
        )
    return str(found)


class PubSubQueue:
    """One run's Pub/Sub topic and subscription (meets `TaskQueue`)."""

    def __init__(self, url: str, **options: Any):
        import google.cloud.pubsub_v1 as pubsub_v1

        self.address = Address.parse(url, SCHEME)
        self.url = self.address.url
        project, name = self.address.place, self.address.name
        self.topic = f"projects/{project}/topics/{name}"
        self.dead_topic = f"{self.topic}-dead"
        self.subscription = f"projects/{project}/subscriptions/{name}"
        self.grant: dict[str, Any] | None = None
        if self.address.task_id:  # the task's service account on this subscription
            from ..backends.gcp.identity import queue_binding

            self.grant = queue_binding(project, self.address.task_id)
        batching = pubsub_v1.types.BatchSettings(
            max_bytes=LIMIT + 500_000, max_latency=0.01, max_messages=1000
        )
        self.publisher = pubsub_v1.PublisherClient(batch_settings=batching)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.bodies = Bodies(self.address.remote, LIMIT)

    @classmethod
    def for_task(cls, task_id: str, remote_url: str, region: str) -> PubSubQueue:
        return cls(Address(SCHEME, default_project(), queue_name(task_id), task_id, remote_url).url)

    def create(self) -> None:
        from google.api_core import exceptions

        # The task's label lets `tpi sweep gcp` find a queue whose task the registry forgot.
        labels = {TASK: self.address.task_id} if self.address.task_id else {}
        for topic in (self.topic, self.dead_topic):
            with contextlib.suppress(exceptions.AlreadyExists):
                self.publisher.create_topic(request={"name": topic, "labels": labels})
        request = {
            "name": self.subscription, "topic": self.topic, "ack_deadline_seconds": ACK_DEADLINE,
            "dead_letter_policy": {"dead_letter_topic": self.dead_topic,
                                   "max_delivery_attempts": DEAD_LETTER_ATTEMPTS},
            "labels": labels,
        }  # fmt: skip
        with contextlib.suppress(exceptions.AlreadyExists):
            self.subscriber.create_subscription(request=request)
        self._grant()

    def _grant(self) -> None:
        """The task's service account may pull, extend and ack on this subscription, nothing else."""
        if self.grant is None:
            return
        policy = self.subscriber.get_iam_policy(request={"resource": self.subscription})
        for binding in policy.bindings:
            if binding.role == self.grant["role"] and set(self.grant["members"]) <= set(binding.members):
                return
        policy.bindings.add(**self.grant)
        from google.api_core import exceptions

        try:
            self.subscriber.set_iam_policy(request={"resource": self.subscription, "policy": policy})
        except exceptions.InvalidArgument as error:
            if "does not exist" not in str(error):
                raise
            # No task service account: the task runs as the user's own (`permission_set`), whose
            # access to Pub/Sub is theirs to give.

    def send(self, tasks: Iterable[tuple[str, Any]]) -> int:
        pending = [
            self.publisher.publish(self.topic, self.bodies.encode(task_id, data).encode())
            for task_id, data in tasks
        ]
        done, _ = futures.wait(pending)
        for future in done:
            future.result()  # the first failure, as it was
        return len(pending)

    def receive(self, max_messages: int, visibility: float) -> list[Message]:
        from google.api_core import exceptions

        try:  # the service may hold an empty pull open: a short wait, then none
            answer = self.subscriber.pull(
                request={"subscription": self.subscription, "max_messages": max_messages},
                retry=None, timeout=PULL_WAIT,
            )  # fmt: skip
        except exceptions.DeadlineExceeded:
            return []
        found = []
        for item in answer.received_messages:
            task_id, data = self.bodies.decode(item.message.data)
            found.append(Message(task_id, data, item.ack_id, max(1, item.delivery_attempt)))
        if found and _seconds(visibility) != ACK_DEADLINE:
            self._deadline([m.receipt for m in found], _seconds(visibility))
        return found

    def _deadline(self, ack_ids: list[str], seconds: int) -> None:
        self.subscriber.modify_ack_deadline(
            request={"subscription": self.subscription, "ack_ids": ack_ids, "ack_deadline_seconds": seconds}
        )

    def extend(self, message: Message, visibility: float) -> None:
        """Pub/Sub takes an extension of a lapsed ack id silently (without exactly-once delivery):
        a lost message shows only as its redelivery elsewhere."""
        self._deadline([message.receipt], _seconds(visibility))

    def ack(self, message: Message) -> None:
        self.subscriber.acknowledge(request={"subscription": self.subscription, "ack_ids": [message.receipt]})
        self.bodies.forget(message.task_id)

    def release(self, message: Message) -> None:
        self._deadline([message.receipt], 0)

    def depth(self) -> Depth:
        from .pubsub_depth import subscription_depth

        return subscription_depth(self.address.place, self.address.name)

    def delete(self) -> None:
        delete_names(self.address.place, self.address.name, self.publisher, self.subscriber)
        self.bodies.forget_all()


def delete_names(project: str, name: str, publisher: Any = None, subscriber: Any = None) -> None:
    """A run's subscription and both topics, by name; what is missing counts as deleted."""
    import google.cloud.pubsub_v1 as pubsub_v1
    from google.api_core import exceptions

    with contextlib.suppress(exceptions.NotFound):
        (subscriber or pubsub_v1.SubscriberClient()).delete_subscription(
            request={"subscription": f"projects/{project}/subscriptions/{name}"}
        )
    publisher = publisher or pubsub_v1.PublisherClient()
    for topic in (name, f"{name}-dead"):
        with contextlib.suppress(exceptions.NotFound):
            publisher.delete_topic(request={"topic": f"projects/{project}/topics/{topic}"})


def labelled_queues(project: str) -> dict[str, str]:
    """Queue name -> task id of the runs' topics in the project (their task label)."""
    import google.cloud.pubsub_v1 as pubsub_v1

    found = {}
    for topic in pubsub_v1.PublisherClient().list_topics(request={"project": f"projects/{project}"}):
        name = topic.name.rsplit("/", 1)[-1]
        if TASK in topic.labels and not name.endswith("-dead"):
            found[name] = topic.labels[TASK]
    return found
