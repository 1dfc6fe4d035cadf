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
    # issue 11, item 17: validation gaps
    ("parallelism=100000", "parallelism"),
    ("parallelism=1_0", "parallelism"),
    ("parallelism=\u0663", "parallelism"),  # ARABIC-INDIC DIGIT THREE: int() would take it
    ("timeout=\uff11\uff10", "timeout"),  # fullwidth 10
    ("disk_size=1_000", "disk_size"),
    ("disk_size=100000", "disk_size"),
    ("spot=1_0", "spot"),
    ("spot=\u0661", "spot"),
    ("spot=1e3", "spot"),
    ("cloud=aws region=us-east-\u0661", "region"),  # native patterns match ASCII digits only
    ("cloud=k8s machine=\u0668-16000", "machine"),
    ("name=x -o 1abc", "-o"),
    ("name=x -o a.b", "-o"),
    ("name=x -o class", "-o"),
    ("'name=tab\there'", "name"),
    ("'name=esc\x1bhere'", "name"),
    ("'name=nul\x00here'", "name"),
    ("'name=new\nline'", "name"),
    ("container=memory://bucket", "container"),
    # issue 11, item 16: names are never paths
    ("name=../x", "name"),
    ("name=/", "name"),
    ("name=a/b", "name"),
    ("name=" + "a" * 256, "name"),
    ("name=" + "\u00e9" * 128, "name"),  # 128 characters, 256 bytes
]
BAD_LINES = [
    ("logs nosuch", "nosuch"),
    ("status nosuch", "nosuch"),
    # issue 11, item 16: a lookup never turns a name into a path
    ("status ../x", "NAME"),
    ("logs /etc/passwd", "NAME"),
    ("destroy ../x", "NAME"),
    ("attach " + "a" * 256, "NAME"),
    ("pull 'a\\b'", "NAME"),
    ("frobnicate", "frobnicate"),
    ("logs", "NAME"),
    ("preempt x --rank z", "--rank"),
    ("preempt x --rank 1_0", "--rank"),
    ("preempt x --rank \u0661", "--rank"),
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


def test_destroy_of_a_task_already_gone_is_not_an_error(shell, tpi_home: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shell.run_line_magic("tpi", "destroy nosuch other")
    assert capsys.readouterr().out.count("nothing to destroy (already gone)") == 2
    assert cli.main(["destroy", "nosuch"]) == 0
    assert created_nothing(tpi_home)


def test_script_that_is_not_utf8(shell, tpi_home: Path, workdir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    script = workdir.parent / "latin1.sh"
    script.write_bytes("echo caf\u00e9\n".encode("latin-1"))
    assert cli.main(["run", "name=enc", "--script", str(script)]) == 2
    check_message(capsys.readouterr().err, "--script")
    result = subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", "run", "name=enc", "--script", "-"],
                            input="echo caf\u00e9\n".encode("latin-1"), capture_output=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and b"not UTF-8" in result.stderr and b"Traceback" not in result.stderr
    with pytest.raises(UsageError) as error:  # a cell holding a lone surrogate cannot be stored as UTF-8
        shell.run_cell_magic("tpi", "name=enc", "echo \udce9\n")
    check_message(str(error.value), "script")
    assert created_nothing(tpi_home)


@pytest.mark.parametrize(
    ("line", "module", "extra"),
    [("cloud=aws", "boto3", "aws"), ("cloud=aws", "s3fs", "aws"), ("container=s3://bucket/x", "s3fs", "s3"),
     ("container=gs://bucket/x", "gcsfs", "gcs"), ("container=abfs://c/x", "adlfs", "azure")],
)  # fmt: skip
def test_a_cloud_whose_extra_is_not_installed(  # type: ignore[no-untyped-def]
    shell, tpi_home: Path, monkeypatch: pytest.MonkeyPatch, capsys, line: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # how Python itself marks a module as absent
    with pytest.raises(UsageError) as error:
        shell.run_cell_magic("tpi", f"{line} --dry-run", SCRIPT)
    check_message(str(error.value), f"pip install 'tpi-jupyter[{extra}]'")
    assert module in str(error.value)
    script = tpi_home.parent / "s.sh"
    script.write_text(SCRIPT)
    assert cli.main(["run", line, "--script", str(script)]) == 2
    check_message(capsys.readouterr().err, f"pip install 'tpi-jupyter[{extra}]'")
    assert created_nothing(tpi_home)


def test_negative_log_tail_lines(shell, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from tpi_jupyter.magics import SettingError, TpiMagics

    magics = next(c for c in shell.configurables if isinstance(c, TpiMagics))
    for setting in ("log_tail_lines", "widget_log_lines"):
        with pytest.raises(SettingError) as error:
            setattr(magics, setting, -1)
        check_message(str(error.value), setting)
        assert error.value._render_traceback_() == [f"SettingError: {error.value}"]  # no traceback
    try:
        result = shell.run_cell("%config TpiMagics.log_tail_lines = -5")
    finally:  # %config keeps the value in the shell's config: later loads in this process would read it
        shell.config.TpiMagics.pop("log_tail_lines", None)
    assert magics.log_tail_lines == 20  # refused; the default stays
    shown = [record.getMessage() for record in caplog.records]
    assert result.error_in_exec is None  # %config reports it as one logged line, no traceback
    assert any(text.startswith("TpiMagics.log_tail_lines: -5 is out of range; accepted") for text in shown)
