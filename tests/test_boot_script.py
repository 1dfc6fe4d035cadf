"""The shared boot script (backends/kit/boot.py), checked and run branch by branch.

`bash -n` and shellcheck check the generated script; then it runs for real, unprivileged, with
stand-ins first on PATH for what a machine has and a test must not touch: apt-get, dnf,
systemctl, logger, journalctl, shutdown, sleep, an old and a new python3. The stand-ins record
their calls. The metadata service is the IMDSv2 stand-in (tests/imds.py) on 127.0.0.1, and the
task's remote is a directory reached by a test helper (the cloud's fragment), so nothing here
leaves the loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpi_jupyter.backends.aws.boot import cloud_boot
from tpi_jupyter.backends.kit import boot

from .boot_machine import LOCK_KEY, REMOTE, TEST_HELPER, WHEEL_KEY, Machine
from .imds import Imds, imds  # noqa: F401 - fixture


@pytest.fixture
def machine(tmp_path: Path, imds: Imds) -> Iterator[Machine]:  # noqa: F811 - the imported fixture
    yield Machine(tmp_path, imds)


def plan(deadline: float | None = None, limit: int = 3, lock: str = "") -> boot.BootPlan:
    return boot.BootPlan(task_id="tpi-test-0000-1111", remote=REMOTE,
                         deadline=time.time() + 3600 if deadline is None else deadline,
                         wheel_key=WHEEL_KEY, failed_boot_limit=limit, lock_key=lock)  # fmt: skip


def local_cloud() -> boot.CloudBoot:
    return boot.CloudBoot(name="test", environment={"TEST_CLOUD_REGION": "here-1"},
                          bootstrap=("storage-client==1.2.3",), helper=TEST_HELPER)  # fmt: skip


def aws_cloud() -> boot.CloudBoot:
    return cloud_boot("us-west-1", "tpi-bucket-abc", "tpi-task-prefix", "1.43.117")


@pytest.mark.parametrize("cloud", [local_cloud, aws_cloud], ids=["test-cloud", "aws"])
def test_generated_script_passes_bash_n_and_shellcheck(tmp_path: Path, cloud: object) -> None:
    assert callable(cloud)
    path = tmp_path / "user-data"
    path.write_text(boot.script(plan(), cloud()))
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):  # scripts/install-tools puts it there: CI must lint for real
            pytest.fail("shellcheck is missing; scripts/install-tools installs it")
        pytest.skip("shellcheck is not installed (Debian package shellcheck; scripts/install-tools)")
    result = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    helper = tmp_path / "helper.py"
    helper.write_text(boot.helper_source(cloud()))
    subprocess.run([sys.executable, "-m", "py_compile", str(helper)], check=True)


def test_script_refuses_words_it_cannot_quote() -> None:
    bad = boot.BootPlan(task_id="x", remote="s3://b/p; rm -rf /", deadline=0, wheel_key=WHEEL_KEY,
                        failed_boot_limit=3)  # fmt: skip
    with pytest.raises(ValueError, match="does not quote"):
        boot.script(bad, local_cloud())


def test_image_with_python_boots_the_agent_as_a_systemd_unit(machine: Machine, imds: Imds) -> None:  # noqa: F811
    machine.give("systemctl", "sleep", "logger", python="good")
    assert machine.run(boot.script(plan(), local_cloud())) == 0
    assert machine.calls("apt-get") == [] and machine.calls("dnf") == []
    assert machine.calls("pip") == [
        "install -q --disable-pip-version-check storage-client==1.2.3",
        f"install -q --disable-pip-version-check {machine.root}/tpi_jupyter-9.9-py3-none-any.whl[test]",
    ]
    assert (machine.root / "tpi_jupyter-9.9-py3-none-any.whl").read_bytes() == b"wheel bytes"
    assert machine.calls("systemctl") == ["daemon-reload", f"start --no-block {boot.UNIT}"]
    unit = machine.unit()
    runtime = int(next(line for line in unit.splitlines() if line.startswith("RuntimeMaxSec=")).split("=")[1])
    assert 3600 + boot.GRACE - 60 <= runtime <= 3600 + boot.GRACE
    for line in ("Environment=HOME=/root", "Environment=TPI_PRIVATE_AGENT=1",
                 "Environment=TEST_CLOUD_REGION=here-1", f"ExecStopPost={machine.root}/boot.sh after-agent",
                 f"ExecStart={machine.root}/venv/bin/python -m tpi_jupyter.agent --remote {REMOTE} --rank auto "
                 f"--release test --machine-dir {machine.root}/machine --boot-log {machine.boot_log}"):  # fmt: skip
        assert line in unit.splitlines(), (line, unit)
    assert (machine.root / "boot.sh").stat().st_mode & 0o777 == 0o700
    # The boot log reached the console and the remote under the machine id from the metadata service.
    assert "tpi-boot: done: the agent runs as tpi-agent.service" in machine.console.read_text()
    log = machine.remote(".tpi/machines/i-0123456789abcdef0/boot-log")
    assert "python: " in log and "machine i-0123456789abcdef0" in log
    assert not (machine.store / ".tpi/machines/i-0123456789abcdef0/failed").exists()
    assert imds.asked("/api/token") >= 1 and imds.asked("/meta-data/instance-id") >= 1
    assert "poweroff --no-block" not in machine.calls("systemctl")


def test_the_agent_installs_with_the_client_lock(machine: Machine) -> None:
    machine.give("systemctl", "sleep", python="good")
    assert machine.run(boot.script(plan(lock=LOCK_KEY), local_cloud())) == 0
    lock = machine.root / "lock.txt"
    assert lock.read_text() == "boto3==1.43.117\n"
    wheel = f"{machine.root}/tpi_jupyter-9.9-py3-none-any.whl[test]"
    assert machine.calls("pip")[-1] == f"install -q --disable-pip-version-check -c {lock} {wheel}"


def test_a_late_machine_still_gets_time_to_report(machine: Machine) -> None:
    machine.give("systemctl", "sleep", python="good")
    assert machine.run(boot.script(plan(deadline=time.time() - 7200), local_cloud())) == 0
    assert f"RuntimeMaxSec={boot.MIN_RUNTIME}" in machine.unit().splitlines()


def test_old_python_is_replaced_with_apt_waiting_for_the_lock(machine: Machine) -> None:
    machine.give("apt-get", "systemctl", "sleep", python="old")
    (machine.state / "apt-lock").write_text("held by unattended-upgrades")
    assert machine.run(boot.script(plan(), local_cloud())) == 0
    apt = machine.calls("apt-get")
    options = "-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -yq"
    assert apt == [f"{options} update", f"{options} update", f"{options} install python3 python3-venv"]
    assert machine.calls("sleep") == ["15"]  # the retry after the held lock
    assert "attempt 1 of 5 failed: tpi_apt update" in machine.boot_log.read_text()
    assert f"start --no-block {boot.UNIT}" in machine.calls("systemctl")


def test_dnf_images_get_python_3_11(machine: Machine) -> None:
    machine.give("dnf", "systemctl", "sleep", python="old")
    assert machine.run(boot.script(plan(), local_cloud())) == 0
    assert machine.calls("dnf") == ["install -y -q python3.11"]
    assert f"python: {machine.bin}/python3.11" in machine.boot_log.read_text()
    assert f"start --no-block {boot.UNIT}" in machine.calls("systemctl")


def test_image_without_python_or_installer_fails_clearly_and_powers_off(machine: Machine) -> None:
    machine.give("systemctl", "sleep", "shutdown", python="old")
    assert machine.run(boot.script(plan(), local_cloud())) != 0
    console = machine.console.read_text()
    assert "this image has no Python 3.10+, and neither apt-get nor dnf to install one" in console
    assert "in tpi_boot: command failed with exit 1" in console  # the ERR trap names line and step
    assert "FAILED: boot script exit 1" in console
    assert machine.calls("systemctl") == ["poweroff --no-block"]
    assert not (machine.base / "units" / boot.UNIT).exists()
    assert not (machine.store / ".tpi/machines").exists()  # no helper yet: the console is the record


def test_console_unwritable_falls_back_to_the_system_log(machine: Machine) -> None:
    machine.give("systemctl", "sleep", "logger", python="good")
    code = machine.run(boot.script(plan(), local_cloud()), TPI_CONSOLE=str(machine.base / "no" / "console"))
    assert code == 0
    assert machine.calls("logger") == ["-t tpi-boot"]
    assert "done: the agent runs as" in (machine.state / "syslog").read_text()


def test_wheel_download_retries_while_credentials_settle(machine: Machine) -> None:
    machine.give("systemctl", "sleep", python="good")
    (machine.store / ".deny-reads").write_text("3")
    assert machine.run(boot.script(plan(), local_cloud())) == 0
    assert machine.calls("sleep") == ["10", "10", "10"]
    assert "AccessDenied: the role is not usable yet" in machine.boot_log.read_text()
    assert (machine.root / "tpi_jupyter-9.9-py3-none-any.whl").exists()


def test_failed_boots_report_to_the_remote_and_stop_respawning_at_the_limit(
    machine: Machine,
    imds: Imds,  # noqa: F811
) -> None:
    machine.give("systemctl", "sleep", python="good")
    text = boot.script(plan(limit=2), local_cloud())
    assert machine.run(text, PIP_FAIL_WHEEL="1") != 0
    first = ".tpi/machines/i-0123456789abcdef0"
    assert "FAILED: boot script exit 1" in machine.remote(f"{first}/boot-log")
    assert "gave up after 5 attempts" in machine.remote(f"{first}/boot-log")
    assert machine.remote(f"{first}/failed") == "boot script exit 1"
    assert not (machine.store / ".released").exists()  # 1 failed boot < 2: the group may respawn it
    assert machine.calls("systemctl")[-1] == "poweroff --no-block"
    imds.set_instance("i-0second000000000")  # the group's replacement fails the same way
    shutil.rmtree(machine.root)
    assert machine.run(text, PIP_FAIL_WHEEL="1") != 0
    assert (machine.store / ".released").read_text() == "i-0second000000000"
    assert "released this machine from its group" in machine.remote(
        ".tpi/machines/i-0second000000000/boot-log"
    ) + (machine.boot_log.read_text())


def test_after_agent_powers_off_and_counts_only_crashes(machine: Machine) -> None:
    machine.give("systemctl", "sleep", "journalctl", python="good")
    assert machine.run(boot.script(plan(), local_cloud())) == 0
    installed = (machine.root / "boot.sh").read_text()
    failed = machine.store / ".tpi/machines/i-0123456789abcdef0/failed"
    for result in ("success", "timeout"):
        assert (
            machine.run(installed, "after-agent", SERVICE_RESULT=result, EXIT_CODE="exited", EXIT_STATUS="0")
            == 0
        )
        assert machine.calls("systemctl")[-1] == "poweroff --no-block"
        assert not failed.exists(), result
    assert machine.calls("journalctl") == []
    assert (
        machine.run(installed, "after-agent", SERVICE_RESULT="exit-code", EXIT_CODE="exited", EXIT_STATUS="1")
        == 0
    )
    assert failed.read_text() == "agent exit-code (exited 1)"
    assert machine.calls("journalctl") == [f"-u {boot.UNIT} --no-pager -n 200"]
    assert "journal: agent crashed" in machine.remote(".tpi/machines/i-0123456789abcdef0/boot-log")
    assert machine.calls("systemctl")[-1] == "poweroff --no-block"


def test_environment_values_never_reach_the_script() -> None:
    text = boot.script(plan(), aws_cloud())
    assert "AWS_SECRET_ACCESS_KEY" not in text and "AWS_ACCESS_KEY_ID" not in text
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "absent-secret") not in text
