"""TaskWidget, its poller and TaskPanel against real local tasks (no kernel: see test_widget_kernel)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, launch
from tpi_jupyter.textview import MAX_LINE_BYTES
from tpi_jupyter.widgets import LogBuffer, TaskPanel, TaskWidget

from .conftest import wait_for


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script)
    assert isinstance(task, Task)
    return task


def all_state(widget: Any) -> str:
    """The serialised state of a widget and every widget inside it, as the frontend receives it."""
    states = []

    def walk(item: Any) -> None:
        states.append(item.get_state())
        for child in getattr(item, "children", ()):
            walk(child)

    walk(widget)
    return json.dumps(states, default=str)


def test_log_tail_is_bounded_incremental_and_polling_stops(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=bounded", "parallelism=2"], "for i in $(seq 1 40); do echo line-$i; sleep 0.02; done")
    reads: list[tuple[str, int, int]] = []
    fs, _ = task.remote
    original = fs.cat_file

    def recording_cat_file(path: str, start: int | None = None, end: int | None = None, **kw: Any) -> bytes:
        if path.endswith("/log"):
            reads.append((path, start or 0, end or -1))
        return original(path, start=start, end=end, **kw)  # type: ignore[no-any-return]

    fs.cat_file = recording_cat_file
    view = TaskWidget(task, tail_lines=5)
    try:
        wait_for(lambda: not view.poller.thread.is_alive(), timeout=60)  # type: ignore[union-attr]
        assert view._snapshot is not None and view._snapshot.status == "succeeded"
        assert len(view.lines) == 5
        assert view.lines[-1].endswith("] line-40")
        assert "line-40" in view.log_view.value and "line-1\n" not in view.log_view.value
        # every log byte was read once: each read starts where the previous one of that file ended
        by_file: dict[str, list[tuple[int, int]]] = {}
        for path, begin, end in reads:
            by_file.setdefault(path, []).append((begin, end))
        assert len(by_file) == 2
        for ranges in by_file.values():
            assert ranges[0][0] == 0
            assert all(ranges[i][0] == ranges[i - 1][1] for i in range(1, len(ranges)))
        assert "succeeded" in view.header_view.value
        assert "machine-released" in view.events_view.value
    finally:
        fs.cat_file = original
        view.close()
        task.destroy()


def test_polling_backs_off_while_nothing_changes(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=quiet"], "echo one; sleep 30")
    view = TaskWidget(task)
    try:
        wait_for(lambda: "one" in view.log_view.value, timeout=30)
        before = view.poller.polls  # type: ignore[union-attr]
        time.sleep(6)
        polls = view.poller.polls - before  # type: ignore[union-attr]
        # at the fastest rate (0.2 s) that would be 30 polls; backing off it is a handful
        assert 1 <= polls <= 12, polls
        assert "running" in view.header_view.value
    finally:
        view.close()
        task.destroy()


def test_buttons_stop_pull_destroy_with_confirmation_and_visible_errors(
    tpi_home: Path, workdir: Path
) -> None:
    script = "mkdir -p out; echo result > out/r.txt; sleep 60"
    task = start(["name=buttons", "workdir=.", "output=out"], script)
    view = TaskWidget(task)
    try:
        wait_for(lambda: (Path(task.record["remote"]) / "data/out/r.txt").exists(), timeout=30)
        view.pull_button.click()
        wait_for(lambda: (workdir / "out" / "r.txt").exists(), timeout=30)
        view.stop_button.click()
        wait_for(lambda: "failed" in view.header_view.value, timeout=60)
        wait_for(lambda: "stopped" in view.events_view.value, timeout=10)
        view.destroy_button.click()
        assert view.confirm.layout.display == "flex"  # asks first
        view.confirm_no.click()
        assert view.confirm.layout.display == "none"
        assert Task.find("buttons")  # still there
        view.destroy_button.click()
        view.confirm_yes.click()
        wait_for(lambda: "destroyed" in view.header_view.value, timeout=60)
        assert view.destroy_button.disabled
        # an error in a button callback stays in the widget
        view.pull_button.disabled = False
        view.pull_button.click()
        wait_for(lambda: "destroyed; nothing to pull" in view.error_view.value, timeout=10)
        time.sleep(0.5)
        assert "nothing to pull" in view.error_view.value
    finally:
        view.close()


def test_no_environment_value_in_widget_state_or_text(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_TOKEN", "tok-very-secret-42")
    task = start(["name=secret", "environment=API_TOKEN="], 'echo "token is $API_TOKEN"')
    view = TaskWidget(task)
    try:
        wait_for(lambda: not view.poller.thread.is_alive(), timeout=60)  # type: ignore[union-attr]
        assert "token is ***" in view.log_view.value
        state = all_state(view)
        assert "token is ***" in state  # the walk reached the log view
        assert "tok-very-secret-42" not in state
        assert "tok-very-secret-42" not in view._repr_mimebundle_()["text/plain"]
    finally:
        view.close()
        task.destroy()


def test_panel_lists_every_task_and_opens_one(tpi_home: Path, workdir: Path) -> None:
    first = start(["name=panel-a"], "echo a")
    second = start(["name=panel-b"], "echo b; sleep 30")
    panel = TaskPanel(interval=0.2)
    try:
        wait_for(lambda: len(panel.select.options) == 2, timeout=10)
        wait_for(lambda: any("succeeded" in label for label, _ in panel.select.options), timeout=30)
        panel.select.value = second.id
        (opened,) = panel.detail.children
        assert isinstance(opened, TaskWidget) and opened.task.id == second.id  # type: ignore[union-attr]
        wait_for(lambda: "running" in opened.header_view.value, timeout=30)
    finally:
        panel.close()
        first.destroy()
        second.destroy()


def test_text_mode_prints_the_same_information(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TPI_JUPYTER_NONINTERACTIVE", "1")
    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "tpi_jupyter")
    task = shell.run_cell_magic("tpi", "name=texty parallelism=2", "echo text-line")
    assert isinstance(task, Task)  # a handle, not a widget
    assert task.wait(timeout=60) == "succeeded"
    shell.run_line_magic("tpi", "attach texty")
    out = capsys.readouterr().out
    for expected in ("texty", task.id, "[succeeded]", "rank 0: succeeded", "rank 1: succeeded",
                     "machine-started", "--- log ---", "[0] text-line", "[1] text-line"):  # fmt: skip
        assert expected in out, expected
    assert shell.run_line_magic("tpi", "panel") is None
    assert "texty" in capsys.readouterr().out
    task.destroy()


def test_progress_bar_follows_upload_and_pull(tpi_home: Path, workdir: Path) -> None:
    for index in range(12):
        (workdir / f"file-{index}.bin").write_bytes(b"z" * 1000)
    view = TaskWidget(title="progress")
    labels: list[str] = []
    view.progress_label.observe(lambda change: labels.append(change["new"]), names="value")
    task = launch(build_spec(["name=progress", "workdir=.", "output=out"], {"cloud": "local"}),
                  "mkdir -p out; cp file-*.bin out/", progress=view.upload_progress)  # fmt: skip
    assert isinstance(task, Task)
    assert labels[0] == "uploading 0/12 files, 0 B of 11.7 KiB"
    assert labels[-1] == "uploading 12/12 files, 11.7 KiB of 11.7 KiB"
    assert view.progress.layout.display == "none"  # hidden once done
    assert view.progress_bar.value == view.progress_bar.max == 12000
    view.attach(task)
    try:
        wait_for(lambda: "succeeded" in view.header_view.value, timeout=60)
        labels.clear()
        view.pull_button.click()
        wait_for(lambda: labels and labels[-1].startswith("pulling 12/12"), timeout=30)
        assert labels[0].startswith("pulling 0/12")
    finally:
        view.close()
        task.destroy()


def test_log_buffer_cuts_long_lines_and_bounds_count_and_bytes() -> None:
    buffer = LogBuffer(max_lines=100, max_bytes=50_000)
    buffer.append("é" * 30_000)  # 60,000 bytes: cut at 10,000 bytes, never inside a character
    (cut,) = buffer
    assert cut.startswith("é" * 5000) and cut.endswith(" … [line cut: 50000 more bytes]")
    assert len(cut.encode()) < MAX_LINE_BYTES + 100
    for index in range(30):
        buffer.append(f"{index:02d}" + "x" * 4998)  # 5,000 bytes each
    assert buffer.bytes <= 50_000 and len(buffer) == 9  # the byte bound, not the count, dropped lines
    assert buffer[-1].startswith("29") and buffer[0].startswith("21")
    small = LogBuffer(max_lines=3)
    for index in range(10):
        small.append(str(index))
    assert list(small) == ["7", "8", "9"]


def test_widget_cuts_a_huge_line_and_its_text_report_too(tpi_home: Path, workdir: Path) -> None:
    script = "python3 -c \"print('A' * 50000); print('after-the-long-line')\""
    task = start(["name=longline"], script)
    view = TaskWidget(task)
    try:
        wait_for(lambda: not view.poller.thread.is_alive(), timeout=60)  # type: ignore[union-attr]
        assert list(view.lines)[-1] == "after-the-long-line"
        assert "A" * 10_000 + " … [line cut: 40000 more bytes]" in view.log_view.value
        assert "A" * 10_001 not in view.log_view.value
        report = view._repr_mimebundle_()["text/plain"]
        assert "[line cut: 40000 more bytes]" in report and "A" * 10_001 not in report
    finally:
        view.close()
        task.destroy()


def test_buttons_stay_usable_after_a_pull_or_destroy_error(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=blocked", "workdir=.", "output=out"], "mkdir -p out; echo result > out/r.txt")
    view = TaskWidget(task)
    try:
        wait_for(lambda: "succeeded" in view.header_view.value, timeout=60)
        (workdir / "out").write_text("a file where the output directory must go\n")
        for button in (view.pull_button, view.destroy_button):
            if button is view.destroy_button:
                button.click()
                view.confirm_yes.click()
            else:
                button.click()
            action = "pull" if button is view.pull_button else "destroy"
            wait_for(lambda action=action: f"{action} failed:" in view.error_view.value, timeout=30)
            message = view.error_view.value
            assert "\n" not in message and "Traceback" not in message, message
            # usable again: another try is one click away (Stop stays off: the task is final)
            wait_for(lambda: not view.pull_button.disabled and not view.destroy_button.disabled, timeout=10)
            assert view.stop_button.disabled
        assert Task.find("blocked").status == "succeeded"  # the failed destroy removed nothing
        (workdir / "out").unlink()
        view.destroy_button.click()
        view.confirm_yes.click()
        wait_for(lambda: "destroyed" in view.header_view.value, timeout=60)
        assert (workdir / "out" / "r.txt").read_text() == "result\n"
        assert view.pull_button.disabled and view.destroy_button.disabled
    finally:
        view.close()
        if not task.destroyed:
            (workdir / "out").unlink(missing_ok=True)
            task.destroy()
