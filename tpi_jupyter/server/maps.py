"""GET /tpi/maps: every map run with the counts its widget shows, for the JupyterLab sidebar.

Runs are kept between requests, so each poll reads only the records written since the last one.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from ..fanout.run import MapRun
from ..task import Task
from .handlers import TpiHandler

_RUNS: dict[str, MapRun] = {}  # task id -> its run, read incrementally
ERRORS_LISTED = 3


def map_summary(run: MapRun) -> dict[str, Any]:
    counts = run.counts()
    errors = [{"task": e.get("task"), "kind": e["kind"], "error": str(e.get("error") or "").strip().splitlines()[:1]}
              for e in run.errors()[-ERRORS_LISTED:]]  # fmt: skip
    return {
        "id": run.task.id, "name": run.name, "cloud": run.task.spec["cloud"], "status": run.status(),
        "total": counts.total, "done": counts.done, "failed": counts.failed, "retrying": counts.retrying,
        "in_flight": counts.in_flight, "rate": round(counts.rate, 2), "eta": counts.eta,
        "errors": [{**e, "error": e["error"][0] if e["error"] else ""} for e in errors],
    }  # fmt: skip


def list_maps() -> list[dict[str, Any]]:
    found = []
    live = set()
    for task in Task.all():
        if "map" not in task.record:
            continue
        live.add(task.id)
        run = _RUNS.setdefault(task.id, MapRun(task))
        try:
            found.append(map_summary(run))
        except Exception as error:  # one unreadable run must not hide the others
            found.append({"id": task.id, "name": task.name, "status": "unknown", "error": str(error)})
    for gone in set(_RUNS) - live:
        del _RUNS[gone]
    return found


class MapsHandler(TpiHandler):
    @tornado.web.authenticated  # type: ignore[misc]
    async def get(self) -> None:
        self.reply({"maps": await self.blocking(list_maps)})
