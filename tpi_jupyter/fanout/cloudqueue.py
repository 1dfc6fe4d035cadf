"""What the cloud queues share: a run's queue name, the queue's url, and the message body, with the
one rule for task data too large for a message.

The body of every message is JSON: `{"id": task_id, "data": data}`. When that is larger than
the service takes, the data goes to the task's remote (`<remote>/.tpi/queue/<digest>.json`) and
the body carries `{"id": task_id, "ref": key}` instead; `ack` removes the object and `delete`
the whole folder. Machines can read it: their identity may already use the task's remote.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit

from ..spec import is_task_id, short_id

LARGE_FOLDER = ".tpi/queue"
T = TypeVar("T")


class LeaseLost(LookupError):
    """The message is no longer ours: its visibility lapsed and it went to another worker, or it was
    acknowledged. `extend` raises it; `ack` and `release` of such a message do nothing."""


def queue_name(task_id: str) -> str:
    """`tpi-<short id>` for a task id (the task's other resources' name too): lowercase, 20
    characters, valid for SQS (80), Pub/Sub (3-255, a letter first) and Azure queues (3-63, [a-z0-9-])."""
    if is_task_id(task_id):
        return f"tpi-{short_id(task_id)}"
    slug = re.sub(r"[^a-z0-9]+", "-", task_id.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:12]
    return f"tpi-{slug}-{digest}" if slug else f"tpi-{digest}"


@dataclass(frozen=True)
class Address:
    """`<scheme>://<place>/<name>?task=<id>&remote=<remote url>`: all a machine needs to reopen a
    queue (place: the region, project or storage account); no secret in it."""

    scheme: str
    place: str
    name: str
    task_id: str
    remote: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.place}/{self.name}?{urlencode({'task': self.task_id, 'remote': self.remote})}"

    @classmethod
    def parse(cls, url: str, scheme: str) -> Address:
        parts = urlsplit(url)
        name = parts.path.strip("/")
        if parts.scheme != scheme or not name or "/" in name:
            raise ValueError(
                f"queue: {url!r} is not a {scheme} queue; accepted: {scheme}://<place>/<name>?remote=<url>"
            )
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return cls(scheme, parts.netloc, name, query.get("task", ""), query.get("remote", ""))


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def utf8_size(body: str) -> int:
    return len(body.encode())


class Bodies:
    """Message bodies for one queue: small data inline, larger data by reference in the remote."""

    def __init__(self, remote: str, limit: int, size: Callable[[str], int] = utf8_size):
        self.remote, self.limit, self.size = remote, limit, size
        self._referenced: set[str] = set()  # task ids received by reference here (set ops are atomic)

    def _key(self, task_id: str) -> str:
        return f"{LARGE_FOLDER}/{hashlib.sha256(task_id.encode()).hexdigest()[:32]}.json"

    def _fs(self) -> tuple[Any, str]:
        if not self.remote:
            raise ValueError(
                "queue: task data larger than a message needs the task's remote; accepted: remote=<url>"
            )
        from ..sync import filesystem

        return filesystem(self.remote)

    def encode(self, task_id: str, data: Any) -> str:
        body = json.dumps({"id": task_id, "data": data}, separators=(",", ":"))
        if self.size(body) <= self.limit:
            return body
        fs, root = self._fs()
        key = self._key(task_id)
        fs.makedirs(f"{root}/{LARGE_FOLDER}", exist_ok=True)  # a local remote needs the folder
        fs.pipe_file(f"{root}/{key}", json.dumps(data, separators=(",", ":")).encode())
        return json.dumps({"id": task_id, "ref": key})

    def decode(self, body: str | bytes) -> tuple[str, Any]:
        found = json.loads(body)
        if "ref" not in found:
            return str(found["id"]), found.get("data")
        fs, root = self._fs()
        self._referenced.add(str(found["id"]))
        return str(found["id"]), json.loads(fs.cat_file(f"{root}/{found['ref']}"))

    def forget(self, task_id: str) -> None:
        """The task is acknowledged: its data object (if it had one) is not needed any more. Objects of
        tasks received elsewhere stay until `forget_all`."""
        if task_id in self._referenced:
            self._referenced.discard(task_id)
            fs, root = self._fs()
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{self._key(task_id)}")

    def forget_all(self) -> None:
        if self.remote:
            fs, root = self._fs()
            with contextlib.suppress(FileNotFoundError):
                fs.rm(f"{root}/{LARGE_FOLDER}", recursive=True)
