"""What forgotten tasks left in the namespace: objects labelled `tpi-task`, grouped by task.

The Secret's annotation names the task's remote, so deleting an orphan removes its remote prefix
too. `region` is the namespace to look in (the context's by default).
"""

from __future__ import annotations

from typing import Any

from ..kit.sweep import Orphan
from ..kit.tags import CREATOR, TASK
from . import mpijob
from .job import Api
from .manifests import ID_ANNOTATION, REMOTE_ANNOTATION


def orphans(api: Api) -> list[Orphan]:
    found: dict[str, Orphan] = {}
    listings: list[tuple[str, Any]] = [
        ("job", api.batch.list_namespaced_job), ("secret", api.core.list_namespaced_secret),
        ("pod", api.core.list_namespaced_pod), ("claim", api.core.list_namespaced_persistent_volume_claim),
        ("service", api.core.list_namespaced_service), ("mpijob", mpijob.lister(api)),
    ]  # fmt: skip
    for kind, lister in listings:
        for item in lister(api.namespace, label_selector=TASK).items:
            meta = item.metadata
            notes, labels = meta.annotations or {}, meta.labels or {}
            task_id = notes.get(ID_ANNOTATION) or labels[TASK]
            orphan = found.setdefault(task_id, Orphan(
                task_id, api.namespace, labels.get(CREATOR, ""),
                handle={"namespace": api.namespace, "label": labels[TASK], "name": "", "remote": ""}))  # fmt: skip
            orphan.resources.setdefault(kind, meta.name)
            if kind in ("job", "secret", "claim", "service", "mpijob"):
                orphan.handle["name"] = meta.name
            if notes.get(REMOTE_ANNOTATION):
                orphan.handle["remote"] = notes[REMOTE_ANNOTATION]
    return list(found.values())
