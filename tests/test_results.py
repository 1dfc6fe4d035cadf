"""Results through the real local backend: what is uploaded, what a final push skips, what
`pull` and `destroy` bring back (issue 11, items 2, 4, 5, 6, 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpi_jupyter import layout, state
from tpi_jupyter.commands import build_spec, run_task
from tpi_jupyter.sync import Progress
from tpi_jupyter.task import Plan, Task, TaskError, launch

LONG_NAME = "é" * 126 + "xyz"  # 255 bytes in UTF-8: the longest name a local filesystem holds


def start(words: list[str], script: str, **kwargs: object) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script, **kwargs)  # type: ignore[arg-type]
    assert isinstance(task, Task)
    return task


def plan(words: list[str]) -> Plan:
    result = launch(build_spec(words, {"cloud": "local"}), "echo hi", dry_run=True)
    assert isinstance(result, Plan)
    return result


def remote_data(task: Task) -> Path:
    return Path(task.record["remote"]) / layout.DATA


def uploaded(task: Task) -> set[str]:
    root = remote_data(task)
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def tpi_cli(*words: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", *words], capture_output=True, text=True,
                          timeout=120, cwd=cwd, input="echo hi\n")  # fmt: skip


# ---------------------------------------------------------------- 2: the registry is never uploaded


@pytest.fixture
def home_in_workdir(tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notebook in $HOME with workdir=.: the registry lies inside the workdir."""
    home = workdir / ".local" / "share" / "tpi-jupyter"
    monkeypatch.setenv("TPI_JUPYTER_HOME", str(home))
    return home


def test_registry_inside_the_workdir_is_never_uploaded(home_in_workdir: Path, workdir: Path) -> None:
    (workdir / "train.py").write_text("print('train')\n")
    first = start(["name=first", "environment=TOKEN=s3cr3t-value"], "#!/bin/bash\nsleep 30\n")
    env_file = Path(first.record["remote"]) / layout.ENV
    assert env_file.is_file() and home_in_workdir in env_file.parents  # another task's secrets
    (workdir / "to-env").symlink_to(env_file)  # a symlink into the registry is not a way in
    (workdir / "container").mkdir()
    dry = plan(["name=second", "workdir=."])
    assert [relpath for relpath, _ in dry.uploads] == ["train.py"]
    second = start(["name=second", "workdir=.", "container=container"], "#!/bin/bash\ntrue\n")
    assert uploaded(second) == {"train.py"}  # not the registry, nor the local container itself
    assert all(
        b"s3cr3t" not in path.read_bytes() for path in remote_data(second).rglob("*") if path.is_file()
    )
    second.destroy()
    first.destroy()


# ---------------------------------------------------------------- 4: files that cannot be synced


def test_unsyncable_files_are_skipped_alike_in_dry_run_and_launch(tpi_home: Path, workdir: Path) -> None:
    """As root nothing is unreadable by mode: a FIFO, a self-referencing symlink and a file
    removed between the scan and its upload (an editor's autosave) really fail to read."""
    (workdir / "keep.txt").write_text("keep")
    (workdir / "autosave.txt").write_text("about to go")
    os.mkfifo(workdir / "pipe")
    (workdir / "loop").symlink_to("loop")
    expected = ["skipped pipe: a FIFO", "skipped symlink loop: a loop or a missing target"]
    dry = plan(["name=odd", "workdir=."])
    assert sorted(line.strip() for line in dry.lines if line.strip().startswith("!")) == [
        f"! {warning}" for warning in expected
    ]

    def autosave(progress: Progress) -> None:
        if progress.files_done == 0:  # scanned, nothing sent yet: the editor replaces its file
            (workdir / "autosave.txt").unlink(missing_ok=True)

    task = start(["name=odd", "workdir=."], "#!/bin/bash\nls\n", progress=autosave)
    assert uploaded(task) == {"keep.txt"}
    warnings = [event["detail"] for event in task.record["events"] if event["kind"] == "upload-warning"]
    assert sorted(warnings) == sorted([*expected, "skipped autosave.txt: removed while uploading"])
    assert task.wait(timeout=60) == "succeeded"
    task.destroy()


FINAL_PUSH_SCRIPT = f"""#!/bin/bash
mkdir -p results
echo done > results/done.txt
echo long > "results/{LONG_NAME}"
mkfifo results/pipe
ln -s self results/self
"""


def test_final_push_skips_what_it_cannot_sync_and_the_task_succeeds(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=push", "workdir=.", "output=results"], FINAL_PUSH_SCRIPT)
    assert task.wait(timeout=60) == "succeeded"
    log = task.logs()[0]
    assert "[tpi] skipped results/pipe: a FIFO" in log
    assert "[tpi] skipped symlink results/self: a loop or a missing target" in log
    fetched = task.destroy()
    assert sorted(fetched) == sorted(["results/done.txt", f"results/{LONG_NAME}"])  # item 6 too
    assert (workdir / "results" / LONG_NAME).read_text() == "long\n"


# ---------------------------------------------------------------- 5: output, pull and destroy


def test_output_naming_a_file_is_pulled(tpi_home: Path, workdir: Path) -> None:
    task = start(["name=single", "workdir=.", "output=metrics.json"],
                 "#!/bin/bash\necho '{\"loss\": 0.1}' > metrics.json\necho other > other.txt\n")  # fmt: skip
    assert task.wait(timeout=60) == "succeeded"
    assert task.pull() == ["metrics.json"]
    assert json.loads((workdir / "metrics.json").read_text()) == {"loss": 0.1}
    assert not (workdir / "other.txt").exists()
    result = tpi_cli("destroy", "single", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "pulled 0 file(s), 0 B (1 already here)" in result.stdout


def test_pull_of_missing_output_is_an_error_and_destroy_says_nothing_arrived(
    tpi_home: Path, workdir: Path
) -> None:
    task = start(["name=nothing", "workdir=.", "output=results"], "#!/bin/bash\necho no results\n")
    assert task.wait(timeout=60) == "succeeded"
    result = tpi_cli("pull", "nothing", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tpi: error: pull of task nothing: output 'results' is not on the remote (yet); nothing pulled"
    ]
    result = tpi_cli("destroy", "nothing", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "pulled nothing: output results was not on the remote" in result.stdout


def test_a_failed_download_keeps_the_remote_and_names_the_file(tpi_home: Path, workdir: Path) -> None:
    script = "#!/bin/bash\nmkdir -p results\necho a > results/a.txt\necho model > results/model.bin\n"
    task = start(["name=blocked", "workdir=.", "output=results"], script)
    assert task.wait(timeout=60) == "succeeded"
    (workdir / "results" / "model.bin").mkdir(parents=True)  # the user's directory is in the way
    with pytest.raises(TaskError) as caught:
        task.destroy()
    message = str(caught.value)
    assert "\n" not in message and "results/model.bin" in message and "nothing was deleted" in message
    assert (workdir / "results" / "a.txt").read_text() == "a\n"  # what could arrive, arrived
    assert state.load(task.id) is not None and (remote_data(task) / "results/model.bin").is_file()
    result = tpi_cli("pull", "blocked", cwd=workdir)
    assert result.returncode == 2 and "results/model.bin" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (workdir / "results" / "model.bin").rmdir()
    assert Task.find("blocked").destroy() == ["results/model.bin"]
    assert (workdir / "results" / "model.bin").read_text() == "model\n"


# ---------------------------------------------------------------- 19: the dry run lists the upload


def test_dry_run_lists_files_with_sizes_cut_at_fifty(tpi_home: Path, workdir: Path) -> None:
    for index in range(60):
        (workdir / f"f{index:02d}.txt").write_text("x" * index)
    printed: list[str] = []
    run_task(["name=many", "workdir=."], "echo hi", defaults={"cloud": "local"}, wait=False, dry_run=True,
             out=printed.append)  # fmt: skip
    lines = printed[0].splitlines()
    listed = [line.split() for line in lines if line.startswith("      f")]
    assert [words[0] for words in listed] == [f"f{index:02d}.txt" for index in range(50)]
    assert listed[7][1:] == ["7", "B"]
    assert lines[-1].strip() == "... and 10 more files (--dry-run --files lists all)"
    result = tpi_cli("run", "name=many", "workdir=.", "--script", "-", "--dry-run", "--files", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("      f") for line in result.stdout.splitlines()) == 60
    assert "more files" not in result.stdout
    assert not (tpi_home / "tasks").exists() or not list((tpi_home / "tasks").glob("*.json"))
