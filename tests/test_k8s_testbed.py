"""The Kubernetes test bed end to end: a real control plane, the kubelet stand-in, an Indexed Job.

etcd, kube-apiserver, kube-controller-manager (its Job controller) and kube-scheduler are the
real programs, built from the Go module proxy by `scripts/k8s-testbed build`; only the kubelet is
a stand-in (tests/k8s/node_agent.py: local processes, no images). The test skips when the
binaries are not built, and says how to build them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.k8s import bed, podnet, require_client
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
        network = testbed.network
        subprocess.run([SCRIPT, "down", str(root)], check=True)
        assert not [e for e in started if alive(e)], "down left processes running"
        # nothing of the pod network is left: namespaces, veths (they go with them), bridge, DNAT
        assert podnet.namespaces(network) == []
        assert not podnet.link_exists(network["bridge"])
        assert podnet.dnat_rules(network) == []


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


# --- the pod network (podnet.py) and the default StorageClass (provisioner.py) -----------------

WEB = (
    "mkdir -p /srv && echo served by $(hostname) > /srv/hello && cd /srv"
    " && exec python3 -m http.server 8080 --bind 0.0.0.0"
)
CLIENT = """
import os, ssl, sys, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
web = urllib.request.urlopen(f"http://{sys.argv[1]}:8080/hello", timeout=10).read().decode()
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")  # the API server's certificate names the gateway
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
req = urllib.request.Request(f"https://{host}:{port}/version")
req.add_header("Authorization", "Bearer " + open(f"{sa}/token").read())
version = urllib.request.urlopen(req, context=ctx, timeout=10).status
open("/r/out", "w").write(f"{web.strip()}|{host}|{version}")
"""


def _running_with_ip(core: client.CoreV1Api, name: str) -> Any:
    pod = core.read_namespaced_pod(name, "default")
    assert pod.status.phase not in ("Succeeded", "Failed"), pod.status
    return pod if pod.status.phase == "Running" and pod.status.pod_ip else None


def test_pods_get_own_addresses_talk_to_each_other_and_the_api_server_proxies_to_them(
    cluster: bed.Bed, api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core = client.CoreV1Api(api)
    subnet = ipaddress.ip_network(cluster.network["subnet"])
    (tmp_path / "web").mkdir()
    core.create_namespaced_pod("default", pod_with_results("web", tmp_path / "web", WEB))
    web = wait_for("web running", lambda: _running_with_ip(core, "web"))
    assert ipaddress.ip_address(web.status.pod_ip) in subnet and web.status.pod_ip != cluster.gateway
    # The API server's pod proxy reaches the pod's server by its address (it refuses loopback).
    proxy = f"{cluster.server}/api/v1/namespaces/default/pods/web:8080/proxy/hello"
    answer = wait_for(
        "web through the pod proxy", lambda: (lambda r: r if r[0] == 200 else None)(cluster.get(proxy))
    )
    assert answer == (200, b"served by web\n")

    # Another pod reaches it by its pod IP, and the API server at KUBERNETES_SERVICE_HOST (TLS verified).
    body = pod_with_results("caller", tmp_path, "")
    body["spec"]["containers"][0]["command"] = ["python3", "-c", CLIENT, web.status.pod_ip]
    core.create_namespaced_pod("default", body)
    caller = wait_for("caller ended", lambda: _terminal(core.read_namespaced_pod("caller", "default")))
    assert caller.status.phase == "Succeeded", _log(core, "caller")
    assert (tmp_path / "out").read_text() == f"served by web|{cluster.gateway}|200"
    assert caller.status.pod_ip not in (web.status.pod_ip, "127.0.0.1")
    assert ipaddress.ip_address(caller.status.pod_ip) in subnet

    # A finished pod's namespace is gone (as the kubelet tears its sandbox down); deleting a
    # running pod removes its namespace and veth pair, and frees its address.
    web_ns, caller_ns = (f"{cluster.network['prefix']}{p.metadata.uid}" for p in (web, caller))
    wait_for("caller's namespace removed", lambda: caller_ns not in podnet.namespaces(cluster.network))
    assert web_ns in podnet.namespaces(cluster.network) and podnet.link_exists(podnet.veth(web_ns))
    core.delete_namespaced_pod("web", "default", grace_period_seconds=1)
    core.delete_namespaced_pod("caller", "default")
    wait_for("web's namespace removed", lambda: web_ns not in podnet.namespaces(cluster.network))
    wait_for("addresses freed", lambda: not (Path(cluster.network["ips"]) / web.status.pod_ip).exists())
    names = (web_ns, caller_ns)
    assert not [n for n in names if podnet.link_exists(podnet.veth(n))]


def _bound(core: client.CoreV1Api, name: str) -> Any:
    pvc = core.read_namespaced_persistent_volume_claim(name, "default")
    return pvc if pvc.status.phase == "Bound" else None


def test_a_claim_of_the_default_class_is_provisioned_bound_and_shared_by_two_pods(
    cluster: bed.Bed, api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core = client.CoreV1Api(api)
    storage = client.StorageV1Api(api)
    default = [
        c.metadata.name
        for c in storage.list_storage_class().items
        if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"
    ]
    assert default == ["tpi-standin-hostpath"]
    claim = {  # no storageClassName: the DefaultStorageClass admission plugin fills it in
        "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "3Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim("default", claim)
    pvc = wait_for("claim bound", lambda: _bound(core, "shared"))
    assert pvc.spec.storage_class_name == "tpi-standin-hostpath"
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    assert pv.spec.access_modes == ["ReadWriteMany"]
    assert pv.spec.capacity == {"storage": "3Gi"}
    assert pv.metadata.labels["tpi-jupyter/requested-size"] == "3Gi"
    assert (pv.spec.claim_ref.name, pv.spec.claim_ref.uid) == ("shared", pvc.metadata.uid)
    directory = Path(pv.spec.host_path.path)
    assert directory.is_relative_to(cluster.root / "volumes")

    # Two pods mount the claim at once: each writes its file and waits to see the other's.
    script = (
        "echo $(hostname) > /data/$(hostname); until test -f /data/$PEER; do sleep 0.1; done; cat /data/$PEER"
    )
    for name, peer in (("left", "right"), ("right", "left")):
        body = pod_with_results(name, tmp_path, script)
        body["spec"]["containers"][0]["env"] = [{"name": "PEER", "value": peer}]
        body["spec"]["containers"][0]["volumeMounts"] = [{"name": "r", "mountPath": "/data"}]
        body["spec"]["volumes"] = [{"name": "r", "persistentVolumeClaim": {"claimName": "shared"}}]
        core.create_namespaced_pod("default", body)
    for name, peer in (("left", "right"), ("right", "left")):
        pod = wait_for(f"{name} ended", lambda n=name: _terminal(core.read_namespaced_pod(n, "default")))
        assert pod.status.phase == "Succeeded"
        assert _log(core, name) == f"{peer}\n"
    assert sorted(p.name for p in directory.iterdir()) == ["left", "right"]

    # Deleting the claim releases the volume; the provisioner removes it and its directory.
    for name in ("left", "right"):
        core.delete_namespaced_pod(name, "default")
    core.delete_namespaced_persistent_volume_claim("shared", "default")
    names = lambda: [v.metadata.name for v in core.list_persistent_volume().items]  # noqa: E731
    wait_for("volume reclaimed", lambda: pv.metadata.name not in names())
    assert not directory.exists()


def test_a_one_rank_claim_keeps_read_write_once(api: client.ApiClient, wait_for: Wait) -> None:
    core = client.CoreV1Api(api)
    claim = {
        "metadata": {"name": "single"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "500Mi"}}},
    }
    core.create_namespaced_persistent_volume_claim("default", claim)
    pvc = wait_for("claim bound", lambda: _bound(core, "single"))
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    assert (pv.spec.access_modes, pv.metadata.labels["tpi-jupyter/requested-size"]) == (
        ["ReadWriteOnce"],
        "500Mi",
    )
    core.delete_namespaced_persistent_volume_claim("single", "default")


def test_down_removes_the_pod_network_even_after_a_node_agent_was_killed_hard(tmp_path: Path) -> None:
    testbed = bed.up(tmp_path / "bed")
    network = testbed.network
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(testbed.kubeconfig)))
        core.create_namespaced_pod("default", pod_with_results("sleeper", tmp_path, "exec sleep 600"))
        deadline = time.monotonic() + 120
        while not _running_with_ip(core, "sleeper") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(podnet.namespaces(network)) == 1
        os.kill(testbed.pid(f"node-{bed.NODE_PREFIX}0"), signal.SIGKILL)  # it cannot clean up
        assert len(podnet.namespaces(network)) == 1
    finally:
        bed.down(tmp_path / "bed")
    assert podnet.namespaces(network) == []
    assert not podnet.link_exists(network["bridge"])
    assert podnet.dnat_rules(network) == []
    assert not list(Path(network["ips"]).iterdir())


def test_a_host_network_pod_shares_this_machines_network(
    cluster: bed.Bed, api: client.ApiClient, tmp_path: Path, wait_for: Wait
) -> None:
    core = client.CoreV1Api(api)
    body = pod_with_results("hostnet", tmp_path, "ip -o -4 addr show > /r/addrs")
    body["spec"]["hostNetwork"] = True
    core.create_namespaced_pod("default", body)
    pod = wait_for("hostnet ended", lambda: _terminal(core.read_namespaced_pod("hostnet", "default")))
    assert (pod.status.phase, pod.status.pod_ip) == ("Succeeded", "127.0.0.1")
    assert f"{cluster.gateway}/24" in (tmp_path / "addrs").read_text()  # it sees the bed's bridge
    core.delete_namespaced_pod("hostnet", "default")
