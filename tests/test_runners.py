"""CI runners on local machines against the forge contract servers (issue 19).

The runner on the machine is the project's STAND-IN for actions/runner and gitlab-runner
(tpi_jupyter/runners/standin.py); the forges are tests/forge_contract.py's contract servers.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from tpi_jupyter.machines import local, registry

from .conftest import wait_for
from .forge_contract import ForgeContract
from .machine_words import destroy_all, tpi
from .test_machines import machine_processes

pytestmark = pytest.mark.skipif(
    not Path(local.SSHD).exists(), reason="needs openssh-server (scripts/install-tools)"
)

TOKEN = "ghp_REPOTOKENnever0on0machines"
GITHUB_REPO = "https://github.com/acme/models"
GITLAB_REPO = "https://gitlab.example.com/acme/ml/models"
MANAGEMENT = ("/generate-jitconfig", "/actions/runners", "/api/v4/projects/", "/api/v4/user/runners")


@pytest.fixture
def forge(tpi_home: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REPO_TOKEN", TOKEN)
    with ForgeContract(TOKEN) as contract:
        yield contract
        destroy_all()  # whatever a failed test left running


def create(capsys, forge: ForgeContract, driver: str, *extra: str) -> tuple[int, str]:
    repo, api = (GITHUB_REPO, forge.github_api) if driver == "github" else (GITLAB_REPO, forge.gitlab_api)
    return tpi(capsys, "runner", "create", "--driver", driver, "--repo", repo, "--api-url", api,
               "--labels", "gpu,big", "--stand-in", *extra)  # fmt: skip


def status(capsys, name: str) -> str:
    rows = json.loads(tpi(capsys, "runner", "list", "--json")[1])
    return next(row["status"] for row in rows if row["name"] == name)


def token_nowhere(home: Path, forge: ForgeContract, *outputs: str) -> None:
    """The repository token is in no file under the user's data dir (registry, keys, the machine's
    disk, its logs and startup script), no output, and no call the machine made."""
    for path in home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for text in outputs:
        assert TOKEN not in text
    for call in forge.calls:
        sent = json.dumps(call.headers) + call.body.decode(errors="replace")
        if any(part in call.path for part in MANAGEMENT):
            continue  # the client's own calls carry it, in the auth header only
        assert TOKEN not in sent, call.path


def test_gitlab_runner_takes_labelled_jobs_then_idles_out(
    forge: ForgeContract, tpi_home: Path, capsys
) -> None:
    wanted = forge.queue_job(
        "gitlab", ["gpu"], 'echo "job ran on $TPI_MACHINE"\necho "token:${REPO_TOKEN:-none}"'
    )
    other = forge.queue_job("gitlab", ["arm"], "echo never")
    code, out = create(capsys, forge, "gitlab", "--name", "ci", "--idle-timeout", "3s")
    assert code == 0, out
    assert "labels gpu,big" in out
    runner_id = registry.records()[0]["runner"]["runner_id"]
    assert forge.runners[runner_id].labels == ["gpu", "big"]
    body = json.loads(next(c.body for c in forge.calls if c.path == "/api/v4/user/runners"))
    assert body == {"runner_type": "project_type", "project_id": forge.gitlab_project_id, "description": registry.records()[0]["id"],
                    "tag_list": "gpu,big", "run_untagged": False}  # fmt: skip
    machine_id = registry.records()[0]["id"]
    for process in psutil.process_iter():  # nothing of the caller's environment on the machine
        try:
            env = process.environ()
        except psutil.Error:
            continue
        if env.get("TPI_PROCESS_MARK") == f"machine:{machine_id}":
            assert "REPO_TOKEN" not in env and TOKEN not in json.dumps(env)
    wait_for(lambda: wanted.state == "success", timeout=30)
    assert "job ran on tpi-ci-" in wanted.log and "token:none" in wanted.log
    assert wanted.runner == runner_id and other.state == "pending"  # labels decide
    assert status(capsys, "ci") == "running"  # not single: it waits for more jobs
    second = forge.queue_job("gitlab", ["big"], "exit 3")
    wait_for(lambda: second.state == "failed", timeout=30)
    assert second.exit_code == 3
    wait_for(lambda: runner_id in forge.removed, timeout=30)  # idle: unregistered itself
    wait_for(lambda: status(capsys, "ci") == "released", timeout=30)
    startup_log = (Path(registry.records()[0]["state"]["dir"]) / "startup.log").read_text()
    assert "unregistered after 2 job(s)" in startup_log
    delete_self = [c for c in forge.calls if c.method == "DELETE" and c.path == "/api/v4/runners"]
    assert len(delete_self) == 1 and "private-token" not in delete_self[0].headers
    token_nowhere(tpi_home, forge, out)
    code, out = tpi(capsys, "runner", "destroy", "ci")
    assert code == 0 and "already unregistered (by itself)" in out and "destroyed" in out
    assert registry.records() == [] and list(registry.machines_dir().glob("tpi-*")) == []
    assert machine_processes(machine_id) == []


def test_github_jit_runner_takes_one_job(forge: ForgeContract, tpi_home: Path, capsys) -> None:
    job = forge.queue_job("github", ["self-hosted", "gpu"], "echo hello from the runner")
    code, out = create(capsys, forge, "github", "--name", "gh", "--idle-timeout", "5m")
    assert code == 0 and "takes one job" in out, out
    jit = next(c for c in forge.calls if c.path.endswith("/generate-jitconfig"))
    assert (
        jit.headers["authorization"] == f"Bearer {TOKEN}"
        and jit.headers["x-github-api-version"] == "2022-11-28"
    )
    assert json.loads(jit.body)["labels"] == ["gpu", "big"]
    wait_for(lambda: job.state == "success", timeout=30)
    assert "hello from the runner" in job.log
    wait_for(lambda: status(capsys, "gh") == "released", timeout=30)  # one job, then it releases itself
    assert forge.runners == {}  # ephemeral: GitHub removed it after its job
    token_nowhere(tpi_home, forge, out)
    code, out = tpi(capsys, "runner", "destroy", "gh")
    assert code == 0 and "already unregistered" in out
    assert list(registry.machines_dir().glob("tpi-*")) == []


def test_destroy_unregisters_a_waiting_runner(forge: ForgeContract, tpi_home: Path, capsys) -> None:
    assert create(capsys, forge, "github", "--name", "waiting", "--idle-timeout", "10m")[0] == 0
    runner_id = registry.records()[0]["runner"]["runner_id"]
    machine_id = registry.records()[0]["id"]
    wait_for(lambda: any(c.path == "/_standin/acquire" for c in forge.calls), timeout=30)
    code, out = tpi(capsys, "runner", "destroy", "waiting")
    assert code == 0 and "runner waiting: unregistered" in out, out
    assert runner_id in forge.removed and forge.runners == {}
    assert machine_processes(machine_id) == []
    assert registry.records() == []


def test_gitlab_idle_timeout_without_a_job(forge: ForgeContract, tpi_home: Path, capsys) -> None:
    assert create(capsys, forge, "gitlab", "--name", "idle", "--idle-timeout", "1s", "--single")[0] == 0
    runner_id = registry.records()[0]["runner"]["runner_id"]
    wait_for(lambda: runner_id in forge.removed, timeout=30)
    wait_for(lambda: status(capsys, "idle") == "released", timeout=30)
    assert tpi(capsys, "runner", "destroy", "idle")[0] == 0


def test_a_failed_machine_removes_its_registration(
    forge: ForgeContract, tpi_home: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(local, "SSHD", "/bin/false")
    code, out = create(capsys, forge, "gitlab", "--name", "broken")
    assert code == 2 and "everything made was removed" in out and out.count("\n") == 1
    assert forge.runners == {} and len(forge.removed) == 1
    assert registry.records() == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"REPO_TOKEN": ""}, "REPO_TOKEN: not set"),
        (
            {"REPO_TOKEN": "wrong"},
            "runner: the forge refused (GET /api/v4/projects/acme%2Fml%2Fmodels: HTTP 401",
        ),
        ({"--labels": "gpu,,b@d"}, "--labels: 'b@d' is not a label"),
        ({"--idle-timeout": "soon"}, "--idle-timeout: 'soon' is not a duration"),
        ({"--repo": "https://gitlab.example.com/"}, "--repo:"),
        (
            {"--api-url": "http://gitlab.example.com/api/v4"},
            "--api-url: 'http://gitlab.example.com/api/v4' would send REPO_TOKEN unencrypted",
        ),
        ({"cloud": "az"}, "cloud: runners on az are not built yet; accepted: local, aws, gcp, k8s"),
    ],
)
def test_bad_runner_input_is_one_line(
    forge: ForgeContract, tpi_home: Path, capsys, monkeypatch, change, expected
) -> None:
    words = {"--driver": "gitlab", "--repo": GITLAB_REPO, "--api-url": forge.gitlab_api, "--labels": "gpu",
             "--idle-timeout": "5m"}  # fmt: skip
    assignments = []
    for key, value in change.items():
        if key == "REPO_TOKEN":
            monkeypatch.setenv(key, value)
        elif key.startswith("--"):
            words[key] = value
        else:
            assignments.append(f"{key}={value}")
    code, out = tpi(capsys, "runner", "create", *[w for pair in words.items() for w in pair], *assignments)
    assert code == 2 and out.startswith("tpi: error: ") and out.count("\n") == 1 and expected in out, out
    assert TOKEN not in out and "wrong" not in out
    assert forge.runners == {} and registry.records() == []
