"""REST handlers under /tpi/: thin over task.py, with the registry as the source.

GET  /tpi/tasks                       every task: name, cloud, machine, status, elapsed
GET  /tpi/tasks/<task>                one task: the above plus ranks and events
GET  /tpi/tasks/<task>/logs?cursor=C  new log lines since cursor C (opaque; "" = from the start)
GET  /tpi/tasks/<task>/files          files of `output`: the workdir's once pulled, else the remote's
POST /tpi/tasks/<task>/stop | pull | destroy
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from .. import layout
from ..spec import SpecError, check_name
from ..task import FINAL, LogTail, Snapshot, Task, TaskError
from ..textview import cost_text

T = TypeVar("T")
TASK = r"(?P<task_id>[^/]+)"


def task_summary(task: Task, snapshot: Snapshot) -> dict[str, Any]:
    spec = task.spec
    return {
        "id": task.id, "name": task.name, "cloud": spec["cloud"], "machine": spec["machine"],
        "parallelism": spec["parallelism"], "spot": spec["spot"], "status": snapshot.status,
        "created": task.record["created"], "elapsed": task.elapsed(snapshot),
        "workdir": task.record.get("workdir", ""), "output": spec.get("output", ""),
        "cost": cost_text(task, snapshot),  # machine-seconds run x the catalogue's price (issue 17)
    }  # fmt: skip


def task_detail(task: Task) -> dict[str, Any]:
    snapshot = task.read()
    detail = task_summary(task, snapshot)
    detail["ranks"] = [
        {"rank": r.rank, "state": r.state, "boots": r.boots, "code": r.code, "reason": r.reason}
        for r in snapshot.ranks
    ]
    detail["events"] = task.events(snapshot)
    detail["poll_interval"] = task.poll_interval  # the sidebar polls no faster than the cloud allows
    return detail


def list_tasks() -> list[dict[str, Any]]:
    summaries = []
    for item in Task.all_safe():
        task = item.task
        if item.snapshot is not None:
            summaries.append(task_summary(task, item.snapshot))
        else:  # one unreadable task must not hide the others
            summaries.append({"id": task.id, "name": task.name, "status": "unknown", "error": str(item.error),
                              "cloud": task.record.get("cloud", ""), "machine": "", "parallelism": 0,
                              "created": task.record.get("created", 0), "elapsed": 0})  # fmt: skip
    return summaries


def encode_cursor(offsets: dict[str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(offsets, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, int]:
    if not cursor:
        return {}
    try:
        offsets = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return {str(key): int(value) for key, value in offsets.items()}
    except (ValueError, AttributeError, TypeError):
        raise tornado.web.HTTPError(400, reason="cursor: not one this server gave out") from None


def read_logs(task: Task, cursor: str) -> dict[str, Any]:
    snapshot = task.read()
    tail = LogTail(task, decode_cursor(cursor))
    lines = tail.poll(snapshot.log_sizes) if snapshot.status != "destroyed" else []
    return {
        "lines": [{"rank": rank, "time": stamp, "text": text} for rank, stamp, text in lines],
        "cursor": encode_cursor(tail.offsets),
        "status": snapshot.status,
        "final": snapshot.status in FINAL,
    }


def output_files(task: Task, root_dir: str) -> dict[str, Any]:
    """Files of `output`: local ones once pulled (they open in JupyterLab), else the remote's."""
    workdir, output = task.record.get("workdir") or "", task.spec.get("output") or ""
    if not workdir or not output:
        return {"source": "none", "files": []}
    local_base = Path(workdir) / output
    pulled = any(event["kind"] == "pulled" for event in task.record.get("events", []))
    files: list[dict[str, Any]] = []
    if pulled and local_base.is_dir():
        source = "workdir"
        for path in sorted(local_base.rglob("*")):
            if path.is_file() and ".ipynb_checkpoints" not in path.parts:  # JupyterLab's, not results
                files.append({"path": path.relative_to(workdir).as_posix(), "size": path.stat().st_size})
    else:
        source = "remote"
        fs, remote_root = task.remote
        base = layout.join(remote_root, layout.data(output))
        if task.read().status != "destroyed" and fs.exists(base):
            for key, info in sorted(fs.find(base, detail=True).items()):
                relative = key[len(layout.join(remote_root, layout.DATA)) :].lstrip("/")
                files.append({"path": relative, "size": int(info.get("size") or 0)})
    root = os.path.realpath(root_dir)
    for entry in files:
        local = os.path.realpath(os.path.join(workdir, entry["path"]))
        entry["local"] = os.path.exists(local)
        # where JupyterLab can open it (relative to the server root), if it lies below it
        entry["open_path"] = os.path.relpath(local, root) if local.startswith(root + os.sep) else None
    return {"source": source, "files": files}


class TpiHandler(APIHandler):  # type: ignore[misc]
    async def blocking(self, function: Callable[..., T], *args: Any) -> T:
        """Run registry and cloud calls off the server's event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, function, *args)

    async def find(self, task_id: str) -> Task:
        try:
            check_name(task_id, key="task")  # a name is never a path: ../x, NUL, > 255 bytes
        except SpecError as error:
            raise tornado.web.HTTPError(400, reason=str(error)) from None
        try:
            return await self.blocking(Task.find, task_id)
        except TaskError as error:
            raise tornado.web.HTTPError(404, reason=str(error)) from None

    def reply(self, payload: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))


class TasksHandler(TpiHandler):
    @tornado.web.authenticated  # type: ignore[misc]
    async def get(self) -> None:
        self.reply({"tasks": await self.blocking(list_tasks)})


class TaskHandler(TpiHandler):
    @tornado.web.authenticated  # type: ignore[misc]
    async def get(self, task_id: str) -> None:
        task = await self.find(task_id)
        self.reply(await self.blocking(task_detail, task))


class LogsHandler(TpiHandler):
    @tornado.web.authenticated  # type: ignore[misc]
    async def get(self, task_id: str) -> None:
        task = await self.find(task_id)
        self.reply(await self.blocking(read_logs, task, self.get_argument("cursor", "")))


class FilesHandler(TpiHandler):
    @tornado.web.authenticated  # type: ignore[misc]
    async def get(self, task_id: str) -> None:
        task = await self.find(task_id)
        root = self.settings.get("server_root_dir") or os.getcwd()
        self.reply(await self.blocking(output_files, task, os.path.expanduser(root)))


ACTIONS: dict[str, Callable[[Task], Any]] = {
    "stop": lambda task: task.stop(),
    "pull": lambda task: {"files": task.pull()},
    "destroy": lambda task: {"files": task.destroy()},
}


class ActionHandler(TpiHandler):
    @tornado.web.authenticated  # type: ignore[misc]
    async def post(self, task_id: str, action: str) -> None:
        task = await self.find(task_id)
        try:
            result = await self.blocking(ACTIONS[action], task)
        except TaskError as error:
            raise tornado.web.HTTPError(409, reason=str(error)) from None
        self.reply({"ok": True, "action": action, "status": "destroyed" if action == "destroy" else
                    await self.blocking(lambda: task.status), **(result or {})})  # fmt: skip


def setup_handlers(web_app: Any) -> None:
    base = url_path_join(web_app.settings["base_url"], "tpi")
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base, "tasks"), TasksHandler),
            (url_path_join(base, "tasks", TASK), TaskHandler),
            (url_path_join(base, "tasks", TASK, "logs"), LogsHandler),
            (url_path_join(base, "tasks", TASK, "files"), FilesHandler),
            (url_path_join(base, "tasks", TASK, r"(?P<action>stop|pull|destroy)"), ActionHandler),
        ],
    )
