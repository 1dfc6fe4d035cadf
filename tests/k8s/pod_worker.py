"""One pod on the kubelet stand-in: volumes, init containers, sidecars, containers, status.

It follows the kubelet's pod lifecycle for what a Job needs: regular init containers in order,
native sidecars (init containers with restartPolicy Always) started and kept beside the main
containers, restarts by the pod's restartPolicy, phases from exit codes, deletion with the
grace period, and the DisruptionTarget condition when the pod is ended by a disruption.
There are no probes: a running container counts as ready.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Protocol

from tests.k8s import images, podenv, podnet, volumes
from tests.k8s.containers import Container, now, waiting

POLL = 0.1
RESTART_DELAY = 1.0  # the kubelet's back-off starts at 10 s; tests need no wait that long


class Node(Protocol):
    """What a pod worker needs from its node agent."""

    name: str
    root: Path
    allocatable: dict[str, str]
    service_env: dict[str, str]
    network: dict[str, Any] | None

    @property
    def cluster(self) -> volumes.Cluster: ...

    def patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None: ...
    def event(self, pod: dict[str, Any], reason: str, message: str, warning: bool = False) -> None: ...
    def finish_deletion(self, pod: dict[str, Any]) -> None: ...


class PodWorker(threading.Thread):
    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.node, self.pod = node, pod
        self.dir = node.root / "pods" / pod["metadata"]["uid"]
        self.stop_requested = threading.Event()
        self.grace = 30.0
        self.disruption: tuple[str, str] | None = None  # (reason, message) for DisruptionTarget
        self.init: dict[str, Container] = {}
        self.main: dict[str, Container] = {}
        self.mounts: dict[str, Path] = {}
        self.phase = "Pending"
        self.started_at = now()
        self.netns: str | None = None
        self.ip = "127.0.0.1"  # without a pod network (--network) pods share this machine's

    # requests from the agent (watch thread)
    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp"):
            self.request_stop(float(pod["metadata"].get("deletionGracePeriodSeconds") or 0))

    def request_stop(self, grace: float, disruption: tuple[str, str] | None = None) -> None:
        if not self.stop_requested.is_set():
            self.grace = grace
            self.disruption = disruption
            self.stop_requested.set()

    # the pod's life
    def run(self) -> None:
        try:
            if self._prepare() and self._run_init() and self._start_main():
                self._wait_main()
        except Exception as err:  # the worker must always end the pod, whatever went wrong
            self.node.event(self.pod, "StandInError", f"stand-in kubelet: {err!r}", warning=True)
        self._stop_all(self.grace if self.stop_requested.is_set() else 0)
        self._finish()
        if self.netns and self.node.network:  # the kubelet tears a finished pod's sandbox down
            podnet.detach(self.node.network, self.netns, self.ip)

    def _prepare(self) -> bool:
        """Mount volumes; like the kubelet, retry while a Secret or ConfigMap is missing."""
        self._status(
            {"containerStatuses": [waiting(c, "ContainerCreating") for c in self.pod["spec"]["containers"]]}
        )
        if self.node.network and not self.pod["spec"].get("hostNetwork"):
            self.netns, self.ip = podnet.attach(self.node.network, self.pod["metadata"]["uid"])
        while not self.stop_requested.is_set():
            try:
                self.mounts = volumes.prepare(self.node.cluster, self.pod, self.dir)
                return True
            except volumes.MountError as err:
                self.node.event(self.pod, "FailedMount", str(err), warning=True)
                self.stop_requested.wait(2)
        return False

    def _launch(self, spec: dict[str, Any], restarts: int = 0) -> Container:
        container = Container(spec, self.dir / "containers", self.node.root / "pids", restarts)
        try:
            env = podenv.environment(
                self.pod, spec, self.node.service_env, self.node.cluster.data, self.node.allocatable
            )
            argv = podenv.argv(spec, env)
            mounts = [self._mount(m) for m in spec.get("volumeMounts") or []]
        except (podenv.EnvError, KeyError) as err:
            container.fail_to_start(str(err))
            self.node.event(self.pod, "Failed", f"container {spec['name']}: {err}", warning=True)
            return container
        container.start(
            argv,
            env,
            mounts,
            self.pod["metadata"]["name"],
            self.dir / "logs" / f"{spec['name']}.log",
            self.netns,
            images.lower_dir(self.node.root, spec.get("image", "")),
        )
        self.node.event(
            self.pod,
            "Started",
            f"Started container {spec['name']} (stand-in: a local process, image not pulled)",
        )
        return container

    def _mount(self, mount: dict[str, Any]) -> dict[str, Any]:
        source = self.mounts[mount["name"]]
        if mount.get("subPath"):
            source = source / mount["subPath"]
            if not source.exists():  # the kubelet creates a missing subPath as a directory
                source.mkdir(parents=True)
        volume = next(v for v in self.pod["spec"].get("volumes") or [] if v["name"] == mount["name"])
        always_read_only = ("secret", "configMap", "projected", "downwardAPI")  # as the kubelet mounts them
        read_only = bool(mount.get("readOnly")) or any(kind in volume for kind in always_read_only)
        return {"source": str(source), "target": mount["mountPath"], "read_only": read_only}

    def _run_init(self) -> bool:
        for spec in self.pod["spec"].get("initContainers") or []:
            if spec.get("restartPolicy") == "Always":  # a native sidecar: runs beside the others
                self.init[spec["name"]] = self._launch(spec)
                continue
            while True:
                self.init[spec["name"]] = container = self._launch(
                    spec, self._restarts(self.init, spec["name"])
                )
                self._publish()
                code = self._wait(container)
                if code is None:
                    return False  # stop requested
                if code == 0:
                    break
                if self.pod["spec"].get("restartPolicy", "Always") == "Never":
                    return False
                self.stop_requested.wait(RESTART_DELAY)
        return True

    def _start_main(self) -> bool:
        if self.stop_requested.is_set():
            return False
        for spec in self.pod["spec"]["containers"]:
            self.main[spec["name"]] = self._launch(spec)
        self.phase = "Running"
        self._publish()
        return True

    def _wait_main(self) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        specs = {c["name"]: c for c in self.pod["spec"]["containers"]}
        while not self.stop_requested.is_set():
            changed, done = False, True
            for name, container in list(self.main.items()):
                code = container.poll()
                if code is None:
                    done = False
                elif policy == "Always" or (policy == "OnFailure" and code != 0):
                    if time.monotonic() < container.ended + RESTART_DELAY:
                        done = False
                        continue
                    self.main[name] = self._launch(specs[name], container.restarts + 1)
                    changed, done = True, False
            for name, sidecar in list(self.init.items()):
                ended = sidecar.poll() is not None and time.monotonic() >= sidecar.ended + RESTART_DELAY
                if sidecar.spec.get("restartPolicy") == "Always" and ended and not done:
                    self.init[name] = self._launch(sidecar.spec, sidecar.restarts + 1)
                    changed = True
            if done:
                return
            if changed:
                self._publish()
            self.stop_requested.wait(POLL)

    def _wait(self, container: Container) -> int | None:
        while not self.stop_requested.is_set():
            code = container.poll()
            if code is not None:
                return code
            self.stop_requested.wait(POLL)
        return None

    def _stop_all(self, grace: float) -> None:
        """Main containers first, then sidecars in reverse order, as the kubelet does."""
        if grace and self.disruption:
            self._status({"conditions": [self._disruption_condition()]})
        if grace and any(c.poll() is None for c in [*self.main.values(), *self.init.values()]):
            self.node.event(self.pod, "Killing", f"Stopping containers (grace period {grace:.0f} s)")
        deadline = time.monotonic() + grace
        for container in self.main.values():
            container.stop(max(0.0, deadline - time.monotonic()))
        for container in reversed(list(self.init.values())):
            container.stop(max(0.0, deadline - time.monotonic()))

    def _finish(self) -> None:
        codes = [c.poll() for c in self.main.values()]
        ok = bool(codes) and all(code == 0 for code in codes)
        init_failed = any(
            c.poll() not in (None, 0) for c in self.init.values() if c.spec.get("restartPolicy") != "Always"
        )
        self.phase = "Succeeded" if ok and not init_failed else "Failed"
        extra: dict[str, Any] = {}
        if self.disruption:
            extra = {
                "conditions": [self._disruption_condition()],
                "reason": "Terminated",
                "message": self.disruption[1],
            }
        self._publish(**extra)
        if self.pod["metadata"].get("deletionTimestamp"):
            self.node.finish_deletion(self.pod)

    # status
    @staticmethod
    def _restarts(group: dict[str, Container], name: str) -> int:
        return group[name].restarts + 1 if name in group else 0

    def _disruption_condition(self) -> dict[str, Any]:
        assert self.disruption is not None
        reason, message = self.disruption
        return {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": now(),
        }

    def _status(self, status: dict[str, Any]) -> None:
        self.node.patch_status(self.pod, status)

    def _publish(self, **extra: Any) -> None:
        running = self.phase == "Running"
        all_main = [c.status(running) for c in self.main.values()]
        if not all_main:
            all_main = [waiting(c, "PodInitializing") for c in self.pod["spec"]["containers"]]
        ready = running and all(s["ready"] for s in all_main)
        initialized = bool(self.main) or not self.pod["spec"].get("initContainers")

        def cond(kind: str, value: bool) -> dict[str, Any]:
            return {"type": kind, "status": "True" if value else "False", "lastTransitionTime": now()}

        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.started_at,
            "containerStatuses": all_main,
            "conditions": [
                cond("PodReadyToStartContainers", True),
                cond("Initialized", initialized),
                cond("ContainersReady", ready),
                cond("Ready", ready),
                *extra.pop("conditions", []),
            ],
            **extra,
        }
        if self.pod["spec"].get("initContainers"):
            status["initContainerStatuses"] = [
                self.init[c["name"]].status(True) if c["name"] in self.init else waiting(c, "PodInitializing")
                for c in self.pod["spec"]["initContainers"]
            ]
        self._status(status)
