"""`%%tpi` in a real ipykernel: launches return at once, tasks outlive a kernel restart, errors are short.

Every kernel gets TPI_JUPYTER_HOME from the `tpi_home` fixture and the `workdir` as its cwd; the
fixture's teardown kills whatever a failing test left running.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter import state

from .conftest import wait_for
from .kernels import TRACEBACK, Kernel


@pytest.fixture
def kernel(tpi_home: Path, workdir: Path) -> Iterator[Kernel]:
    # Text output (no widgets), so that what a cell shows can be read back here.
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home), "TPI_JUPYTER_NONINTERACTIVE": "1"}
    started = Kernel(env, workdir)
    try:
        yield started
    finally:
        started.shutdown()  # then tpi_home's teardown destroys leftover tasks


def registry_files(home: Path) -> list[Path]:
    return sorted((home / "tasks").glob("*.json")) if (home / "tasks").is_dir() else []


@pytest.mark.slow
def test_task_keeps_running_across_a_kernel_restart(kernel: Kernel, tpi_home: Path, workdir: Path) -> None:
    kernel.ok("%load_ext tpi_jupyter")
    first_pid = kernel.pid()
    script = "sleep 4\nmkdir -p results\ndate +%s.%N > results/done.txt\necho finished\n"

    started = time.monotonic()
    launched = kernel.ok(f"%%tpi name=k1 workdir=. output=results timeout=300\n{script}")
    elapsed = time.monotonic() - started

    assert elapsed < 4, f"the launch cell blocked for {elapsed:.1f} s; the script only sleeps 4 s"
    record = state.find("k1")
    assert record is not None
    assert record["id"] in launched.text and "k1" in launched.text
    assert re.search(r"\b(provisioning|running)\b", launched.text), launched.text
    assert not re.search(r"\b(succeeded|failed)\b", launched.text), launched.text
    assert not (workdir / "results").exists()  # nothing has come back yet

    restarted_at = time.time()
    kernel.restart()
    assert kernel.pid() != first_pid, "restart_kernel did not start a new kernel process"

    kernel.ok("%load_ext tpi_jupyter")
    attached = kernel.ok("%tpi attach k1")
    assert record["id"] in attached.text

    def succeeded() -> str | None:
        text = kernel.ok("%tpi status k1").text
        assert not re.search(r"\b(failed|timeout|lost)\b", text), text
        return text if re.search(r"\bsucceeded\b", text) else None

    status = wait_for(succeeded, timeout=60, interval=0.5)
    assert re.search(r"\bcode 0\b", status), status

    logs = kernel.ok("%tpi logs k1").text
    assert any(line.split()[-1:] == ["finished"] for line in logs.splitlines()), logs

    destroyed = kernel.ok("%tpi destroy k1").text
    assert "destroyed" in destroyed and "1 file(s)" in destroyed, destroyed
    done_at = float((workdir / "results" / "done.txt").read_text())  # the script's clock: `date +%s.%N`
    assert done_at > restarted_at, "the script finished before the kernel restart, which proves nothing"
    assert registry_files(tpi_home) == []
    assert "no tasks" in kernel.ok("%tpi list").text


@pytest.mark.slow
def test_wait_on_a_failing_script_is_a_short_error(kernel: Kernel, tpi_home: Path) -> None:
    kernel.ok("%load_ext tpi_jupyter")
    script = 'echo "getting ready"\necho "the last words before exit 3"\nexit 3\n'

    result = kernel.execute(f"%%tpi name=bad workdir=. timeout=120 --wait\n{script}")

    assert not result.ok
    assert result.reply["ename"] == "TaskFailed"
    error = result.error_text
    assert "ended failed" in error
    assert "code 3" in error
    assert "the last words before exit 3" in error  # the log tail is in the error itself
    assert "the last words before exit 3" in result.text  # and was streamed while waiting
    assert TRACEBACK not in result.text
    assert TRACEBACK not in error
    assert not re.search(r'File "[^"]+", line \d+', result.text + error), "a traceback frame is shown"

    assert "destroyed" in kernel.ok("%tpi destroy bad").text
    assert registry_files(tpi_home) == []


def test_bad_cell_line_is_a_one_line_usage_error(kernel: Kernel, tpi_home: Path, workdir: Path) -> None:
    kernel.ok("%load_ext tpi_jupyter")

    result = kernel.execute("%%tpi foo=bar\necho never\n")

    assert not result.ok
    assert result.reply["ename"] == "UsageError"
    assert "foo" in result.reply["evalue"]
    lines = result.text.strip().splitlines()
    assert len(lines) == 1, result.text
    assert lines[0].startswith("UsageError: ") and "foo" in lines[0]
    assert TRACEBACK not in result.text
    assert registry_files(tpi_home) == []
    assert not (tpi_home / "local").exists() or not any((tpi_home / "local").iterdir())
    assert list(workdir.iterdir()) == []
    assert "no tasks" in kernel.ok("%tpi list").text
