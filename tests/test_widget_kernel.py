"""The TaskWidget in a real kernel: its comm keeps carrying log lines and status after the cell ends."""

from __future__ import annotations

import json
import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .kernels import Kernel, Result

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def widget_kernel(tpi_home: Path, workdir: Path) -> Iterator[Kernel]:
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home), "IMPORTED_SECRET": "kernel-secret-value-7"}
    env.pop("TPI_JUPYTER_NONINTERACTIVE", None)  # a kernel frontend: widgets, not text
    kernel = Kernel(env, workdir)
    try:
        yield kernel
    finally:
        kernel.shutdown()


def comm_traffic(kernel: Kernel, needles: list[str], timeout: float, earlier: Result | None = None) -> str:
    """Comm messages (those of `earlier`'s cell, then iopub's), as JSON, until every needle appeared."""
    seen: list[str] = [json.dumps(content) for content in earlier.comms] if earlier else []
    if seen and all(needle in "\n".join(seen) for needle in needles):
        return "\n".join(seen)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = kernel.client.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            continue
        assert message["msg_type"] != "execute_input", "nothing should have been executed meanwhile"
        if message["msg_type"] in ("comm_open", "comm_msg"):
            seen.append(json.dumps(message["content"]))
            text = "\n".join(seen)
            if all(needle in text for needle in needles):
                return text
    missing = [needle for needle in needles if needle not in "\n".join(seen)]
    raise AssertionError(f"within {timeout} s, no comm message carried {missing} ({len(seen)} seen)")


def test_widget_updates_arrive_after_the_cell_finished(widget_kernel: Kernel) -> None:
    widget_kernel.ok("%load_ext tpi_jupyter")
    script = "sleep 1\nfor i in 1 2 3; do echo comm-line-$i; sleep 0.5; done\necho $IMPORTED_SECRET"
    launched = widget_kernel.ok(f"%%tpi name=comm parallelism=2 environment=IMPORTED_SECRET=\n{script}")
    finished_at = time.monotonic()
    views = [
        content
        for kind, content in launched.outputs
        if kind == "display_data" and WIDGET_VIEW in content["data"]
    ]
    assert len(views) == 1, launched.outputs  # the cell showed one widget and returned

    # The kernel is idle from here on: whatever arrives was sent by the widget's poller.
    text = comm_traffic(
        widget_kernel, ["[0] comm-line-1", "[1] comm-line-3", "[0] ***", "succeeded"], timeout=60
    )
    assert time.monotonic() > finished_at
    assert "kernel-secret-value-7" not in text


def test_attach_after_a_restart_shows_a_live_widget(widget_kernel: Kernel) -> None:
    widget_kernel.ok("%load_ext tpi_jupyter")
    widget_kernel.ok("%%tpi name=again\nsleep 2; echo after-restart-line")
    widget_kernel.restart()
    widget_kernel.ok("%load_ext tpi_jupyter")
    attached = widget_kernel.ok("%tpi attach again")
    results = [content for kind, content in attached.outputs if kind == "execute_result"]
    assert results and WIDGET_VIEW in results[0]["data"]
    # the text fallback inside the same bundle names the task too
    assert "again" in results[0]["data"]["text/plain"]
    # the task may have finished during the restart: then the updates came while the cell ran
    comm_traffic(widget_kernel, ["after-restart-line", "succeeded"], timeout=60, earlier=attached)
    widget_kernel.ok("%tpi destroy again")
