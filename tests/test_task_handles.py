"""Task handles against real local tasks: wait's timeout, events and `destroyed` shared through the registry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tpi_jupyter import state
from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import TIMEOUT_GRACE, Task, TaskError, launch

from .conftest import wait_for


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script)
    assert isinstance(task, Task)
    return task


def test_wait_honours_its_timeout_while_the_script_is_silent(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=silent"], "sleep 60")
    try:
        started = time.monotonic()
        with pytest.raises(TaskError, match=r"task silent: still (provisioning|running) after 2 s"):
            task.wait(timeout=2)
        # Before the fix wait() only checked between log lines: a silent script held it for 60 s.
        assert time.monotonic() - started < 30
        assert task.status == "running"  # waiting gave up; the task did not
    finally:
        task.destroy()


def test_wait_returns_the_final_status_and_every_line(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=talker"], "echo one; sleep 0.5; echo two")
    lines: list[str] = []
    try:
        assert task.wait(timeout=60, on_line=lambda _rank, _stamp, text: lines.append(text)) == "succeeded"
        assert lines == ["one", "two"]
    finally:
        task.destroy()


def test_two_handles_never_erase_each_others_events(tpi_home: Path, workdir: Path) -> None:
    (workdir / "out").mkdir()
    task = start(["name=handles", "workdir=.", "output=out"], "echo r > out/r.txt; sleep 60")
    first, second = Task.find("handles"), Task.find("handles")
    try:
        wait_for(lambda: (Path(task.record["remote"]) / "data/out/r.txt").exists(), timeout=30)
        first.pull()  # first saves "pulled"; second's record in memory knows nothing of it
        second.stop()  # before the fix, second saved its whole record: "pulled" was erased
        stored = [event["kind"] for event in state.load(task.id)["events"]]  # type: ignore[index]
        assert "pulled" in stored and "stopped" in stored, stored
        # and each handle shows what the other did
        assert "stopped" in [event["kind"] for event in first.events(first.read())]
        assert "pulled" in [event["kind"] for event in second.events()]
    finally:
        first.destroy()


def test_destroyed_through_one_handle_is_destroyed_for_every_handle(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=twice"], "sleep 60")
    other = Task.find("twice")
    assert not other.destroyed
    task.destroy()
    assert other.destroyed  # read from the registry, not remembered per handle
    assert other.read().status == "destroyed"
    assert other.destroy() == []  # idempotent: nothing left to remove, no error
    with pytest.raises(TaskError, match="destroyed; nothing to pull"):
        other.pull()


def test_an_unreported_task_past_its_deadline_reads_as_timeout(tpi_home: Path, workdir: Path) -> None:
    """The client-side fallback: no rank reported, the deadline and its grace have passed."""
    task = start(["name=late", "timeout=3600"], "echo started; sleep 60")
    try:
        wait_for(lambda: task.read().status == "running", timeout=30)
        # Only the registry's deadline moves: the machine keeps its own (an hour away) and runs on.
        past = time.time() - TIMEOUT_GRACE - 1
        state.update(task.id, lambda record: record.update(deadline=past))
        snapshot = Task.find("late").read()
        assert snapshot.status == "timeout"
        assert [rank.state for rank in snapshot.ranks] == ["running"]  # nothing reported: the fallback
        # within the grace it is still running
        state.update(task.id, lambda record: record.update(deadline=time.time() - TIMEOUT_GRACE + 60))
        assert Task.find("late").read().status == "running"
    finally:
        task.destroy()
