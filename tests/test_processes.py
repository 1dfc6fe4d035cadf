"""Every process of a task ends, and a failed rank stops the others (issue 11: items 7 and 8)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import psutil
import pytest

from tpi_jupyter import state
from tpi_jupyter.commands import TaskFailed, build_spec, status_text
from tpi_jupyter.task import Task, TaskError, launch

from .conftest import wait_for

# A script that leaves a child in a session of its own (it escapes the script's process group),
# then runs on. Both write their pids into the machine's work directory.
ESCAPING = """#!/bin/bash
setsid bash -c 'echo $$ > escaped.pid; exec sleep 300' &
echo $$ > script.pid
while [ ! -s escaped.pid ]; do sleep 0.05; done
echo ready
sleep 300
"""


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script)
    assert isinstance(task, Task)
    return task


def base(task: Task) -> Path:
    return Path(task.record["backend"]["base"])


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def escaping_task(name: str) -> tuple[Task, int, int]:
    """A running task whose script left a setsid child; (task, script pid, escaped pid)."""
    task = start([f"name={name}"], ESCAPING)
    work = base(task) / "machines" / "0" / "work"
    wait_for(lambda: "ready" in "".join(task.logs()), timeout=60)
    script, escaped = int((work / "script.pid").read_text()), int((work / "escaped.pid").read_text())
    assert os.getsid(escaped) != os.getsid(script)  # it really left the script's session
    return task, script, escaped


def test_stop_ends_a_child_that_left_the_session_with_setsid(tpi_home: Path, workdir: Path) -> None:
    task, script, escaped = escaping_task("setsid")
    task.stop()
    assert not running(script)
    wait_for(lambda: not running(escaped), timeout=10)
    assert task.status == "failed"
    task.destroy()


def test_destroy_ends_the_machines_of_a_group_killed_with_sigkill(tpi_home: Path, workdir: Path) -> None:
    task, script, escaped = escaping_task("orphans")
    group = json.loads((base(task) / "group.json").read_text())["pid"]
    agent = json.loads((base(task) / "machines.json").read_text())["0"]["pid"]
    os.kill(group, signal.SIGKILL)  # the supervisor dies; its machines are orphaned
    wait_for(lambda: not running(group), timeout=10)
    assert running(agent) and running(script) and running(escaped)
    again = Task.find("orphans")  # as from a new kernel
    again.destroy()
    for pid in (agent, script, escaped):
        assert not running(pid), pid
    assert not base(task).exists()
    assert state.load(task.id) is None


def test_destroy_says_which_process_survived_and_removes_nothing(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, _, escaped = escaping_task("survivor")
    group = json.loads((base(task) / "group.json").read_text())["pid"]
    os.kill(group, signal.SIGKILL)  # else the group itself ends every process of the task
    wait_for(lambda: not running(group), timeout=10)
    real_kill = psutil.Process.kill

    def kill_all_but_the_escaped(process: psutil.Process) -> None:
        if process.pid != escaped:  # stands in for a process the user cannot kill
            real_kill(process)

    monkeypatch.setattr(psutil.Process, "kill", kill_all_but_the_escaped)
    with pytest.raises(TaskError) as caught:
        task.destroy()
    message = str(caught.value)
    assert f"{escaped} (sleep)" in message and "still running" in message and "\n" not in message
    assert base(task).exists() and state.load(task.id) is not None  # nothing removed: try again
    monkeypatch.setattr(psutil.Process, "kill", real_kill)
    Task.find("survivor").destroy()
    assert not running(escaped) and not base(task).exists()


def test_an_agent_never_recreates_a_removed_remote(tpi_home: Path, workdir: Path) -> None:
    task, script, _ = escaping_task("removed")
    remote = Path(task.record["remote"])
    shutil.rmtree(remote)  # as a destroy elsewhere would, while the machine still runs
    agent = json.loads((base(task) / "machines.json").read_text())["0"]["pid"]
    wait_for(lambda: not running(agent), timeout=60)  # it noticed, stopped its script, left
    assert not running(script)
    group = json.loads((base(task) / "group.json").read_text())["pid"]
    wait_for(lambda: not running(group), timeout=30)
    assert not remote.exists()
    log = next((base(task)).glob("agent-0-0.log")).read_text()
    assert "not reporting" in log
    task.destroy()


# ---------------------------------------------------------------- a failed rank (item 8)


def test_a_failed_rank_stops_the_others_and_the_status_says_so(tpi_home: Path, workdir: Path) -> None:
    script = "#!/bin/bash\nif [ $TPI_RANK = 1 ]; then sleep 0.5; echo failing; exit 3; fi\nsleep 300\n"
    task = start(["name=ranks", "parallelism=3"], script)
    assert task.wait(timeout=60) == "failed"
    # The others do not run their 300 s: they are stopped and report.
    wait_for(lambda: all(rank.state != "running" for rank in task.read().ranks), timeout=60)
    ranks = task.read().ranks
    assert [(r.rank, r.state, r.stopped_by) for r in ranks] == [
        (0, "stopped", 1),
        (1, "failed", None),
        (2, "stopped", 1),
    ]
    assert ranks[1].code == 3 and ranks[0].reason == "stopped: rank 1 failed"
    text = status_text(task)
    assert "status failed: rank 1 failed with code 3; rank(s) 0, 2 stopped" in text
    assert "policy: a rank that fails stops the other ranks" in text
    events = [(e["kind"], e["rank"]) for e in task.events() if e["kind"].startswith("rank-")]
    assert sorted(events, key=str) == [("rank-failed", 1), ("rank-stopped", 0), ("rank-stopped", 2)]
    failure = TaskFailed(task, "failed", "")
    assert "rank 1 failed with code 3; rank(s) 0, 2 stopped" in failure.lines()[0]
    task.destroy()


def test_a_single_rank_failure_shows_no_policy_line(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=single"], "#!/bin/bash\nexit 4\n")
    assert task.wait(timeout=60) == "failed"
    text = status_text(task)
    assert "status failed: rank 0 failed with code 4" in text and "policy:" not in text
    assert not [e for e in task.events() if e["kind"].startswith("rank-")]
    task.destroy()
