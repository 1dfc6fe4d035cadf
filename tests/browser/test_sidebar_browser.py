"""The TPI tasks sidebar (labextension/) in a real JupyterLab, in headless Chromium.

Tasks are launched on the local backend from the test process, into the lab server's
TPI_JUPYTER_HOME, with a workdir inside the server root; the sidebar finds them through the
server extension's REST API (/tpi/...), as a user would see them.
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip("playwright")
from playwright.sync_api import expect

from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, TaskError, launch

if TYPE_CHECKING:
    from .conftest import LabServer

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

Screenshot = Callable[[Any, str], Path]
DOCS = Path(__file__).resolve().parents[2] / "docs"
SIDEBAR = "tpi-jupyter-sidebar"
SCRIPT = (
    'mkdir -p results; for i in $(seq 1 10); do echo "sidebar-line-$i"; sleep 0.5; done; '
    "echo 42 > results/answer.txt"
)


@pytest.fixture
def tpi_env(lab_server: LabServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This process launches tasks into the lab server's registry; the workdir lies in its root."""
    monkeypatch.setenv("TPI_JUPYTER_HOME", str(lab_server.home))
    workdir = lab_server.root / "sidebar-project"
    workdir.mkdir(exist_ok=True)
    yield workdir


def start(workdir: Path, name: str, script: str, *words: str) -> Task:
    spec = build_spec(
        [f"name={name}", "workdir=.", "timeout=300", *words], {"cloud": "local"}, cwd=str(workdir)
    )
    task = launch(spec, script)
    assert isinstance(task, Task)
    return task


def open_lab(page: Any, server: LabServer) -> None:
    page.set_default_timeout(30_000)
    # reset: a new page starts without the documents an earlier test left open (their files are gone)
    page.goto(f"{server.url}/lab?reset&token={server.token}")
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
    page.evaluate("() => window.jupyterapp.restored")


def sidebar_tab(page: Any) -> Any:
    """The sidebar's tab in JupyterLab's left tab bar."""
    return page.locator(f'.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="{SIDEBAR}"]')


def show_sidebar(page: Any) -> Any:
    """Click the sidebar's tab unless it is open already (the layout restorer may have reopened it)."""
    panel = page.locator(f"#{SIDEBAR}")
    expect(sidebar_tab(page)).to_have_count(1)
    if not panel.is_visible():
        sidebar_tab(page).click()
    expect(panel).to_be_visible()
    return panel


def item(page: Any, name: str) -> Any:
    return page.locator(
        ".tpi-sidebar-item", has=page.locator(".tpi-sidebar-name", has_text=re.compile(f"^{name}$"))
    )


def focused(page: Any) -> dict[str, str]:
    return page.evaluate(  # type: ignore[no-any-return]
        """() => { const a = document.activeElement;
                   return {tag: a.tagName, cls: a.className, id: a.dataset.id || '', text: a.textContent}; }"""
    )


def set_theme(page: Any, theme: str, light: bool) -> None:
    page.evaluate(f"() => window.jupyterapp.commands.execute('apputils:change-theme', {{theme: '{theme}'}})")
    page.wait_for_function(
        f"() => document.body.dataset.jpThemeLight === '{str(light).lower()}'", timeout=30_000
    )
    page.wait_for_timeout(500)  # the theme's CSS applies


def luminance(css_colour: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_colour)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_sidebar_lists_watches_opens_and_destroys(
    lab_server: LabServer, tpi_env: Path, page: Any, screenshot: Screenshot
) -> None:
    """Launch, see it listed, watch it succeed with its log and ranks, open its result, destroy it."""
    started = time.monotonic()
    marks: dict[str, float] = {}

    def mark(name: str) -> None:
        marks[name] = round(time.monotonic() - started, 1)

    open_lab(page, lab_server)
    panel = show_sidebar(page)
    expect(panel.locator(".tpi-sidebar-empty")).to_contain_text("No tasks yet")
    mark("sidebar open")

    task = start(tpi_env, "sidebar-demo", SCRIPT, "output=results", "parallelism=2")
    other = start(tpi_env, "sidebar-other", 'echo "other done"')
    demo = item(page, "sidebar-demo")
    expect(demo).to_have_count(1, timeout=20_000)  # found by polling, no click
    mark("listed")
    expect(demo.locator(".tpi-sidebar-where")).to_have_text(f"local · {task.spec['machine']} \u00d72")
    expect(item(page, "sidebar-other")).to_have_count(1)
    expect(panel.locator(".tpi-sidebar-item").first).to_have_attribute("data-id", other.id)  # newest first

    demo.click()
    expect(demo).to_have_attribute("aria-selected", "true")
    detail = panel.locator(".tpi-sidebar-detail")
    expect(detail).to_be_visible()
    expect(detail.locator(".tpi-sidebar-detail-name")).to_have_text("sidebar-demo")
    log = detail.locator(".tpi-sidebar-log")
    expect(log).to_contain_text("sidebar-line-1", timeout=60_000)
    mark("first log line")
    badge_at_first_line = demo.locator(".tpi-sidebar-badge").inner_text()
    expect(demo.locator(".tpi-sidebar-badge")).to_have_text("succeeded", timeout=60_000)
    expect(detail.locator(".tpi-sidebar-detail-title .tpi-sidebar-badge")).to_have_text("succeeded")
    mark("succeeded")
    # cost so far (issue 17): the backend's figure from GET /tpi/tasks/<id>, here local's
    expect(detail.locator('dt:text-is("cost") + dd')).to_have_text("$0.00 (local)")
    for rank in (0, 1):
        for i in range(1, 11):
            expect(log).to_contain_text(f"[{rank}] sidebar-line-{i}")
    rows = detail.locator(".tpi-sidebar-ranks tbody tr")
    expect(rows).to_have_count(2)
    for row in range(2):
        cells = rows.nth(row).locator("td")
        expect(cells.nth(0)).to_have_text(str(row))
        expect(cells.nth(1)).to_have_text("succeeded")
        expect(cells.nth(3)).to_have_text("0")  # exit code
    expect(detail.locator(".tpi-sidebar-event-kind").first).to_be_visible()
    stop, pull, destroy = (
        detail.get_by_role("button", name=n, exact=True) for n in ("Stop", "Pull", "Destroy")
    )
    expect(stop).to_be_disabled()  # nothing left to stop
    expect(pull).to_be_enabled()
    expect(destroy).to_be_enabled()
    file_button = detail.locator('.tpi-sidebar-file-button[data-path="results/answer.txt"]')
    expect(file_button).to_be_visible(timeout=30_000)
    expect(file_button).to_have_attribute("aria-label", "Pull and open results/answer.txt")  # not local yet
    # the status colour comes from the theme's variable
    border = demo.locator(".tpi-sidebar-badge").evaluate("el => getComputedStyle(el).borderTopColor")
    success = page.evaluate(
        "() => { const s = document.createElement('span'); s.style.color = 'var(--jp-success-color1)';"
        " document.body.appendChild(s); const c = getComputedStyle(s).color; s.remove(); return c; }"
    )
    assert border == success, (border, success)
    screenshot(page, "sidebar-succeeded")

    # The result file: pulled (it is only in the task's storage), then opened in a JupyterLab tab.
    local_copy = tpi_env / "results" / "answer.txt"
    assert not local_copy.exists()
    file_button.click()
    tab_label = page.locator("#jp-main-dock-panel .lm-TabBar-tab .lm-TabBar-tabLabel", has_text="answer.txt")
    expect(tab_label).to_have_count(1, timeout=60_000)
    editor = page.locator(".jp-FileEditor .cm-content")
    expect(editor).to_contain_text("42", timeout=30_000)
    assert local_copy.read_text().strip() == "42"
    expect(file_button).to_have_attribute("aria-label", "Open results/answer.txt")
    expect(detail.locator(".tpi-sidebar-note")).to_contain_text("Pulled into the workdir")
    expect(detail.locator(".tpi-sidebar-file-button")).to_have_count(1)  # not JupyterLab's checkpoint
    mark("file opened")
    shot = screenshot(page, "sidebar-file-open")
    DOCS.mkdir(exist_ok=True)
    shutil.copyfile(shot, DOCS / "sidebar.png")

    # Keyboard: Tab from the toolbar into the list, arrows move, Enter selects.
    panel.locator(".tpi-sidebar-refresh").focus()
    page.keyboard.press("Tab")
    assert focused(page)["id"] == task.id, focused(page)  # the selected item holds the list's tab stop
    page.keyboard.press("ArrowUp")
    assert focused(page)["id"] == other.id, focused(page)
    page.keyboard.press("Enter")
    expect(item(page, "sidebar-other")).to_have_attribute("aria-selected", "true")
    expect(demo).to_have_attribute("aria-selected", "false")
    expect(detail.locator(".tpi-sidebar-detail-name")).to_have_text("sidebar-other")
    expect(log).to_contain_text("other done", timeout=30_000)
    page.keyboard.press("End")
    assert focused(page)["id"] == task.id, focused(page)
    page.keyboard.press("Enter")
    expect(detail.locator(".tpi-sidebar-detail-name")).to_have_text("sidebar-demo")
    expect(log).to_contain_text("[1] sidebar-line-10", timeout=30_000)
    page.keyboard.press("Tab")  # on to the task's buttons, in order; Stop is disabled, so skipped
    assert focused(page)["tag"] == "BUTTON" and focused(page)["text"] == "Pull", focused(page)
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Destroy", focused(page)
    for name in ("Refresh", "Stop", "Pull", "Destroy"):  # real buttons with accessible names
        expect(panel.get_by_role("button", name=name, exact=True)).to_have_count(1)
    expect(panel.get_by_role("combobox", name="Filter by status")).to_have_count(1)
    expect(panel.get_by_role("listbox", name="Tasks")).to_have_count(1)
    mark("keyboard")

    # The filter.
    panel.get_by_role("combobox", name="Filter by status").select_option("failed")
    expect(panel.locator(".tpi-sidebar-item")).to_have_count(0)
    expect(panel.locator(".tpi-sidebar-empty")).to_have_text("No task with this status.")
    panel.get_by_role("combobox", name="Filter by status").select_option("succeeded")
    expect(panel.locator(".tpi-sidebar-item")).to_have_count(2)
    panel.get_by_role("combobox", name="Filter by status").select_option("")

    # Dark theme: the same panel from the theme's variables.
    light_background = panel.evaluate("el => getComputedStyle(el).backgroundColor")
    set_theme(page, "JupyterLab Dark", light=False)
    dark_background = panel.evaluate("el => getComputedStyle(el).backgroundColor")
    assert luminance(light_background) > 0.8 and luminance(dark_background) < 0.3, (
        light_background,
        dark_background,
    )
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    dark = screenshot(page, "sidebar-dark")
    shutil.copyfile(dark, DOCS / "sidebar-dark.png")
    set_theme(page, "JupyterLab Light", light=True)

    # Destroy asks first: Cancel keeps the task, Destroy removes it from the list.
    destroy.click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Destroy task sidebar-demo?")
    screenshot(page, "sidebar-destroy-dialog")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    page.wait_for_timeout(500)
    assert Task.find(task.id).status == "succeeded"
    destroy.click()
    expect(dialog).to_be_visible()
    dialog.locator("button.jp-mod-warn", has_text="Destroy").click()
    expect(demo).to_have_count(0, timeout=60_000)
    mark("destroyed")
    expect(detail).to_be_hidden()  # the selection went with it
    expect(item(page, "sidebar-other")).to_have_count(1)
    with pytest.raises(TaskError):
        Task.find(task.id)
    screenshot(page, "sidebar-destroyed")

    print(f"badge when the first log line showed: {badge_at_first_line!r}")
    print(f"timings (s since the test started): {marks}")
    assert badge_at_first_line in ("provisioning", "running"), "log lines should stream while the task runs"


def test_sidebar_polling_backs_off_pauses_and_reports_once(lab_server: LabServer, page: Any) -> None:
    """Idle polls space out; none while the sidebar is hidden; a missing server extension is reported once."""
    polls: list[float] = []
    warnings: list[str] = []
    page.on(
        "request",
        lambda r: polls.append(time.monotonic()) if r.url.split("?")[0].endswith("/tpi/tasks") else None,
    )
    page.on(
        "console",
        lambda m: warnings.append(m.text) if m.type == "warning" and "tpi-jupyter" in m.text else None,
    )
    open_lab(page, lab_server)
    panel = show_sidebar(page)

    # Idle (nothing changes): the intervals grow.
    page.wait_for_timeout(11_000)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(polls)]
    print(f"idle poll gaps: {gaps}")
    assert len(polls) >= 3, polls
    assert gaps[-1] > gaps[0] + 1, f"no backoff while idle: {gaps}"

    # Hidden: no polls; shown again: one at once.
    page.locator('.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="filebrowser"]').click()
    expect(panel).to_be_hidden()
    hidden_at, count = time.monotonic(), len(polls)
    page.wait_for_timeout(8_000)
    assert len(polls) == count, f"polled while hidden: {[round(t - hidden_at, 1) for t in polls[count:]]}"
    sidebar_tab(page).click()
    expect(panel).to_be_visible()
    page.wait_for_timeout(1_000)
    assert len(polls) == count + 1, f"no poll when shown again: {len(polls) - count}"

    # The server extension "disappears" (404): reported once, after several failures.
    tasks_url = re.compile(r".*/tpi/tasks(\?.*)?$")
    page.route(
        tasks_url,
        lambda route: route.fulfill(
            status=404, content_type="application/json", body='{"message": "Not Found"}'
        ),
    )
    failing_from = len(polls)
    panel.get_by_role("button", name="Refresh").click()
    message = panel.locator(".tpi-sidebar-message")
    page.wait_for_timeout(1_000)
    expect(message).to_be_hidden()  # one failure is not reported
    expect(message).to_be_visible(timeout=20_000)
    expect(message).to_contain_text("server extension is not running")
    reported_after = len(polls) - failing_from
    page.wait_for_timeout(12_000)  # more failing polls
    print(f"failed polls before the report: {reported_after}; in all: {len(polls) - failing_from}")
    assert reported_after >= 3, reported_after
    assert len(polls) - failing_from > reported_after, "polling stopped after the failure"
    assert len(warnings) == 1, warnings
    expect(page.locator(".Toastify__toast", has_text="server extension is not running")).to_have_count(1)

    # Back: the message goes.
    page.unroute(tasks_url)
    panel.get_by_role("button", name="Refresh").click()
    expect(message).to_be_hidden(timeout=10_000)


def test_sidebar_never_polls_faster_than_the_tasks_poll_interval(
    lab_server: LabServer, tpi_env: Path, page: Any
) -> None:
    """A backend's `poll_interval` in the task detail is the floor, even while every poll sees news.

    Also: a huge log line is cut at 10 kB, the rest marked, as in the notebook widget.
    """
    floor = 6.0
    script = "python3 -c \"print('Z' * 50000)\"; for i in $(seq 1 150); do echo tick-$i; sleep 0.3; done"
    task = start(tpi_env, "slow-cloud", script)
    lists: list[float] = []
    details: list[float] = []
    page.on(
        "request",
        lambda r: lists.append(time.monotonic()) if r.url.split("?")[0].endswith("/tpi/tasks") else None,
    )

    def slow_detail(route: Any) -> None:
        """The detail as a backend with a 6 s minimum would send it."""
        response = route.fetch()
        body = response.json()
        body["poll_interval"] = floor
        details.append(time.monotonic())
        route.fulfill(response=response, json=body)

    page.route(re.compile(rf".*/tpi/tasks/{task.id}(\?.*)?$"), slow_detail)
    try:
        open_lab(page, lab_server)
        panel = show_sidebar(page)
        item(page, "slow-cloud").click()
        log = panel.locator(".tpi-sidebar-log")
        expect(log).to_contain_text("tick-1", timeout=30_000)
        wait_for_details = time.monotonic()
        while not details and time.monotonic() - wait_for_details < 30:
            page.wait_for_timeout(200)
        since = details[0]
        page.wait_for_timeout(21_000)
        scheduled = [at for at in lists if at > since]
        gaps = [round(b - a, 1) for a, b in itertools.pairwise([since, *scheduled])]
        print(f"poll gaps with poll_interval={floor}: {gaps}")
        assert len(gaps) >= 2, gaps
        # Lines change on every poll, so without the floor the sidebar polls every 2 s.
        assert min(gaps) >= floor - 0.3, gaps
        expect(log).to_contain_text("tick-40")  # the log still streams, in bigger steps
        # a huge line is cut as in the notebook widget
        text = log.inner_text()
        assert "Z" * 10_000 + " … [line cut: 40000 more bytes]" in text and "Z" * 10_001 not in text
    finally:
        page.unroute(re.compile(rf".*/tpi/tasks/{task.id}(\?.*)?$"))
        task.destroy()
