"""REST for the sidebar: GET /tpi/machines, every machine and runner with status and cost so far."""

from __future__ import annotations

import asyncio
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler

from .verbs import rows_of


class MachinesHandler(APIHandler):  # type: ignore[misc]
    @tornado.web.authenticated  # type: ignore[misc]
    async def get(self) -> None:
        rows = await asyncio.get_running_loop().run_in_executor(None, rows_of, None)
        self.finish({"machines": rows})


def routes(base: str) -> list[tuple[str, Any]]:
    from jupyter_server.utils import url_path_join

    return [(url_path_join(base, "machines"), MachinesHandler)]
