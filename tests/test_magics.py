"""The magics in a real IPython shell: flags, binding, defaults via traitlets, text handle."""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter import state
from tpi_jupyter.task import Plan, Task

from .conftest import created_nothing


@pytest.fixture
def shell(tpi_home: Path, workdir: Path):  # type: ignore[no-untyped-def]
    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "tpi_jupyter")
    yield ip
    ip.run_line_magic("config", 'TpiMagics.default_cloud = "local"')
    ip.run_line_magic("config", "TpiMagics.defaults = {}")


def test_dry_run_counts_files_and_creates_nothing(shell, tpi_home: Path, workdir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (workdir / "a.txt").write_text("12345")
    (workdir / "sub").mkdir()
    (workdir / "sub" / "b.bin").write_bytes(b"x" * 1000)
    (workdir / "skip.pyc").write_bytes(b"y" * 50)
    shell.run_cell_magic("tpi", "workdir=. exclude=*.pyc name=dry --dry-run -o plan", "echo hi")
    out = capsys.readouterr().out
    assert "nothing was created" in out
    assert "upload: 2 files, 1005 B" in out
    assert "local group of 1 process" in out
    assert isinstance(shell.user_ns["plan"], Plan)
    assert (shell.user_ns["plan"].files, shell.user_ns["plan"].bytes) == (2, 1005)
    assert created_nothing(tpi_home)


def test_handle_is_returned_and_bound(shell, tpi_home: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    handle = shell.run_cell_magic("tpi", "name=bound -o h", "echo no shebang here")
    assert isinstance(handle, Task) and shell.user_ns["h"] is handle
    text = handle.summary()
    assert handle.id in text and "status" in text
    assert "no shebang" in text and "/bin/bash" in text
    assert handle.wait(timeout=60) == "succeeded"
    assert handle.logs() and handle.logs()[0].endswith("no shebang here")
    handle.destroy()


def test_wait_streams_the_log_into_the_cell(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    result = shell.run_cell_magic("tpi", "name=waited --wait", "#!/bin/sh\necho line-one\necho line-two\n")
    assert result is None
    out = capsys.readouterr().out
    assert out.index("line-one") < out.index("line-two")
    assert Task.find("waited").status == "succeeded"
    shell.run_line_magic("tpi", "destroy waited")


def test_config_sets_default_cloud_and_defaults(shell, tpi_home: Path) -> None:  # type: ignore[no-untyped-def]
    shell.run_line_magic("config", 'TpiMagics.default_cloud = "k8s"')
    with pytest.raises(UsageError, match=r"machine.*cloud=k8s"):
        shell.run_cell_magic("tpi", "machine=m5.large", "echo")  # valid on aws, not on k8s
    shell.run_line_magic("config", 'TpiMagics.default_cloud = "local"')
    shell.run_line_magic("config", "TpiMagics.defaults = {'parallelism': '2', 'region': 'eu-west'}")
    task = shell.run_cell_magic("tpi", "name=defaults", "echo $TPI_REGION")
    assert task.spec["parallelism"] == 2 and task.spec["region"] == "eu-west"
    assert task.wait(timeout=60) == "succeeded"
    assert [log.split(" ", 1)[1] for log in task.logs()] == ["eu-west", "eu-west"]
    task.destroy()
    assert created_nothing(tpi_home)


def test_line_verbs(shell, tpi_home: Path, workdir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shell.run_line_magic("tpi", "")
    assert "%tpi list" in capsys.readouterr().out
    task = shell.run_cell_magic(
        "tpi", "name=verbs workdir=. output=out spot=0", "mkdir -p out; echo v > out/v.txt; sleep 30"
    )
    shell.run_line_magic("tpi", "list")
    assert "verbs" in capsys.readouterr().out
    assert shell.run_line_magic("tpi", "attach verbs") is None  # text mode prints the task
    attached = capsys.readouterr().out
    assert task.id in attached and "rank 0:" in attached
    from .conftest import wait_for

    wait_for(lambda: (Path(task.record["remote"]) / "data/out/v.txt").exists(), timeout=30)
    shell.run_line_magic("tpi", "pull verbs")
    assert (workdir / "out" / "v.txt").read_text() == "v\n"
    shell.run_line_magic("tpi", "stop verbs")
    shell.run_line_magic("tpi", "status verbs")
    status = capsys.readouterr().out
    assert "status failed" in status and "stopped" in status
    shell.run_line_magic("tpi", "events verbs")
    events = capsys.readouterr().out
    assert "created" in events and "machine-started" in events and "stopped" in events
    shell.run_line_magic("tpi", "destroy verbs")
    assert state.load(task.id) is None


def test_on_demand_tasks_cannot_be_preempted(shell) -> None:  # type: ignore[no-untyped-def]
    task = shell.run_cell_magic("tpi", "name=ondemand", "sleep 20")
    with pytest.raises(UsageError, match="spot"):
        shell.run_line_magic("tpi", "preempt ondemand")
    task.destroy()
