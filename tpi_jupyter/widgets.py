"""TaskWidget and TaskPanel, built from stock ipywidgets (no custom JS), and the text fallback.

A background poller (one thread per widget) keeps them moving while the kernel is idle or busy;
it reads only new log bytes, backs off when nothing changes and stops when the task is final.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets as w

from .sync import Progress
from .task import FINAL, LogTail, Snapshot, Task, format_line, human_bytes, pricing_text
from .textview import clip_line, clock, cost_text, elapsed_text, event_text, text_report

BADGE_COLOURS = {
    "queued": "#6c757d", "provisioning": "#0d6efd", "running": "#0d6efd", "preempted": "#fd7e14",
    "succeeded": "#198754", "failed": "#dc3545", "timeout": "#b02a37", "destroyed": "#495057",
}  # fmt: skip
MIN_INTERVAL = 0.2
MAX_INTERVAL = 5.0
FINAL_GRACE = 15.0  # seconds a final task is still polled while its machines wind down
MAX_TAIL_BYTES = 200_000  # the log tail is re-sent on every update: keep it small
MAX_ERROR_CHARS = 300


class LogBuffer:
    """The newest log lines, bounded in count and in bytes; each line clipped (`clip_line`)."""

    def __init__(self, max_lines: int, max_bytes: int = MAX_TAIL_BYTES):
        self.max_lines, self.max_bytes = max(1, max_lines), max_bytes
        self._lines: deque[str] = deque()
        self.bytes = 0

    def append(self, line: str) -> None:
        line = clip_line(line)
        self._lines.append(line)
        self.bytes += len(line.encode("utf-8", "replace")) + 1
        while len(self._lines) > self.max_lines or (self.bytes > self.max_bytes and len(self._lines) > 1):
            self.bytes -= len(self._lines.popleft().encode("utf-8", "replace")) + 1

    def __len__(self) -> int:
        return len(self._lines)

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __getitem__(self, index: int) -> str:
        return self._lines[index]


def one_line(error: Exception) -> str:
    """An error as one short line (a multi-line message would push the buttons away)."""
    text = " ".join(str(error).split()) or error.__class__.__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class Poller:
    """Calls `on_update(snapshot, new_lines)` from a daemon thread until the task is final."""

    def __init__(self, task: Task, on_update: Callable[[Snapshot, list[tuple[int, str, str]]], None],
                 on_error: Callable[[Exception], None]):  # fmt: skip
        self.task, self.on_update, self.on_error = task, on_update, on_error
        self.tail = LogTail(task)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"tpi-poll-{task.id}", daemon=True)
        self.polls = 0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Poll now and at full speed (after a button press)."""
        self._wake.set()

    def _loop(self) -> None:
        last: tuple[Any, ...] = ()
        final_since = 0.0
        fastest = max(MIN_INTERVAL, self.task.poll_interval)  # no faster than the backend allows
        interval = fastest
        while not self._stop.is_set():
            try:
                snapshot = self.task.read()
                lines = self.tail.poll(snapshot.log_sizes) if snapshot.status != "destroyed" else []
                self.polls += 1
                key = (snapshot.status, [(r.state, r.boots, r.code) for r in snapshot.ranks],
                       len(snapshot.group.events) if snapshot.group else 0)  # fmt: skip
                changed = bool(lines) or key != last
                last = key
                self.on_update(snapshot, lines)
                if snapshot.status in FINAL:
                    # Stay until the machines are released, so their last events show too.
                    group_gone = not (snapshot.group and snapshot.group.exists)
                    final_since = final_since or time.time()
                    if group_gone or time.time() - final_since > FINAL_GRACE:
                        return
                interval = fastest if changed else min(interval * 1.5, max(MAX_INTERVAL, fastest))
            except Exception as error:  # shown in the widget; keep polling, slower
                self.on_error(error)
                interval = MAX_INTERVAL
            if self._wake.wait(self.task.next_poll(interval, self.tail)):
                self._wake.clear()
                interval = fastest


class TaskWidget(w.VBox):  # type: ignore[misc]
    """The live view of one task: header, progress, ranks, log tail, events, buttons."""

    def __init__(self, task: Task | None = None, *, title: str = "", tail_lines: int = 200):
        self.task: Task | None = None
        self.lines = LogBuffer(tail_lines)
        self.poller: Poller | None = None
        self._shown = False
        self._display: Any = None  # the display handle, to refresh the text fallback once attached
        self._busy = ""  # the action running now (its buttons stay disabled meanwhile)
        self._snapshot: Snapshot | None = None
        self.header_view = w.HTML(f"<b>{html.escape(title)}</b> <i>launching…</i>")
        self.progress_bar = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="50%"))
        self.progress_label = w.Label()
        self.progress = w.HBox([self.progress_bar, self.progress_label], layout=w.Layout(display="none"))
        self.ranks_view = w.HTML()
        self.log_view = w.HTML(self._log_html())
        self.events_view = w.HTML()
        # an Accordion keeps its open state across updates (a <details> in HTML would close)
        self.events_box = w.Accordion(children=[self.events_view], titles=("events",), selected_index=None)
        self.error_view = w.HTML()
        self.stop_button = w.Button(description="Stop", icon="stop", tooltip="stop the machines")
        self.pull_button = w.Button(description="Pull results", icon="download", tooltip="download output")
        self.destroy_button = w.Button(description="Destroy", icon="trash", button_style="danger",
                                       tooltip="download output, then remove everything")  # fmt: skip
        self.confirm_yes = w.Button(description="Yes, destroy", button_style="danger")
        self.confirm_no = w.Button(description="Cancel")
        self.confirm = w.HBox([w.Label("Destroy this task? Output is downloaded first."),
                               self.confirm_yes, self.confirm_no], layout=w.Layout(display="none"))  # fmt: skip
        self.stop_button.on_click(lambda _: self._act("stop", lambda task: task.stop()))
        self.pull_button.on_click(lambda _: self._act("pull", lambda task: task.pull(self.pull_progress)))
        self.destroy_button.on_click(lambda _: self._ask_destroy())
        self.confirm_no.on_click(lambda _: self._hide_confirm())
        self.confirm_yes.on_click(lambda _: self._confirmed_destroy())
        buttons = w.HBox([self.stop_button, self.pull_button, self.destroy_button])
        super().__init__([self.header_view, self.progress, self.ranks_view, self.log_view, self.events_box, self.error_view, buttons,
                          self.confirm])  # fmt: skip
        self._set_buttons(enabled=False)
        if task is not None:
            self.attach(task)

    # -- life

    def show(self) -> None:
        if not self._shown:
            from IPython.display import display

            self._shown = True
            self._display = display(self, display_id=True)  # type: ignore[no-untyped-call]

    def attach(self, task: Task) -> None:
        self.task = task
        self._sync_buttons()
        self.poller = Poller(task, self._update, self._show_error)
        self.poller.start()
        if self._display is not None:
            # Shown while uploading, before there was a task: the saved text/plain (nbconvert,
            # nbval) would stay the bare widget repr without this update.
            self._display.update(self)

    def close(self) -> None:
        if self.poller:
            self.poller.stop()
        super().close()

    # -- progress callbacks (called from sync worker threads)

    def upload_progress(self, progress: Progress) -> None:
        self.show()
        self._progress("uploading", progress)

    def pull_progress(self, progress: Progress) -> None:
        self._progress("pulling", progress)

    def _progress(self, verb: str, progress: Progress) -> None:
        done = progress.files_done >= progress.files_total
        self.progress.layout.display = "none" if done else "flex"
        self.progress_bar.max = max(1, progress.bytes_total)
        self.progress_bar.value = progress.bytes_done
        self.progress_label.value = (
            f"{verb} {progress.files_done}/{progress.files_total} files, "
            f"{human_bytes(progress.bytes_done)} of {human_bytes(progress.bytes_total)}"
        )

    # -- rendering

    def _update(self, snapshot: Snapshot, lines: list[tuple[int, str, str]]) -> None:
        assert self.task is not None
        self._snapshot = snapshot
        width = int(self.task.spec["parallelism"])
        for rank, _stamp, text in lines:
            self.lines.append(format_line(rank, text, width))
        if snapshot.status != "destroyed" or not self.header_view.value:
            self.header_view.value = self._header_html(snapshot)
        else:  # keep the last figures; only the badge changes
            self.header_view.value = re.sub(r"background:#[0-9a-f]+;(.*?)>\w+</span>",
                                            rf"background:{BADGE_COLOURS['destroyed']};\1>destroyed</span>",
                                            self.header_view.value, count=1)  # fmt: skip
        if snapshot.status != "destroyed":  # a destroyed task has no ranks left to show
            self.ranks_view.value = self._ranks_html(snapshot)
        if lines:
            self.log_view.value = self._log_html()
        self.events_view.value = self._events_html(snapshot)
        self._sync_buttons()

    def _header_html(self, snapshot: Snapshot) -> str:
        assert self.task is not None
        spec = self.task.spec
        colour = BADGE_COLOURS.get(snapshot.status, "#6c757d")
        badge = (f'<span class="tpi-badge" style="background:{colour};color:white;border-radius:0.8em;'
                 f'padding:0 0.6em">{snapshot.status}</span>')  # fmt: skip
        return (
            f"<b>{html.escape(self.task.name)}</b> <code>{self.task.id}</code> {badge}<br>"
            f"{spec['cloud']} · {html.escape(str(spec['machine']))} x {spec['parallelism']} · "
            f"{pricing_text(float(spec['spot']))} · elapsed {elapsed_text(self.task, snapshot)} · "
            f"cost {cost_text(self.task, snapshot)}"
        )

    @staticmethod
    def _ranks_html(snapshot: Snapshot) -> str:
        cell = "<td style='padding:0 0.8em 0 0'>{}</td>"
        rows = "".join(
            "<tr>" + "".join(cell.format(value) for value in (
                r.rank, r.state + (f" ({html.escape(r.reason)})".replace(chr(10), "<br>") if r.reason else ""), r.boots,
                "" if r.code is None else r.code)) + "</tr>"
            for r in snapshot.ranks
        )  # fmt: skip
        head = "".join(f"<th style='padding:0 0.8em 0 0;text-align:left'>{name}</th>"
                       for name in ("rank", "state", "boots", "exit code"))  # fmt: skip
        return f"<table class='tpi-ranks' style='border-collapse:collapse'><tr>{head}</tr>{rows}</table>"

    def _log_html(self) -> str:
        text = html.escape("\n".join(self.lines)) or "(no log yet)"
        # column-reverse keeps the view scrolled to the newest line without custom JS
        return ("<div class='tpi-log' style='display:flex;flex-direction:column-reverse;max-height:18em;"
                "overflow:auto;border:1px solid var(--jp-border-color2,#ccc);padding:0 0.4em'>"
                f"<pre style='margin:0;flex:none'>{text}</pre></div>")  # fmt: skip

    def _events_html(self, snapshot: Snapshot) -> str:
        assert self.task is not None
        items = "".join(
            f"<li>{clock(e['time'])} {html.escape(event_text(e))}</li>" for e in self.task.events(snapshot)
        )
        return f"<ul class='tpi-events' style='margin:0'>{items}</ul>"

    def _show_error(self, error: Exception, action: str = "") -> None:
        text = f"{action} failed: {one_line(error)}" if action else one_line(error)
        self.error_view.value = f"<span style='color:#dc3545'>⚠ {html.escape(text)}</span>"

    def _set_buttons(self, enabled: bool) -> None:
        for button in (self.stop_button, self.pull_button, self.destroy_button):
            button.disabled = not enabled

    def _sync_buttons(self) -> None:
        """Buttons follow the task: none while an action runs or once destroyed; Stop until final."""
        status = self._snapshot.status if self._snapshot else ""
        if self.task is None or self._busy or status == "destroyed":
            self._set_buttons(enabled=False)
            return
        self._set_buttons(enabled=True)
        self.stop_button.disabled = status in FINAL

    # -- actions: run off the kernel's main thread, errors stay visible

    def _act(self, name: str, action: Callable[[Task], Any]) -> threading.Thread:
        task = self.task
        if task is None or self._busy:
            return threading.Thread()
        self._busy = name
        self._sync_buttons()

        def run() -> None:
            self.error_view.value = f"<i>{name}…</i>"
            try:
                action(task)
                self.error_view.value = ""
            except Exception as error:  # one line; the buttons come back for another try
                self._show_error(error, name)
            finally:
                self._busy = ""
                if task.destroyed:
                    self._snapshot = Snapshot("destroyed")
                self._sync_buttons()
            self.refresh()

        thread = threading.Thread(target=run, name=f"tpi-{name}", daemon=True)
        thread.start()
        return thread

    def refresh(self) -> None:
        """Show the latest state now: wake the poller, or read once if it has finished."""
        if self.poller and self.poller.thread.is_alive():
            self.poller.wake()
        elif self.poller:
            try:
                snapshot = self.poller.task.read()
                lines = self.poller.tail.poll(snapshot.log_sizes) if snapshot.status != "destroyed" else []
                self._update(snapshot, lines)
            except Exception as error:
                self._show_error(error)

    def _ask_destroy(self) -> None:
        self.confirm.layout.display = "flex"

    def _hide_confirm(self) -> None:
        self.confirm.layout.display = "none"

    def _confirmed_destroy(self) -> threading.Thread:
        self._hide_confirm()
        return self._act("destroy", lambda task: task.destroy(self.pull_progress))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        bundle: dict[str, Any] = super()._repr_mimebundle_(**kwargs)
        if self.task is not None:
            snapshot = self._snapshot or self.task.read()
            bundle["text/plain"] = text_report(self.task, snapshot, list(self.lines))
        return bundle


class TaskPanel(w.VBox):  # type: ignore[misc]
    """Every task in the registry with live status; selecting one opens its TaskWidget."""

    def __init__(self, interval: float = 2.0):
        self.select = w.Select(options=[], rows=8, layout=w.Layout(width="100%"))
        self.title = w.HTML("<b>tpi tasks</b>")
        self.detail = w.VBox()
        self.interval = interval
        self._refreshing = False
        self._stop = threading.Event()
        self.select.observe(self._open, names="value")
        super().__init__([self.title, self.select, self.detail])
        self.refresh()
        self.thread = threading.Thread(target=self._loop, name="tpi-panel", daemon=True)
        self.thread.start()

    def refresh(self) -> None:
        options = []
        for item in Task.all_safe():
            task, status = item.task, item.status
            label = f"{task.name} · {task.spec['cloud']} · {task.spec['machine']}x{task.spec['parallelism']} · {status}"
            options.append((label, task.id))
        if options != list(self.select.options):
            # Replacing options fires selection events (None, then the old value): not a user's pick.
            self._refreshing = True
            try:
                selected = self.select.value
                self.select.options = options
                if selected in {task_id for _, task_id in options}:
                    self.select.value = selected
            finally:
                self._refreshing = False
        self.title.value = f"<b>tpi tasks</b> ({len(options)})"

    def _loop(self) -> None:
        interval = self.interval
        while not self._stop.wait(interval):
            before = list(self.select.options)
            try:
                self.refresh()
            except Exception:
                interval = min(interval * 2, 30)
                continue
            interval = self.interval if list(self.select.options) != before else min(interval * 1.5, 30)

    def _open(self, change: dict[str, Any]) -> None:
        if self._refreshing:
            return
        for child in self.detail.children:
            child.close()
        if change["new"]:
            self.detail.children = [TaskWidget(Task.find(change["new"]))]

    def close(self) -> None:
        self._stop.set()
        for child in self.detail.children:
            child.close()
        super().close()
