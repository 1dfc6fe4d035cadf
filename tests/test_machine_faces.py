"""Machines in every face: `tpi list`, the notebook table, the server's /tpi/machines (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import cli
from tpi_jupyter.machines import lifecycle, local, registry
from tpi_jupyter.machines.widget import MachinePanel

from .conftest import wait_for
from .machine_words import destroy_all

pytest_plugins = ["pytest_jupyter.jupyter_server"]
pytestmark = pytest.mark.skipif(
    not Path(local.SSHD).exists(), reason="needs openssh-server (scripts/install-tools)"
)


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"tpi_jupyter.server": True}}}


@pytest.fixture
def box(tpi_home: Path):
    assert cli.main(["machine", "create", "facebox", "tags=owner=me"]) == 0
    yield registry.records()[0]
    destroy_all()  # whatever a failed test left running


def test_tpi_list_shows_machines_after_tasks(box: dict[str, Any], capsys) -> None:
    capsys.readouterr()
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no tasks") and "\nmachines:\n" in out
    line = next(line for line in out.splitlines() if line.startswith("facebox"))
    assert line.split()[:5] == ["facebox", "machine", "local", "m", "running"] and "$0.00 (local)" in line
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # the task list's JSON is unchanged


def test_notebook_table_shows_status_and_cost(box: dict[str, Any]) -> None:
    panel = MachinePanel(interval=0.1)
    try:
        assert "<td>facebox</td>" in panel.table.value and "<td>running</td>" in panel.table.value
        assert "<td>$0.00 (local)</td>" in panel.table.value
        lifecycle.stop(lifecycle.find("facebox"))
        wait_for(lambda: "<td>stopped</td>" in panel.table.value, timeout=10)
    finally:
        panel.close()
    runners = MachinePanel("runner")
    try:
        assert "no runners" in runners.table.value
    finally:
        runners.close()


async def test_server_lists_machines_for_the_sidebar(box: dict[str, Any], jp_fetch: Any) -> None:
    response = await jp_fetch("tpi", "machines")
    (row,) = json.loads(response.body)["machines"]
    assert row["name"] == "facebox" and row["status"] == "running" and row["cost"] == "$0.00 (local)"
    assert row["id"] == box["id"] and "state" not in row  # no key path, no port: what the sidebar shows
