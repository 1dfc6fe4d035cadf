"""A run's queue on AWS: a standard SQS queue `tpi-<short id>` in the task's region.

Batches of 10 (SQS's most) on send and receive, also capped at 256 KiB per batch request;
`ChangeMessageVisibility` extends, `DeleteMessage` acks, visibility 0 releases;
`ApproximateReceiveCount` counts deliveries. No dead-letter queue: the run's retry limit decides.
Credentials and endpoint come from boto3's standard chain (`AWS_ENDPOINT_URL`: moto in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from ..backends.kit.tags import CREATOR, TASK
from .cloudqueue import Address, Bodies, LeaseLost, queue_name
from .queue import Depth, Message

SCHEME = "sqs"
BATCH = 10  # SendMessageBatch / ReceiveMessage take at most 10
LIMIT = 256 * 1024  # one message, and one batch request's total
MAX_VISIBILITY = 43_200  # 12 hours
GONE = ("ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight")
NO_QUEUE = ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def _code(error: BaseException) -> str:
    return str((getattr(error, "response", None) or {}).get("Error", {}).get("Code", ""))


def _seconds(visibility: float) -> int:
    return max(0, min(MAX_VISIBILITY, math.ceil(visibility)))


def size_batches(bodies: Iterable[tuple[str, str]], limit: int = LIMIT) -> Iterator[list[tuple[str, str]]]:
    """(task id, body) in batches of at most 10 whose bodies together stay within one request."""
    batch: list[tuple[str, str]] = []
    total = 0
    for task_id, body in bodies:
        size = len(body.encode())
        if batch and (len(batch) == BATCH or total + size > limit):
            yield batch
            batch, total = [], 0
        batch.append((task_id, body))
        total += size
    if batch:
        yield batch


class SqsQueue:
    """One run's SQS queue (meets `TaskQueue`)."""

    ATTEMPTS = 5  # entries a batch send reports as failed are sent again this often

    def __init__(self, url: str, **options: Any):
        import boto3

        self.address = Address.parse(url, SCHEME)
        self.url = self.address.url
        self.client = options.get("client") or boto3.client("sqs", region_name=self.address.place or None)
        self.bodies = Bodies(self.address.remote, LIMIT)
        self._queue_url = ""

    @classmethod
    def for_task(cls, task_id: str, remote_url: str, region: str) -> SqsQueue:
        return cls(Address(SCHEME, region, queue_name(task_id), task_id, remote_url).url)

    @property
    def queue_url(self) -> str:
        if not self._queue_url:
            self._queue_url = str(self.client.get_queue_url(QueueName=self.address.name)["QueueUrl"])
        return self._queue_url

    def create(self) -> None:
        tags = {TASK: self.address.task_id, CREATOR: self._caller()} if self.address.task_id else {}
        found = self.client.create_queue(QueueName=self.address.name, tags=tags)
        self._queue_url = str(found["QueueUrl"])

    def _caller(self) -> str:
        """The creator tag, as the AWS backend's other resources carry it: a sweep shows the
        caller their own leftovers without `--all`."""
        import boto3

        return str(boto3.client("sts", region_name=self.address.place or None).get_caller_identity()["Arn"])

    def send(self, tasks: Iterable[tuple[str, Any]]) -> int:
        sent = 0
        for batch in size_batches((task_id, self.bodies.encode(task_id, data)) for task_id, data in tasks):
            self._send_batch(batch)
            sent += len(batch)
        return sent

    def _send_batch(self, batch: list[tuple[str, str]]) -> None:
        entries = {str(index): body for index, (_, body) in enumerate(batch)}
        for _ in range(self.ATTEMPTS):
            answer = self.client.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": key, "MessageBody": body} for key, body in entries.items()],
            )
            failed = answer.get("Failed", [])
            if not failed:
                return
            if any(item.get("SenderFault") for item in failed):
                break
            entries = {item["Id"]: entries[item["Id"]] for item in failed}
        reasons = "; ".join(sorted({str(item.get("Message") or item.get("Code")) for item in failed}))
        raise RuntimeError(f"queue: SQS refused {len(failed)} task(s) of a batch: {reasons}")

    def receive(self, max_messages: int, visibility: float) -> list[Message]:
        found: list[Message] = []
        wait = 1  # a short long-poll: SQS's short poll may miss messages that are there
        while len(found) < max_messages:
            answer = self.client.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=min(BATCH, max_messages - len(found)),
                VisibilityTimeout=_seconds(visibility), WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )  # fmt: skip
            messages = answer.get("Messages", [])
            for item in messages:
                task_id, data = self.bodies.decode(item["Body"])
                deliveries = int(item.get("Attributes", {}).get("ApproximateReceiveCount", 1))
                found.append(Message(task_id, data, item["ReceiptHandle"], deliveries))
            if len(messages) < BATCH:
                break
            wait = 0
        return found

    def extend(self, message: Message, visibility: float) -> None:
        try:
            self._visibility(message, _seconds(visibility))
        except Exception as error:
            if _code(error) in GONE:
                raise LeaseLost(f"queue: task {message.task_id!r} is no longer held here") from None
            raise

    def _visibility(self, message: Message, seconds: int) -> None:
        self.client.change_message_visibility(
            QueueUrl=self.queue_url, ReceiptHandle=message.receipt, VisibilityTimeout=seconds
        )

    def ack(self, message: Message) -> None:
        try:
            self.client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message.receipt)
        except Exception as error:
            if _code(error) not in GONE:
                raise
        self.bodies.forget(message.task_id)

    def release(self, message: Message) -> None:
        try:
            self._visibility(message, 0)
        except Exception as error:
            if _code(error) not in GONE:
                raise

    def depth(self) -> Depth:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"]
        return Depth(waiting=int(found.get(names[0], 0)), in_flight=int(found.get(names[1], 0)))

    def delete(self) -> None:
        try:
            self.client.delete_queue(QueueUrl=self.queue_url)
        except Exception as error:
            if _code(error) not in NO_QUEUE:
                raise
        self._queue_url = ""
        self.bodies.forget_all()


def delete_queue(client: Any, task_id: str) -> None:
    """For the AWS backend's delete: the task's queue, if there is one (idempotent)."""
    try:
        url = client.get_queue_url(QueueName=queue_name(task_id))["QueueUrl"]
        client.delete_queue(QueueUrl=url)
    except Exception as error:
        if _code(error) not in NO_QUEUE:
            raise
