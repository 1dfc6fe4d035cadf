"""The `tpi` command: progress bar, --version, --json, help, exit codes, pipes and Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tpi_jupyter import __version__, cli, state
from tpi_jupyter.spec import ARGUMENT_TABLE
from tpi_jupyter.sync import Progress
from tpi_jupyter.task import Task

from .conftest import created_nothing, wait_for

TPI = [sys.executable, "-m", "tpi_jupyter.cli"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """Stands in for time.monotonic: the test moves it by hand, so nothing depends on timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def frames(screen: io.StringIO) -> list[str]:
    return screen.getvalue().split("\r")[1:]


def test_progress_bar_redraws_one_line_on_a_terminal() -> None:
    screen, clock = Terminal(), Clock()
    bar = cli.ProgressBar("uploading", screen, clock)
    for progress in (Progress(0, 4, 0, 4096), Progress(2, 4, 2048, 4096), Progress(4, 4, 4096, 4096)):
        bar(progress)
        clock.now += 1.0
    assert frames(screen) == [
        "uploading [------------------------] 0/4 files, 0 B of 4.0 KiB",
        "uploading [############------------] 2/4 files, 2.0 KiB of 4.0 KiB",
        "uploading [########################] 4/4 files, 4.0 KiB of 4.0 KiB\n",
    ]


def test_progress_bar_redraws_a_few_times_a_second_and_never_goes_backwards() -> None:
    screen, clock = Terminal(), Clock()
    bar = cli.ProgressBar("uploading", screen, clock)
    for done in range(50):  # 50 callbacks within one instant: a single frame
        bar(Progress(done, 100, done * 10, 1000))
    assert len(frames(screen)) == 1
    clock.now += 1.0
    bar(Progress(60, 100, 600, 1000))
    clock.now += 1.0
    bar(Progress(40, 100, 400, 1000))  # a late callback from a parallel transfer
    shown = frames(screen)
    assert shown[-1] == shown[-2] and "60/100 files" in shown[-1]
    bar(Progress(100, 100, 1000, 1000))  # the last frame is drawn however soon it comes
    assert frames(screen)[-1].endswith("100/100 files, 1000 B of 1000 B\n")
    bar(Progress(100, 100, 1000, 1000))
    assert frames(screen)[-1].endswith("100/100 files, 1000 B of 1000 B\n") and len(frames(screen)) == 4


def test_progress_bar_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    cli.ProgressBar("downloading", stream)(Progress(1, 2, 10, 20))
    assert stream.getvalue() == ""


def write_script(workdir: Path, text: str) -> str:
    script = workdir.parent / "script.sh"
    script.write_text(text)
    return str(script)


def test_run_and_destroy_drive_the_bar(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for index in range(3):
        (workdir / f"in-{index}.txt").write_text("x" * 100)
    script = write_script(workdir, "#!/bin/bash\nmkdir -p out; cp in-*.txt out/\n")
    screen = Terminal()
    monkeypatch.setattr(cli.sys, "stderr", screen)
    assert cli.main(["run", "name=bar", "workdir=.", "output=out", "--wait", "--script", script]) == 0
    assert "\ruploading [" in screen.getvalue() and "3/3 files, 300 B of 300 B\n" in screen.getvalue()
    assert cli.main(["destroy", "bar"]) == 0
    assert "\rdownloading [" in screen.getvalue()
    assert (workdir / "out" / "in-2.txt").read_text() == "x" * 100
    assert "destroyed" in capsys.readouterr().out


def test_version_in_a_real_process() -> None:
    result = subprocess.run([*TPI, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"tpi-jupyter {__version__}"


def test_run_help_lists_every_argument_from_the_spec_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help wraps lines: compare word by word
    for argument in ARGUMENT_TABLE:
        assert (
            f"{argument.name} default: {argument.shown} accepted: {' '.join(argument.accepted.split())}"
            in text
        )


def test_list_and_status_as_json(tpi_home: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    script = write_script(workdir, "#!/bin/sh\necho hi\n")
    assert cli.main(["run", "name=js", "parallelism=2", "--wait", "--script", script]) == 0
    capsys.readouterr()
    assert cli.main(["list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["name"], listed["status"], listed["parallelism"]) == ("js", "succeeded", 2)
    assert listed["id"] == Task.find("js").id and "ranks" not in listed
    assert cli.main(["status", "js", "--json"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert [(rank["rank"], rank["state"], rank["code"]) for rank in detail["ranks"]] == [
        (0, "succeeded", 0),
        (1, "succeeded", 0),
    ]
    assert "created" in [event["kind"] for event in detail["events"]]
    assert cli.main(["destroy", "js"]) == 0


def test_logs_follow_exits_non_zero_when_the_task_failed(
    tpi_home: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "name=bad", "--script", write_script(workdir, "echo before; exit 3\n")]) == 0
    assert cli.main(["run", "name=good", "--script", write_script(workdir, "echo fine\n")]) == 0
    capsys.readouterr()
    assert cli.main(["logs", "bad", "--follow"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "before\n"
    assert captured.err.splitlines() == [
        f"TaskFailed: task bad ({Task.find('bad').id}) ended failed: rank 0 failed with code 3"
    ]
    assert cli.main(["logs", "good", "--follow"]) == 0
    assert capsys.readouterr().out == "fine\n"
    assert cli.main(["logs", "bad"]) == 0  # without --follow it only prints what is there


def test_destroy_takes_several_names_and_is_idempotent(
    tpi_home: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script(workdir, "sleep 30\n")
    for name in ("one", "two"):
        assert cli.main(["run", f"name={name}", "--script", script]) == 0
    capsys.readouterr()
    assert cli.main(["destroy", "one", "two"]) == 0
    out = capsys.readouterr().out
    assert "task one: destroyed" in out and "task two: destroyed" in out
    assert created_nothing(tpi_home)
    assert cli.main(["destroy", "one", "two"]) == 0
    assert capsys.readouterr().out.count("already gone") == 2
    assert cli.main(["destroy", "one", "../two"]) == 2  # a path-like name is still refused


def test_output_piped_into_head_ends_quietly(tpi_home: Path, workdir: Path) -> None:
    script = write_script(workdir, "seq 1 50000\n")  # ~290 kB: far more than a pipe buffer
    assert cli.main(["run", "name=long", "--wait", "--script", script]) == 0
    # a real pipe into head, which exits after one line while tpi is still writing
    pipeline = subprocess.run(
        f"{' '.join(TPI)} logs long 2>{workdir.parent / 'err'} | head -n 1; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    first, status = pipeline.stdout.split()
    assert first == "1"
    assert (workdir.parent / "err").read_text() == ""  # no traceback, no "Exception ignored"
    assert status == "141"  # 128 + SIGPIPE, as a tool killed by the broken pipe would end


def test_ctrl_c_while_waiting_leaves_the_task_running(tpi_home: Path, workdir: Path) -> None:
    script = write_script(workdir, "echo started\nsleep 60\n")
    process = subprocess.Popen(
        [*TPI, "run", "name=patient", "--wait", "--script", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    while "started" not in (line := process.stdout.readline()):
        assert line, "the task's first line never came"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    task = Task.find("patient")
    assert err.strip().splitlines() == [
        f"tpi: interrupted: task patient ({task.id}) is still running; "
        "stop it with tpi stop patient, or remove it with tpi destroy patient"
    ]
    assert wait_for(lambda: task.status == "running", timeout=30)
    assert cli.main(["destroy", "patient"]) == 0


def test_a_registry_file_missing_fields_is_skipped_with_a_warning(
    tpi_home: Path, workdir: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(["run", "name=fine", "--wait", "--script", write_script(workdir, "echo ok\n")]) == 0
    broken = tpi_home / "tasks" / "tpi-broken-00000000-00000000.json"
    broken.write_text(json.dumps({"id": broken.stem, "name": "broken"}))  # no cloud, spec, created
    (tpi_home / "tasks" / "tpi-garbled-00000000-00000000.json").write_text("{not json")
    capsys.readouterr()
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "fine" in listed and "succeeded" in listed and "broken" not in listed
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(broken.name in text and "missing or invalid cloud, spec, created" in text for text in warnings)
    assert any("tpi-garbled" in text and "unreadable" in text for text in warnings)
    assert cli.main(["list", "--json"]) == 0
    assert [task["name"] for task in json.loads(capsys.readouterr().out)] == ["fine"]
    assert sum(broken.name in record.getMessage() for record in caplog.records) == 1  # warned once
    assert broken.stem in state.known_ids()  # a sweep never counts its resources as orphans
    assert cli.main(["destroy", "fine"]) == 0
    broken.unlink()
    (tpi_home / "tasks" / "tpi-garbled-00000000-00000000.json").unlink()


def test_a_broken_registry_file_warns_in_a_real_process(tpi_home: Path) -> None:
    (tpi_home / "tasks").mkdir(parents=True)
    broken = tpi_home / "tasks" / "tpi-broken-00000000-00000000.json"
    broken.write_text("{}")
    result = subprocess.run([*TPI, "list"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "no tasks\n"
    assert result.stderr.splitlines() == [
        f"tpi: skipping registry file {broken}: missing or invalid id, cloud, spec, created, deadline"
    ]
    broken.unlink()
