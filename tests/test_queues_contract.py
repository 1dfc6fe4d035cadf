"""The queue contract (tpi_jupyter/fanout/queue.py), checked the same way against every cloud's
queue on its emulator: send, receive, extend, ack, release; a lapsed message comes back with
`deliveries` 2; batches past the service's batch size; task data too large for a message goes by
reference through the task's remote; depth; delete is idempotent; a url reopens the queue.

A queue class joins with one line in SERVICES (its cloud and the fixture readying its service).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter.fanout.cloudqueue import LARGE_FOLDER
from tpi_jupyter.fanout.queue import Depth, Message, TaskQueue, open_queue, queue_class
from tpi_jupyter.spec import task_id

from .aws_moto import REGION
from .queue_services import (  # noqa: F401  (fixtures)
    azurite_queue_connection,
    azurite_queues,
    moto_server_url,
    moto_sqs,
    pstest_address,
    pubsub_emulator,
)

# cloud -> the fixture that readies its service ("" when it needs none)
SERVICES = {"aws": "moto_sqs", "gcp": "pubsub_emulator", "az": "azurite_queues"}
# the most messages one request of the service carries (send or receive, whichever is smaller)
BATCH = {"aws": 10, "gcp": 1000, "az": 32}
NO_DEPTH = {"gcp": "Pub/Sub has no backlog call; depth reads Cloud Monitoring, which pstest lacks "
                   "(tests/test_queues_pubsub.py checks that request)"}  # fmt: skip

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=sorted(SERVICES))
def cloud(request: pytest.FixtureRequest) -> str:
    if SERVICES[request.param]:
        request.getfixturevalue(SERVICES[request.param])
    return str(request.param)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    path = tmp_path / "remote"
    path.mkdir()
    return path


@pytest.fixture
def queue(cloud: str, remote: Path) -> Iterator[TaskQueue]:
    made = queue_class(cloud).for_task(task_id(f"contract {uuid.uuid4().hex[:8]}"), str(remote), REGION)
    made.create()
    made.create()  # idempotent
    yield made
    made.delete()


def drain(queue: TaskQueue, expected: int, visibility: float = 60, limit: float = 30) -> list[Message]:
    found: list[Message] = []
    deadline = time.monotonic() + limit
    while len(found) < expected and time.monotonic() < deadline:
        found += queue.receive(expected - len(found), visibility)
    return found


def test_send_receive_ack(queue: TaskQueue) -> None:
    tasks = {"a": {"x": 1}, "b": [1, 2, 3], "c": 'text with <xml> & "quotes" and ünïcode'}
    assert queue.send(tasks.items()) == 3
    found = drain(queue, 3)
    assert {m.task_id: m.data for m in found} == tasks
    assert [m.deliveries for m in found] == [1, 1, 1]
    for message in found:
        queue.ack(message)
    assert queue.receive(10, 60) == []


def test_lapsed_visibility_redelivers(queue: TaskQueue) -> None:
    """The worker holding it died: once its visibility lapses, another worker gets it."""
    queue.send([("t1", {"n": 1})])
    first = drain(queue, 1, visibility=1)
    assert [(m.task_id, m.deliveries) for m in first] == [("t1", 1)]
    assert queue.receive(1, 60) == []  # hidden while it is held
    time.sleep(2.5)
    again = drain(queue, 1)
    assert [(m.task_id, m.data, m.deliveries) for m in again] == [("t1", {"n": 1}, 2)]
    queue.ack(again[0])


def test_extend_keeps_it_hidden_and_release_gives_it_back(queue: TaskQueue) -> None:
    queue.send([("t1", 1)])
    [held] = drain(queue, 1, visibility=2)
    queue.extend(held, 30)
    time.sleep(3)
    assert queue.receive(1, 60) == []  # still held: the extension outlived the first visibility
    queue.extend(held, 30)  # again (Azure: with the pop receipt the first extension returned)
    queue.release(held)  # a spot notice: back at once
    [back] = drain(queue, 1)
    assert (back.task_id, back.deliveries) == ("t1", 2)
    queue.ack(back)
    assert queue.receive(1, 60) == []


def test_batches_past_the_service_batch_size(queue: TaskQueue, cloud: str) -> None:
    count = BATCH[cloud] * 2 + 5
    tasks = [(f"task-{index:05d}", {"index": index}) for index in range(count)]
    assert queue.send(iter(tasks)) == count
    found = drain(queue, count)
    assert sorted((m.task_id, m.data["index"]) for m in found) == [(t, d["index"]) for t, d in tasks]
    for message in found:
        queue.ack(message)
    assert queue.receive(BATCH[cloud], 60) == []


def test_large_data_goes_by_reference(queue: TaskQueue, remote: Path) -> None:
    limit = int(__import__(type(queue).__module__, fromlist=["LIMIT"]).LIMIT)
    big = "x" * (limit + 1)  # past what the service takes in one message
    queue.send([("big", {"blob": big}), ("small", {"blob": "y"})])
    stored = list((remote / LARGE_FOLDER).iterdir())
    assert len(stored) == 1  # only the large one went to the remote
    found = {m.task_id: m for m in drain(queue, 2)}
    assert found["big"].data == {"blob": big}
    assert found["small"].data == {"blob": "y"}
    queue.ack(found["big"])
    assert not stored[0].exists()  # acked: its data object is gone
    queue.ack(found["small"])


def test_depth(queue: TaskQueue, cloud: str) -> None:
    if cloud in NO_DEPTH:
        pytest.skip(NO_DEPTH[cloud])
    assert queue.depth() == Depth(waiting=0, in_flight=0)
    queue.send([("a", 1), ("b", 2), ("c", 3)])
    held = drain(queue, 1)
    assert queue.depth() == Depth(waiting=2, in_flight=1)
    queue.ack(held[0])
    assert queue.depth() == Depth(waiting=2, in_flight=0)


def test_url_reopens_the_queue_without_secrets(queue: TaskQueue, cloud: str) -> None:
    for secret in ("testing", "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq"):
        assert secret not in queue.url
    queue.send([("t1", "from the client")])
    reopened = open_queue(cloud, queue.url)
    [message] = drain(reopened, 1)
    assert (message.task_id, message.data) == ("t1", "from the client")
    reopened.ack(message)
    assert queue.receive(1, 60) == []


def test_delete_is_idempotent(queue: TaskQueue, remote: Path) -> None:
    queue.send([("big", "z" * (10 * 1024 * 1024))])  # past every service's limit: by reference
    queue.delete()
    queue.delete()
    assert not (remote / LARGE_FOLDER).exists()


WORKER = """
import sys, time
from tpi_jupyter.fanout.queue import open_queue
queue = open_queue(sys.argv[1], sys.argv[2])
messages = []
while not messages:
    messages = queue.receive(1, float(sys.argv[3]))
for message in messages:
    print(message.task_id, message.deliveries, flush=True)
    if sys.argv[4] == "ack":
        queue.ack(message)
    else:
        time.sleep(3600)  # the task runs until the machine is killed
"""


def test_a_killed_workers_task_goes_to_another_worker_process(queue: TaskQueue, cloud: str) -> None:
    """Workers as separate processes that reopen the queue from its url, as machines do: the
    first is killed mid-task (SIGKILL: no release), the second gets the task once it lapses."""
    import subprocess
    import sys

    queue.send([("t1", {"n": 1})])
    first = subprocess.Popen([sys.executable, "-c", WORKER, cloud, queue.url, "2", "hold"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert first.stdout is not None
        assert first.stdout.readline().split() == ["t1", "1"]
    finally:
        first.kill()
        first.wait(timeout=10)
    second = subprocess.run([sys.executable, "-c", WORKER, cloud, queue.url, "30", "ack"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert second.stdout.split() == ["t1", "2"], second.stderr[-2000:]
    assert queue.receive(1, 60) == []
