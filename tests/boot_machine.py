"""A scratch machine for running boot scripts: stand-ins first on PATH, recorded calls.

The stand-ins play what a machine has and a test must not touch: apt-get, dnf, systemctl,
logger, journalctl, shutdown, sleep, an old and a new python3 (whose venvs run this test's
interpreter and a recording pip). The metadata service is the IMDSv2 stand-in (tests/imds.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tpi_jupyter.backends.kit import boot

from .imds import Imds

WHEEL_KEY = ".tpi/agent/tpi_jupyter-9.9-py3-none-any.whl"
LOCK_KEY = ".tpi/agent/lock.txt"
REMOTE = "file:///remote/task"

# The cloud fragment of these tests: the remote is a directory; reads are refused while
# `.deny-reads` counts down (a fresh role whose credentials have not settled yet).
TEST_HELPER = """
import os
import pathlib
import urllib.request

STORE = pathlib.Path(os.environ["TEST_STORE"])
IMDS = os.environ["TPI_IMDS_URL"]


def machine_id():
    ask = urllib.request.Request(IMDS + "/api/token", method="PUT",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    token = urllib.request.urlopen(ask, timeout=5).read().decode()
    get = urllib.request.Request(IMDS + "/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(get, timeout=5).read().decode()


def read(key):
    gate = STORE / ".deny-reads"
    if gate.exists() and int(gate.read_text()) > 0:
        gate.write_text(str(int(gate.read_text()) - 1))
        raise PermissionError("AccessDenied: the role is not usable yet")
    return (STORE / key).read_bytes()


def write(key, data):
    (STORE / key).parent.mkdir(parents=True, exist_ok=True)
    (STORE / key).write_bytes(data)


def keys(prefix):
    return [p.relative_to(STORE).as_posix() for p in (STORE / prefix).rglob("*") if p.is_file()]


def release(machine_id):
    (STORE / ".released").write_text(machine_id)
"""

RECORD = '#!/bin/bash\necho "$(basename "$0") $*" >>"$CALLS"\n'
# A python3 that passes the boot script's check, and makes venvs whose python is this test's
# interpreter and whose pip is a recording stand-in.
GOOD_PYTHON = (
    RECORD
    + """if [ "$1" = -c ]; then exit 0; fi
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\nexec "%s" "$@"\\n' "$REAL_PY" >"$3/bin/python"
  cp "$STANDINS/pip" "$3/bin/pip"
  chmod +x "$3/bin/python" "$3/bin/pip"
  exit 0
fi
exit 3
"""
)
STANDINS = {
    "old-python": RECORD + "exit 1\n",  # Python 3.8, or no venv module
    "good-python": GOOD_PYTHON,
    "pip": RECORD + 'case "$*" in *".whl["*) [ -z "${PIP_FAIL_WHEEL:-}" ];; esac\n',
    "apt-get": RECORD
    + """if [ -f "$STATE/apt-lock" ]; then rm "$STATE/apt-lock"; echo "E: Could not get lock"; exit 100; fi
case "$*" in *"install python3 python3-venv"*) cp "$STANDINS/good-python" "$BIN/python3";; esac
""",
    "dnf": RECORD
    + 'case "$*" in *"install -y -q python3.11"*) cp "$STANDINS/good-python" "$BIN/python3.11";; esac\n',
    "systemctl": RECORD,
    "shutdown": RECORD,
    "sleep": RECORD,
    "journalctl": RECORD + 'echo "journal: agent crashed"\n',
    "logger": RECORD + 'cat >>"$STATE/syslog"\n',
}
TOOLS = ("cat", "mkdir", "install", "date", "rm", "chmod", "cp", "basename", "env", "printf")


class Machine:
    """A scratch machine: paths, stand-ins, the remote directory, and the recorded calls."""

    def __init__(self, base: Path, metadata: Imds):
        self.base = base
        self.root, self.store, self.state = base / "opt-tpi", base / "remote", base / "state"
        self.bin, self.tools, self.standins = base / "bin", base / "tools", base / "standins"
        for path in (self.store, self.state, self.bin, self.tools, self.standins):
            path.mkdir(parents=True)
        for name, text in STANDINS.items():
            (self.standins / name).write_text(text)
            (self.standins / name).chmod(0o755)
        for tool in TOOLS:
            found = shutil.which(tool)
            assert found, tool
            (self.tools / tool).symlink_to(found)
        self.boot_log, self.console = base / "boot.log", base / "console"
        self.console.write_text("")
        self.calls_file = base / "calls"
        self.calls_file.write_text("")
        self.metadata = metadata
        (self.store / WHEEL_KEY).parent.mkdir(parents=True)
        (self.store / WHEEL_KEY).write_bytes(b"wheel bytes")
        (self.store / LOCK_KEY).write_text("boto3==1.43.117\n")
        self.extra_env: dict[str, str] = {}  # e.g. a cloud endpoint for the helper

    def give(self, *names: str, python: str = "") -> None:
        """Put stand-ins on the machine's PATH (python: 'old' or 'good' python3)."""
        for name in names:
            shutil.copy(self.standins / name, self.bin / name)
        if python:
            shutil.copy(self.standins / f"{python}-python", self.bin / "python3")

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{self.tools}", "TPI_ROOT": str(self.root), "TPI_BOOT_LOG": str(self.boot_log),
            "TPI_CONSOLE": str(self.console), "TPI_UNIT_DIR": str(self.base / "units"),
            "TPI_IMDS_URL": self.metadata.url, "TEST_STORE": str(self.store), "CALLS": str(self.calls_file),
            "STATE": str(self.state), "STANDINS": str(self.standins), "BIN": str(self.bin),
            "REAL_PY": sys.executable, **self.extra_env, **extra,
        }  # fmt: skip

    def run(self, text: str, *args: str, **extra: str) -> int:
        script = self.base / "user-data"
        script.write_text(text)
        done = subprocess.run(["/bin/bash", str(script), *args], env=self.env(**extra), timeout=120)
        return done.returncode

    def calls(self, program: str) -> list[str]:
        lines = self.calls_file.read_text().splitlines()
        return [
            line.split(" ", 1)[1] if " " in line else "" for line in lines if line.split(" ")[0] == program
        ]

    def unit(self) -> str:
        return (self.base / "units" / boot.UNIT).read_text()

    def remote(self, key: str) -> str:
        return (self.store / key).read_text()
