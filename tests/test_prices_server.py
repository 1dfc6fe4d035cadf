"""The sidebar's cost field through the real REST API (pytest-jupyter's server, no browser)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter.commands import build_spec
from tpi_jupyter.prices import estimate
from tpi_jupyter.task import Task, launch

from .conftest import wait_for

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"tpi_jupyter.server": True}}}


async def test_task_list_and_detail_carry_the_cost_so_far(
    jp_fetch: Any, tpi_home: Path, workdir: Path
) -> None:
    task = launch(build_spec(["name=priced", "parallelism=2"], {"cloud": "local"}), "echo hi")
    assert isinstance(task, Task)
    wait_for(lambda: task.status == "succeeded", timeout=60)
    (listed,) = json.loads((await jp_fetch("tpi", "tasks")).body)["tasks"]
    detail = json.loads((await jp_fetch("tpi", "tasks", task.id)).body)
    assert listed["cost"] == detail["cost"] == task.cost_text(task.read()) == "$0.00 (local)"
    task.destroy()


def test_cost_text_names_the_rate_per_machine_for_several() -> None:
    spec = build_spec(["cloud=az", "machine=m", "parallelism=3", "timeout=3600"], {})
    found = estimate.estimate(spec)
    assert found.rate is not None
    text = estimate.cost_text(spec, 3 * 1800)
    assert text == (f"{estimate.money(found.rate * 1.5)} so far · {estimate.money(found.rate * 3)}/h "
                    f"(3 x {estimate.money(found.rate)}) · at most {estimate.money(found.rate * 3)}")  # fmt: skip
