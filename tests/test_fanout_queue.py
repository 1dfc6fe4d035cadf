"""The local SQLite queue against the queue contract, and the tasks sources (no machines)."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import fsspec
import pytest

from tpi_jupyter.fanout import tasks
from tpi_jupyter.fanout.queue import Depth, open_queue, queue_class
from tpi_jupyter.fanout.sqlite_queue import SqliteQueue


@pytest.fixture
def queue(tmp_path: Path) -> SqliteQueue:
    made = queue_class("local").for_task("tpi-x", str(tmp_path / "bucket"), "")
    assert isinstance(made, SqliteQueue)
    made.create()
    return made


def test_for_task_places_the_file_in_a_local_remote(tmp_path: Path) -> None:
    found = queue_class("local").for_task("tpi-x", str(tmp_path / "bucket"), "")
    assert found.url == str(tmp_path / "bucket" / ".tpi" / "queue.sqlite")
    elsewhere = queue_class("local").for_task("tpi-x", "memory://bucket/tpi-x", "")
    assert elsewhere.url.endswith("/local/tpi-x/queue.sqlite")


def test_delivery_extend_ack_release_and_depth(queue: SqliteQueue) -> None:
    assert queue.send((f"t{i}", {"i": i}) for i in range(1200)) == 1200
    assert queue.depth() == Depth(1200, 0)
    first = queue.receive(10, visibility=30)
    assert [m.task_id for m in first] == [f"t{i}" for i in range(10)]
    assert first[0].data == {"i": 0} and first[0].deliveries == 1
    assert queue.depth() == Depth(1190, 10)
    queue.ack(first[0])
    queue.release(first[1])
    again = queue.receive(1, visibility=30)
    assert again[0].task_id == "t1" and again[0].deliveries == 2
    assert queue.depth() == Depth(1190, 9)  # t0 acked; t1 released and taken again


def test_a_lapsed_message_is_redelivered_and_stale_receipts_change_nothing(queue: SqliteQueue) -> None:
    queue.send([("a", 1)])
    lost = queue.receive(1, visibility=0.2)[0]
    assert queue.receive(1, visibility=0.2) == []  # hidden while its visibility lasts
    time.sleep(0.3)
    second = queue.receive(1, visibility=30)[0]
    assert (second.task_id, second.deliveries) == ("a", 2)
    queue.ack(lost)  # the dead worker's receipt: the message stays
    queue.extend(lost, 0)
    assert queue.depth() == Depth(0, 1)
    queue.ack(second)
    assert queue.depth() == Depth(0, 0)


def test_extend_keeps_a_running_task_hidden(queue: SqliteQueue) -> None:
    queue.send([("a", 1)])
    message = queue.receive(1, visibility=0.3)[0]
    for _ in range(3):
        time.sleep(0.2)
        queue.extend(message, 0.3)
        assert queue.receive(1, visibility=1) == []


def _take(url: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = open_queue("local", url)
    taken = []
    while True:
        got = queue.receive(7, visibility=60)
        if not got:
            break
        for message in got:
            queue.ack(message)
            taken.append(message.task_id)
    out.put(taken)


def test_processes_share_the_queue_and_each_message_goes_once(queue: SqliteQueue) -> None:
    queue.send((str(i), i) for i in range(2000))
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_take, args=(queue.url, out)) for _ in range(3)]
    for worker in workers:
        worker.start()
    taken = [item for _ in workers for item in out.get(timeout=60)]
    for worker in workers:
        worker.join(30)
    assert sorted(taken, key=int) == [str(i) for i in range(2000)]


def test_delete_removes_the_files_and_is_idempotent(queue: SqliteQueue) -> None:
    queue.send([("a", 1)])
    queue.delete()
    queue.delete()
    assert not list(Path(queue.url).parent.glob("queue.sqlite*"))
    with pytest.raises(FileNotFoundError):
        queue.depth()


# ---------------------------------------------------------------- tasks sources

ENTRIES = [{"task_id": "a", "data": {"num1": 1, "num2": 2}}, {"task_id": "b", "data": {"num1": 3, "num2": 4}}]
PAIRS = [("a", {"num1": 1, "num2": 2}), ("b", {"num1": 3, "num2": 4})]


def test_tasks_from_json_jsonl_yaml_and_an_fsspec_url(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "t.json").write_text(json.dumps(ENTRIES))
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(e) for e in ENTRIES) + "\n")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(ENTRIES))
    with fsspec.open("memory://bucket/t.json", "w") as handle:
        handle.write(json.dumps(ENTRIES))
    for source in ("t.json", "t.jsonl", "t.yaml"):
        assert tasks.load(tmp_path / source) == PAIRS
    assert tasks.load("memory://bucket/t.json") == PAIRS


def test_tasks_from_an_iterable() -> None:
    assert tasks.load(x * x for x in range(3)) == [("0", 0), ("1", 1), ("2", 4)]
    assert tasks.load(ENTRIES) == PAIRS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (json.dumps([*ENTRIES, ENTRIES[0]]), "task_id 'a' appears twice"),
        ('[{"task_id": "a", "data": 1},', "is malformed"),
        ('{"task_id": "a"}', "holds a dict"),
        ('[{"data": 1}]', "entry 0 of"),
        ('[{"task_id": "", "data": 1}]', "has task_id ''"),
        ("[]", "holds no tasks"),
    ],
)
def test_bad_tasks_files_get_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(text)
    with pytest.raises(tasks.TasksError) as caught:
        tasks.load(str(path))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert "accepted:" in str(caught.value)


def test_missing_file_and_non_json_data_get_one_line(tmp_path: Path) -> None:
    with pytest.raises(tasks.TasksError, match="cannot read"):
        tasks.load(str(tmp_path / "nope.json"))
    with pytest.raises(tasks.TasksError, match="is not JSON"):
        tasks.load([object()])


# ---------------------------------------------------------------- records


def test_records_fold_once_per_task_in_any_order(tmp_path: Path) -> None:
    from tpi_jupyter.fanout.records import Fold, Writer

    chunks: dict[str, bytes] = {}
    first = Writer("r0-a", chunks.__setitem__)
    second = Writer("r1-b", chunks.__setitem__, secrets=["hunter2-password"])
    first.add("retry", "t1", attempt=1, result="again")
    first.add("completed", "t1", final="done", attempt=2, result=1)
    first.flush()
    second.add("completed", "t1", final="done", attempt=3, result=99)  # delivered twice: a later record
    second.add("exception", "t2", final="failed", error="ValueError: hunter2-password")
    second.add("spot-notice", None, detail="spot notice")
    second.flush()
    assert sorted(chunks) == ["fanout/r0-a/000000.jsonl", "fanout/r1-b/000000.jsonl"]
    assert b"hunter2-password" not in chunks["fanout/r1-b/000000.jsonl"]
    for order in (sorted(chunks), sorted(chunks, reverse=True)):
        fold = Fold()
        for key in order:
            for line in chunks[key].decode().splitlines():
                fold.add(json.loads(line))
        assert fold.results["t1"]["result"] == 1 and fold.duplicates == 1
        counts = fold.counts(total=3, in_flight=1)
        assert (counts.done, counts.failed, counts.retrying, counts.in_flight) == (1, 1, 0, 1)
        assert [error["task"] for error in fold.errors] == ["t2"] and "***" in fold.errors[0]["error"]
        assert [event["kind"] for event in fold.events] == ["spot-notice"]
