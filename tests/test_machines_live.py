"""Opt-in smoke test of a machine and a runner on real AWS and a real forge:
`TPI_SMOKE_MACHINES=1 TPI_AWS_SSH_CIDR=<your ip>/32 pytest tests/test_machines_live.py -s`.

It spends real money (one t3.micro for a few minutes). The runner part also needs
`TPI_SMOKE_RUNNER_REPO` (a repository URL), `TPI_SMOKE_RUNNER_DRIVER` (github or gitlab) and
`REPO_TOKEN`; it registers a real runner (the real actions/runner or gitlab-runner is downloaded
on the machine), waits until the forge lists it, lets it idle out, and checks that it is gone.

What moto and the contract servers cannot show: the instance booting and taking SSH logins with
the machine's own key, stop/start of a real instance, the real runners' downloads, registration
and idle-out, and the instance terminating itself on shutdown.
"""

from __future__ import annotations

import json
import os

import pytest

from tpi_jupyter import cli
from tpi_jupyter.machines import lifecycle, registry
from tpi_jupyter.runners import forge

from .conftest import wait_for

pytestmark = pytest.mark.skipif(
    os.environ.get("TPI_SMOKE_MACHINES") != "1" or bool(os.environ.get("AWS_ENDPOINT_URL")),
    reason="real AWS: set TPI_SMOKE_MACHINES=1 and TPI_AWS_SSH_CIDR (costs money)",
)
REGION = os.environ.get("TPI_SMOKE_AWS_REGION", "us-west")


def test_machine_ssh_stop_start_destroy() -> None:
    assert cli.main(["machine", "create", "smoke-box", "cloud=aws", "machine=s", f"region={REGION}"]) == 0
    try:
        wait_for(
            lambda: cli.main(["machine", "ssh", "smoke-box", "--run", "--", "true"]) == 0,
            timeout=300,
            interval=10,
        )
        assert cli.main(["machine", "stop", "smoke-box"]) == 0
        wait_for(lambda: lifecycle.find("smoke-box").read().state == "stopped", timeout=300, interval=10)
        assert cli.main(["machine", "start", "smoke-box"]) == 0
        wait_for(
            lambda: cli.main(["machine", "ssh", "smoke-box", "--run", "--", "true"]) == 0,
            timeout=300,
            interval=10,
        )
    finally:
        assert cli.main(["machine", "destroy", "smoke-box"]) == 0
    assert registry.records() == []


@pytest.mark.skipif(
    not os.environ.get("TPI_SMOKE_RUNNER_REPO"), reason="set TPI_SMOKE_RUNNER_REPO and REPO_TOKEN"
)
def test_runner_registers_and_idles_out(capsys: pytest.CaptureFixture[str]) -> None:
    driver = os.environ.get("TPI_SMOKE_RUNNER_DRIVER", "github")
    repo = forge.parse_repo(driver, os.environ["TPI_SMOKE_RUNNER_REPO"])
    words = ["runner", "create", "--name", "smoke-runner", "--driver", driver, "--repo", repo.url,
             "--labels", "tpi-smoke", "--idle-timeout", "3m", "cloud=aws", "machine=s", f"region={REGION}"]  # fmt: skip
    assert cli.main(words) == 0
    try:
        out = capsys.readouterr().out
        assert os.environ["REPO_TOKEN"] not in out
        wait_for(
            lambda: json.loads(_runner_list(capsys))[0]["status"] == "released", timeout=900, interval=20
        )
    finally:
        assert cli.main(["runner", "destroy", "smoke-runner"]) == 0
    assert registry.records() == []


def _runner_list(capsys: pytest.CaptureFixture[str]) -> str:
    cli.main(["runner", "list", "--json"])
    return capsys.readouterr().out
