"""The TaskWidget in a real JupyterLab, in headless Chromium: live log, badge, ranks, Destroy.

Notebooks with `%load_ext tpi_jupyter` and a `%%tpi` cell run on the local backend; the tests read
the widget as the browser renders it (stock ipywidgets, updated from the widget's poller thread
while the kernel is idle or busy), and destroy a task with the widget's own buttons.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import expect

if TYPE_CHECKING:
    from .conftest import LabServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

Screenshot = Callable[[Any, str], Path]
SCRIPT = 'for i in 1 2 3 4 5; do echo "browser-line-$i"; sleep 0.5; done'
COLOURS = {"running": "rgb(13, 110, 253)", "succeeded": "rgb(25, 135, 84)", "destroyed": "rgb(73, 80, 87)"}


def panel_js(notebook: str) -> str:
    """JS expression: the open notebook panel for `notebook`, through window.jupyterapp."""
    return f"""(() => {{
        const app = window.jupyterapp;
        if (!app || !app.shell) return null;
        return Array.from(app.shell.widgets('main'))
            .find(w => w.context && w.context.path === {json.dumps(notebook)}) || null;
    }})()"""


def kernel_state(page: Any, notebook: str) -> dict[str, Any]:
    """The notebook's kernel status and, per code cell, execution count, output types and errors."""
    return page.evaluate(  # type: ignore[no-any-return]
        f"""() => {{
            const panel = {panel_js(notebook)};
            if (!panel) return {{panel: false}};
            const session = panel.sessionContext;
            const kernel = session.session && session.session.kernel;
            const cells = panel.content.widgets.filter(cell => cell.model.type === 'code').map(cell => {{
                const outputs = cell.model.outputs.toJSON();
                return {{
                    count: cell.model.executionCount,
                    outputs: outputs.map(o => o.output_type),
                    errors: outputs.filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue),
                }};
            }});
            return {{panel: true, ready: session.isReady, status: kernel ? kernel.status : null, cells}};
        }}"""
    )


def wait_for_state(page: Any, notebook: str, check: Callable[[dict[str, Any]], Any], what: str,
                   timeout: float) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    current: dict[str, Any] = {}
    while time.monotonic() < deadline:
        current = kernel_state(page, notebook)
        if current.get("panel") and check(current):
            return current
        page.wait_for_timeout(200)
    raise AssertionError(f"{what} not reached within {timeout} s; last kernel state: {current}")


def write_notebook(path: Path, cells: list[str]) -> None:
    path.write_text(
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "execution_count": None,
                        "id": f"cell-{i}",
                        "metadata": {},
                        "outputs": [],
                        "source": source,
                    }
                    for i, source in enumerate(cells)
                ],
                "metadata": {
                    "kernelspec": {
                        "display_name": "Python 3 (ipykernel)",
                        "language": "python",
                        "name": "python3",
                    },
                    "language_info": {"name": "python"},
                },
                "nbformat": 4,
                "nbformat_minor": 5,
            },
            indent=1,
        )
    )


def open_and_run_all(page: Any, server: LabServer, notebook: str, cells: list[str]) -> None:
    """Write the notebook, open it in JupyterLab, wait for an idle kernel, run every cell by command."""
    write_notebook(server.root / notebook, cells)
    page.set_default_timeout(30_000)
    page.goto(server.lab_url(notebook))
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
    page.evaluate("() => window.jupyterapp.restored")
    wait_for_state(page, notebook, lambda s: s["ready"] and s["status"] == "idle", "an idle kernel", 60)
    page.evaluate(
        f"""() => {{
            const app = window.jupyterapp;
            app.shell.activateById({panel_js(notebook)}.id);
            app.commands.execute('notebook:run-all-cells');  // not awaited: it resolves when all ran
        }}"""
    )


def wait_all_executed(page: Any, server: LabServer, notebook: str, timeout: float = 60) -> dict[str, Any]:
    """Every code cell has run and the kernel is idle again; no cell raised."""
    done = wait_for_state(
        page, notebook, lambda s: s["status"] == "idle" and all(c["count"] for c in s["cells"]),
        "all cells executed", timeout,
    )  # fmt: skip
    errors = [error for cell in done["cells"] for error in cell["errors"]]
    assert not errors, f"cells raised: {errors}\nserver log:\n{server.log_tail()}"
    return done


def shut_down_kernel(page: Any, notebook: str) -> None:
    page.evaluate(f"() => {{ const p = {panel_js(notebook)}; return p && p.sessionContext.shutdown(); }}")


def button(page: Any, text: str) -> Any:
    # By text, not by role: the Font Awesome glyph is part of a widget button's accessible name.
    return page.locator("button.widget-button", has_text=re.compile(rf"^\s*{re.escape(text)}\s*$"))


def test_task_widget_in_jupyterlab(lab_server: LabServer, page: Any, screenshot: Screenshot) -> None:
    """Run, watch the log and the badge, check the ranks, then Destroy through the widget."""
    notebook = "browser.ipynb"
    started = time.monotonic()
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name] = round(time.monotonic() - started, 1)

    cells = ["%load_ext tpi_jupyter", f"%%tpi name=browser parallelism=2 timeout=300\n{SCRIPT}"]
    open_and_run_all(page, lab_server, notebook, cells)
    mark("run-all sent")
    done = wait_all_executed(page, lab_server, notebook)
    mark("cells executed")
    assert "display_data" in done["cells"][1]["outputs"], f"the %%tpi cell displayed nothing: {done}"

    # The widget rendered (not the text/plain fallback); its poller thread updates it while the kernel idles.
    badge = page.locator(".tpi-badge")
    log = page.locator(".tpi-log pre")
    expect(badge).to_have_count(1, timeout=30_000)
    mark("widget rendered")
    expect(log).to_contain_text("browser-line-1", timeout=60_000)
    mark("first log line")
    badge_at_first_line = badge.inner_text()
    expect(badge).to_have_text("succeeded", timeout=60_000)
    mark("succeeded")
    for i in range(1, 6):
        expect(log).to_contain_text(f"browser-line-{i}")
    log_text = log.inner_text()
    for rank in (0, 1):  # parallelism=2: both ranks' lines, prefixed with the rank
        for i in range(1, 6):
            assert f"[{rank}] browser-line-{i}" in log_text, log_text
    rows = page.locator("table.tpi-ranks tr:has(td)")
    expect(rows).to_have_count(2)
    for row in range(2):
        expect(rows.nth(row).locator("td").nth(0)).to_have_text(str(row))
        expect(rows.nth(row).locator("td").nth(1)).to_have_text("succeeded")
        expect(rows.nth(row).locator("td").nth(3)).to_have_text("0")  # exit code
    assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == COLOURS["succeeded"]
    expect(button(page, "Stop")).to_be_disabled()  # nothing left to stop
    screenshot(page, "succeeded")

    # Destroy asks first; "Yes, destroy" does it.
    destroy, yes = button(page, "Destroy"), button(page, "Yes, destroy")
    expect(destroy).to_be_enabled()
    expect(yes).to_be_hidden()
    destroy.click()
    expect(yes).to_be_visible()
    yes.click()
    expect(badge).to_have_text("destroyed", timeout=60_000)
    mark("destroyed")
    expect(yes).to_be_hidden()
    for text in ("Stop", "Pull results", "Destroy"):
        expect(button(page, text)).to_be_disabled()
    assert badge.evaluate("el => getComputedStyle(el).backgroundColor") == COLOURS["destroyed"]
    expect(log).to_contain_text("browser-line-5")  # the log stays readable after destroy
    screenshot(page, "destroyed")
    shut_down_kernel(page, notebook)

    print(f"badge when the first log line showed: {badge_at_first_line!r}")
    print(f"timings (s since the test started): {marks}")
    assert badge_at_first_line in ("provisioning", "running"), "log lines should stream while the task runs"


def test_widget_updates_while_kernel_busy(lab_server: LabServer, page: Any) -> None:
    """A later cell keeps the kernel busy; the widget still streams log lines and reaches succeeded."""
    notebook = "busy.ipynb"
    script = 'for i in 1 2 3 4 5 6; do echo "busy-line-$i"; sleep 0.5; done'
    # The last cell keeps the kernel busy until the task has ended, and a while after: a fixed
    # sleep ended before a slow start under load reached "running".
    busy_cell = (
        "import time\nfrom tpi_jupyter.task import Task\nTask.find('busy').wait(timeout=120)\ntime.sleep(5)"
    )
    cells = ["%load_ext tpi_jupyter", f"%%tpi name=busy timeout=300\n{script}", busy_cell]
    open_and_run_all(page, lab_server, notebook, cells)
    log = page.locator(".tpi-log pre")
    seen: list[tuple[str | None, str, int]] = []  # kernel status, badge, log lines, as the browser saw them
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = kernel_state(page, notebook).get("status")
        badge = page.locator(".tpi-badge")
        seen.append((status, badge.inner_text() if badge.count() else "", log.inner_text().count("busy-line") if log.count() else 0))  # fmt: skip
        if seen[-1][1] == "succeeded":  # not on "idle": the kernel idles briefly between queued cells
            break
        page.wait_for_timeout(250)
    print(f"(kernel, badge, log lines) while busy: {sorted(set(seen), key=seen.index)}")
    busy = [entry for entry in seen if entry[0] == "busy"]
    assert any(0 < lines < 6 for _, _, lines in busy), f"no partial log while the kernel was busy: {seen}"
    assert ("busy", "succeeded", 6) in busy, f"the widget did not finish while the kernel was busy: {seen}"
    wait_all_executed(page, lab_server, notebook)
    shut_down_kernel(page, notebook)


def test_log_view_shows_newest_lines(lab_server: LabServer, page: Any, screenshot: Screenshot) -> None:
    """More lines than the log box holds: the newest one must be the one in view."""
    notebook = "long.ipynb"
    script = 'for i in $(seq 1 40); do echo "long-line-$i"; done'
    open_and_run_all(
        page, lab_server, notebook, ["%load_ext tpi_jupyter", f"%%tpi name=long timeout=300\n{script}"]
    )
    log = page.locator(".tpi-log pre")
    expect(page.locator(".tpi-badge")).to_have_text("succeeded", timeout=60_000)
    expect(log).to_contain_text("long-line-40")
    screenshot(page, "long-log")
    shut_down_kernel(page, notebook)
    # Is the last line's text inside the visible part of the log box (whichever element scrolls)?
    visible = page.locator(".tpi-log").evaluate(
        """box => {
            const pre = box.querySelector('pre');
            const text = pre.firstChild;
            const end = text.textContent.length;
            const range = document.createRange();
            range.setStart(text, end - 'long-line-40'.length);
            range.setEnd(text, end);
            const line = range.getBoundingClientRect();
            const clip = pre.getBoundingClientRect(), outer = box.getBoundingClientRect();
            const top = Math.max(clip.top, outer.top), bottom = Math.min(clip.bottom, outer.bottom);
            return line.top >= top - 1 && line.bottom <= bottom + 1;
        }"""
    )
    assert visible, "the newest log line is scrolled out of view"
