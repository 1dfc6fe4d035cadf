"""Opt-in smoke test against real AWS: `TPI_SMOKE_AWS=1 pytest tests/test_aws_live.py`.

It spends real money (one t3.micro spot instance for a few minutes, a bucket, a role) and needs
credentials from the standard chain (AWS_PROFILE, SSO, or keys) allowed to manage EC2, Auto
Scaling, IAM roles and instance profiles, and S3. `TPI_SMOKE_AWS_REGION` picks the region
(default us-west = us-west-1). Whatever happens, the test destroys the task and checks that
nothing tagged with it is left.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, launch

pytestmark = pytest.mark.skipif(
    os.environ.get("TPI_SMOKE_AWS") != "1", reason="real AWS: set TPI_SMOKE_AWS=1 (costs money)"
)

SCRIPT = """#!/bin/bash
mkdir -p results
echo "hello from $(hostname) rank $TPI_RANK" | tee results/hello.txt
"""


@pytest.mark.timeout(1800)
def test_live_spot_task_end_to_end(tpi_home: Path, workdir: Path) -> None:
    if os.environ.get("AWS_ENDPOINT_URL"):
        pytest.skip("AWS_ENDPOINT_URL is set: this test is for real AWS")
    region = os.environ.get("TPI_SMOKE_AWS_REGION", "us-west")
    spec = build_spec(["machine=s", "spot=0", "workdir=.", "output=results", "timeout=1200",
                       f"region={region}", "tags=purpose=tpi-smoke"], {"cloud": "aws"})  # fmt: skip
    task = launch(spec, SCRIPT)
    assert isinstance(task, Task)
    try:
        assert task.wait(timeout=1200) == "succeeded", task.tail_text()
        assert "hello from" in task.logs()[0]
    finally:
        task.destroy()
    assert (workdir / "results" / "hello.txt").read_text().startswith("hello from")
    from tpi_jupyter.task import sweep

    leftovers = sweep("aws", delete=False, region=region, everyone=True)
    assert not [line for line in leftovers if task.id in line], leftovers
