"""The faces of map runs: rms-cloud-tasks' own example through `tpi map`, `%tpi map` / attach /
preempt in a real IPython shell, the widget, and GET /tpi/maps on a real jupyter_server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter.fanout.run import MapRun, map_tasks
from tpi_jupyter.fanout.view import MapWidget

from . import rms_cloud_tasks
from .conftest import created_nothing, wait_for

pytest_plugins = ["pytest_jupyter.jupyter_server"]
EXAMPLE_TASKS = 300  # of the example's 10,000: the same entries, fewer of them


def test_the_rms_cloud_tasks_example_worker_runs_unchanged(tpi_home: Path, workdir: Path) -> None:
    example = rms_cloud_tasks.example(workdir)
    worker = example / "worker_addition.py"
    assert "from cloud_tasks.worker import Worker, WorkerData" in worker.read_text()  # the released file
    entries = json.loads((example / "addition_tasks.json").read_text())[:EXAMPLE_TASKS]
    (workdir / "tasks.json").write_text(json.dumps(entries))
    (workdir / "results").mkdir()
    site = rms_cloud_tasks.site_packages()  # cloud_tasks and filecache, which the example imports
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home)}
    cli = [sys.executable, "-m", "tpi_jupyter.cli", "map", "tasks.json", "--worker", "worker_addition:process_task",
           "workdir=.", "output=results", f"environment=PYTHONPATH={site}", "environment=ADDITION_OUTPUT_DIR=results",
           "name=addition", "--workers", "2", "--results", "out.jsonl"]  # fmt: skip
    done = subprocess.run(cli, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{EXAMPLE_TASKS}/{EXAMPLE_TASKS} finished: {EXAMPLE_TASKS} done, 0 failed" in done.stdout
    rows = [json.loads(line) for line in (workdir / "out.jsonl").read_text().splitlines()]
    assert [row["task_id"] for row in rows] == [entry["task_id"] for entry in entries]
    assert {row["result"] for row in rows} == {f"results/{entry['task_id']}.txt" for entry in entries}
    for path in (workdir / "results").iterdir():  # the example's files came back with the run
        path.unlink()
    destroyed = subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", "destroy", "addition"], cwd=workdir,
                               env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert destroyed.returncode == 0, destroyed.stderr
    for entry in entries[:20]:
        text = (workdir / "results" / f"{entry['task_id']}.txt").read_text()
        data = entry["data"]
        assert f"{data['num1']} + {data['num2']} = {data['num1'] + data['num2']}" in text
    assert created_nothing(tpi_home)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["map", "tasks.json"], "--worker: missing"),
        (["map", "nope.json", "--worker", "jobs"], "tasks: cannot read nope.json"),
        (["map", "tasks.json", "--worker", "jobs", "--workers", "two"], "'two' is not a count"),
        (["map", "tasks.json", "--worker", "jobs", "colour=red"], "unknown argument 'colour'"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tpi_home: Path, workdir: Path, words: list[str], message: str
) -> None:
    (workdir / "tasks.json").write_text(json.dumps([{"task_id": "a", "data": 1}]))
    (workdir / "jobs.py").write_text(
        "def process_task(task_id, data, worker_data):\n    return False, data\n"
    )
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home)}
    done = subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", *words], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert created_nothing(tpi_home)


@pytest.fixture
def shell(tpi_home: Path, workdir: Path):  # type: ignore[no-untyped-def]
    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "tpi_jupyter")
    return ip


def test_magic_map_attach_and_widget(shell: Any, tpi_home: Path, workdir: Path) -> None:
    (workdir / "tasks.yaml").write_text("".join(f"- task_id: t{i}\n  data: {i}\n" for i in range(30)))
    (workdir / "jobs.py").write_text(
        "def process_task(task_id, data, worker_data):\n"
        "    if data == 7:\n        raise RuntimeError('seven is bad')\n    return False, data * 2\n"
    )
    run = shell.run_line_magic(
        "tpi", "map tasks.yaml --worker jobs:process_task workdir=. name=magic --workers 2"
    )
    assert isinstance(run, MapRun) and run.total == 30
    attached = shell.run_line_magic("tpi", "attach magic")
    assert isinstance(attached, MapRun) and attached.task.id == run.task.id
    rows = {row["task_id"]: row for row in attached.results(timeout=60)}
    assert rows["t3"]["result"] == 6 and rows["t7"]["status"] == "failed"
    widget = MapWidget(attached)
    try:
        assert widget.refresh() is True
        assert "30/30 finished: 29 done, 1 failed" in widget.counts.value
        assert 'title="done: 29"' in widget.bar.value and 'title="failed: 1"' in widget.bar.value
        assert "seven is bad" in widget.errors.value and "t7" in widget.errors.value
    finally:
        widget.close()
    with pytest.raises(UsageError, match="--worker: missing"):
        shell.run_line_magic("tpi", "map tasks.yaml")
    run.task.destroy()


@pytest.fixture
def jp_server_config(jp_server_config: dict[str, Any]) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"tpi_jupyter.server": True}}}


async def test_the_server_lists_map_runs_with_their_counts(
    jp_fetch: Any, tpi_home: Path, workdir: Path
) -> None:
    run = map_tasks(lambda x: 1 / x, range(10), name="served", workers=2)
    run.results(timeout=60)
    response = await jp_fetch("tpi", "maps")
    (listed,) = json.loads(response.body)["maps"]
    assert (listed["name"], listed["total"], listed["done"], listed["failed"]) == ("served", 10, 9, 1)
    assert listed["errors"][0]["task"] == "0" and "ZeroDivisionError" in listed["errors"][0]["error"]
    wait_for(lambda: run.status() == "succeeded", 30)
    run.task.destroy()
    assert json.loads((await jp_fetch("tpi", "maps")).body)["maps"] == []


def test_the_example_notebook_runs_and_leaves_nothing(tpi_home: Path, tmp_path: Path) -> None:
    import shutil

    import nbformat

    from .test_notebooks import EXAMPLES, cell_text, errors, execute, registry_files

    shutil.copy(EXAMPLES / "fanout.ipynb", tmp_path / "fanout.ipynb")
    committed = nbformat.read(EXAMPLES / "fanout.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in committed.cells if cell.cell_type == "code")
    notebook = execute(tmp_path / "fanout.ipynb", tpi_home)
    assert errors(notebook) == [], "\n\n".join(errors(notebook))
    printed = cell_text(notebook.cells[5])
    assert "99 done, 1 failed; best: {'a': 8, 'b': 9, 'score': 55}" in printed
    assert "ValueError: 9 x 9 is off limits" in printed
    assert "50/50 finished: 50 done, 0 failed" in cell_text(notebook.cells[10])
    assert registry_files(tpi_home) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p != tpi_home) == ["fanout.ipynb"]
