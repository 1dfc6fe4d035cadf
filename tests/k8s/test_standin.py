"""The kubelet stand-in's parts on their own: environment, volumes, containers as real processes.

The whole stand-in against the real control plane is tests/test_k8s_testbed.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import os
import shutil
import ssl
import threading
import urllib.error
import urllib.request
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.k8s import require_client

require_client()

from tests.k8s import log_server, pki, podenv, podnet, volumes  # noqa: E402
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


needs_network = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"),
    reason="the pod network needs root, ip (iproute2) and iptables: run scripts/install-tools",
)


@needs_network
@needs_namespaces
def test_pod_network_gives_addresses_routes_pod_to_pod_and_to_host_loopback_then_leaves_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hi").write_text("host loopback\n")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
    with contextlib.ExitStack() as stack:
        net = podnet.create(tmp_path)
        stack.callback(podnet.destroy, net)
        host = HTTPServer(("127.0.0.1", 0), handler)  # only on 127.0.0.1, as moto and the API server
        stack.callback(host.server_close)
        stack.callback(host.shutdown)
        threading.Thread(target=host.serve_forever, daemon=True).start()
        server_ns, server_ip = podnet.attach(net, "uid-server")
        client_ns, client_ip = podnet.attach(net, "uid-client")
        hosts = set(map(str, ipaddress.ip_network(net["subnet"]).hosts()))
        assert server_ip != client_ip and {server_ip, client_ip} <= hosts - {net["gateway"]}
        (tmp_path / "s").mkdir()
        (tmp_path / "s" / "pod.txt").write_text("pod to pod\n")
        server, _ = run_in(tmp_path / "s", server_ns, "cd /r && exec python3 -m http.server 8080")
        stack.callback(server.stop, 0)
        urls = [f"http://{server_ip}:8080/pod.txt", f"http://{net['gateway']}:{host.server_port}/hi"]
        assert [_fetch(tmp_path / f"c{i}", client_ns, url, retry=True) for i, url in enumerate(urls)] == [
            (0, "pod to pod\n"),
            (0, "host loopback\n"),
        ]
        # inside a pod, 127.0.0.1 is the pod's own: the host's server is not there
        assert _fetch(tmp_path / "l", client_ns, f"http://127.0.0.1:{host.server_port}/hi")[0] != 0
        server.stop(grace=5)
        podnet.detach(net, server_ns, server_ip)
        assert podnet.namespaces(net) == [client_ns]
        assert not podnet.link_exists(podnet.veth(server_ns))
        assert not (Path(net["ips"]) / server_ip).exists()
    assert podnet.namespaces(net) == []
    assert not podnet.link_exists(podnet.veth(client_ns))
    assert not podnet.link_exists(net["bridge"])
    assert podnet.dnat_rules(net) == []


FETCH = "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1], timeout=5).read().decode())"


def _fetch(work: Path, netns: str, url: str, retry: bool = False) -> tuple[int, str]:
    """GET url from a container in netns: (exit code, body); retry while the server starts."""
    once = f"python3 -c '{FETCH}' \"$URL\" > /r/body"
    script = (
        f"for i in $(seq 100); do {once} 2>/dev/null && exit 0; sleep 0.1; done; exit 1" if retry else once
    )
    container, _ = run_in(work, netns, script, {"URL": url})
    wait_for(lambda: container.poll() is not None, timeout=60)
    body = work / "body"
    return int(container.poll() or 0), body.read_text() if body.exists() else ""


def run_in(work: Path, netns: str, script: str, env: dict[str, str] | None = None) -> tuple[Container, Path]:
    """A container in the pod namespace netns, with work/ mounted at /r."""
    work.mkdir(parents=True, exist_ok=True)
    container = Container({"name": "c", "command": ["/bin/sh"]}, work / "containers", work / "pids")
    log = work / "log"
    mounts = [{"source": str(work), "target": "/r", "read_only": False}]
    environ = {"PATH": os.environ["PATH"], **(env or {})}
    container.start(["/bin/sh", "-c", script], environ, mounts, "pod", log, netns)
    return container, log


def test_mount_targets_resolve_symlinks_inside_the_container_root(tmp_path: Path) -> None:
    from tests.k8s.container_init import inside

    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # as on Debian: absolute, so relative to the root
    (root / "var" / "rel").symlink_to("../run")
    assert inside(root, "/var/run/secrets/token") == root / "run" / "secrets" / "token"
    assert inside(root, "/var/rel/x") == root / "run" / "x"
    assert inside(root, "/../../etc") == root / "etc"


@needs_namespaces
@pytest.mark.skipif(not Path("/var/run").is_symlink(), reason="needs /var/run as a symlink (Debian)")
def test_a_volume_under_var_run_is_seen_by_the_container_not_mounted_on_this_machine(tmp_path: Path) -> None:
    volume = tmp_path / "vol"
    volume.mkdir()
    (volume / "token").write_text("tok\n")
    target = "/var/run/tpi-standin-test-secrets"
    mounts = [{"source": str(volume), "target": target, "read_only": True}]
    container, log = run(tmp_path, f"cat {target}/token", mounts)
    wait_for(lambda: container.poll() is not None, timeout=60)
    assert (container.poll(), log.read_text()) == (0, "tok\n")
    assert not Path("/run/tpi-standin-test-secrets").exists()


@needs_namespaces
def test_a_missing_iptables_rolls_the_bridge_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without iptables the pod network cannot be made: one clear error, and no bridge stays
    behind (one did, once, before `run` turned a missing command into a NetError)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("ip", "sysctl"):  # everything create needs but iptables
        (tools / name).symlink_to(str(shutil.which(name)))
    monkeypatch.setenv("PATH", str(tools))
    root = tmp_path / "bed"
    root.mkdir()
    with pytest.raises(podnet.NetError, match=r"^iptables is not installed: run scripts/install-tools$"):
        podnet.create(root)
    monkeypatch.undo()
    bridge = "tpib" + hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    assert bridge not in podnet.run("ip", "-br", "link")
