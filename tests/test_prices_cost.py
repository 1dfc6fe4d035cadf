"""Cost so far: machine-seconds from the remote's reports x the catalogue's price, in every face.

The accounting is checked on a remote written in the layout the agents write (claims, heartbeats,
statuses, a preempted boot); the whole path on AWS (moto) with machines played by real agents."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout, state
from tpi_jupyter.commands import build_spec, status_text, task_json
from tpi_jupyter.prices import catalogue, estimate, usage
from tpi_jupyter.prices.usage import machine_seconds
from tpi_jupyter.ranks import claim_key
from tpi_jupyter.server.handlers import task_detail, task_summary
from tpi_jupyter.task import RankState, Snapshot, Task, launch
from tpi_jupyter.textview import text_report
from tpi_jupyter.widgets import TaskWidget

from .aws_moto import PlayedMachine, aws_env, group_instances, moto_endpoint  # noqa: F401 - fixtures
from .conftest import wait_for


def write(root: Path, key: str, text: str) -> None:
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_machine_seconds_count_every_boot_from_claim_to_its_end(tpi_home: Path, tmp_path: Path) -> None:
    root, now = tmp_path / "remote", time.time()
    t0 = now - 1000
    # rank 0: boot 0 preempted (last heartbeat t0+100), boot 1 ran t0+200..t0+300 and reported
    write(root, claim_key(0, 0), f"i-a\n{layout.timestamp(t0)}\n")
    write(root, layout.heartbeat(0, 0), layout.timestamp(t0 + 100))
    write(root, claim_key(0, 1), f"i-b\n{layout.timestamp(t0 + 200)}\n")
    write(root, layout.heartbeat(0, 1), layout.timestamp(t0 + 290))
    write(
        root,
        layout.status(0),
        json.dumps({"result": "success", "code": 0, "finished": layout.timestamp(t0 + 300)}),
    )
    # rank 1: running since t0+10, heartbeat fresh
    write(root, claim_key(1, 0), f"i-c\n{layout.timestamp(t0 + 10)}\n")
    write(root, layout.heartbeat(1, 0), layout.timestamp(now - 1))
    record: dict[str, Any] = {"id": "tpi-cost-aaaaaaaa-bbbbbbbb", "cloud": "aws", "remote": str(root),
                              "created": t0 - 60, "started": t0 - 50, "timing": {"heartbeat_interval": 10.0}}  # fmt: skip
    task = Task(record)
    ranks = [RankState(0, "succeeded", 2, 0, finished=t0 + 300), RankState(1, "running", 1)]
    snapshot = Snapshot("running", ranks)
    assert machine_seconds(task, snapshot, now) == pytest.approx(100 + 100 + (now - t0 - 10), abs=0.01)
    # between listings, the running boot runs on; a new boot is read at once
    assert machine_seconds(task, snapshot, now + 50) == pytest.approx(200 + (now + 50 - t0 - 10), abs=0.01)
    write(root, claim_key(1, 1), f"i-d\n{layout.timestamp(now + 5)}\n")
    write(root, layout.heartbeat(1, 1), layout.timestamp(now + 5))
    (root / layout.heartbeat(1, 0)).write_text(layout.timestamp(now))
    snapshot = Snapshot("running", [ranks[0], RankState(1, "running", 2)])
    assert machine_seconds(task, snapshot, now + 6) == pytest.approx(200 + (now - t0 - 10) + 1, abs=0.01)
    usage._CACHE.clear()


def test_a_task_without_claims_counts_from_its_machine_started_events(tpi_home: Path, tmp_path: Path) -> None:
    root, now = tmp_path / "remote", time.time()
    write(root, layout.heartbeat(0, 0), layout.timestamp(now - 100))  # dead for 100 s: stale
    record = {"id": "tpi-k-aaaaaaaa-cccccccc", "cloud": "k8s", "remote": str(root), "created": now - 500,
              "timing": {"heartbeat_interval": 2.0}}  # fmt: skip
    from tpi_jupyter.backends.base import GroupState

    group = GroupState(True, [], [{"time": now - 400, "kind": "machine-started", "rank": 0, "detail": ""}])
    snapshot = Snapshot("preempted", [RankState(0, "preempted", 1)], group)
    assert machine_seconds(Task(record), snapshot, now) == pytest.approx(300, abs=0.01)
    usage._CACHE.clear()


SCRIPT = """#!/bin/bash
sleep 3
echo done
"""


def test_aws_task_shows_price_warning_and_cost_so_far_in_every_face(
    aws_env: str,  # noqa: F811 - the fixture
    tpi_home: Path, workdir: Path, tmp_path: Path,
) -> None:  # fmt: skip
    offer = catalogue.load("aws").offer("us-west-1", "t3.medium")  # type: ignore[union-attr]
    assert offer is not None and offer.spot is not None
    bid = round(offer.spot / 2, 5)
    spec = build_spec(
        ["cloud=aws", "machine=cpu>=2,memory>=4", f"spot={bid}", "name=cost-aws", "timeout=600"], {}
    )
    assert spec.machine == "t3.medium"  # the cheapest spot type with 2 vCPUs and 4 GiB in us-west-1
    task = launch(spec, SCRIPT)
    assert isinstance(task, Task)
    try:
        assert estimate.spot_warning(spec) in task.record["warnings"]
        assert "price: " in task.summary() and "spot)" in task.summary()
        machines = [
            PlayedMachine(i, tmp_path / "machines") for i in group_instances(task.record["backend"]["group"])
        ]
        assert task.wait(timeout=90) == "succeeded"
        for machine in machines:
            assert machine.wait() == 0, machine.output()
        snapshot = task.read(fresh=True)
        seconds = machine_seconds(task, snapshot)
        assert 3 <= seconds <= task.elapsed(snapshot)  # the script's sleep, at most the whole task
        cost = task.cost_text(snapshot)
        assert cost.startswith(
            f"{estimate.money(offer.spot * seconds / 3600)} so far · {estimate.money(offer.spot)}/h"
        )
        assert f"at most {estimate.money(bid * 600 / 3600)}" in cost  # the bid caps what an hour costs
        assert f"cost: {cost}" in status_text(task)
        assert task_json(task, snapshot, detail=True)["cost"] == cost
        assert f"cost {cost}" in text_report(task, snapshot, [])
        assert task_summary(task, snapshot)["cost"] == cost == task_detail(task)["cost"]
        view = TaskWidget(task)
        wait_for(lambda: not view.poller.thread.is_alive(), timeout=30)  # type: ignore[union-attr]
        assert f"cost {cost}" in view.header_view.value
        view.close()
        assert task.backend.capabilities.prices
    finally:
        task.destroy()
    assert state.load(task.id) is None


@pytest.mark.parametrize("cloud", ["aws", "gcp", "az", "k8s"])
def test_every_cloud_backend_prices_machine_seconds_from_the_catalogue(cloud: str) -> None:
    from tpi_jupyter.backends.base import get_backend

    spec = build_spec([f"cloud={cloud}", "machine=m+t4", "parallelism=2", "timeout=7200"], {})
    backend = get_backend(cloud)
    text = backend.cost(spec, None, 5400)  # 1.5 machine-hours
    if cloud == "k8s":
        assert not backend.capabilities.prices and text == f"n/a ({catalogue.NO_CATALOGUE['k8s']})"
        return
    offer = catalogue.load(cloud).offer(spec.native_region, spec.native_machine)  # type: ignore[union-attr]
    assert offer is not None and backend.capabilities.prices
    assert text == (f"{estimate.money(offer.on_demand * 1.5)} so far · {estimate.money(offer.on_demand * 2)}/h "
                    f"(2 x {estimate.money(offer.on_demand)}) · at most {estimate.money(offer.on_demand * 4)}")  # fmt: skip
