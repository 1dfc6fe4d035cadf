"""The local backend's task queue: one SQLite file that the client and every local machine reach.

SQLite in WAL mode takes concurrent readers and one writer at a time across processes; every
operation is one short transaction, so workers on the same machine share it without a server.
A message's receipt is a fresh token per delivery: an ack or extend with a stale receipt (the
message was redelivered meanwhile) changes nothing, as with SQS.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .queue import Depth, Message

FILE_NAME = "queue.sqlite"
BATCH = 500  # messages per insert transaction
SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    task_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    visible REAL NOT NULL DEFAULT 0,
    deliveries INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible);
"""


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url.removeprefix("file://")
    return None if "://" in url else url


class SqliteQueue:
    """A run's queue in `<remote>/.tpi/queue.sqlite` (a local remote), else in the task's
    local directory. `url` is the file's absolute path."""

    def __init__(self, url: str, **_: Any):
        self.url = os.path.abspath(url)
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    @classmethod
    def for_task(cls, task_id: str, remote_url: str, region: str) -> SqliteQueue:
        local = _local_path(remote_url)
        if local is not None:
            return cls(str(Path(local) / ".tpi" / FILE_NAME))
        from ..state import home  # a remote elsewhere: beside the task's other local files

        return cls(str(home() / "local" / task_id / FILE_NAME))

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None or self._pid != os.getpid():  # a connection never crosses a fork
            if not os.path.exists(self.url):
                raise FileNotFoundError(f"queue: {self.url} does not exist (deleted with its task?)")
            self._db = self._connect()
            self._pid = os.getpid()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.url, timeout=60, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        return db

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def create(self) -> None:
        os.makedirs(os.path.dirname(self.url), exist_ok=True)
        db = self._connect()
        try:
            db.executescript(SCHEMA)
        finally:
            db.close()
        os.chmod(self.url, 0o600)

    def send(self, tasks: Iterable[tuple[str, Any]]) -> int:
        sent, batch = 0, []
        for task_id, data in tasks:
            batch.append((task_id, json.dumps(data)))
            if len(batch) >= BATCH:
                sent += self._insert(batch)
                batch = []
        return sent + (self._insert(batch) if batch else 0)

    def _insert(self, rows: list[tuple[str, str]]) -> int:
        with self._write() as db:
            db.executemany("INSERT OR IGNORE INTO messages (task_id, data) VALUES (?, ?)", rows)
        return len(rows)

    def receive(self, max_messages: int, visibility: float) -> list[Message]:
        now = time.time()
        with self._write() as db:
            rows = db.execute(
                "SELECT task_id, data, deliveries FROM messages WHERE visible <= ? ORDER BY visible LIMIT ?",
                (now, max_messages),
            ).fetchall()
            messages = [Message(task_id, json.loads(data), secrets.token_hex(8), deliveries + 1)
                        for task_id, data, deliveries in rows]  # fmt: skip
            db.executemany(
                "UPDATE messages SET visible = ?, deliveries = ?, receipt = ? WHERE task_id = ?",
                [(now + visibility, m.deliveries, m.receipt, m.task_id) for m in messages],
            )
        return messages

    def _set_visible(self, message: Message, visible: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE messages SET visible = ? WHERE task_id = ? AND receipt = ?",
                (visible, message.task_id, message.receipt),
            )

    def extend(self, message: Message, visibility: float) -> None:
        self._set_visible(message, time.time() + visibility)

    def release(self, message: Message) -> None:
        self._set_visible(message, 0.0)

    def ack(self, message: Message) -> None:
        with self._write() as db:
            db.execute(
                "DELETE FROM messages WHERE task_id = ? AND receipt = ?", (message.task_id, message.receipt)
            )

    def ack_many(self, messages: list[Message]) -> None:
        """`ack` of many messages in one transaction (the supervisor acks after each flush)."""
        if messages:
            with self._write() as db:
                db.executemany("DELETE FROM messages WHERE task_id = ? AND receipt = ?",
                               [(m.task_id, m.receipt) for m in messages])  # fmt: skip

    def depth(self) -> Depth:
        now = time.time()
        row = self.db.execute(
            "SELECT COALESCE(SUM(visible <= ?), 0), COALESCE(SUM(visible > ?), 0) FROM messages", (now, now)
        ).fetchone()
        return Depth(waiting=int(row[0]), in_flight=int(row[1]))

    def delete(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.url + suffix)
