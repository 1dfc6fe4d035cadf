"""The kubelet stand-in's parts on their own: environment, volumes, containers as real processes.

The whole stand-in against the real control plane is tests/test_k8s_testbed.py.
"""

from __future__ import annotations

import os
import shutil
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.k8s import require_client

require_client()

from tests.k8s import log_server, pki, podenv, volumes  # noqa: E402
from tests.k8s.containers import Container  # noqa: E402

needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="containers of the stand-in need root and unshare (mount namespaces)",
)
INDEX = "batch.kubernetes.io/job-completion-index"


def pod(**spec: Any) -> dict[str, Any]:
    meta = {"name": "p-1", "namespace": "ns", "uid": "u-1", "annotations": {INDEX: "2"}, "labels": {"a": "b"}}
    return {"metadata": meta, "spec": {"nodeName": "n", "containers": [], **spec}, "status": {}}


class Objects:
    """Secrets and ConfigMaps by (kind, namespace, name): the one function volumes need from the API."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, str]]) -> None:
        self.objects = objects

    def data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        return self.objects.get((kind, namespace, name))

    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
        return f"token-for-{pod['metadata']['name']}-{audience}-{seconds}"

    def claim_path(self, namespace: str, claim: str) -> str:
        raise volumes.MountError("no claims here")


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "1", "B": "two"}
    assert podenv.expand("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


def test_environment_has_the_job_index_secrets_and_service_address() -> None:
    container = {
        "name": "c",
        "command": ["sh", "-c", "echo $(RANK) $(MISSING)"],
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {
                "name": "JOB_COMPLETION_INDEX",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}},
            },
            {"name": "RANK", "value": "rank-$(JOB_COMPLETION_INDEX)"},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
        "resources": {"limits": {"cpu": "1500m"}},
    }
    objects = Objects({("secret", "ns", "s"): {"pw": "hunter2"}, ("configmap", "ns", "cm"): {"x": "y"}})
    env = podenv.environment(
        pod(), container, {"KUBERNETES_SERVICE_HOST": "127.0.0.1"}, objects.data, {"cpu": "4"}
    )
    assert env["JOB_COMPLETION_INDEX"] == "2"
    assert env["RANK"] == "rank-2"
    assert env["PASSWORD"] == "hunter2"
    assert env["CM_x"] == "y"
    assert env["NODE"] == "n"
    assert env["CPUS"] == "2"  # 1.5 cores rounded up, as the kubelet does
    assert env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1"
    assert podenv.argv(container, env) == ["sh", "-c", "echo rank-2 $(MISSING)"]


def test_environment_refuses_a_missing_secret_and_a_container_without_command() -> None:
    container = {
        "name": "c",
        "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}],
    }
    with pytest.raises(podenv.EnvError, match="secret ns/gone not found"):
        podenv.environment(pod(), container, {}, Objects({}).data, {})
    with pytest.raises(podenv.EnvError, match="needs `command`"):
        podenv.argv({"name": "c", "args": ["x"]}, {})


def test_volumes_become_directories_with_their_files(tmp_path: Path) -> None:
    spec = {
        "volumes": [
            {"name": "scratch", "emptyDir": {}},
            {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "a", "path": "sub/a.txt"}]}},
            {"name": "sec", "secret": {"secretName": "s", "defaultMode": 0o400}},
            {
                "name": "api",
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "audience": "x", "expirationSeconds": 600}},
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "index",
                                        "fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            },
        ]
    }
    objects = Objects({("configmap", "ns", "cm"): {"a": "A", "b": "B"}, ("secret", "ns", "s"): {"k": "v"}})
    paths = volumes.prepare(objects, pod(**spec), tmp_path)
    assert sorted(paths) == ["api", "cfg", "scratch", "sec"]
    assert (paths["cfg"] / "sub" / "a.txt").read_text() == "A"
    assert not (paths["cfg"] / "b").exists()
    assert (paths["sec"] / "k").read_text() == "v"
    assert (paths["sec"] / "k").stat().st_mode & 0o777 == 0o400
    assert (paths["api"] / "token").read_text() == "token-for-p-1-x-600"
    assert (paths["api"] / "index").read_text() == "2"


def test_volumes_wait_for_a_missing_secret_and_refuse_unknown_types(tmp_path: Path) -> None:
    with pytest.raises(volumes.MountError, match="secret ns/later not found"):
        volumes.prepare(
            Objects({}), pod(volumes=[{"name": "v", "secret": {"secretName": "later"}}]), tmp_path
        )
    with pytest.raises(volumes.MountError, match="not supported by the stand-in"):
        volumes.prepare(
            Objects({}), pod(volumes=[{"name": "v", "nfs": {"server": "x", "path": "/"}}]), tmp_path
        )
    with pytest.raises(volumes.MountError, match="leaves the volume"):
        bad = {"name": "v", "configMap": {"name": "cm", "items": [{"key": "a", "path": "../../x"}]}}
        volumes.prepare(Objects({("configmap", "ns", "cm"): {"a": "A"}}), pod(volumes=[bad]), tmp_path)


def run(tmp_path: Path, script: str, mounts: list[dict[str, Any]] | None = None) -> tuple[Container, Path]:
    container = Container({"name": "c", "command": ["/bin/sh"]}, tmp_path / "containers", tmp_path / "pids")
    log = tmp_path / "c.log"
    env = {"PATH": podenv.IMAGE_DEFAULTS["PATH"]}
    container.start(["/bin/sh", "-c", script], env, mounts or [], "pod-host", log)
    return container, log


@needs_namespaces
def test_container_sees_its_volume_at_the_mount_path_and_nothing_leaks(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    (volume / "in.txt").write_text("from the pod\n")
    target = "/tpi-standin-test-mount/data"
    script = f"cat {target}/in.txt > {target}/out.txt; hostname >> {target}/out.txt; echo image > /etc/standin; exit 3"
    container, _ = run(tmp_path, script, [{"source": str(volume), "target": target, "read_only": False}])
    wait_for(lambda: container.poll() is not None, timeout=60)
    assert container.poll() == 3
    assert (volume / "out.txt").read_text() == "from the pod\npod-host\n"
    assert not Path("/tpi-standin-test-mount").exists()  # the mount point exists only in the container
    assert not Path("/etc/standin").exists()  # writes to the "image" stay in the container's overlay
    assert not list((tmp_path / "pids").iterdir())
    status = container.status(ready=True)
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["state"]["terminated"]["reason"] == "Error"


@needs_namespaces
def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    polite, log = run(
        tmp_path / "a", "trap 'echo got TERM; exit 0' TERM; echo up; while :; do sleep 0.1; done"
    )
    _wait_for_line(log, "up")
    assert polite.stop(grace=60) == 0
    assert "got TERM" in log.read_text()
    stubborn, log = run(tmp_path / "b", "trap '' TERM; echo up; while :; do sleep 0.1; done")
    _wait_for_line(log, "up")
    assert stubborn.stop(grace=0.5) == 137  # SIGKILL: 128 + 9, as the kubelet reports it


def _wait_for_line(log: Path, line: str) -> None:
    wait_for(lambda: log.exists() and line in log.read_text().splitlines(), timeout=30)


def test_log_server_serves_tail_and_follow_only_to_the_beds_clients(tmp_path: Path) -> None:
    pki.make_ca(tmp_path)
    cert, key = pki.issue(tmp_path, "serving", "node", serving=True)
    client_cert, client_key = pki.issue(tmp_path, "client", "kube-apiserver-kubelet-client")
    log = tmp_path / "c.log"
    log.write_bytes(b"one\ntwo\n")
    running = threading.Event()
    running.set()
    found = (log, running.is_set)
    port = log_server.serve(
        lambda ns, pod, c: found if (ns, pod, c) == ("ns", "p", "c") else None, cert, key, tmp_path / "ca.crt"
    )
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(client_cert, client_key)
    base = f"https://127.0.0.1:{port}/containerLogs"

    def get(path: str, context: ssl.SSLContext = ctx) -> bytes:
        with urllib.request.urlopen(base + path, context=context, timeout=30) as resp:
            return bytes(resp.read())

    assert get("/ns/p/c") == b"one\ntwo\n"
    assert get("/ns/p/c?tailLines=1") == b"two\n"

    def finish() -> None:
        with open(log, "ab") as out:
            out.write(b"three\n")
        running.clear()

    threading.Timer(0.5, finish).start()
    assert get("/ns/p/c?follow=true&tailLines=1") == b"two\nthree\n"  # ends when the container ends
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get("/ns/p/other")
    anonymous = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get("/ns/p/c", anonymous)  # no client certificate of the bed: refused
