"""`tpi` as a subprocess, with the AWS backend's waits shortened as tests/aws_moto.py's fixture
does in-process (moto needs no two minutes for an instance profile to propagate). The verbs are
the real CLI's; only the class-level waits differ. Used by the client-crash tests, which kill it.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from tpi_jupyter.backends.aws import AwsBackend
from tpi_jupyter.backends.base import Timing
from tpi_jupyter.cli import main

FAST = {"POLL": 0.05, "PROFILE_PROPAGATION": 0.0, "STOP_WAIT": 2.0, "GROUP_DELETE_WAIT": 10.0,
        "DEPENDENCY_WAIT": 1.0}  # fmt: skip

if __name__ == "__main__":
    for name, value in FAST.items():
        setattr(AwsBackend, name, value)
    AwsBackend.capabilities = replace(
        AwsBackend.capabilities, timing=Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=1),
        poll_interval=0.5,
    )  # fmt: skip
    sys.exit(main())
