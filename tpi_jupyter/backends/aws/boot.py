"""The AWS boot script (user data): installs this client's agent with its lock, runs it.

It holds no secret: the machine reads the task (script, environment, data) from its bucket with
its instance role.
"""

from __future__ import annotations

import shlex

from .common import AwsState

MACHINE_DIR = "/opt/tpi"


def user_data(task_id: str, remote: str, state: AwsState, boto3_version: str) -> str:
    region = state.region
    wheel = f"{MACHINE_DIR}/{state.wheel_key.rsplit('/', 1)[-1]}"
    lock = f"{MACHINE_DIR}/lock.txt"
    download = (
        "import boto3; s3 = boto3.client('s3'); "
        f"s3.download_file({state.bucket!r}, {state.wheel_key!r}, {wheel!r}); "
        f"s3.download_file({state.bucket!r}, {state.lock_key!r}, {lock!r})"
    )
    deadline = int(state.deadline)
    pip = f"{MACHINE_DIR}/venv/bin/pip install -q -c {lock}"
    agent = [f"{MACHINE_DIR}/venv/bin/python", "-m", "tpi_jupyter.agent", "--remote", remote,
             "--rank", "auto", "--release", "aws", "--machine-dir", f"{MACHINE_DIR}/machine"]  # fmt: skip
    return f"""#!/bin/bash
# tpi-jupyter boot script for task {task_id}. It holds no secret: the machine reads the
# task (script, environment, data) from its bucket with its instance role.
set -u
mkdir -p {MACHINE_DIR}
exec >>/var/log/tpi-boot.log 2>&1
export AWS_DEFAULT_REGION={region} AWS_REGION={region}
# The deadline is absolute; give a late machine 10 minutes to report and release itself.
left=$(( {deadline} + 600 - $(date +%s) )); [ "$left" -lt 600 ] && left=600
( sleep "$left"; shutdown -h now ) &
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  if command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq python3-venv python3-pip
  elif command -v dnf >/dev/null; then dnf install -yq python3 python3-pip
  else yum install -yq python3 python3-pip; fi
fi
python3 -m venv {MACHINE_DIR}/venv
{MACHINE_DIR}/venv/bin/pip install -q 'boto3=={boto3_version}'
{shlex.join([f"{MACHINE_DIR}/venv/bin/python", "-c", download])}
# The exact versions this client runs (the lock), not whatever the ranges allow today.
{pip} '{wheel}[aws]'
{shlex.join(agent)}
# The agent released this machine (or had nothing to do); if it could not, stop the machine.
shutdown -h now
"""
