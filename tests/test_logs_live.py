"""Live logs (issue 11: items 1, 3, 10, 11): what the agent makes of a script's raw output."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tpi_jupyter import layout
from tpi_jupyter.commands import build_spec
from tpi_jupyter.output import MASK_MIN, Lines, mask, mask_values, read_output
from tpi_jupyter.spec import SpecError
from tpi_jupyter.task import Task, launch

from .conftest import created_nothing, wait_for

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBtZXNzYWdlLWZvci10ZXN0cy1vbmx5LW5vdC1hLXJlYWwta2V5AAAAkAAA\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def start(words: list[str], script: str) -> Task:
    task = launch(build_spec(words, {"cloud": "local"}), script)
    assert isinstance(task, Task)
    return task


def log_lines(task: Task, rank: int = 0, boot: int = 0) -> list[str]:
    path = Path(task.record["remote"]) / layout.log(rank, boot)
    text = path.read_text() if path.exists() else ""
    return [line.split(" ", 1)[1] for line in text.splitlines()]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- carriage returns (item 11)


def test_progress_bar_is_logged_as_its_latest_state_at_most_once_per_interval() -> None:
    clock, seen = Clock(), []
    lines = Lines(seen.append, interval=1.0, clock=clock)
    lines.feed(b"epoch 1\n")
    for percent in range(0, 101, 10):  # ten updates within one interval: one line for them
        lines.feed(f"\r{percent:3d}%|".encode())
        clock.now += 0.05
    assert seen == ["epoch 1", "  0%|"]
    clock.now += 1.0
    lines.tick()  # the bar stalled: its newest state is shown once the interval passed
    assert seen[-1] == "100%|"
    lines.tick()
    assert seen.count("100%|") == 1  # an unchanged state is not repeated
    lines.feed(b"\r100%|\ndone\n")
    assert seen == ["epoch 1", "  0%|", "100%|", "done"]  # the end state was already shown
    assert not any("\r" in line for line in seen)


def test_a_finished_progress_line_keeps_its_last_state_and_crlf_is_a_newline() -> None:
    clock, seen = Clock(), []
    lines = Lines(seen.append, interval=10.0, clock=clock)
    lines.feed(b"\r 10%")  # shown at once: nothing was shown for a whole interval
    lines.feed(b"\r 20%\r 30%\n")  # 20% is skipped (within the interval); 30% ends the line
    lines.feed(b"windows line\r\n")
    lines.feed(b"unterminated")
    lines.close()
    assert seen == [" 10%", " 30%", "windows line", "unterminated"]


def test_a_line_split_across_reads_is_one_line() -> None:
    seen: list[str] = []
    lines = Lines(seen.append, interval=0.0)
    for chunk in (b"hel", b"lo wo", b"rld\nsecond", b" line\n"):
        lines.feed(chunk)
    assert seen == ["hello world", "second line"]


def test_live_log_shows_python_prints_at_once_and_progress_without_carriage_returns(
    tpi_home: Path, workdir: Path
) -> None:
    # A plain `python script.py` prints "first", then waits for a file the test writes only after
    # it saw "first" in the live log: with Python's default block buffering into a pipe the line
    # would never arrive and this would time out.
    script = """#!/bin/bash
for i in $(seq 1 20); do printf '\\r%3d%%|%s' $((i * 5)) "$(printf '#%.0s' $(seq 1 $i))"; sleep 0.02; done
printf '\\n'
python3 -c '
import os, time
print("first")
while not os.path.exists("go"):
    time.sleep(0.05)
print("second")
'
"""
    task = start(["name=live"], script)
    wait_for(lambda: "first" in log_lines(task), timeout=60)
    (Path(task.record["backend"]["base"]) / "machines" / "0" / "work" / "go").write_text("")
    assert task.wait(timeout=60) == "succeeded"
    lines = log_lines(task)
    assert lines[-2:] == ["first", "second"]
    progress = lines[:-2]
    assert progress and progress[-1] == "100%|" + "#" * 20  # the last state, whole
    assert all("\r" not in line for line in lines)
    task.destroy()


# ---------------------------------------------------------------- the end is the script's exit (item 10)


def test_reader_ends_with_the_script_not_with_a_background_child_holding_the_pipe() -> None:
    script = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 300 & echo before exit"], stdout=subprocess.PIPE, start_new_session=True
    )
    assert script.stdout is not None
    seen: list[str] = []
    exited, (wake_read, wake_write) = threading.Event(), os.pipe()
    reader = threading.Thread(
        target=read_output, args=(script.stdout.fileno(), Lines(seen.append, 0.25), exited, wake_read)
    )
    reader.start()
    try:
        script.wait(timeout=60)
        exited.set()
        os.write(wake_write, b"x")
        reader.join(timeout=30)  # before the fix: blocked until `sleep 300` closed the pipe
        assert not reader.is_alive()
        assert seen == ["before exit"]
    finally:
        os.killpg(script.pid, 9)
        reader.join()
        for end in (wake_read, wake_write):
            os.close(end)


def test_task_with_a_background_child_succeeds_and_the_child_ends_with_it(
    tpi_home: Path, workdir: Path
) -> None:
    script = "#!/bin/bash\nsleep 300 &\necho $! > child.pid\necho started a child\n"
    task = start(["name=bg"], script)
    assert task.wait(timeout=60) == "succeeded"
    assert log_lines(task) == ["started a child"]
    work = Path(task.record["backend"]["base"]) / "machines" / "0" / "work"
    child = int((work / "child.pid").read_text())
    wait_for(lambda: not _running(child), timeout=30)
    task.destroy()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# ---------------------------------------------------------------- secrets (items 1 and 3)


def test_a_multi_line_secret_is_masked_line_by_line() -> None:
    secrets = mask_values([PEM, "short", "ab"])
    for line in PEM.splitlines():
        assert mask(line, secrets) == "***"
    assert mask("token short here", secrets) == "token *** here"
    assert mask("ab and abc", secrets) == "ab and abc"  # below MASK_MIN: not masked
    assert MASK_MIN == 4


def test_an_imported_pem_key_never_reaches_the_log(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOY_KEY", PEM)
    script = '#!/bin/bash\necho "$DEPLOY_KEY"\nprintf "key: %s\\n" "$(echo "$DEPLOY_KEY" | sed -n 2p)"\n'
    task = start(["name=pem", "environment=DEPLOY_KEY="], script)
    assert task.wait(timeout=60) == "succeeded"
    lines = log_lines(task)
    assert lines == ["***", "***", "***", "***", "", "key: ***"]  # the value ends with a newline
    everything = "\n".join(task.logs())
    for secret_line in PEM.splitlines()[1:3]:
        assert secret_line not in everything
    task.destroy()


def test_a_short_imported_value_is_warned_about_at_launch(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHORT_PIN", "123")
    monkeypatch.setenv("LONG_TOKEN", "long-enough")
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home)}
    script = workdir / "job.sh"
    script.write_text("#!/bin/bash\necho hi\n")
    run = subprocess.run(
        [sys.executable, "-m", "tpi_jupyter.cli", "run", "name=pin", "environment=SHORT_PIN=",
         "environment=LONG_TOKEN=", "--script", str(script)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stdout.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: environment: SHORT_PIN is shorter than {MASK_MIN} characters, so logs do not mask it"
    ]
    assert "123" not in run.stdout + run.stderr
    task = Task.find("pin")
    assert any(event["kind"] == "warning" and "SHORT_PIN" in event["detail"] for event in task.events())
    task.destroy()


def test_an_import_of_an_unset_variable_is_one_line_and_creates_nothing(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    with pytest.raises(
        SpecError, match=r"^environment: NOT_SET_HERE= imports NOT_SET_HERE, which is not set here"
    ):
        launch(build_spec(["name=unset", "environment=NOT_SET_HERE="], {"cloud": "local"}), "echo hi")
    assert created_nothing(tpi_home)
    script = workdir / "job.sh"
    script.write_text("echo hi\n")
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home)}
    run = subprocess.run(
        [sys.executable, "-m", "tpi_jupyter.cli", "run", "name=unset", "environment=NOT_SET_HERE=", "--script", str(script)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "NOT_SET_HERE" in run.stderr and "Traceback" not in run.stderr
    assert created_nothing(tpi_home)


def test_the_magic_shows_the_short_value_warning_and_refuses_an_unset_import(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from IPython import get_ipython
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import start_ipython

    shell = start_ipython() or get_ipython()
    shell.run_line_magic("load_ext", "tpi_jupyter")
    monkeypatch.setenv("SHORT_PIN", "123")
    monkeypatch.delenv("NOT_SET_HERE", raising=False)
    with pytest.raises(
        UsageError, match="environment: NOT_SET_HERE= imports NOT_SET_HERE, which is not set here"
    ):
        shell.run_cell_magic("tpi", "cloud=local name=unsetmagic environment=NOT_SET_HERE=", "echo hi")
    assert created_nothing(tpi_home)
    task = shell.run_cell_magic("tpi", "cloud=local name=pinmagic environment=SHORT_PIN=", "echo hi")
    out = capsys.readouterr().out
    assert f"warning: environment: SHORT_PIN is shorter than {MASK_MIN} characters" in out
    assert "123" not in out
    assert isinstance(task, Task)
    task.destroy()


def test_follow_reads_again_after_failed_reads_and_loses_no_line(
    tpi_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the remote that fails after its client's retries (issue 18's storage faults) is
    read again at the next poll; the lines of that round are neither lost nor given twice."""
    from tpi_jupyter import task as task_module

    task = start(["name=flaky-read"], "for i in $(seq 1 40); do echo line-$i; sleep 0.02; done")
    real_read, calls = task_module.LogTail._read, {"n": 0}

    def flaky_read(self: task_module.LogTail, key: str, start: int, end: int) -> bytes:
        calls["n"] += 1
        if calls["n"] % 3 == 2:  # every third read fails, as a 503 after retries would
            raise OSError("503 SlowDown")
        return real_read(self, key, start, end)

    monkeypatch.setattr(task_module.LogTail, "_read", flaky_read)
    texts = [text for _, _, text in task.follow(poll=0.05)]
    assert texts == [f"line-{i}" for i in range(1, 41)]
    assert calls["n"] >= 3  # the failure path ran

    # from now on every read fails: five in a row give up with the error
    monkeypatch.setattr(task_module.LogTail, "_read", lambda *_: (_ for _ in ()).throw(OSError("down")))
    monkeypatch.setattr(task_module.time, "sleep", lambda _: None)
    with pytest.raises(OSError, match="down"):
        list(task.follow())  # a new follow reads every log from its start
    task.destroy()
