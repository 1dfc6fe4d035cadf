"""The Kubernetes machine hooks (`tpi_jupyter.machines: k8s`): a machine is a Job's pod.

`identity()` is the pod's name (`TPI_INSTANCE_ID`, set from the downward API). `release()` does
nothing: a pod releases itself by completing, and the Job does not replace a completed index.
`notice()` is None: a disruption reaches the pod as SIGTERM (see pod.py).
`script_command` runs the script with nothing from the image but `/bin/sh` (agent_shell.py).
"""

from __future__ import annotations

import os
import socket

from ...agent_shell import container_command as script_command

__all__ = ["identity", "notice", "release", "script_command"]


def identity() -> str:
    return os.environ.get("TPI_INSTANCE_ID") or socket.gethostname()


def release(machine_id: str) -> None:
    """Nothing to do: the pod completes."""


def notice() -> str | None:
    return None
