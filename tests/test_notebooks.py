"""The example notebooks run as shipped, on the local backend, and leave no task behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbconvert import MarkdownExporter

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QUICKSTART = EXAMPLES / "quickstart.ipynb"


def execute(path: Path, home: Path) -> Any:
    """Run a notebook in a fresh kernel whose cwd is the notebook's directory; errors stay in the outputs."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, startup_timeout=90, kernel_name="python3", allow_errors=True,
        resources={"metadata": {"path": str(path.parent)}},
    )  # fmt: skip
    env = {**os.environ, "TPI_JUPYTER_HOME": str(home)}
    env.pop("TPI_JUPYTER_NONINTERACTIVE", None)  # as scripts/quickstart runs it: a plain kernel
    client.execute(env=env, cwd=str(path.parent))
    return notebook


def cell_text(cell: Any) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif output["output_type"] in ("display_data", "execute_result"):
            parts.append(output["data"].get("text/plain", ""))
        elif output["output_type"] == "error":
            parts.append("\n".join(output["traceback"]))
    return "".join(parts)


def errors(notebook: Any) -> list[str]:
    return [
        f"cell {index}: {cell.source.splitlines()[0]!r}\n{cell_text(cell)}"
        for index, cell in enumerate(notebook.cells)
        if any(output["output_type"] == "error" for output in cell.get("outputs", []))
    ]


def cell_starting(notebook: Any, prefix: str) -> Any:
    matches = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith(prefix)]
    assert len(matches) == 1, f"expected one code cell starting with {prefix!r}"
    return matches[0]


def registry_files(home: Path) -> list[Path]:
    return sorted((home / "tasks").glob("*.json")) if (home / "tasks").is_dir() else []


def test_quickstart_is_committed_without_outputs() -> None:
    notebook = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source


@pytest.mark.slow
def test_quickstart_runs_and_can_run_again(tpi_home: Path, tmp_path: Path) -> None:
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("results", ".ipynb_checkpoints"))

    for run in (1, 2):  # the second run proves the notebook cleans up after itself
        notebook = execute(work / QUICKSTART.name, tpi_home)

        assert errors(notebook) == [], f"run {run}: " + "\n\n".join(errors(notebook))
        launched = cell_text(cell_starting(notebook, "%%tpi "))
        assert "quickstart" in launched
        assert "hello from rank 0 of 1" in launched.splitlines(), launched  # streamed from the task's log
        assert "succeeded" in cell_text(cell_starting(notebook, "%tpi status quickstart"))
        assert "destroyed" in cell_text(cell_starting(notebook, "%tpi destroy quickstart"))
        printed = cell_text(cell_starting(notebook, "from pathlib import Path"))
        assert "rank 0 counted 9 words in data/words.txt" in printed
        assert "lines: 2" in printed
        assert (work / "results" / "summary.txt").read_text() == printed.removesuffix("\n")
        assert registry_files(tpi_home) == [], f"run {run} left a task behind"


def test_nbconvert_shows_the_text_report_of_every_task(tpi_home: Path, tmp_path: Path) -> None:
    """Executed headless, each %%tpi cell keeps a text/plain report, with a workdir or without."""
    work = tmp_path / "nb"
    (work / "data").mkdir(parents=True)
    (work / "data" / "input.txt").write_text("some input\n")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext tpi_jupyter"),
        nbformat.v4.new_code_cell("%%tpi name=nb-plain\necho plain-line"),
        nbformat.v4.new_code_cell("%%tpi name=nb-workdir workdir=. output=out\nmkdir -p out; echo dir-line"),
        nbformat.v4.new_code_cell("%tpi destroy nb-plain\n%tpi destroy nb-workdir"),
    ]
    path = work / "report.ipynb"
    nbformat.write(notebook, path)
    executed = execute(path, tpi_home)
    assert errors(executed) == [], errors(executed)
    for index, name in ((1, "nb-plain"), (2, "nb-workdir")):
        bundles = [out for out in executed.cells[index].outputs if out["output_type"] == "display_data"]
        assert len(bundles) == 1, executed.cells[index].outputs
        assert "application/vnd.jupyter.widget-view+json" in bundles[0]["data"]
        text = bundles[0]["data"]["text/plain"]
        # the report (not the widget's repr): name, id, status, the machine line
        assert text.startswith(f"{name}  tpi-{name}-") and "cloud local · machine m x 1" in text, text
    markdown, _ = MarkdownExporter().from_notebook_node(executed)
    assert "nb-plain  tpi-nb-plain-" in markdown and "nb-workdir  tpi-nb-workdir-" in markdown
    assert registry_files(tpi_home) == []
