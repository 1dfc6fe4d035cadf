"""Long-lived local machines: a real sshd on loopback with the machine's own key (issue 19)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import psutil
import pytest

from tpi_jupyter import cli
from tpi_jupyter.machines import local, registry

from .conftest import wait_for
from .machine_words import destroy_all

pytestmark = pytest.mark.skipif(
    not Path(local.SSHD).exists(), reason="needs openssh-server (scripts/install-tools)"
)


def tpi(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str, str]:
    code = cli.main(list(words))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def machine_processes(machine_id: str) -> list[psutil.Process]:
    """Every process started for the machine: sshd by its configuration, the rest by its mark."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if machine_id in " ".join(process.info["cmdline"] or ()) or \
                    process.environ().get("TPI_PROCESS_MARK") == f"machine:{machine_id}":  # fmt: skip
                found.append(process)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def machines_home(tpi_home: Path):
    yield tpi_home
    destroy_all()  # whatever a failed test left running


def test_create_ssh_stop_start_destroy(machines_home: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    script = tmp_path / "startup.sh"
    script.write_text('echo "booted as $USER" > booted.txt\nenv > startup-env.txt\nsleep 600\n')
    monkeypatch.setenv("REPO_TOKEN", "secret-token-never-on-machines")
    code, out, err = tpi(
        capsys, "machine", "create", "box", "machine=m", "tags=team=ml", "--startup-script", str(script)
    )
    assert code == 0, err
    assert "machine box: running on local" in out
    record = registry.records()[0]
    root = Path(record["state"]["dir"])
    key = Path(record["state"]["key_file"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert record["spec"]["tags"] == {"team": "ml"}

    code, out, _ = tpi(capsys, "machine", "ssh", "box")
    assert code == 0 and out.startswith("ssh -i ") and str(key) in out
    assert key.read_text().strip().splitlines()[1] not in out  # the path, never the key
    done = subprocess.run([*out.split(), "cat booted.txt 2>/dev/null || cat $HOME/booted.txt; echo $TPI_MACHINE"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    wait_for(lambda: (root / "disk" / "booted.txt").exists(), timeout=10)
    assert record["id"] in done.stdout
    env_text = (root / "disk" / "startup-env.txt").read_text()
    assert "REPO_TOKEN" not in env_text and "secret-token" not in env_text  # a clean environment

    code, out, _ = tpi(capsys, "machine", "list")
    assert "box" in out and "running" in out and "$0.00 (local)" in out
    code, out, _ = tpi(capsys, "machine", "list", "--json")
    assert json.loads(out)[0]["status"] == "running"

    assert tpi(capsys, "machine", "stop", "box")[0] == 0
    assert machine_processes(record["id"]) == []
    assert "stopped" in tpi(capsys, "machine", "list")[1]
    assert tpi(capsys, "machine", "ssh", "box")[0] == 2  # a stopped machine is not reachable
    assert tpi(capsys, "machine", "start", "box")[0] == 0
    assert (
        subprocess.run([*tpi(capsys, "machine", "ssh", "box")[1].split(), "true"], timeout=30).returncode == 0
    )

    session = subprocess.Popen([*tpi(capsys, "machine", "ssh", "box")[1].split(), "sleep 300"])
    wait_for(
        lambda: any("sleep" in " ".join(p.cmdline()) for p in machine_processes(record["id"])), timeout=10
    )
    code, out, _ = tpi(capsys, "machine", "destroy", "box")
    assert code == 0 and "destroyed" in out
    session.wait(timeout=10)
    assert machine_processes(record["id"]) == []
    assert not root.exists() and not key.exists() and registry.records() == []
    code, out, _ = tpi(capsys, "machine", "destroy", "box")  # idempotent
    assert code == 0 and "already gone" in out


def test_dry_run_makes_nothing(machines_home: Path, capsys) -> None:
    code, out, _ = tpi(capsys, "machine", "create", "plan", "--dry-run")
    assert code == 0 and "would make:" in out and "sshd" in out
    assert registry.records() == [] and not registry.machines_dir().exists()


def test_ssh_run_returns_the_remote_exit_code(machines_home: Path, capsys) -> None:
    assert tpi(capsys, "machine", "create", "runbox")[0] == 0
    assert tpi(capsys, "machine", "ssh", "runbox", "--run", "--", "exit 7")[0] == 7
    assert tpi(capsys, "machine", "destroy", "runbox")[0] == 0


def test_failure_midway_rolls_back(machines_home: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(local, "SSHD", "/bin/false")  # a real process that exits at once
    code, _, err = tpi(capsys, "machine", "create", "broken")
    assert code == 2
    assert err.count("\n") == 1 and "sshd did not start" in err and "everything made was removed" in err
    assert registry.records() == [] and list(registry.machines_dir().glob("tpi-*")) == []


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["create", "x", "parallelism=2"], "parallelism: not an argument of a machine; accepted: cloud,"),
        (["create", "x", "cloud=mars"], "cloud: 'mars' is not accepted"),
        (["create", "x", "spot=cheap"], "spot:"),
        (["create", "../x"], "NAME:"),
        (["create", "x", "--startup-script", "/nonexistent"], "--startup-script: cannot read"),
        (["ssh", "nobody"], "machine 'nobody' is not in the registry"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_input_is_one_line_and_creates_nothing(machines_home: Path, capsys, words, expected) -> None:
    code, out, err = tpi(capsys, "machine", *words)
    assert code == 2 and out == ""
    assert err.startswith("tpi: error: ") and err.count("\n") == 1 and expected in err
    assert "Traceback" not in err
    assert not registry.machines_dir().exists() or list(registry.machines_dir().glob("tpi-*")) == []


def test_a_cloud_without_a_driver_is_refused_in_one_line() -> None:
    from tpi_jupyter.machines.driver import get_driver
    from tpi_jupyter.spec import SpecError

    with pytest.raises(
        SpecError, match=r"^cloud: 'nowhere': not a cloud; accepted for machines: aws, az, gcp, k8s, local$"
    ):
        get_driver("nowhere")


def test_the_magic_runs_the_same_verbs(machines_home: Path, capsys) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    from tpi_jupyter.magics import register

    shell = get_ipython()
    register(shell)
    shell.run_line_magic("tpi", "machine create nbbox")
    shell.run_line_magic("tpi", "machine list")
    assert "nbbox" in capsys.readouterr().out
    with pytest.raises(UsageError, match="parallelism: not an argument of a machine"):
        shell.run_line_magic("tpi", "machine create other parallelism=3")
    shell.run_line_magic("tpi", "machine destroy nbbox")
    assert registry.records() == []
    assert os.environ.get("TPI_JUPYTER_HOME") == str(machines_home)
