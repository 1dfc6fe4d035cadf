"""Machines and runners in a notebook: a table with status and cost so far, refreshed live."""

from __future__ import annotations

import html
import threading

import ipywidgets as w

from .verbs import rows_of

COLUMNS = ("name", "kind", "cloud", "machine", "status", "cost")


def table_html(kind: str | None) -> str:
    rows = rows_of(kind)
    if not rows:
        return f"<i>no {kind or 'machine'}s</i>"
    head = "".join(f"<th style='text-align:left'>{column}</th>" for column in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row[column]))}</td>" for column in COLUMNS) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


class MachinePanel(w.VBox):  # type: ignore[misc]
    """Every machine (or runner) with its status from the cloud and its cost so far."""

    def __init__(self, kind: str | None = None, interval: float = 5.0):
        self.kind, self.interval = kind, interval
        self.title = w.HTML(f"<b>tpi {kind or 'machine'}s</b>")
        self.table = w.HTML(table_html(kind))
        self._stop = threading.Event()
        super().__init__([self.title, self.table])
        self.thread = threading.Thread(target=self._loop, name="tpi-machines", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        interval = self.interval
        while not self._stop.wait(interval):
            try:
                self.table.value = table_html(self.kind)
                interval = self.interval
            except Exception:  # a cloud that does not answer: ask less often
                interval = min(interval * 2, 60)

    def close(self) -> None:
        self._stop.set()
        super().close()
