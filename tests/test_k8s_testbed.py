"""The Kubernetes test bed end to end: a real control plane, the kubelet stand-in, an Indexed Job.

etcd, kube-apiserver, kube-controller-manager (its Job controller) and kube-scheduler are the
real programs, built from the Go module proxy by `scripts/k8s-testbed build`; only the kubelet is
a stand-in (tests/k8s/node_agent.py: local processes, no images). The test skips when the
binaries are not built, and says how to build them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import bed, require_client
from tests.k8s.proc import alive

pytestmark = [pytest.mark.k8s, pytest.mark.slow]

if not bed.built():
    pytest.skip(
        f"the Kubernetes test bed is not built: run `scripts/k8s-testbed build` (fills {bed.bin_dir()})",
        allow_module_level=True,
    )
require_client()  # installs kubernetes==36.0.3 when missing, as tests/emulators.py does
from kubernetes import client, config  # noqa: E402

SCRIPT = str(bed.REPO / "scripts" / "k8s-testbed")
INDEX = "batch.kubernetes.io/job-completion-index"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bed.Bed]:
    """A bed started and stopped through scripts/k8s-testbed, as a user or CI would."""
    root = tmp_path_factory.mktemp("k8s-bed")
    started = subprocess.run([SCRIPT, "up", str(root)], capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    testbed = bed.Bed(root)
    assert started.stdout == f"export KUBECONFIG={testbed.kubeconfig}\n"
    try:
        yield testbed
    finally:
        started = testbed.state()["processes"] + [
            json.loads(p.read_text()) for p in root.glob("nodes/*/pids/*.json")
        ]
        subprocess.run([SCRIPT, "down", str(root)], check=True)
        assert not [e for e in started if alive(e)], "down left processes running"


@pytest.fixture(scope="module")
def api(cluster: bed.Bed) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


Wait = Callable[..., Any]


@pytest.fixture
def wait_for(cluster: bed.Bed) -> Wait:
    """wait_for(what, predicate, timeout): poll, and fail at once with its log if a process of the bed died."""

    def wait(what: str, predicate: Callable[[], Any], timeout: float = 240) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cluster.check_running()
            value = predicate()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout:.0f} s")

    return wait


def indexed_job(name: str, results: Path) -> dict[str, Any]:
    script = (
        'echo "index=$JOB_COMPLETION_INDEX greeting=$(cat /config/greeting) secret=$(cat /secret/word)'
        ' host=$(hostname)" > /scratch/line && cp /scratch/line /results/$JOB_COMPLETION_INDEX.txt && cat /scratch/line'
    )
    container = {
        "name": "work",
        "image": "busybox:1.36",  # not pulled: the stand-in runs the command on this machine
        "command": ["/bin/sh", "-c", script],
        "volumeMounts": [
            {"name": "config", "mountPath": "/config"},
            {"name": "secret", "mountPath": "/secret"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "results", "mountPath": "/results"},
        ],
    }
    volumes = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "secret", "secret": {"secretName": f"{name}-secret"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "results", "hostPath": {"path": str(results), "type": "Directory"}},
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completions": 3,
            "parallelism": 3,
            "completionMode": "Indexed",
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes}},
        },
    }


def test_indexed_job_runs_through_the_real_job_controller_and_scheduler(
    cluster: bed.Bed, api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    node = f"{bed.NODE_PREFIX}0"
    ready = wait_for(f"node {node} Ready", lambda: _ready(core.read_node(node)))
    assert ready
    # The service-account controller (in the real controller-manager) creates `default`.
    wait_for("default service account", lambda: core.list_namespaced_service_account("default").items)

    results = tmp_path / "results"
    results.mkdir()
    core.create_namespaced_config_map(
        "default", {"metadata": {"name": "tb-config"}, "data": {"greeting": "hello"}}
    )
    core.create_namespaced_secret(
        "default", {"metadata": {"name": "tb-secret"}, "stringData": {"word": "sesame"}}
    )
    batch.create_namespaced_job("default", indexed_job("tb", results))

    job = wait_for("Job tb complete", lambda: _finished(batch.read_namespaced_job("tb", "default")))
    assert [c.type for c in job.status.conditions if c.status == "True"][-1] == "Complete", job.status
    assert job.status.succeeded == 3
    assert job.status.completed_indexes == "0-2"

    pods = core.list_namespaced_pod("default", label_selector="batch.kubernetes.io/job-name=tb").items
    assert sorted(p.metadata.annotations[INDEX] for p in pods) == ["0", "1", "2"]
    for pod in pods:
        owner = pod.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.controller) == ("Job", "tb", True)  # the Job controller made it
        assert pod.spec.node_name == node  # the scheduler bound it
        assert pod.status.phase == "Succeeded"
        assert pod.status.container_statuses[0].state.terminated.exit_code == 0

    lines = {p.name: p.read_text() for p in results.iterdir()}
    assert lines == {
        f"{i}.txt": f"index={i} greeting=hello secret=sesame host={_pod_name(pods, i)}\n" for i in range(3)
    }
    # pods/log: the API server fetches each pod's log from the stand-in's log endpoint
    # (raw bytes: this client version returns the log as the repr of bytes otherwise)
    logs = {_index(p): _log(core, p.metadata.name) for p in pods}
    assert logs == {str(i): lines[f"{i}.txt"] for i in range(3)}


def _log(core: client.CoreV1Api, name: str) -> str:
    return str(core.read_namespaced_pod_log(name, "default", _preload_content=False).data.decode())


def _index(pod: Any) -> str:
    return str(pod.metadata.annotations[INDEX])


def _pod_name(pods: list[Any], index: int) -> str:
    return str(next(p.metadata.name for p in pods if p.metadata.annotations[INDEX] == str(index)))


def _ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])


def _finished(job: Any) -> Any:
    done = [c for c in job.status.conditions or [] if c.type in ("Complete", "Failed") and c.status == "True"]
    return job if done else None


def pod_with_results(name: str, results: Path, script: str, grace: int = 30) -> dict[str, Any]:
    """A bare pod that runs script with the host directory `results` at /r."""
    container = {"name": "c", "image": "busybox:1.36", "command": ["/bin/sh", "-c", script]}
    container["volumeMounts"] = [{"name": "r", "mountPath": "/r"}]
    spec = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace, "containers": [container]}
    spec["volumes"] = [{"name": "r", "hostPath": {"path": str(results)}}]
    return {"metadata": {"name": name}, "spec": spec}


def test_eviction_ends_the_pod_with_sigterm_and_disruption_target(
    api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core = client.CoreV1Api(api)
    script = "trap 'echo got TERM > /r/term; exit 0' TERM; touch /r/up; while :; do sleep 0.1; done"
    body = pod_with_results("evictee", tmp_path, script, grace=120)
    body["metadata"]["finalizers"] = ["tpi-jupyter/keep-for-test"]  # keep its last status readable
    core.create_namespaced_pod("default", body)
    try:
        wait_for("evictee running", lambda: (tmp_path / "up").exists())
        eviction = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "evictee", "namespace": "default"},
        }
        core.create_namespaced_pod_eviction("evictee", "default", eviction)
        pod = wait_for("evictee ended", lambda: _terminal(core.read_namespaced_pod("evictee", "default")))
        assert (
            tmp_path / "term"
        ).read_text() == "got TERM\n"  # SIGTERM came, and the grace period let it finish
        assert pod.status.container_statuses[0].state.terminated.exit_code == 0
        disruption = [c for c in pod.status.conditions if c.type == "DisruptionTarget"]
        assert [(c.status, c.reason) for c in disruption] == [("True", "EvictionByEvictionAPI")]
    finally:
        core.patch_namespaced_pod("evictee", "default", {"metadata": {"finalizers": None}})


def test_deletion_kills_a_pod_that_ignores_sigterm_after_its_grace_period(
    api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core = client.CoreV1Api(api)
    body = pod_with_results(
        "stubborn", tmp_path, "trap '' TERM; touch /r/up; while :; do sleep 0.1; done", grace=1
    )
    body["metadata"]["finalizers"] = ["tpi-jupyter/keep-for-test"]
    core.create_namespaced_pod("default", body)
    try:
        wait_for("stubborn running", lambda: (tmp_path / "up").exists())
        core.delete_namespaced_pod("stubborn", "default")
        pod = wait_for("stubborn ended", lambda: _terminal(core.read_namespaced_pod("stubborn", "default")))
        assert pod.status.phase == "Failed"
        assert pod.status.container_statuses[0].state.terminated.exit_code == 137  # SIGKILL
    finally:
        core.patch_namespaced_pod("stubborn", "default", {"metadata": {"finalizers": None}})


def test_a_spot_shutdown_is_ignored_by_the_pod_failure_policy_and_the_index_reruns(
    cluster: bed.Bed, api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    batch = client.BatchV1Api(api)
    script = "if test -f /r/first; then echo second > /r/second; else touch /r/first; while :; do sleep 0.1; done; fi"
    template = pod_with_results("unused", tmp_path, script)
    policy = {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [0]}},
        ]
    }
    spec = {"completions": 1, "completionMode": "Indexed", "backoffLimit": 0, "podFailurePolicy": policy}
    spec["template"] = {"spec": template["spec"]}
    batch.create_namespaced_job("default", {"metadata": {"name": "spot"}, "spec": spec})
    wait_for("first attempt running", lambda: (tmp_path / "first").exists())
    os.kill(cluster.pid(f"node-{bed.NODE_PREFIX}0"), signal.SIGUSR1)  # the node's shutdown notice
    job = wait_for("Job spot finished", lambda: _finished(batch.read_namespaced_job("spot", "default")))
    assert [c.type for c in job.status.conditions if c.status == "True"][-1] == "Complete", job.status
    assert (tmp_path / "second").read_text() == "second\n"
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod("default", label_selector="batch.kubernetes.io/job-name=spot").items
    failed = [p for p in pods if p.status.phase == "Failed"]
    assert len(failed) == 1
    reasons = [(c.type, c.reason) for c in failed[0].status.conditions if c.type == "DisruptionTarget"]
    assert reasons == [("DisruptionTarget", "TerminationByKubelet")]


def test_a_failing_index_reports_its_exit_code(api: client.ApiClient, tmp_path: Path, wait_for: Wait) -> None:
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    template = pod_with_results("unused", tmp_path, 'exit "$((JOB_COMPLETION_INDEX * 3))"')
    spec = {"completions": 2, "parallelism": 2, "completionMode": "Indexed", "backoffLimitPerIndex": 0}
    spec["template"] = {"spec": template["spec"]}
    batch.create_namespaced_job("default", {"metadata": {"name": "fails"}, "spec": spec})
    job = wait_for("Job fails finished", lambda: _finished(batch.read_namespaced_job("fails", "default")))
    assert [c.type for c in job.status.conditions if c.status == "True"][-1] == "Failed"
    assert (job.status.completed_indexes, job.status.failed_indexes) == ("0", "1")
    pods = core.list_namespaced_pod("default", label_selector="batch.kubernetes.io/job-name=fails").items
    codes = {
        p.metadata.annotations[INDEX]: p.status.container_statuses[0].state.terminated.exit_code for p in pods
    }
    assert codes == {"0": 0, "1": 3}


def _terminal(pod: Any) -> Any:
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def test_a_claim_bound_by_the_real_volume_controller_is_mounted(
    api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core = client.CoreV1Api(api)
    volume = {
        "metadata": {"name": "tb-pv"},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "hostPath": {"path": str(tmp_path)},
        },
    }
    claim = {
        "metadata": {"name": "tb-claim"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": "tb-pv",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    core.create_persistent_volume(volume)
    core.create_namespaced_persistent_volume_claim("default", claim)
    wait_for(
        "claim bound",
        lambda: core.read_namespaced_persistent_volume_claim("tb-claim", "default").status.phase == "Bound",
    )
    body = pod_with_results("claimant", tmp_path / "unused", "echo on the claim > /data/out")
    body["spec"]["volumes"] = [{"name": "r", "persistentVolumeClaim": {"claimName": "tb-claim"}}]
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "r", "mountPath": "/data"}]
    core.create_namespaced_pod("default", body)
    pod = wait_for("claimant ended", lambda: _terminal(core.read_namespaced_pod("claimant", "default")))
    assert pod.status.phase == "Succeeded"
    assert (tmp_path / "out").read_text() == "on the claim\n"


def test_a_failure_midway_through_up_stops_what_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> None:
        raise bed.BedError("controller-manager refused (injected)")

    monkeypatch.setattr(bed, "_start_controllers", broken)  # etcd and the API server are up by then
    spawned: list[dict[str, Any]] = []
    real_spawn = bed.Bed.spawn

    def spawn(self: bed.Bed, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        real_spawn(self, name, argv, env)
        spawned.append(self.state()["processes"][-1])

    monkeypatch.setattr(bed.Bed, "spawn", spawn)
    with pytest.raises(bed.BedError, match="injected"):
        bed.up(tmp_path / "bed")
    assert [e["name"] for e in spawned] == ["etcd", "kube-apiserver"]
    assert not [e for e in spawned if alive(e)]
    assert not (tmp_path / "bed" / "state.json").exists()
