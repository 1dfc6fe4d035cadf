"""How the agent starts a script in a container image that may hold only /bin/sh (agent_shell.py).

These run the chosen commands for real on this machine, which has bash; `BASH` is pointed at a
missing path to play an image without it. The same paths in a root filesystem that really holds
nothing but busybox's sh: tests/test_k8s_images.py on the Kubernetes test bed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tpi_jupyter import agent_shell
from tpi_jupyter.agent import script_command
from tpi_jupyter.backends.base import machine_hooks


def run(script: Path) -> subprocess.CompletedProcess[str]:
    command = agent_shell.container_command(script)
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=script.parent)


def write(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "script"
    script.write_text(body)
    script.chmod(0o700)
    return script


BASHISM = '[[ -n "$BASH_VERSION" ]] && echo "bash $0" || echo "not bash"\n'


def test_a_present_interpreter_is_honoured(tmp_path: Path) -> None:
    script = write(tmp_path, "#!/bin/bash\n" + BASHISM)
    assert agent_shell.container_command(script) == [str(script)]
    assert run(script).stdout.startswith("bash ")
    script = write(tmp_path, "#!/usr/bin/env python3\nimport sys; print('python', sys.version_info[0])\n")
    assert run(script).stdout == "python 3\n"


def test_no_shebang_runs_under_bash_when_the_image_has_it(tmp_path: Path) -> None:
    script = write(tmp_path, BASHISM)
    assert agent_shell.container_command(script) == ["/bin/bash", str(script)]
    assert run(script).stdout.startswith("bash ")


def test_without_bash_no_shebang_and_a_bash_shebang_fall_back_to_sh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_shell, "BASH", str(tmp_path / "no-bash"))
    script = write(tmp_path, 'echo "no shebang, $0"\n')
    done = run(script)
    assert done.returncode == 0 and done.stdout == f"no shebang, {script}\n"
    assert "no shebang and no " in done.stderr and "running the script with /bin/sh" in done.stderr
    # `#!/bin/bash -e` keeps -e under sh: the failing line ends the script
    script = write(tmp_path, f"#!{tmp_path}/bin/bash -e\necho before\nfalse\necho after\n")
    done = run(script)
    assert (done.returncode, done.stdout) == (1, "before\n")
    assert "asks for bash" in done.stderr and "running it with /bin/sh" in done.stderr
    script = write(tmp_path, "#!/usr/bin/env tpi-no-such-bash-here\necho x\n")
    assert run(script).returncode == 127  # `env NAME` of a missing program that is not bash


def test_a_missing_interpreter_that_is_not_bash_fails_127_with_one_line(tmp_path: Path) -> None:
    script = write(tmp_path, "#!/opt/conda/bin/python -u\nprint(1)\n")
    done = run(script)
    assert done.returncode == 127 and done.stdout == ""
    assert done.stderr == (
        "tpi-agent: the script's interpreter /opt/conda/bin/python is not in this image "
        "(shebang: #!/opt/conda/bin/python -u)\n"
    )


def test_the_choice_is_a_machine_hook_and_the_clouds_keep_the_login_shell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert machine_hooks("k8s").script_command is agent_shell.container_command
    for cloud in ("aws", "gcp", "az"):
        assert getattr(machine_hooks(cloud), "script_command", script_command) is script_command
    monkeypatch.setenv("TPI_PRIVATE_AGENT", "1")  # as the VMs' boot script sets it
    script = write(tmp_path, "echo hi\n")
    assert script_command(script) == ["/bin/bash", "-l", str(script)]
