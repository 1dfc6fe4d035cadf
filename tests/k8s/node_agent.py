"""A stand-in for the kubelet: the one part of the Kubernetes test bed that is not real.

There is no container runtime here, so this agent registers a Ready `Node` with the capacity it
is given, watches the pods the real scheduler binds to it, and runs each container's command as
a local process. **Images are not pulled**: commands run on a copy-on-write view of this
machine's root filesystem, in a mount namespace per container (unshare) where the pod's
emptyDir, Secret, ConfigMap, projected, downwardAPI, hostPath and bound PersistentVolume volumes
are bind-mounted at their mount paths. It sets the kubelet's environment (downward API, so the
Job controller's JOB_COMPLETION_INDEX too), reports phases and exit codes, honours deletion grace
periods (SIGTERM, then SIGKILL) and finishes deletions, and sets `DisruptionTarget`:
  - on SIGUSR1 it plays a spot node's graceful shutdown: every pod ends Failed with
    DisruptionTarget/TerminationByKubelet, as the kubelet's node-shutdown manager does;
  - with --disruption-on-delete, a pod deleted through the API is treated the same way.
It authenticates as system:node:<name>, so the API server's Node authorizer and NodeRestriction
admission limit it exactly as they limit a kubelet. Container logs are served to the API server
(`pods/log`) by log_server.py. With --network each pod gets its own network namespace and
address on the bed's bridge (podnet.py); without, pods share this machine's (podIP 127.0.0.1).
Not done: probes, resource limits, image entrypoints.

Usage: python -m tests.k8s.node_agent --kubeconfig K --name N --dir D [--cpu --memory --gpus
--pods --label k=v --taint k=v:Effect --disruption-on-delete]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.k8s import log_server, volumes
from tests.k8s.containers import now
from tests.k8s.pod_worker import PodWorker

HEARTBEAT = 10.0  # seconds; the node lifecycle controller's grace period is 50 s
SHUTDOWN = ("TerminationByKubelet", "Pod was terminated in response to imminent node shutdown.")
DELETED = (
    "TerminationByKubelet",
    "stand-in node: the pod was deleted, treated as a disruption (--disruption-on-delete)",
)


def raw(call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """An API call's answer as the API's own JSON (camelCase), not the client's models."""
    resp = call(*args, _preload_content=False, **kwargs)
    return dict(json.loads(resp.data))


class ApiCluster:
    """What volumes and the environment read from the API, as this node is allowed to."""

    def __init__(self, api: client.CoreV1Api) -> None:
        self.api = api

    def data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        read = self.api.read_namespaced_secret if kind == "secret" else self.api.read_namespaced_config_map
        try:
            obj = raw(read, name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        b64 = obj.get("data") if kind == "secret" else obj.get("binaryData")
        out = {k: base64.b64decode(v).decode("utf-8", "surrogateescape") for k, v in (b64 or {}).items()}
        if kind == "configmap":
            out.update(obj.get("data") or {})
        return out

    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
        meta = pod["metadata"]
        ref = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
        spec: dict[str, Any] = {"expirationSeconds": seconds, "boundObjectRef": ref}
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        account = pod["spec"].get("serviceAccountName") or "default"
        answer = raw(self.api.create_namespaced_service_account_token, account, meta["namespace"], body)
        return str(answer["status"]["token"])

    def claim_path(self, namespace: str, claim: str) -> str:
        try:
            pvc = raw(self.api.read_namespaced_persistent_volume_claim, claim, namespace)
        except ApiException as err:
            raise volumes.MountError(f"persistentVolumeClaim {namespace}/{claim}: {err.reason}") from err
        volume = (pvc.get("spec") or {}).get("volumeName")
        if not volume or (pvc.get("status") or {}).get("phase") != "Bound":
            raise volumes.MountError(f"persistentVolumeClaim {namespace}/{claim} is not bound")
        pv = raw(self.api.read_persistent_volume, volume)["spec"]
        source = pv.get("hostPath") or pv.get("local")
        if not source:
            raise volumes.MountError(
                f"persistentVolume {volume}: only hostPath and local volumes can be mounted here"
            )
        return str(source["path"])


class NodeAgent:
    """Registers the node, keeps it Ready, and runs a PodWorker per pod bound to it."""

    def __init__(self, api: client.CoreV1Api, args: argparse.Namespace) -> None:
        self.api, self.name, self.root = api, args.name, Path(args.dir).resolve()
        self.cluster = ApiCluster(api)
        self.allocatable = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.pods)}
        if args.gpus:
            self.allocatable["nvidia.com/gpu"] = str(args.gpus)
        self.labels = dict(label.split("=", 1) for label in args.label)
        self.taints = [_taint(t) for t in args.taint]
        self.disruption_on_delete = args.disruption_on_delete
        self.network = json.loads(Path(args.network).read_text()) if args.network else None
        server = urllib.parse.urlsplit(api.api_client.configuration.host)
        # The pods' in-cluster address: no Service network here, so the API server's own, which
        # pods in their own network namespaces reach at the gateway (DNAT to 127.0.0.1).
        host = self.network["gateway"] if self.network else server.hostname or "127.0.0.1"
        self.service_env = {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(server.port or 443),
            "KUBERNETES_PORT": f"tcp://{host}:{server.port}",
        }
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.log_port = 0

    # the Node
    def _conditions(self) -> list[dict[str, Any]]:
        stamp = now()
        healthy = {
            "MemoryPressure": "False",
            "DiskPressure": "False",
            "PIDPressure": "False",
            "Ready": "True",
        }
        return [
            {
                "type": kind,
                "status": value,
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
                "reason": "StandInKubeletReady" if kind == "Ready" else "StandInKubeletHasNoPressure",
                "message": "stand-in kubelet (tpi-jupyter test bed) is posting ready status",
            }
            for kind, value in healthy.items()
        ]

    def register(self) -> None:
        version = client.VersionApi(self.api.api_client).get_code().git_version
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }
        labels |= {"tpi-jupyter/stand-in": "true", **self.labels}
        info = {
            "machineID": self.name, "systemUUID": self.name, "bootID": self.name,
            "kernelVersion": Path("/proc/sys/kernel/osrelease").read_text().strip(),
            "osImage": "tpi-jupyter stand-in kubelet (no container runtime)",
            "containerRuntimeVersion": "standin://0", "kubeletVersion": version, "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": "amd64",
        }  # fmt: skip
        status = {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "conditions": self._conditions(),
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.name},
            ],
            "nodeInfo": info,
        }
        if self.log_port:
            status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": self.log_port}}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels}}
        node["spec"] = {"taints": self.taints} if self.taints else {}
        try:
            self.api.create_node(node)
        except ApiException as err:
            if err.status != 409:
                raise
        self.api.patch_node_status(self.name, {"status": status})

    def heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT):
            with contextlib.suppress(ApiException, OSError):
                self.api.patch_node_status(self.name, {"status": {"conditions": self._conditions()}})

    # pods
    def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiException):  # a pod already gone has no status to set
            self.api.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status})

    def event(self, pod: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        meta = pod["metadata"]
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "kind": "Pod",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
                "apiVersion": "v1",
            },
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kubelet (tpi-jupyter stand-in)", "host": self.name},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        with contextlib.suppress(ApiException):
            self.api.create_namespaced_event(meta["namespace"], body)

    def finish_deletion(self, pod: dict[str, Any]) -> None:
        """The kubelet's last word on a deleted pod: delete it with grace 0 (uid-guarded)."""
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(ApiException):
            self.api.delete_namespaced_pod(meta["name"], meta["namespace"], body=body)

    def handle(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":  # gone from the API: stop what is left, then drop its files
                self.workers.pop(uid, None)
                threading.Thread(target=self._forget, args=(worker, uid), daemon=True).start()
                return
            if worker is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    if pod["metadata"].get("deletionTimestamp"):
                        self.finish_deletion(pod)
                    return  # finished before this agent started
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
            if pod["metadata"].get("deletionTimestamp") and self.disruption_on_delete:
                worker.request_stop(float(pod["metadata"].get("deletionGracePeriodSeconds") or 0), DELETED)
            worker.update(pod)

    def find_log(self, namespace: str, name: str, container: str) -> tuple[Path, Callable[[], bool]] | None:
        """A container's log file for the log server, and whether its pod still runs."""
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            meta = worker.pod["metadata"]
            if (meta["namespace"], meta["name"]) == (namespace, name):
                specs = [*worker.pod["spec"].get("initContainers", []), *worker.pod["spec"]["containers"]]
                if any(c["name"] == container for c in specs):
                    return worker.dir / "logs" / f"{container}.log", worker.is_alive
        return None

    def _forget(self, worker: PodWorker | None, uid: str) -> None:
        if worker:
            worker.request_stop(0)
            worker.join()
        shutil.rmtree(self.root / "pods" / uid, ignore_errors=True)

    def shutdown_pods(self) -> None:
        """A spot node's graceful shutdown: end every pod with DisruptionTarget."""
        with self.lock:
            for worker in self.workers.values():
                grace = float(worker.pod["spec"].get("terminationGracePeriodSeconds", 30))
                worker.request_stop(grace, SHUTDOWN)

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.name}"
        while not self.stopping.is_set():
            listing = raw(self.api.list_pod_for_all_namespaces, field_selector=selector)
            for pod in listing["items"]:
                self.handle("ADDED", pod)
            stream = watch.Watch().stream(
                self.api.list_pod_for_all_namespaces,
                field_selector=selector,
                resource_version=listing["metadata"]["resourceVersion"],
                timeout_seconds=60,
                deserialize=False,
            )
            with contextlib.suppress(ApiException):  # 410 Gone and the like: list again
                for event in stream:
                    if self.stopping.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.handle(event["type"], event["object"])  # a dict: deserialize=False

    def stop(self) -> None:
        """Kill every container (the node goes away with its processes)."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.request_stop(0)
        for worker in workers:
            worker.join(timeout=10)


def _taint(text: str) -> dict[str, str]:
    key_value, _, effect = text.rpartition(":")
    key, _, value = key_value.partition("=")
    return {"key": key, "value": value, "effect": effect} if value else {"key": key, "effect": effect}


def _exit(*_: object) -> None:
    raise SystemExit(0)  # runs `finally`: the agent stops its containers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in for the kubelet (test bed only)")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", required=True, help="where pods' volumes, overlays and logs live")
    parser.add_argument("--cpu", default="16")
    parser.add_argument("--memory", default="64Gi")
    parser.add_argument("--gpus", type=int, default=0, help="nvidia.com/gpu capacity (nothing is attached)")
    parser.add_argument("--pods", type=int, default=110)
    parser.add_argument("--label", action="append", default=[], help="k=v, repeatable")
    parser.add_argument("--taint", action="append", default=[], help="k[=v]:Effect, repeatable")
    parser.add_argument("--disruption-on-delete", action="store_true")
    parser.add_argument("--network", help="the bed's pod network (podnet.py's network.json)")
    parser.add_argument("--tls-cert", type=Path, help="serving certificate of the log endpoint")
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--client-ca", type=Path, help="CA of the API server's kubelet-client certificate")
    args = parser.parse_args(argv)
    api = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    agent = NodeAgent(api, args)
    if args.tls_cert:
        agent.log_port = log_server.serve(agent.find_log, args.tls_cert, args.tls_key, args.client_ca)
    agent.register()
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(
        signal.SIGUSR1, lambda *_: threading.Thread(target=agent.shutdown_pods, daemon=True).start()
    )
    threading.Thread(target=agent.heartbeat, daemon=True).start()
    try:
        while True:
            try:
                agent.watch_pods()
            except (ApiException, OSError) as err:  # the API server restarting: retry
                print(f"stand-in kubelet: watch failed, retrying: {err}", flush=True)
                time.sleep(1)
    finally:
        agent.stop()


if __name__ == "__main__":
    main()
