"""Bad input at the faces: one-line UsageError in the magic, exit 2 in the CLI, nothing created."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter import cli

from .conftest import created_nothing

SCRIPT = "#!/bin/bash\necho should never run\n"

# (cell line, word the error must contain)
BAD_CELLS = [
    ("foo=bar", "foo"),
    ("cloud=azure", "cloud"),
    ("machine=huge", "machine"),
    ("cloud=aws machine=g4dn", "machine"),
    ("cloud=k8s machine=8cpu", "machine"),
    ("cloud=az machine=F8s", "machine"),
    ("image=debian", "image"),
    ("cloud=aws image=ami-123", "image"),
    ("cloud=gcp image=ubuntu-2004", "image"),
    ("region=mars", "region"),
    ("cloud=gcp region=us-east1", "region"),
    ("cloud=k8s region=nodes", "region"),
    ("disk_size=0", "disk_size"),
    ("disk_size=big", "disk_size"),
    ("spot=-2", "spot"),
    ("spot=cheap", "spot"),
    ("spot=nan", "spot"),
    ("parallelism=0", "parallelism"),
    ("parallelism=two", "parallelism"),
    ("timeout=0", "timeout"),
    ("timeout=1h", "timeout"),
    ("environment=1BAD=x", "environment"),
    ("environment=A*=x", "environment"),
    ("environment=TPI_RANK=3", "environment"),
    ("environment=GOOD=1 environment=GOOD=2", "environment"),
    ("tags=novalue", "tags"),
    ("tags=tpi-task=x", "tags"),
    ("tags=a=1 tags=a=2", "tags"),
    ("name=!!!", "name"),
    ("name=a name=b", "name"),
    ("permission_set=x", "permission_set"),
    ("cloud=aws permission_set=role", "permission_set"),
    ("cloud=aws container=Bad_Bucket", "container"),
    ("workdir=does-not-exist", "workdir"),
    ("workdir=. output=../up", "output"),
    ("workdir=. output=/abs", "output"),
    ("output=results", "output"),
    ("exclude=", "exclude"),
    ("justaword", "justaword"),
    ("=value", "=value"),
    ('name="unterminated', "malformed line"),
    ("--bogus", "--bogus"),
    ("name=x -o", "-o"),
]
BAD_LINES = [
    ("logs nosuch", "nosuch"),
    ("destroy nosuch", "nosuch"),
    ("status nosuch", "nosuch"),
    ("frobnicate", "frobnicate"),
    ("logs", "NAME"),
    ("preempt x --rank z", "--rank"),
]


@pytest.fixture
def shell(tpi_home: Path, workdir: Path):  # type: ignore[no-untyped-def]
    ip = start_ipython() or get_ipython()  # one shell per test process
    ip.run_line_magic("load_ext", "tpi_jupyter")
    return ip


def check_message(message: str, word: str) -> None:
    assert "\n" not in message.strip(), message
    assert word in message, message
    assert any(hint in message for hint in ("accepted", "expected", "usage", "known tasks", "choose from")), (
        message
    )
    assert "Traceback" not in message


@pytest.mark.parametrize(("line", "word"), BAD_CELLS)
def test_bad_cell_magic_line(shell, tpi_home: Path, line: str, word: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as error:
        shell.run_cell_magic("tpi", line, SCRIPT)
    check_message(str(error.value), word)
    assert created_nothing(tpi_home)


@pytest.mark.parametrize(("line", "word"), BAD_LINES)
def test_bad_line_magic(shell, tpi_home: Path, line: str, word: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as error:
        shell.run_line_magic("tpi", line)
    check_message(str(error.value), word)
    assert created_nothing(tpi_home)


def test_empty_cell_body(shell, tpi_home: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError) as error:
        shell.run_cell_magic("tpi", "name=empty", "\n  \n")
    check_message(str(error.value), "script")
    assert created_nothing(tpi_home)


def test_run_is_not_a_line_verb(shell) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="cell magic"):
        shell.run_line_magic("tpi", "run name=x")


# A shell never hands tpi an unterminated quote: that case is the magic's alone.
BAD_CLI_RUNS = [(line, word) for line, word in BAD_CELLS if word != "malformed line"]


@pytest.mark.parametrize(("line", "word"), BAD_CLI_RUNS)
def test_bad_cli_run(
    tpi_home: Path, workdir: Path, capsys: pytest.CaptureFixture[str], line: str, word: str
) -> None:
    script = workdir.parent / "script.sh"
    script.write_text(SCRIPT)
    assert cli.main(["run", *shlex.split(line), "--script", str(script)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("tpi: error: ")
    check_message(captured.err, word)
    assert created_nothing(tpi_home)


@pytest.mark.parametrize(("line", "word"), BAD_LINES)
def test_bad_cli_verb(tpi_home: Path, capsys: pytest.CaptureFixture[str], line: str, word: str) -> None:
    assert cli.main(line.split()) == 2
    check_message(capsys.readouterr().err, word)


def test_cli_exit_code_and_stderr_in_a_real_process(tpi_home: Path, workdir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tpi_jupyter.cli", "run", "spot=cheap", "--script", "/dev/null"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "spot" in result.stderr and "Traceback" not in result.stderr
    missing = subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", "run", "--script", "/no/such/file"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "--script" in missing.stderr and "Traceback" not in missing.stderr
    assert created_nothing(tpi_home)
