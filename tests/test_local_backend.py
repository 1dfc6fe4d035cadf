"""The local backend end to end, with real detached processes and a real local remote."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tpi_jupyter import layout, state
from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, launch

from .conftest import wait_for

EPOCH_SCRIPT = """#!/bin/bash
mkdir -p results
if test -f results/epoch.txt; then EPOCH="$(cat results/epoch.txt)"; fi
for epoch in $(seq ${EPOCH:-1} 30); do sleep 1; echo "$epoch" | tee results/epoch.txt; done
"""


def start(words: list[str], script: str, **kwargs: object) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script, **kwargs)  # type: ignore[arg-type]
    assert isinstance(task, Task)
    return task


def remote_path(task: Task, key: str) -> Path:
    return Path(task.record["remote"]) / key


def synced_epoch(task: Task) -> int:
    try:
        return int(remote_path(task, layout.data("results/epoch.txt")).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def boot_logs(task: Task, rank: int) -> dict[int, list[str]]:
    """rank's log lines per boot, without timestamps."""
    logs = {}
    for boot in layout.boots(task.remote[0], str(remote_path(task, layout.rank_dir(rank)))):
        log = remote_path(task, layout.log(rank, boot))
        text = log.read_text() if log.exists() else ""
        logs[boot] = [line.split(" ", 1)[1] for line in text.splitlines()]
    return logs


def tpi_cli(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tpi_jupyter.cli", *words], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_epoch_example_survives_two_preemptions(tpi_home: Path, workdir: Path) -> None:
    task = start(
        ["workdir=.", "output=results", "spot=0", "parallelism=2", "timeout=600", "name=demo"], EPOCH_SCRIPT
    )
    assert task.id == "tpi-demo-127r2e4m-5wdi47l1"

    # Preempt rank 0, then rank 1, each once progress has been synced back to the remote.
    for rank, after_epoch in ((0, 4), (1, 9)):
        wait_for(lambda epoch=after_epoch: synced_epoch(task) >= epoch, timeout=60)
        wait_for(lambda rank=rank: task.read().ranks[rank].state == "running", timeout=30)
        result = tpi_cli("preempt", "demo", "--rank", str(rank))  # the documented command
        assert result.returncode == 0, result.stderr
        wait_for(lambda rank=rank: len(boot_logs(task, rank)) == 2, timeout=30)

    assert task.wait(timeout=120) == "succeeded"
    snapshot = task.read()
    assert [(r.state, r.boots, r.code) for r in snapshot.ranks] == [("succeeded", 2, 0), ("succeeded", 2, 0)]
    kinds = [event["kind"] for event in task.events()]
    assert kinds.count("preempted") == 2 and kinds.count("respawned") == 2

    for rank in (0, 1):
        respawned = [line for line in boot_logs(task, rank)[1] if line.isdigit()]
        assert respawned, f"rank {rank} printed no epoch after respawn"
        assert int(respawned[0]) > 1, f"rank {rank} restarted from {respawned[0]}"
        assert respawned[-1] == "30"

    fetched = task.destroy()
    assert fetched == ["results/epoch.txt"]
    assert (workdir / "results" / "epoch.txt").read_text().strip() == "30"
    assert state.load(task.id) is None
    assert not (tpi_home / "local" / task.id).exists()


def test_parallel_ranks_keep_their_own_logs_and_status(tpi_home: Path, workdir: Path) -> None:
    script = """#!/bin/bash
mkdir -p results
for i in 1 2 3; do echo "rank $TPI_RANK of $TPI_WORLD_SIZE line $i"; sleep 0.2; done
echo "$TPI_RANK" > "results/rank-$TPI_RANK.txt"
"""
    task = start(["workdir=.", "output=results", "parallelism=3", "name=par3"], script)
    assert task.wait(timeout=60) == "succeeded"
    for rank in range(3):
        status = json.loads(remote_path(task, layout.status(rank)).read_text())
        assert status["result"] == "success" and status["rank"] == rank and status["code"] == 0
        assert boot_logs(task, rank)[0][:3] == [f"rank {rank} of 3 line {i}" for i in (1, 2, 3)]
    assert [line.count("line") for line in task.logs()] == [3, 3, 3]
    task.destroy()
    assert sorted(p.name for p in (workdir / "results").iterdir()) == [
        "rank-0.txt",
        "rank-1.txt",
        "rank-2.txt",
    ]


def test_failing_script_ends_failed_with_its_code(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=fails"], "#!/bin/bash\necho about to fail\nexit 3\n")
    assert task.wait(timeout=60) == "failed"
    rank = task.read().ranks[0]
    assert (rank.state, rank.code) == ("failed", 3)
    assert "about to fail" in task.tail_text()


def test_timeout_is_an_absolute_deadline(tpi_home: Path, workdir: Path) -> None:
    began = time.monotonic()
    task = start(["name=slow", "timeout=3"], "#!/bin/bash\necho started\nsleep 60\necho never\n")
    assert task.wait(timeout=60) == "timeout"
    assert time.monotonic() - began < 20
    status = json.loads(remote_path(task, layout.status(0)).read_text())
    assert status["result"] == "timeout"
    assert "never" not in task.logs()[0]
    # A machine respawned after the deadline does not run the script again.
    task.destroy()


def test_environment_rules_and_no_secret_outside_the_env_file(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMPORTED_TOKEN", "imported-secret-1")
    monkeypatch.setenv("GLOB_ONE", "glob-secret-1")
    monkeypatch.setenv("GLOB_TWO", "glob-secret-2")
    monkeypatch.setenv("NOT_LISTED", "unlisted-secret")
    script = """#!/bin/bash
for name in LITERAL IMPORTED_TOKEN GLOB_ONE GLOB_TWO NOT_LISTED TPI_TASK TPI_TASK_ID TPI_REGION TPI_MACHINE TPI_RANK TPI_WORLD_SIZE; do
  echo "$name=${!name-<unset>}"
done
"""
    words = ["name=envtest", "parallelism=2", "machine=m+t4", "region=eu-west",
             "environment=LITERAL=literal value, with comma", "environment=IMPORTED_TOKEN=",
             "environment=GLOB_*="]  # fmt: skip
    task = start(words, script)
    assert task.wait(timeout=60) == "succeeded"
    for rank in (0, 1):
        seen = dict(line.split("=", 1) for line in boot_logs(task, rank)[0] if "=" in line)
        assert seen == {
            # values imported from the notebook's environment are masked in the log at the source
            "LITERAL": "literal value, with comma", "IMPORTED_TOKEN": "***",
            "GLOB_ONE": "***", "GLOB_TWO": "***",
            "NOT_LISTED": "<unset>", "TPI_TASK": "true", "TPI_TASK_ID": task.id, "TPI_REGION": "eu-west",
            "TPI_MACHINE": "m+t4", "TPI_RANK": str(rank), "TPI_WORLD_SIZE": "2",
        }  # fmt: skip

    env_file = remote_path(task, layout.ENV)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secrets = [b"imported-secret-1", b"glob-secret-1", b"glob-secret-2", b"unlisted-secret"]
    # Nowhere but the private env file: not in logs, registry, task.json, events or agent files.
    for path in tpi_home.rglob("*"):
        if not path.is_file() or path == env_file:
            continue
        content = path.read_bytes()
        leaked = [secret for secret in secrets if secret in content]
        assert not leaked, f"{leaked} found in {path}"
        if path.name.endswith(".json") or path.name == "events.jsonl":
            assert b"literal value" not in content, path
    assert b"imported-secret-1" in env_file.read_bytes()  # the scan above looked at real files
    record = json.loads((tpi_home / "tasks" / f"{task.id}.json").read_text())
    assert record["spec"]["environment"] == ["GLOB_*", "IMPORTED_TOKEN", "LITERAL"]
    assert stat.S_IMODE((tpi_home / "tasks" / f"{task.id}.json").stat().st_mode) == 0o600


def test_stop_syncs_back_and_reports(tpi_home: Path, workdir: Path) -> None:
    script = (
        "#!/bin/bash\nmkdir -p results\nfor i in $(seq 1 100); do echo $i > results/n.txt; sleep 0.2; done\n"
    )
    task = start(["name=stopme", "workdir=.", "output=results"], script)
    wait_for(lambda: task.read().status == "running", timeout=30)
    time.sleep(1)
    task.stop()
    snapshot = task.read()
    assert snapshot.status == "failed"
    assert snapshot.ranks[0].reason == "stopped"
    assert not snapshot.group.exists  # type: ignore[union-attr]
    # The last sync ran when the machine stopped: what the script wrote last is on the remote.
    last = remote_path(task, layout.data("results/n.txt")).read_text().strip()
    assert int(last) >= 3
    task.pull()
    assert (workdir / "results" / "n.txt").read_text().strip() == last


TORN_AT_STOP = """#!/bin/bash
mkdir -p results
echo 41 > results/epoch.txt
until [ -s "$TPI_REMOTE/data/results/epoch.txt" ]; do sleep 0.05; done  # epoch 41 is synced
: > results/epoch.txt  # the rewrite of the next epoch has emptied the file...
kill -TERM $PPID  # ...when the stop comes (the agent is this script's parent)
sleep 30
"""


def test_a_file_torn_by_the_stop_keeps_its_last_synced_copy(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=torn", "workdir=.", "output=results"], TORN_AT_STOP)
    assert task.wait(timeout=60) == "failed"
    assert remote_path(task, layout.data("results/epoch.txt")).read_text() == "41\n"
    assert any(
        "kept as last synced" in line and "results/epoch.txt" in line for line in task.logs()[0].splitlines()
    )
    task.pull()
    assert (workdir / "results" / "epoch.txt").read_text() == "41\n"


def test_destroy_is_idempotent_and_works_from_a_new_handle(tpi_home: Path, workdir: Path) -> None:
    (workdir / "data.txt").write_text("input")
    script = "#!/bin/bash\nmkdir -p out\ncp data.txt out/copy.txt\nsleep 30\n"
    task = start(["name=idem", "workdir=.", "output=out"], script)
    wait_for(lambda: remote_path(task, layout.data("out/copy.txt")).exists(), timeout=30)
    base = Path(task.record["backend"]["base"])
    group_pid = json.loads((base / "group.json").read_text())["pid"]
    script_pid = int((base / "machines" / "0" / "script.pid").read_text())
    again = Task.find("idem")  # as after a kernel restart: only the registry is known
    assert again.destroy() == ["out/copy.txt"]
    assert (workdir / "out" / "copy.txt").read_text() == "input"
    assert again.destroy() == []  # a second destroy is a no-op
    assert again.status == "destroyed"
    assert state.load(task.id) is None
    assert not base.exists()
    for pid in (group_pid, script_pid):  # the machines are gone too
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists() or b"Z" in _proc_state(pid), timeout=10)
    # a handle made before destroy fails cleanly rather than resurrecting anything
    with pytest.raises(Exception, match="no task named"):
        Task.find("idem")


def _proc_state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().split(b") ", 1)[1][:1]
    except (FileNotFoundError, IndexError):
        return b"Z"


def test_a_name_in_use_is_refused_and_creates_nothing_more(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=twice"], "#!/bin/bash\nsleep 20\n")
    with pytest.raises(Exception, match="already exists"):
        start(["name=twice"], "#!/bin/bash\necho second\n")
    assert [record["id"] for record in state.records()] == [task.id]
    task.destroy()


def test_registry_lists_tasks_from_another_process(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=listed"], "#!/bin/bash\necho hi\n")
    task.wait(timeout=60)
    listing = tpi_cli("list")
    assert listing.returncode == 0
    assert "listed" in listing.stdout and task.id in listing.stdout and "succeeded" in listing.stdout
    logs = tpi_cli("logs", "listed")
    assert logs.stdout.strip() == "hi"
    follow = tpi_cli("logs", "listed", "--follow")
    assert follow.stdout.strip() == "hi"
    assert tpi_cli("destroy", "listed").returncode == 0
    assert tpi_cli("list").stdout.strip() == "no tasks"
    assert os.listdir(tpi_home / "tasks") == []
