"""Map runs on the local backend, with real machines (processes) and the real SQLite queue."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter.commands import parse_words
from tpi_jupyter.fanout.face import map_verb
from tpi_jupyter.fanout.run import MapRun, continue_run, map_tasks
from tpi_jupyter.spec import SpecError
from tpi_jupyter.task import TaskError

from .conftest import created_nothing, wait_for
from .kernels import Kernel

JOBS = """
import os, time

def process_task(task_id, data, worker_data):
    kind = data.get("kind", "add")
    if kind == "add":
        return False, data["a"] + data["b"]
    if kind == "sleep":
        time.sleep(data["seconds"])
        return False, task_id
    if kind == "crash":
        os._exit(3)
    if kind == "raise":
        raise ValueError("bad data in " + task_id)
    if kind == "memory":
        return False, len(bytearray(3 * 1024**3))
    if kind == "retry-always":
        return True, "not yet " + task_id
    if kind == "retry-once":
        marker = os.path.join(data["dir"], task_id)
        if not os.path.exists(marker):
            open(marker, "w").close()
            return True, "once more"
        return False, "second time lucky"
    if kind == "leak":
        raise ValueError("token is " + os.environ["TPI_TEST_TOKEN"])
    if kind == "aware":  # a long task that ends early on a spot notice, as rms-cloud-tasks' tasks may
        for _ in range(200):
            if worker_data.received_termination_notice:
                return False, "noticed"
            time.sleep(0.05)
        return False, "no notice"
    if kind == "count":  # how many tasks this worker process has run
        global RUN
        RUN = globals().get("RUN", 0) + 1
        return False, RUN
    if kind == "info":
        return False, {"workers": worker_data.num_simultaneous_tasks, "tasks": worker_data.num_tasks,
                       "notice": worker_data.received_termination_notice}
"""


@pytest.fixture
def jobs(workdir: Path) -> Path:
    (workdir / "jobs.py").write_text(JOBS)
    return workdir


def by_id(run: MapRun, **wait: Any) -> dict[str, dict[str, Any]]:
    return {row["task_id"]: row for row in run.results(**wait)}


def finals(run: MapRun) -> list[str]:
    """Every final record written for a task (one per task, even when delivered twice)."""
    fs, root = run.task.remote
    ids = []
    for path in fs.find(f"{root}/fanout"):
        for line in fs.cat_file(path).decode().splitlines():
            record = json.loads(line)
            if record.get("final") and not path.split("/")[-2].startswith("previous-"):
                ids.append(record["task"])
    return ids


def test_rms_style_worker_results_jsonl_and_destroy(tpi_home: Path, jobs: Path) -> None:
    tasks = [{"task_id": f"t{i}", "data": {"a": i, "b": 10 * i}} for i in range(40)]
    (jobs / "tasks.json").write_text(json.dumps(tasks))
    run = map_tasks("jobs:process_task", "tasks.json", name="adds", workers=2, workdir=".")
    rows = run.results(timeout=60)
    assert [row["task_id"] for row in rows] == [f"t{i}" for i in range(40)]
    assert [row["result"] for row in rows] == [11 * i for i in range(40)]
    assert {row["status"] for row in rows} == {"done"}
    counts = run.counts()
    assert (counts.done, counts.failed, counts.total, counts.duplicates) == (40, 0, 40, 0)
    out = run.to_jsonl(str(jobs / "results.jsonl"))
    lines = [json.loads(line) for line in Path(out).read_text().splitlines()]
    assert lines == rows
    queue_file = Path(run.task.record["map"]["queue_url"])
    assert queue_file.exists()
    wait_for(lambda: run.status() == "succeeded", 30)  # machines leave once the queue is empty
    run.task.destroy()
    assert not queue_file.exists() and created_nothing(tpi_home)


def test_timeout_crash_exception_memory_kill_that_task_only(tpi_home: Path, jobs: Path) -> None:
    tasks = [
        {"task_id": "slow", "data": {"kind": "sleep", "seconds": 30}},
        {"task_id": "crash", "data": {"kind": "crash"}},
        {"task_id": "raise", "data": {"kind": "raise"}},
        {"task_id": "memory", "data": {"kind": "memory"}},
        *({"task_id": f"ok{i}", "data": {"a": i, "b": 1}} for i in range(20)),
    ]
    run = map_tasks("jobs", tasks, name="faults", workers=2, task_timeout=1.5, memory_gb=1, workdir=".")
    rows = by_id(run, timeout=60)
    assert rows["slow"]["status"] == "failed" and "longer than 1.5 s" in rows["slow"]["error"]
    assert rows["crash"]["status"] == "failed" and "ended with code 3" in rows["crash"]["error"]
    assert rows["raise"]["status"] == "failed" and "ValueError: bad data in raise" in rows["raise"]["error"]
    assert rows["memory"]["status"] == "failed" and "memory limit" in rows["memory"]["error"]
    assert all(rows[f"ok{i}"]["result"] == i + 1 for i in range(20))
    kinds = {error["task"]: error["kind"] for error in run.errors()}
    assert kinds == {"slow": "timed-out", "crash": "exited", "raise": "exception", "memory": "memory"}
    assert rows["slow"]["seconds"] < 5  # killed at the task timeout, not at the end of its sleep


def test_retry_until_the_limit_then_failed_with_the_last_error(tpi_home: Path, jobs: Path) -> None:
    tasks = [{"task_id": "never", "data": {"kind": "retry-always"}},
             {"task_id": "once", "data": {"kind": "retry-once", "dir": str(jobs)}}]  # fmt: skip
    run = map_tasks("jobs:process_task", tasks, name="retries", workers=1, retries=2, workdir=".")
    rows = by_id(run, timeout=60)
    assert rows["never"]["status"] == "failed" and rows["never"]["attempts"] == 3
    assert "retry limit (2) reached" in rows["never"]["error"] and "not yet never" in rows["never"]["error"]
    assert (rows["once"]["status"], rows["once"]["result"], rows["once"]["attempts"]) == (
        "done",
        "second time lucky",
        2,
    )
    assert sorted(finals(run)) == ["never", "once"]


def test_a_killed_machine_s_tasks_are_redelivered(tpi_home: Path, jobs: Path) -> None:
    tasks = [{"task_id": f"s{i}", "data": {"kind": "sleep", "seconds": 0.4}} for i in range(12)]
    run = map_tasks("jobs", tasks, name="killed", workers=2, visibility=1.5, workdir=".", spot="0")
    wait_for(lambda: run.in_flight() >= 2, 30)
    run.task.preempt(0)  # SIGKILL to the machine and its worker processes: no notice, no release
    rows = by_id(run, timeout=90)
    assert sorted(rows, key=lambda t: int(t[1:])) == [f"s{i}" for i in range(12)]
    assert {row["status"] for row in rows.values()} == {"done"}
    assert max(row["attempts"] for row in rows.values()) >= 2  # the lost ones came back
    assert sorted(finals(run)) == sorted(rows)  # and were recorded once


def test_a_spot_notice_returns_unfinished_tasks_nothing_lost_nothing_twice(
    tpi_home: Path, jobs: Path
) -> None:
    tasks = [{"task_id": "aware", "data": {"kind": "aware"}}]
    tasks += [{"task_id": f"s{i}", "data": {"kind": "sleep", "seconds": 0.3}} for i in range(30)]
    run = map_tasks("jobs", tasks, name="notice", workers=2, grace=0.5, workdir=".", spot="0")
    wait_for(lambda: run.counts().done >= 4, 30)
    run.preempt(0)  # a notice first: the machine releases what it holds, then it is taken
    rows = by_id(run, timeout=90)
    assert len(rows) == 31 and {row["status"] for row in rows.values()} == {"done"}
    assert rows["aware"]["result"] == "noticed"  # the flag reached the task's own process
    assert sorted(finals(run)) == sorted(rows)
    kinds = [event["kind"] for event in run.fold.events]
    assert "spot-notice" in kinds and "machine-released" in kinds
    assert run.counts().duplicates == 0
    events = [e["kind"] for e in run.task.events()]
    assert "preempted" in events and "respawned" in events


def test_stop_then_continue_does_not_redo_finished_tasks(tpi_home: Path, jobs: Path) -> None:
    tasks = [{"task_id": f"s{i}", "data": {"kind": "sleep", "seconds": 0.1}} for i in range(30)]
    run = map_tasks("jobs", tasks, name="halted", workers=1, grace=0.3, workdir=".")
    wait_for(lambda: run.counts().done >= 3, 30)
    with pytest.raises(TaskError, match=r"stop it first|is running"):
        continue_run("halted")
    run.task.stop()
    wait_for(lambda: run.status() in ("failed", "succeeded"), 30)
    first = {row["task_id"] for row in run.results(wait=False)}
    assert 3 <= len(first) < 30
    again = map_verb(parse_words(["map", "halted", "--continue"]), {}, print)  # as `tpi map` parses it
    assert again.name == "halted-2" and again.total == 30
    rows = again.results(timeout=60)
    assert [row["task_id"] for row in rows] == [f"s{i}" for i in range(30)]  # carried + new
    assert not set(finals(again)) & first  # the finished ones did not run again
    assert len(finals(again)) == 30 - len(first)
    assert again.counts().finished == 30


def test_worker_data_offers_rms_cloud_tasks_attributes(tpi_home: Path, jobs: Path) -> None:
    run = map_tasks("jobs", [{"task_id": "i", "data": {"kind": "info"}}], name="info", workers=3, workdir=".")
    with pytest.raises(TaskError, match="runs on-demand"):
        run.preempt(0)  # refused before any notice reaches the machine
    (row,) = run.results(timeout=60)
    assert row["result"] == {"workers": 3, "tasks": 1, "notice": False}
    assert not (Path(run.task.record["remote"]) / ".tpi" / "control").exists()


@pytest.mark.parametrize(
    ("worker", "message"),
    [
        ("missing_module:process_task", "worker: cannot import 'missing_module'"),
        ("jobs:nothing_here", "worker: module 'jobs' has no function 'nothing_here'"),
        ("a:b:c", "worker: 'a:b:c' is not a worker"),
    ],
)
def test_bad_workers_get_one_line_and_create_nothing(
    tpi_home: Path, jobs: Path, worker: str, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        map_tasks(worker, [1, 2], workdir=".")
    assert message in str(caught.value) and "\n" not in str(caught.value) and "accepted" in str(caught.value)
    assert created_nothing(tpi_home)


def test_a_notebook_function_runs_and_the_run_outlives_the_kernel(tpi_home: Path, workdir: Path) -> None:
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home), "TPI_JUPYTER_NONINTERACTIVE": "1"}
    kernel = Kernel(env, workdir)
    try:
        kernel.ok("from tpi_jupyter import map_tasks\nOFFSET = 100\n"
                  "def score(x):\n    import time; time.sleep(0.05)\n    return {'x': x, 'score': x * x + OFFSET}\n"
                  "run = map_tasks(score, range(60), name='nb', workers=2)")  # fmt: skip
        kernel.restart()  # the client goes away; the run goes on
        shown = kernel.ok("%load_ext tpi_jupyter\nrun = %tpi attach nb\nrun")
        assert "map run nb" in shown.text or shown.comms  # text, or the widget's comm
        rows = kernel.ok("rows = run.results(timeout=60)\nprint(len(rows), rows[7]['result'])").text
        assert rows.strip() == "60 {'x': 7, 'score': 149}"
    finally:
        kernel.shutdown()


def test_imported_environment_values_never_reach_the_records(
    tpi_home: Path, jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-3f9a81c7e2d4b605"
    monkeypatch.setenv("TPI_TEST_TOKEN", secret)
    tasks = [{"task_id": "leak", "data": {"kind": "leak"}}]
    run = map_tasks("jobs", tasks, name="masked", workers=1, workdir=".", environment={"TPI_TEST_TOKEN": ""})
    (row,) = run.results(timeout=60)
    assert row["status"] == "failed" and "ValueError: token is ***" in row["error"]
    fs, root = run.task.remote
    written = b"".join(fs.cat_file(path) for path in fs.find(f"{root}/fanout"))
    assert secret.encode() not in written and b"token is ***" in written


def test_a_launch_failing_after_the_queue_exists_removes_everything(
    tpi_home: Path, jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tpi_jupyter.fanout.sqlite_queue import SqliteQueue

    created: list[str] = []
    real_create = SqliteQueue.create

    def create_then_record(self: SqliteQueue) -> None:
        real_create(self)
        created.append(self.url)

    def full(self: SqliteQueue, tasks: object) -> int:  # the one stubbed step: a full disk
        raise OSError("No space left on device")

    monkeypatch.setattr(SqliteQueue, "create", create_then_record)
    monkeypatch.setattr(SqliteQueue, "send", full)
    with pytest.raises(TaskError, match="No space left on device; everything created so far was removed"):
        map_tasks("jobs", [1, 2, 3], name="rolled", workdir=".")
    assert created and not Path(created[0]).exists() and created_nothing(tpi_home)


def test_fresh_process_gives_every_task_a_new_worker_process(tpi_home: Path, jobs: Path) -> None:
    tasks = [{"task_id": f"c{i}", "data": {"kind": "count"}} for i in range(6)]
    shared = map_tasks("jobs", tasks, name="shared", workers=1, workdir=".")
    assert max(row["result"] for row in shared.results(timeout=60)) == 6  # one process ran them all
    fresh = map_tasks("jobs", tasks, name="fresh", workers=1, fresh_process=True, workdir=".")
    assert {row["result"] for row in fresh.results(timeout=60)} == {1}
