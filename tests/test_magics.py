"""The magics in a real IPython shell: flags, binding, defaults via traitlets, text handle."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

from tpi_jupyter import commands, state
from tpi_jupyter.spec import ARGUMENT_TABLE, TaskSpec, parse_assignments, task_id
from tpi_jupyter.task import Plan, Task

from .conftest import created_nothing, wait_for
from .kernels import Kernel


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


# ---------------------------------------------------------------- issue 11: items 9, 13, 15, 18

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_magic_lines() -> list[str]:
    """Every `%tpi` / `%%tpi` line a reader may copy: in code blocks (not ```text grammar) and spans."""
    text = README.read_text()
    found = []
    for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if language != "text":
            found += [line for line in body.splitlines() if line.startswith(("%tpi", "%%tpi"))]
    found += re.findall(r"`(%%?tpi[^`]*)`", text)
    return found


def test_every_readme_magic_line_parses_with_the_real_parser(tmp_path: Path) -> None:
    lines = readme_magic_lines()
    assert (
        "%tpi logs demo --follow    # stream the log (all ranks, prefixed [rank] when there are several)"
        in lines
    )
    assert len(lines) >= 8, lines
    (tmp_path / "results").mkdir()
    for line in lines:
        if line.endswith("?"):
            continue  # IPython's help syntax (%tpi?): IPython answers it, not the magic
        if line.startswith("%%tpi"):
            args = commands.parse_cell_line(line.removeprefix("%%tpi"))
            TaskSpec.from_args(parse_assignments(args.assignments), cwd=tmp_path)
        elif words := commands.split(line.removeprefix("%tpi")):  # a bare %tpi prints the help
            if words[0] in ("machine", "runner"):  # their own parsers (machines/faces.py)
                from tpi_jupyter.machines.faces import parse_words

                parse_words(words, "%tpi")
            else:
                commands.parse_words(words, "%tpi")


def test_readme_grammar_is_the_generated_usage() -> None:
    (grammar,) = re.findall(r"^```text\n(%%tpi.*?)^```", README.read_text(), flags=re.S | re.M)
    assert grammar.strip() == commands.magic_help().split("\n\n")[0]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("logs demo --follow    # stream the log", ["logs", "demo", "--follow"]),
        ("# only a comment", []),
        ("name=run#2 exclude=*.pyc  # the word keeps its #", ["name=run#2", "exclude=*.pyc"]),
        ("name='a # b' tags=k=\"v #w\"", ["name=a # b", "tags=k=v #w"]),
        ("name=a\\ #b", ["name=a #b"]),
    ],
)
def test_trailing_comments_are_cut_as_a_shell_cuts_them(line: str, words: list[str]) -> None:
    assert commands.split(line) == words


def test_commented_lines_run_in_the_shell(shell, tpi_home: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shell.run_cell("%%tpi name=commented --wait   # wait for it\necho from-the-task\n")
    assert "from-the-task" in capsys.readouterr().out
    shell.run_cell("%tpi logs commented --follow    # comment")
    assert capsys.readouterr().out == "from-the-task\n"
    shell.run_cell("%tpi destroy commented  # clean up")
    assert created_nothing(tpi_home)


def test_no_variable_expansion_on_either_line(shell, tpi_home: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shell.user_ns["x"] = "boom"
    result = shell.run_cell("%%tpi name=literal-{x}-$x --dry-run -o plan\necho\n")
    assert result.error_in_exec is None
    assert shell.user_ns["plan"].task_id == task_id("literal-{x}-$x")
    result = shell.run_cell("%tpi status $x")
    assert "'$x'" in str(result.error_in_exec) and "boom" not in str(result.error_in_exec)
    shell.run_cell("%%tpi name=dollar 'environment=SEEN=$x {x}' --wait\necho \"$SEEN\"\n")
    assert "$x {x}" in capsys.readouterr().out  # the machine gets the text as written
    shell.run_line_magic("tpi", "destroy dollar")
    assert created_nothing(tpi_home)


def test_magic_help_is_generated_from_the_parsers(shell, capsys) -> None:  # type: ignore[no-untyped-def]
    from tpi_jupyter.magics import TpiMagics

    assert TpiMagics.tpi.__doc__ == commands.magic_help()
    text = commands.magic_help()
    assert "%tpi logs [--follow] [--timestamps] NAME" in text
    assert "%tpi destroy NAME [NAME ...]" in text and "%tpi list [--json]" in text
    for argument in ARGUMENT_TABLE:
        assert f"  {argument.name} " in text
    shell.run_line_magic("tpi", "--help")
    assert capsys.readouterr().out.strip() == text.strip()
    shell.run_line_magic("tpi", "logs --help")  # a verb's own help, and no SystemExit
    assert "--timestamps" in capsys.readouterr().out


def test_interrupted_wait_binds_and_keeps_the_task(shell, tpi_home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    def interrupted(self: Task, *args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt  # what the kernel's interrupt raises inside the wait

    with monkeypatch.context() as patch, pytest.raises(commands.WaitInterrupted) as error:
        patch.setattr(Task, "wait", interrupted)
        shell.run_cell_magic("tpi", "name=inter --wait -o h", "sleep 30")
    task = shell.user_ns["h"]
    assert error.value._render_traceback_() == [
        f"interrupted: task inter ({task.id}) is still running; "
        "stop it with %tpi stop inter, or remove it with %tpi destroy inter"
    ]
    assert wait_for(lambda: task.status == "running", timeout=30)
    task.destroy()


@pytest.mark.slow
def test_kernel_interrupt_during_wait_is_one_line(tpi_home: Path, workdir: Path) -> None:
    kernel = Kernel({**os.environ, "TPI_JUPYTER_NONINTERACTIVE": "1"}, workdir)
    try:
        kernel.ok("%load_ext tpi_jupyter")
        msg_id = kernel.client.execute("%%tpi name=longwait --wait\necho started\nsleep 60\n")
        seen, error = "", None
        while True:
            message = kernel.client.get_iopub_msg(timeout=60)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                seen += content["text"]
                if "started" in seen and error is None:
                    kernel.manager.interrupt_kernel()
                    error = ""
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif kind == "status" and content["execution_state"] == "idle":
                break
        task = Task.find("longwait")
        assert error == (
            f"interrupted: task longwait ({task.id}) is still running; "
            "stop it with %tpi stop longwait, or remove it with %tpi destroy longwait"
        )
        assert task.status == "running"
        assert "destroyed" in kernel.ok("%tpi destroy longwait").text
    finally:
        kernel.shutdown()
