"""Map runs in the TPI sidebar (issue 15), in a real JupyterLab in headless Chromium.

A map run is started from the test process into the lab server's TPI_JUPYTER_HOME; the sidebar
lists it from GET /tpi/maps with its counts, its bar and its latest error, and drops it once the
run is destroyed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import expect

from tpi_jupyter import map_tasks

from .test_sidebar_browser import open_lab, show_sidebar

if TYPE_CHECKING:
    from .conftest import LabServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


@pytest.fixture
def map_home(lab_server: LabServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    monkeypatch.setenv("TPI_JUPYTER_HOME", str(lab_server.home))
    monkeypatch.chdir(tmp_path)
    yield lab_server.home


def test_sidebar_lists_a_map_run_with_its_counts_and_latest_error(
    lab_server: LabServer, map_home: Path, page: Any
) -> None:
    open_lab(page, lab_server)
    panel = show_sidebar(page)
    section = panel.locator(".tpi-sidebar-maps")
    expect(section).to_be_hidden()  # no map run yet: no section
    run = map_tasks(lambda x: 10 // x, range(8), name="lab-map", workers=2, retries=0)
    try:
        run.results(timeout=90)
        row = section.locator(".tpi-sidebar-map", has=page.locator(".tpi-sidebar-name", has_text="lab-map"))
        expect(row).to_have_count(1, timeout=40_000)  # found by the sidebar's polling
        expect(row.locator(".tpi-sidebar-map-counts")).to_contain_text("8/8 finished", timeout=40_000)
        expect(row.locator(".tpi-sidebar-map-counts")).to_contain_text("1 failed")
        expect(row.locator(".tpi-sidebar-map-done")).to_have_count(1)  # the bar's done part
        expect(row.locator(".tpi-sidebar-map-failed")).to_have_count(1)
        expect(row.locator(".tpi-sidebar-map-error")).to_contain_text("ZeroDivisionError")
    finally:
        run.task.destroy()
    expect(section).to_be_hidden(timeout=40_000)
