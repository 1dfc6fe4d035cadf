"""The `tpi` command's own pieces: the progress bar the syncer's callback drives."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tpi_jupyter import cli
from tpi_jupyter.sync import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_one_line_on_a_terminal() -> None:
    screen = Terminal()
    bar = cli.ProgressBar("uploading", screen)
    bar(Progress(0, 4, 0, 4096))
    bar(Progress(2, 4, 2048, 4096))
    bar(Progress(4, 4, 4096, 4096))
    frames = screen.getvalue().split("\r")[1:]
    assert frames[0] == "uploading [------------------------] 0/4 files, 0 B of 4.0 KiB"
    assert frames[1] == "uploading [############------------] 2/4 files, 2.0 KiB of 4.0 KiB"
    assert frames[2] == "uploading [########################] 4/4 files, 4.0 KiB of 4.0 KiB\n"


def test_progress_bar_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    cli.ProgressBar("downloading", stream)(Progress(1, 2, 10, 20))
    assert stream.getvalue() == ""


def test_run_and_destroy_drive_the_bar(
    tpi_home: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for index in range(3):
        (workdir / f"in-{index}.txt").write_text("x" * 100)
    script = workdir.parent / "s.sh"
    script.write_text("#!/bin/bash\nmkdir -p out; cp in-*.txt out/\n")
    screen = Terminal()
    monkeypatch.setattr(cli.sys, "stderr", screen)
    assert cli.main(["run", "name=bar", "workdir=.", "output=out", "--wait", "--script", str(script)]) == 0
    assert "\ruploading [" in screen.getvalue() and "3/3 files, 300 B of 300 B\n" in screen.getvalue()
    assert cli.main(["destroy", "bar"]) == 0
    assert "\rdownloading [" in screen.getvalue()
    assert (workdir / "out" / "in-2.txt").read_text() == "x" * 100
    assert "destroyed" in capsys.readouterr().out
