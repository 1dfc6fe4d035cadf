"""The Kubernetes machine: ONE pod (no Job, no scaling), running the image with the startup
script (from a Secret: a runner's registration is not in the pod spec), then kept alive.

A pod has no SSH and no stop: `ssh NAME` prints the cluster's own `kubectl exec` into it (the
kubeconfig's credentials decide who may), and `stop` is refused. A runner's pod ends when its
runner ends (restartPolicy Never): the pod completes and holds nothing. The machine vocabulary
maps as for tasks: `machine` = requests and limits, `region` = node selector, `spot` = the spot
tolerations and affinity, `permission_set` = the service account.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..backends.k8s.config import ConfigError, connect
from ..backends.k8s.manifests import node_selector, resources, spot_scheduling
from ..backends.kit.steps import Steps
from ..backends.kit.tags import label_value
from ..spec import SpecError
from .driver import MachineSpec, Status
from .registry import remove_files

SCRIPT_DIR = "/tpi/startup"
KEEP_ALIVE = "sleep infinity & wait"  # PID 1 stays; the machine lives until destroy


@dataclass
class K8sMachineState:
    context: str = ""
    namespace: str = ""
    pod: str = ""
    secret: str = ""


@dataclass(frozen=True)
class ExecTarget:
    context: str
    namespace: str
    pod: str

    def command(self, remote: Sequence[str] = ()) -> list[str]:
        shell = ["/bin/bash", "-lc", " ".join(remote)] if remote else ["/bin/bash", "-l"]
        tty = [] if remote else ["-it"]
        return [
            "kubectl",
            "--context",
            self.context,
            "-n",
            self.namespace,
            "exec",
            *tty,
            self.pod,
            "--",
            *shell,
        ]

    def text(self, remote: Sequence[str] = ()) -> str:
        return shlex.join(self.command(remote))


def manifests(spec: MachineSpec, state: K8sMachineState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Secret with the startup script, and the pod that runs it."""
    labels = {"tpi-machine": label_value(spec.id), "tpi-kind": spec.kind,
              **{label_value(k): label_value(v) for k, v in spec.task.tags.items()}}  # fmt: skip
    meta = {"namespace": state.namespace, "labels": labels}
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {**meta, "name": state.secret},
              "data": {"startup.sh": base64.b64encode(spec.startup_script.encode()).decode()}}  # fmt: skip
    run = f"bash {SCRIPT_DIR}/startup.sh"
    body = f"exec {run}" if spec.kind == "runner" else f"{run}; {KEEP_ALIVE}"
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never", "automountServiceAccountToken": bool(spec.task.permission_set),
        "containers": [{"name": "machine", "image": spec.task.native_image, "command": ["/bin/bash", "-c", body],
                        "resources": resources(spec.task), "env": [{"name": "TPI_MACHINE", "value": spec.id}],
                        "volumeMounts": [{"name": "startup", "mountPath": SCRIPT_DIR, "readOnly": True}]}],
        "volumes": [{"name": "startup", "secret": {"secretName": state.secret, "defaultMode": 0o500}}],
        **spot_scheduling(spec.task),
    }  # fmt: skip
    if node_selector(spec.task):
        pod_spec["nodeSelector"] = node_selector(spec.task)
    if spec.task.permission_set:
        pod_spec["serviceAccountName"] = spec.task.permission_set
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**meta, "name": state.pod}, "spec": pod_spec}
    return secret, pod


class K8sMachineDriver:
    name = "k8s"
    state_type = K8sMachineState
    stop_verb = ""  # a pod cannot be stopped and started again
    release_command = "exit 0"  # the runner's pod completes
    DELETE_WAIT = 120.0
    POLL = 1.0

    def new_state(self, spec: MachineSpec) -> K8sMachineState:
        name = f"tpi-{spec.id.rsplit('-', 2)[-2]}{spec.id.rsplit('-', 1)[-1]}"
        return K8sMachineState(pod=name, secret=f"{name}-startup")

    def plan(self, spec: MachineSpec) -> list[str]:
        return [
            f"a Secret with the startup script and one pod of {spec.task.native_image}; no SSH: kubectl exec"
        ]

    def _api(self, state: K8sMachineState) -> Any:
        from kubernetes import client

        try:
            cluster = connect(state.context)
        except ConfigError as error:
            raise SpecError(f"cloud: {error}") from None
        state.context, state.namespace = cluster.context, state.namespace or cluster.namespace
        return client.CoreV1Api(cluster.api)

    def create(self, spec: MachineSpec, state: K8sMachineState, steps: Steps) -> None:
        api = self._api(state)
        secret, pod = manifests(spec, state)
        steps.run("secret", lambda: api.create_namespaced_secret(state.namespace, secret))
        steps.run("pod", lambda: api.create_namespaced_pod(state.namespace, pod))

    def read(self, spec: MachineSpec, state: K8sMachineState) -> Status:
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self._api(state).read_namespaced_pod(state.pod, state.namespace)
        except ApiException as error:
            if error.status == 404:
                return Status("gone")
            raise
        phase = pod.status.phase if pod.status else "Pending"
        if phase in ("Pending", "Running"):
            return Status("running", pod.status.pod_ip or "" if pod.status else "")
        return Status("released" if spec.kind == "runner" else "gone")

    def ssh(self, spec: MachineSpec, state: K8sMachineState) -> ExecTarget:
        return ExecTarget(state.context, state.namespace, state.pod)

    def stop(self, spec: MachineSpec, state: K8sMachineState) -> None:
        raise SpecError("stop: a k8s machine is a pod, which cannot stop; accepted: destroy")

    start = stop

    def delete(self, spec: MachineSpec, state: K8sMachineState) -> None:
        from kubernetes.client.exceptions import ApiException

        if state.namespace:
            api = self._api(state)
            for remove, name in (
                (api.delete_namespaced_pod, state.pod),
                (api.delete_namespaced_secret, state.secret),
            ):
                try:
                    remove(name, state.namespace, grace_period_seconds=0)
                except ApiException as error:
                    if error.status != 404:
                        raise
        remove_files(spec.id)
