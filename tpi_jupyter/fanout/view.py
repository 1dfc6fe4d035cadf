"""The map run's widget: a stacked progress bar (done / failed / retrying / in flight), rate and
ETA, the latest errors, Stop and Destroy. Stock ipywidgets; a poller thread keeps it moving."""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as w

from ..task import FINAL
from .records import Counts
from .run import MapRun

POLL = 0.5  # seconds between two reads while the run is live
ERRORS_SHOWN = 5
COLOURS = {"done": "#198754", "failed": "#dc3545", "retrying": "#fd7e14", "in_flight": "#0d6efd"}


def bar_html(counts: Counts) -> str:
    """The stacked bar: each part's width is its share of all tasks."""
    total = max(counts.total, 1)
    parts = [(key, getattr(counts, key)) for key in COLOURS]
    cells = "".join(
        f'<div title="{key.replace("_", " ")}: {value}" style="width:{100 * value / total:.2f}%;'
        f'background:{COLOURS[key]}"></div>'
        for key, value in parts if value
    )  # fmt: skip
    return f'<div class="tpi-map-bar" style="display:flex;height:14px;background:#e9ecef;border-radius:3px;overflow:hidden">{cells}</div>'


def errors_html(errors: list[dict[str, Any]]) -> str:
    rows = []
    for error in errors[-ERRORS_SHOWN:]:
        first = str(error.get("error") or "").strip().splitlines()
        text = html.escape(first[0][:300] if first else "")
        rows.append(f"<li><code>{html.escape(str(error.get('task')))}</code> {error['kind']}: {text}</li>")
    return f"<b>latest errors</b><ul>{''.join(rows)}</ul>" if rows else ""


class MapWidget(w.VBox):  # type: ignore[misc]
    def __init__(self, run: MapRun, poll: float = POLL):
        self.run, self.poll = run, poll
        self.title = w.HTML()
        self.bar = w.HTML()
        self.counts = w.HTML()
        self.errors = w.HTML()
        stop, destroy = w.Button(description="Stop"), w.Button(description="Destroy")
        stop.on_click(lambda _: self._act(self.run.task.stop))
        destroy.on_click(lambda _: self._act(self.run.task.destroy))
        super().__init__([self.title, self.bar, self.counts, self.errors, w.HBox([stop, destroy])])
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="tpi-map-widget", daemon=True)
        self._thread.start()

    def _act(self, action: Any) -> None:
        try:
            action()
        except Exception as error:  # shown, not raised into the event loop
            self.errors.value = f"<b>{html.escape(str(error).splitlines()[0])}</b>"
        self.refresh()

    def refresh(self) -> bool:
        """Redraw; True once the run is over."""
        status = self.run.status()
        counts = self.run.counts()
        self.title.value = (f"<b>map run {html.escape(self.run.name)}</b> <code>{self.run.task.id}</code> "
                            f"· {html.escape(status)}")  # fmt: skip
        self.bar.value = bar_html(counts)
        self.counts.value = html.escape(counts.text())
        self.errors.value = errors_html(self.run.errors())
        return status in FINAL or counts.finished >= counts.total

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                if self.refresh():
                    return
            except Exception:  # a destroyed run: the last view stays
                return

    def close(self) -> None:
        self._stop.set()
        super().close()
