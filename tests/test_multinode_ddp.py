"""A real two-rank PyTorch DDP step (gloo) across two local network namespaces (issue 16).

torch==2.13.0 is about 4.7 GB: `scripts/install-torch` installs it once per machine into a cache
and links it into the venv; this test calls it when torch is missing, and skips, saying why,
when that is impossible (no registry, no disk).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tpi_jupyter import layout

from .test_local_backend import remote_path, start
from .test_multinode import EXAMPLES, finished, needs_netns, netns_leftovers, rank_lines

ROOT = Path(__file__).parent.parent


def torch_ready() -> str:
    """ "" when torch imports in this venv (installing it if needed), else why not."""
    if importlib.util.find_spec("torch") is not None:
        return ""
    done = subprocess.run([str(ROOT / "scripts" / "install-torch"), sys.executable], capture_output=True,
                          text=True, timeout=1200)  # fmt: skip
    if done.returncode != 0:
        return f"torch==2.13.0 could not be installed: {done.stderr.strip().splitlines()[-1:]}"
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True)
    return "" if check.returncode == 0 else "torch does not import after scripts/install-torch"


@pytest.fixture(scope="module")
def torch_available() -> None:
    why = torch_ready()
    if why:
        pytest.skip(why)


@needs_netns
def test_two_rank_ddp_step_with_gloo_crosses_namespaces(
    tpi_home: Path, workdir: Path, torch_available: None
) -> None:
    shutil.copy(EXAMPLES / "ddp_step.py", workdir)
    task = start(["parallelism=2", "workdir=.", "timeout=300"], "python ddp_step.py\n")
    assert finished(task, 240) == "succeeded", task.tail_text(40)
    addresses = [
        json.loads(remote_path(task, layout.address(rank)).read_text())["address"] for rank in range(2)
    ]
    assert addresses[0] != addresses[1] and all(a.startswith("10.245.") for a in addresses)
    for rank in range(2):
        every = rank_lines(task, rank)
        lines = [line for line in every if line.startswith("ddp rank")]
        # Rank 1 reached rank 0 from its own namespace's address; gradients were averaged across.
        expected = (
            f"ddp rank {rank} of 2 at {addresses[rank]} (master {addresses[0]}): gradient ok, weights agree"
        )
        assert lines == [expected], "\n".join(every[-40:])
    task.destroy()
    assert netns_leftovers(task) == []
