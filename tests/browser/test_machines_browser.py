"""Machines and runners in the TPI sidebar (issue 19), in a real JupyterLab in headless Chromium.

A local machine is created from the test process into the lab server's TPI_JUPYTER_HOME; the
sidebar lists it under the tasks from GET /tpi/machines, with its status and cost so far.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import expect

from tpi_jupyter import cli
from tpi_jupyter.machines import lifecycle, local, registry

from .test_sidebar_browser import open_lab, show_sidebar

if TYPE_CHECKING:
    from .conftest import LabServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not Path(local.SSHD).exists(), reason="needs openssh-server (scripts/install-tools)"),
]


@pytest.fixture
def machine_home(lab_server: LabServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TPI_JUPYTER_HOME", str(lab_server.home))
    yield lab_server.home
    for record in registry.records():
        lifecycle.destroy(lifecycle.Machine.of(record))


def test_sidebar_lists_machines_with_status_and_cost(
    lab_server: LabServer, machine_home: Path, page: Any
) -> None:
    open_lab(page, lab_server)
    panel = show_sidebar(page)
    section = panel.locator(".tpi-sidebar-machines")
    expect(section).to_be_hidden()  # no machine yet: no section
    assert cli.main(["machine", "create", "lab-box"]) == 0
    row = section.locator(
        ".tpi-sidebar-machine", has=page.locator(".tpi-sidebar-machine-name", has_text="lab-box")
    )
    expect(row).to_have_count(1, timeout=40_000)  # found by the sidebar's polling
    expect(section).to_be_visible()
    expect(row.locator(".tpi-sidebar-badge")).to_have_text("running")
    expect(row.locator(".tpi-sidebar-machine-cost")).to_have_text("$0.00 (local)")
    assert cli.main(["machine", "stop", "lab-box"]) == 0
    expect(row.locator(".tpi-sidebar-badge")).to_have_text("stopped", timeout=40_000)
    assert cli.main(["machine", "destroy", "lab-box"]) == 0
    expect(section).to_be_hidden(timeout=40_000)
