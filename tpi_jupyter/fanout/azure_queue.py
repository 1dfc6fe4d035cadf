"""A run's queue on Azure: a Storage queue `tpi-<short id>` in the task's storage account.

`update_message` with a visibility timeout extends (and 0 releases), `delete_message` acks,
`dequeue_count` counts deliveries. Azure has no batch send: messages go out over a few
connections at once; a receive takes at most 32 per call. Every update returns a new pop
receipt, and only the newest one works: a `Message.receipt` is `<message id>:<first pop receipt>`,
and the queue object that received it keeps the newest pop receipt for it. Credentials: the
connection string in `AZURE_STORAGE_CONNECTION_STRING` when it is the account's (Azurite in the
tests), else `DefaultAzureCredential` (the task's managed identity on its machines).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from .cloudqueue import Address, Bodies, LeaseLost, queue_name
from .queue import Depth, Message

SCHEME = "azqueue"
LIMIT = 64 * 1024  # a message's text, as sent (XML-escaped)
PAGE = 32  # Get Messages returns at most 32
PEEK = 32
SENDERS = 16
MAX_VISIBILITY = 7 * 24 * 3600
GONE = ("MessageNotFound", "PopReceiptMismatch", "QueueNotFound")


def _seconds(visibility: float, least: int = 0) -> int:
    return max(least, min(MAX_VISIBILITY, math.ceil(visibility)))


def _xml_size(body: str) -> int:
    return len(escape(body).encode())


def _connection_account(connection: str) -> str:
    fields = dict(part.split("=", 1) for part in connection.split(";") if "=" in part)
    return fields.get("AccountName", "")


def account_of(remote_url: str) -> str:
    """The storage account of a task's remote: `abfs://container@account.dfs.core.windows.net/...`,
    or (an `az://container/...` URL) the account of the configured connection string."""
    netloc = urlsplit(remote_url).netloc
    if "@" in netloc:
        return netloc.split("@", 1)[1].split(".", 1)[0]
    found = _connection_account(os.environ.get("AZURE_STORAGE_CONNECTION_STRING", ""))
    found = found or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "")
    if not found:
        raise ValueError(
            f"queue: no storage account in {remote_url!r}; accepted: abfs://<container>@<account>.dfs.core.windows.net/..."
        )
    return found


def service_client(account: str) -> Any:
    from azure.storage.queue import QueueServiceClient

    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    if connection and _connection_account(connection) == account:
        return QueueServiceClient.from_connection_string(connection)
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(exclude_interactive_browser_credential=True)
    return QueueServiceClient(f"https://{account}.queue.core.windows.net", credential=credential)


def _code(error: BaseException) -> str:
    found = getattr(error, "error_code", "") or ""
    return str(getattr(found, "value", found))  # a StorageErrorCode enum, or text


class AzureQueue:
    """One run's Azure Storage queue (meets `TaskQueue`)."""

    def __init__(self, url: str, **options: Any):
        self.address = Address.parse(url, SCHEME)
        self.url = self.address.url
        service = options.get("service") or service_client(self.address.place)
        self.client = service.get_queue_client(self.address.name)
        self.bodies = Bodies(self.address.remote, LIMIT, _xml_size)
        self._pops: dict[str, str] = {}  # receipt -> newest pop receipt
        self._lock = threading.Lock()

    @classmethod
    def for_task(cls, task_id: str, remote_url: str, region: str) -> AzureQueue:
        return cls(Address(SCHEME, account_of(remote_url), queue_name(task_id), task_id, remote_url).url)

    def create(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self.client.create_queue()

    def send(self, tasks: Iterable[tuple[str, Any]]) -> int:
        bodies = [self.bodies.encode(task_id, data) for task_id, data in tasks]
        with ThreadPoolExecutor(SENDERS) as pool:
            for _ in pool.map(lambda body: self.client.send_message(body, time_to_live=-1), bodies):
                pass
        return len(bodies)

    def receive(self, max_messages: int, visibility: float) -> list[Message]:
        pages = self.client.receive_messages(
            messages_per_page=min(PAGE, max_messages), visibility_timeout=_seconds(visibility, 1),
            max_messages=max_messages,
        )  # fmt: skip
        found = []
        for item in pages:
            task_id, data = self.bodies.decode(item.content)
            receipt = f"{item.id}:{item.pop_receipt}"
            with self._lock:
                self._pops[receipt] = item.pop_receipt
            found.append(Message(task_id, data, receipt, int(item.dequeue_count or 1)))
        return found

    def _update(self, message: Message, seconds: int) -> None:
        message_id, first = message.receipt.split(":", 1)
        with self._lock:
            pop = self._pops.get(message.receipt, first)
        answer = self.client.update_message(message_id, pop_receipt=pop, visibility_timeout=seconds)
        with self._lock:
            self._pops[message.receipt] = answer.pop_receipt

    def extend(self, message: Message, visibility: float) -> None:
        try:
            self._update(message, _seconds(visibility))
        except Exception as error:
            if _code(error) in GONE:
                raise LeaseLost(f"queue: task {message.task_id!r} is no longer held here") from None
            raise

    def _settle(self, message: Message, action: str) -> None:
        """ack (delete) or release (visible now); a message that is no longer ours is left alone."""
        message_id, first = message.receipt.split(":", 1)
        try:
            if action == "ack":
                with self._lock:
                    pop = self._pops.get(message.receipt, first)
                self.client.delete_message(message_id, pop_receipt=pop)
            else:
                self._update(message, 0)
        except Exception as error:
            if _code(error) not in GONE:
                raise
        with self._lock:
            self._pops.pop(message.receipt, None)

    def ack(self, message: Message) -> None:
        self._settle(message, "ack")
        self.bodies.forget(message.task_id)

    def release(self, message: Message) -> None:
        self._settle(message, "release")

    def depth(self) -> Depth:
        """Azure counts all messages, hidden or not; a peek sees up to 32 visible ones. So in
        flight is exact while fewer than 32 wait, else unknown and reported as 0."""
        total = int(self.client.get_queue_properties().approximate_message_count or 0)
        visible = len(self.client.peek_messages(max_messages=PEEK))
        if visible < PEEK:
            return Depth(waiting=visible, in_flight=max(0, total - visible))
        return Depth(waiting=total, in_flight=0)

    def delete(self) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_queue()
        self.bodies.forget_all()
