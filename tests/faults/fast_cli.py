"""`tpi` as a subprocess, with each backend's waits shortened as the tests' fixtures do in-process
(tests/aws_moto.py, tests/test_azure.py, tests/test_k8s_backend.py: moto needs no two minutes for
an instance profile to propagate, played machines answer a stop in a second). The verbs are the
real CLI's; only class-level waits differ, and on Azure the credential is the tests' `get_token`
stand-in when the tests' contract server is the Resource Manager. Used by the client-crash
tests, which kill it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

from tpi_jupyter.backends.aws import AwsBackend
from tpi_jupyter.backends.base import Timing
from tpi_jupyter.cli import main

FAST = {"POLL": 0.05, "PROFILE_PROPAGATION": 0.0, "STOP_WAIT": 2.0, "GROUP_DELETE_WAIT": 10.0,
        "DEPENDENCY_WAIT": 1.0}  # fmt: skip
TIMING = Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=1)
# The other clouds: what their test fixtures set (GCP's fixture sets nothing: its tests' machines
# end by themselves; here a destroy stops running ones, which a 10 s heartbeat would slow).
OTHERS = {
    ("tpi_jupyter.backends.gcp", "GcpBackend"): {"POLL": 0.2, "STOP_WAIT": 20.0},
    ("tpi_jupyter.backends.azure", "AzureBackend"): {"POLL": 0.05, "STOP_WAIT": 20.0},
    ("tpi_jupyter.backends.k8s", "K8sBackend"): {"POLL": 0.3, "STOP_WAIT": 30.0, "DELETE_WAIT": 90.0},
}


def fast_others() -> None:
    import importlib

    for (module, name), waits in OTHERS.items():
        backend = getattr(importlib.import_module(module), name)
        for key, value in waits.items():
            setattr(backend, key, value)
        backend.capabilities = replace(backend.capabilities, timing=TIMING, poll_interval=0.3)
    if os.environ.get("TPI_AZURE_RESOURCE_MANAGER", "").startswith("http://127.0.0.1:"):
        from tests.test_azure import StandInCredential
        from tpi_jupyter.backends.azure import clients

        clients.credential = StandInCredential  # type: ignore[assignment]


if __name__ == "__main__":
    for key, value in FAST.items():
        setattr(AwsBackend, key, value)
    AwsBackend.capabilities = replace(AwsBackend.capabilities, timing=TIMING, poll_interval=0.5)
    fast_others()
    sys.exit(main())
