"""Kernel restarts (real ipykernels, tests/kernels.py) while a cell uploads, while it streams a
log, and while it waits: the task survives, `%tpi attach` finds it, and no log line is lost."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from tpi_jupyter import state

from ..conftest import wait_for
from ..kernels import Kernel
from ..test_kernel import kernel  # noqa: F401 - fixture (text mode, its own TPI_JUPYTER_HOME)
from . import figures

pytestmark = pytest.mark.slow

LINES = 40
SCRIPT = f'for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.15; done\nmkdir -p results\necho ok > results/done.txt\n'


def restart_during(session: Kernel, code: str, after: float) -> None:
    """Send code, and restart the kernel `after` seconds later, while the cell still runs."""
    session.client.execute(code, store_history=False)
    time.sleep(after)
    session.restart()
    session.ok("%load_ext tpi_jupyter")


def finished_whole(session: Kernel, name: str) -> None:
    """attach finds the task; it succeeds; its log has every line once, in order."""
    assert name in session.ok(f"%tpi attach {name}").text
    wait_for(
        lambda: re.search(r"\bsucceeded\b", session.ok(f"%tpi status {name}").text), timeout=90, interval=0.5
    )
    logs = session.ok(f"%tpi logs {name}").text.splitlines()
    assert [line for line in logs if line.startswith("line ")] == [f"line {i}" for i in range(1, LINES + 1)]


def test_restarts_while_streaming_and_while_waiting(
    kernel: Kernel,  # noqa: F811 - the imported fixture
    tpi_home: Path,
    workdir: Path,
) -> None:
    rng = random.Random(figures.seed())
    kernel.ok("%load_ext tpi_jupyter")
    kernel.ok(f"%%tpi name=streamed workdir=. output=results timeout=300\n{SCRIPT}")
    restart_during(kernel, "%tpi logs streamed --follow", rng.uniform(1.0, 3.0))
    finished_whole(kernel, "streamed")

    restart_during(kernel, f"%%tpi name=waited workdir=. output=results timeout=300 --wait\n{SCRIPT}",
                   rng.uniform(1.5, 3.5))  # fmt: skip
    assert state.find("waited") is not None  # launched before the restart, and kept
    finished_whole(kernel, "waited")
    for name in ("streamed", "waited"):
        assert "destroyed" in kernel.ok(f"%tpi destroy {name}").text
    assert (workdir / "results" / "done.txt").read_text() == "ok\n"
    figures.record("kernel", "local", {"restarts": 2, "survived": 2, "lost": 0})


def test_restart_during_upload(kernel: Kernel, tpi_home: Path, workdir: Path) -> None:  # noqa: F811
    """The upload runs in the kernel: a restart midway ends it. The task must not be left half
    made and invisible: attach shows it, and destroy removes all of it; a new launch works."""
    rng = random.Random(figures.seed())
    data = workdir / "data"
    data.mkdir()
    for number in range(6000):
        (data / f"f{number}.bin").write_bytes(rng.randbytes(1024))
    kernel.ok("%load_ext tpi_jupyter")
    kernel.client.execute(f"%%tpi name=uploading workdir=. output=results timeout=300\n{SCRIPT}")

    def uploading() -> bool:  # the first files are on the remote: the upload runs
        found = state.find("uploading")
        return bool(found and found.get("remote") and any((Path(found["remote"]) / "data").glob("data/*")))

    wait_for(uploading, timeout=60, interval=0.02)
    kernel.restart()
    kernel.ok("%load_ext tpi_jupyter")
    record = state.find("uploading")
    assert record is not None and "started" not in record, "the launch ended before the restart"
    shown = kernel.ok("%tpi attach uploading").text
    assert "uploading" in shown and "[failed]" in shown, shown
    status = kernel.ok("%tpi status uploading").text  # not queued forever: failed, saying why
    assert "status failed: rank 0 failed (launch interrupted: the client ended before the machines" in status
    destroyed = kernel.ok("%tpi destroy uploading").text
    assert "destroyed" in destroyed, destroyed
    assert state.records() == [] and not (tpi_home / "local" / record["id"]).exists()
    figures.record("kernel-upload", "local", {"restarts": 1, "survived": 0, "cleaned": 1, "lost": 0})
