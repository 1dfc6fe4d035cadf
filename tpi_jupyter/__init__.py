"""tpi-jupyter: run a notebook's heavy work on cloud machines with one `%%tpi` cell."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`from tpi_jupyter import map_tasks`: imported on first use, not with the extension."""
    if name == "map_tasks":
        from .fanout.run import map_tasks

        return map_tasks
    raise AttributeError(f"module 'tpi_jupyter' has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext tpi_jupyter`: register `%%tpi` and `%tpi` (imports stay lazy until then)."""
    from .magics import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unregister

    unregister(ipython)
