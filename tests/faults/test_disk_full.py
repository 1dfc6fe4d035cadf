"""A machine whose disk fills: the rank's machine directory (work directory, agent files) is a
small tmpfs. The task fails with one line naming the cause; what was synced before is kept."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, launch

from ..conftest import wait_for
from . import figures

pytestmark = pytest.mark.slow

SCRIPT = """#!/bin/bash
set -e
mkdir -p results
for i in 1 2 3 4 5; do head -c 100000 /dev/urandom > "results/part-$i.bin"; done
sha256sum results/part-*.bin > results/SUMS
while test ! -e "$GO_FILE"; do sleep 0.2; done
echo "written just before the disk filled" > results/last.txt
head -c 8000000 /dev/zero > results/huge.bin
echo "not reached"
"""


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tpi-faults", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_fails_the_task_in_one_line_and_keeps_what_was_synced(
    tpi_home: Path, workdir: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    spec = build_spec(["workdir=.", "output=results", "name=full-disk", f"environment=GO_FILE={go}"],
                      {"cloud": "local"})  # fmt: skip
    with small_disk(tpi_home / "local" / spec.id / "machines", "2m"):
        task = launch(spec, SCRIPT)
        assert isinstance(task, Task)
        remote = Path(task.record["remote"]) / "data" / "results"
        wait_for(lambda: (remote / "SUMS").exists(), timeout=60)  # the parts are synced back
        sums = (remote / "SUMS").read_text()
        go.touch()
        assert task.wait(timeout=120) == "failed", task.tail_text()
        rank = task.read(fresh=True).ranks[0]
        assert rank.state == "failed" and "No space left on device" in rank.reason, rank
        (line,) = [line for line in task.summary().splitlines() if "status failed" in line]
        assert line.endswith("status failed: rank 0 failed (agent error: [Errno 28] No space left on device)")
        log = "\n".join(task.logs())
        assert "No space left on device" in log, log
        assert "not reached" not in log
        task.pull()
    # the results synced before the disk filled are on the remote and came home, whole
    assert (workdir / "results" / "SUMS").read_text() == sums
    # and what the script wrote after the last periodic sync came with the final push
    assert (workdir / "results" / "last.txt").read_text() == "written just before the disk filled\n"
    check = subprocess.run(["sha256sum", "-c", "results/SUMS"], cwd=workdir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    figures.record("disk", "local", {"faults": 1, "kept_files": 7, "lost": 0})
