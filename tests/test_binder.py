"""binder/: the postBuild steps succeed in a fresh environment, and the quickstart then runs there."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_postbuild_in_a_fresh_environment(tmp_path: Path) -> None:
    env_dir = tmp_path / "binder-env"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    environ = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "VIRTUAL_ENV": str(env_dir), "TPI_JUPYTER_HOME": str(tmp_path / "home"),
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    environ.pop("PYTHONPATH", None)

    def run(*command: str, cwd: Path = REPO) -> str:
        done = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    run(str(bin_dir / "python"), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt")
    out = run("bash", "binder/postBuild")
    assert "tpi-jupyter" in out
    # the environment is the fresh one, not this test's
    location = run(
        str(bin_dir / "python"), "-c", "import tpi_jupyter; print(tpi_jupyter.__file__)", cwd=tmp_path
    )
    assert location.startswith(str(env_dir)), location
    assert sys.prefix != str(env_dir)

    examples = tmp_path / "examples"
    subprocess.run(["cp", "-r", str(REPO / "examples"), str(examples)], check=True)
    notebook = run(str(bin_dir / "jupyter"), "nbconvert", "--to", "markdown", "--execute", "--stdout",
                   "quickstart.ipynb", cwd=examples)  # fmt: skip
    assert "hello from rank 0 of 1" in notebook
    assert "counted 9 words" in notebook
