"""The backend contract and the machine kit: capabilities, typed state, entry points, the step
runner, the agent's lock, the poll cadence. Local tasks are real processes."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import agent, agent_wheel, layout, state
from tpi_jupyter.backends.base import available, get_backend, machine_hooks
from tpi_jupyter.backends.kit.steps import StepError, Steps
from tpi_jupyter.backends.local import LocalBackend, LocalState
from tpi_jupyter.commands import build_spec
from tpi_jupyter.server.handlers import task_detail
from tpi_jupyter.spec import SpecError, TaskSpec
from tpi_jupyter.task import Task, TaskError, launch, sweep
from tpi_jupyter.textview import cost_text

from .conftest import wait_for

# ---------------------------------------------------------------- what backends declare


def test_backends_and_hooks_are_found_by_entry_point() -> None:
    assert get_backend("local").capabilities.ranks == "index"
    aws = get_backend("aws").capabilities
    assert (aws.ranks, aws.sweep, aws.preemption) == ("claims", True, True) and 2 <= aws.poll_interval <= 5
    hooks = machine_hooks("aws")
    assert hooks.__name__ == "tpi_jupyter.backends.aws.machine" and callable(hooks.release)
    # Every installed backend is listed (more clouds join by entry point alone).
    installed = ", ".join(sorted(available()))
    assert {"aws", "local"} <= set(available())
    with pytest.raises(SpecError, match=rf"^cloud: 'nowhere' has no backend .*accepted: {installed}"):
        get_backend("nowhere")
    with pytest.raises(
        SystemExit, match=r"tpi-agent: release: 'nowhere' has no machine hooks; accepted: aws\b"
    ):
        agent.machine_id("nowhere")


def test_sweep_is_refused_where_the_backend_declares_nothing_to_sweep(tpi_home: Path) -> None:
    with pytest.raises(TaskError, match=r"^sweep: cloud local leaves nothing to sweep; accepted: "):
        sweep("local", delete=False)


def test_public_spec_round_trips_without_environment_values() -> None:
    spec = build_spec(["name=x", "environment=TOKEN=secret", "exclude=*.tmp", "tags=team=ml"], {})
    back = TaskSpec.from_public(json.loads(json.dumps(spec.public_dict())))
    assert back == replace(spec, environment={"TOKEN": ""})
    assert back.native_machine == spec.native_machine and back.id == spec.id


# ---------------------------------------------------------------- the step runner


@dataclass
class Made:
    things: list[str]


def test_steps_record_what_was_made_before_an_error_propagates() -> None:
    made = Made([])
    saved: list[list[str]] = []
    steps = Steps("cloudy", checkpoint=lambda: saved.append(list(made.things)))

    def half_made() -> None:
        made.things.append("volume")  # recorded, then the cloud refuses the rest
        raise ValueError("quota exceeded\nfor volumes")

    steps.run("bucket", lambda: made.things.append("bucket"))
    with pytest.raises(StepError) as raised:
        steps.together({"network": lambda: made.things.append("network"), "volume": half_made})
    assert str(raised.value) == "cloudy: creating the volume failed (ValueError: quota exceeded for volumes)"
    # Every step of the group finished before the error surfaced, and the state was saved after.
    assert saved[0] == ["bucket"] and sorted(saved[1]) == ["bucket", "network", "volume"] and len(saved) == 2
    assert steps.done == ["bucket", "network"]


def test_concurrent_steps_run_at_once() -> None:
    barrier = threading.Barrier(3, timeout=30)  # deadlocks (BrokenBarrierError) if run one by one
    steps = Steps("cloudy")
    steps.together({name: barrier.wait for name in ("a", "b", "c")})
    assert sorted(steps.done) == ["a", "b", "c"]


def test_spec_errors_pass_through_steps_unchanged() -> None:
    def refuse() -> None:
        raise SpecError("region: nowhere; accepted: somewhere")

    with pytest.raises(SpecError, match=r"^region: nowhere; accepted: somewhere$"):
        Steps("cloudy").run("check", refuse)


# ---------------------------------------------------------------- the agent's lock


def test_the_lock_pins_exact_installed_versions_transitively() -> None:
    lock = dict(line.split("==") for line in agent_wheel.lock_text("aws").splitlines())
    assert lock["boto3"] == metadata.version("boto3")
    assert lock["botocore"] == metadata.version("botocore")  # boto3's dependency
    assert lock["jmespath"] == metadata.version("jmespath")  # botocore's dependency
    assert lock["fsspec"] == metadata.version("fsspec")  # the agent's own
    assert not {"tpi-jupyter", "ipython", "ipywidgets", "jupyter-server"} & set(lock)
    assert "boto3" not in dict(line.split("==") for line in agent_wheel.lock_text("").splitlines())


def test_the_wheel_carries_entry_points_for_machine_hooks(tmp_path: Path) -> None:
    import zipfile

    name, data = agent_wheel.build()
    (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / name) as archive:
        entry_points = archive.read(next(n for n in archive.namelist() if n.endswith("/entry_points.txt")))
    assert b"[tpi_jupyter.machines]" in entry_points and b"tpi_jupyter.backends.aws.machine" in entry_points


# ---------------------------------------------------------------- typed state and the poll cadence


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script)
    assert isinstance(task, Task)
    return task


def test_local_state_is_persisted_typed_and_rebuilt(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=typed"], "#!/bin/bash\ntrue\n")
    stored = state.load(task.id)
    assert stored is not None and stored["backend"] == {"base": str(tpi_home / "local" / task.id)}
    rebuilt = Task.find("typed")
    assert rebuilt.backend_state == LocalState(base=str(tpi_home / "local" / task.id))
    assert rebuilt.task_spec.name == "typed"
    assert task.wait(timeout=60) == "succeeded"
    assert cost_text(task, task.read()) == "$0.00 (local)"
    task.destroy()


class CountingBackend(LocalBackend):
    capabilities = replace(LocalBackend.capabilities, poll_interval=3600.0)
    reads = 0

    def read(self, spec: TaskSpec, state: LocalState) -> Any:
        CountingBackend.reads += 1
        return super().read(spec, state)


def test_reads_of_the_cloud_follow_the_declared_poll_interval(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=cadence"], "#!/bin/bash\nsleep 30\n")
    wait_for(lambda: task.read().status == "running", timeout=60)
    slow = Task(task.record, CountingBackend())
    CountingBackend.reads = 0
    first = slow.read(fresh=True)
    assert slow.read() is first and slow.status == "running" and CountingBackend.reads == 1
    # Every Task object of the task in this process (kernel, widgets, REST handlers) shares the read.
    other = Task(dict(task.record), CountingBackend())
    assert other.read() is first and CountingBackend.reads == 1
    detail = task_detail(other)  # the sidebar learns the cadence it must follow
    assert detail["poll_interval"] == 3600.0 and CountingBackend.reads == 1
    slow.stop()  # an action invalidates the shared read: the stop shows at once
    assert other.read().status == "failed" and CountingBackend.reads == 2
    assert task_detail(task)["poll_interval"] == 0.0  # local: read every time
    task.destroy()


def test_reports_are_parsed_by_one_parser() -> None:
    assert layout.parse_report("reports/2/status.json") == layout.ReportKey(2, None, "status.json")
    chunk = layout.parse_report("reports/0/3/log.000017")
    assert chunk is not None and chunk.is_log and chunk.chunk == 17 and chunk.log_key == "reports/0/3/log"
    assert layout.parse_report("reports/0/3/log") == layout.ReportKey(0, 3, "log")
    assert (
        layout.parse_report("reports/x/3/log") is None and layout.parse_report("data/reports/0/0/log") is None
    )
    assert layout.log_chunk(layout.log(1, 2), 5) == "reports/1/2/log.000005"
