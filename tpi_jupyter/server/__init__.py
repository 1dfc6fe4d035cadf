"""jupyter_server extension: REST under /tpi/ for the JupyterLab sidebar (thin over task.py)."""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "tpi_jupyter.server"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from .handlers import setup_handlers

    setup_handlers(server_app.web_app)
    server_app.log.info("tpi_jupyter: REST handlers under /tpi/")
