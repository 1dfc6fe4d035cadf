"""Client crashes on GCP, Azure, Kubernetes and the local backend (AWS: test_crashes.py).

`tpi run` and `tpi destroy` are killed with SIGKILL at random (seeded) points; then `tpi destroy`
finishes what the registry recorded, `tpi sweep <cloud> --yes` removes what only labels and tags
tell, a second destroy ends clean, and the server (or this machine) holds nothing of any kind
the backend makes: GCP's contract server and fake-gcs-server, Azure's contract server and
Azurite, the Kubernetes test bed and its moto bucket, the local backend's processes (psutil).
The script runs long, so every kill finds machines running. CI runs 2 rounds per backend;
benchmarks/soak.py runs 10 (TPI_FAULT_CRASHES). Random points seldom hit the gap between a
create request and the registry's next save, so `tpi run` is also killed the moment named
requests reach the server: the regression tests of the two defects these found (GCP, Azure).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tpi_jupyter.agent import PROCESS_MARK

from ..aws_moto import client, moto_endpoint  # noqa: F401 - fixtures
from ..azure_contract import ContractServer as ArmServer
from ..azure_contract import _kind
from ..gcp_contract import ContractServer as GcpServer
from ..test_azure import arm, azurite, imds  # noqa: F401 - fixtures
from ..test_gcp import buckets, contract, gcp, gcs_url  # noqa: F401 - fixtures
from ..test_k8s_backend import cluster, k8s, needs_bed  # noqa: F401 - fixtures
from .crashes import Point, Target, kill_rounds, named_kills

pytestmark = pytest.mark.slow

FILE = "test_crashes_clouds.py"
LONG = "#!/bin/bash\necho started\nsleep 600\n"


@pytest.fixture
def script(tmp_path: Path, workdir: Path) -> Path:
    (workdir / "input.txt").write_text("x" * 1000)
    path = tmp_path / "script"
    path.write_text(LONG)
    return path


def check(rows: list[dict[str, Any]]) -> None:
    assert any(row["killed"] for row in rows) or not rows  # the kills landed inside the commands


def alive(process: Any) -> bool:
    return process is not None and process.poll() is None


# ---------------------------------------------------------------- local: real processes


def local_leftovers(home: Path) -> list[str]:
    """Every live process of any task under this home (by its mark or its command line), and
    every task directory."""
    left = []
    for process in psutil.process_iter():
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            mark = process.environ().get(PROCESS_MARK, "")
            words = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if mark.startswith(str(home)) or str(home / "local") in words:
            left.append(f"process {process.pid} ({process.name()})")
    where = home / "local"
    left += [f"directory {p.name}" for p in where.iterdir()] if where.exists() else []
    return left


def test_local(tpi_home: Path, script: Path) -> None:
    target = Target("local", lambda: local_leftovers(tpi_home), sweep=False, file=FILE + " -k local")
    check(kill_rounds(target, script))
    # the moment the group process (the machines' supervisor) exists, before the registry knows
    running = lambda: lambda: any(item.startswith("process") for item in local_leftovers(tpi_home))  # noqa: E731
    started = named_kills(target, script, {"group started": running})
    assert all(row["killed"] for row in started), started


# ---------------------------------------------------------------- GCP: contract server + fake-gcs-server


def gcp_leftovers(server: GcpServer) -> list[str]:
    with server._lock:
        left = [f"template {n}" for n in server.templates]
        left += [f"group {n}" for n in server.groups]
        left += [f"firewall {n}" for n in server.firewalls]
        left += [f"account {e}" for e in server.accounts]
        left += [f"grant {b['role']}" for b in server.policy.get("bindings", [])]
        # (a bucket's IAM policy, which the server keeps for fake-gcs-server, goes with the bucket)
        left += [f"machine {i.name}" for i in server._leaving if alive(i.process)]
    left += [f"bucket {b['name']}" for b in buckets()]
    return left


def test_gcp(gcp: GcpServer, script: Path) -> None:  # noqa: F811
    check(kill_rounds(Target("gcp", lambda: gcp_leftovers(gcp), file=FILE + " -k gcp"), script))


def posted(server: GcpServer, fragment: str) -> Point:
    """When a POST to that path arrives, of those from now on."""

    def armed() -> Callable[[], bool]:
        start = len(server.calls)
        return lambda: any(m == "POST" and p.endswith(fragment) for m, p, _ in server.calls[start:])

    return armed


def test_gcp_killed_right_after_each_create_request(gcp: GcpServer, script: Path) -> None:  # noqa: F811
    """Regression: a client killed after the firewall rule's insert (or the account's, the
    group's) reached GCP, before the registry saved it, left that resource for good: destroy did
    not know it and sweep finds rules, accounts and groups only through the template."""
    points = {f"after POST {f}": posted(gcp, f) for f in
              ("/global/firewalls", "/serviceAccounts", "/instanceGroupManagers")}  # fmt: skip
    rows = named_kills(Target("gcp", lambda: gcp_leftovers(gcp), file=FILE + " -k gcp"), script, points)
    assert all(row["killed"] and row["recorded"] for row in rows), rows


# ---------------------------------------------------------------- Azure: contract server + Azurite


def azure_leftovers(server: ArmServer, azurite: str) -> list[str]:  # noqa: F811
    from azure.storage.blob import BlobServiceClient

    with server.lock:
        left = [f"resource {body.get('name', rid)}" for rid, body in server.resources.items()]
        left += [f"scale set {s.name}" for s in server.scale_sets.values()]
    left += [f"machine {p.name}" for p in server.played() if alive(p.process)]
    service = BlobServiceClient.from_connection_string(azurite)
    left += [f"container {c.name}" for c in service.list_containers()]
    return left


def azure_target(server: ArmServer, azurite: str) -> Target:  # noqa: F811
    """What was there before the test (other test files share the session's Azurite) is not counted."""
    before = set(azure_leftovers(server, azurite))
    assert all(item.startswith("container ") for item in before), before
    return Target(
        "az", lambda: sorted(set(azure_leftovers(server, azurite)) - before), file=FILE + " -k azure"
    )


def test_azure(arm: ArmServer, azurite: str, script: Path) -> None:  # noqa: F811
    check(kill_rounds(azure_target(arm, azurite), script))


def put(server: ArmServer, kind: str) -> Point:
    """When a PUT of that kind arrives, of those from now on."""

    def armed() -> Callable[[], bool]:
        start = len(server.calls)
        return lambda: any(m == "PUT" and _kind(p.lower()) == kind for m, p, _ in server.calls[start:])

    return armed


def test_azure_killed_right_after_each_create_request(arm: ArmServer, azurite: str, script: Path) -> None:  # noqa: F811
    """The same narrow windows on Azure: the client dies as each kind's PUT reaches the server."""
    kinds = ["resourcegroups", "roleassignments", "roledefinitions", "virtualmachinescalesets"]
    if os.environ.get("TPI_FAULT_SOAK"):  # the soak: every kind; CI: the first and the role objects
        kinds += ["userassignedidentities", "storageaccounts", "virtualnetworks", "networksecuritygroups"]
    rows = named_kills(
        azure_target(arm, azurite), script, {f"after PUT {kind}": put(arm, kind) for kind in kinds}
    )
    assert all(row["killed"] and row["recorded"] for row in rows), rows


# ---------------------------------------------------------------- Kubernetes: the test bed


def k8s_leftovers(kubeconfig: Path, bucket: str) -> list[str]:
    from kubernetes import client as kube
    from kubernetes import config

    api = config.new_client_from_config(str(kubeconfig))
    core, batch = kube.CoreV1Api(api), kube.BatchV1Api(api)
    try:
        left = [f"job {j.metadata.name}" for j in batch.list_namespaced_job("default").items]
        left += [f"pod {p.metadata.name}" for p in core.list_namespaced_pod("default").items]
        left += [f"secret {s.metadata.name}" for s in core.list_namespaced_secret("default").items]
        left += [f"service {s.metadata.name}" for s in core.list_namespaced_service("default").items
                 if s.metadata.name != "kubernetes"]  # fmt: skip
        left += [f"claim {c.metadata.name}"
                 for c in core.list_namespaced_persistent_volume_claim("default").items]  # fmt: skip
    finally:
        api.close()
    found = client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])
    return left + [f"object {o['Key']}" for o in found]


@needs_bed
def test_k8s(k8s: dict[str, Any], script: Path) -> None:  # noqa: F811
    kubeconfig = k8s["bed"].kubeconfig
    target = Target("k8s", lambda: k8s_leftovers(kubeconfig, k8s["bucket"]),
                    [f"container=s3://{k8s['bucket']}/runs"], file=FILE + " -k k8s")  # fmt: skip
    check(kill_rounds(target, script))
    kinds = ["secret", "job", *(["pod"] if os.environ.get("TPI_FAULT_SOAK") else [])]  # CI: the two creates
    points = {f"{kind} made": made(kubeconfig, kind) for kind in kinds}
    rows = named_kills(target, script, points)
    assert all(row["killed"] and row["recorded"] for row in rows), rows


def made(kubeconfig: Path, kind: str) -> Point:
    """When the first object of that kind labelled tpi-task exists (polled every 20 ms)."""

    def armed() -> Callable[[], bool]:
        from kubernetes import client as kube
        from kubernetes import config

        api = config.new_client_from_config(str(kubeconfig))
        core, batch = kube.CoreV1Api(api), kube.BatchV1Api(api)
        lister = {"secret": core.list_namespaced_secret, "pod": core.list_namespaced_pod,
                  "job": batch.list_namespaced_job, "claim": core.list_namespaced_persistent_volume_claim}[kind]  # fmt: skip

        def when() -> bool:
            time.sleep(0.02)
            return bool(lister("default", label_selector="tpi-task").items)

        return when

    return armed


def settle(kubeconfig: Path, limit: float = 60) -> None:
    """Until no pod or claim is terminating: destroy returns once the API server accepted the
    deletions and the pods ended; a claim goes a moment later (its pvc-protection finalizer)."""
    from kubernetes import client as kube
    from kubernetes import config

    api = config.new_client_from_config(str(kubeconfig))
    core, end = kube.CoreV1Api(api), time.monotonic() + limit
    try:
        while time.monotonic() < end and any(
            item.metadata.deletion_timestamp
            for item in [*core.list_namespaced_pod("default").items,
                         *core.list_namespaced_persistent_volume_claim("default").items]
        ):  # fmt: skip
            time.sleep(0.3)
    finally:
        api.close()


@needs_bed
def test_k8s_claim(k8s: dict[str, Any], script: Path) -> None:  # noqa: F811
    """No `container`: the remote is a PersistentVolumeClaim served by a transfer pod; neither may
    outlive destroy and sweep. Named kills: the moment the claim, then the transfer pod, exists."""
    kubeconfig = k8s["bed"].kubeconfig

    def leftovers() -> list[str]:
        settle(kubeconfig)
        return k8s_leftovers(kubeconfig, k8s["bucket"])

    target = Target("k8s", leftovers, file=FILE + " -k k8s_claim", backend="k8s-claim")
    check(kill_rounds(target, script))
    kinds = ["claim", "pod", *(["secret", "job"] if os.environ.get("TPI_FAULT_SOAK") else [])]
    rows = named_kills(target, script, {f"{kind} made": made(kubeconfig, kind) for kind in kinds})
    assert all(row["killed"] and row["recorded"] for row in rows), rows
