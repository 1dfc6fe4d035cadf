"""Every object of a Kubernetes namespace, read back through the API, as artefacts for the scan.

Jobs, Pods (spec, env, annotations, labels, status), the pods' logs (every container, through
`pods/log`), Services, ConfigMaps, Events and Secrets, each as its JSON. The task's own Secret,
where the values must be, is returned apart, key by key, decoded.
"""

from __future__ import annotations

import base64
import json
from typing import Any


def _dump(api: Any, item: Any) -> bytes:
    return json.dumps(api.core.api_client.sanitize_for_serialization(item)).encode()


def _logs(api: Any, pod: Any) -> dict[str, bytes]:
    containers = [*(pod.spec.init_containers or []), *pod.spec.containers]
    # raw bytes: the client's own decoding turns a body into the text "b'...'"
    return {
        f"k8s log {pod.metadata.name}/{c.name}": api.core.read_namespaced_pod_log(
            pod.metadata.name, api.namespace, container=c.name, _preload_content=False
        ).data
        for c in containers
    }


def namespace_objects(api: Any, secret_name: str) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(every object and log but the task's Secret, that Secret's data key by key)."""
    core, ns = api.core, api.namespace
    found: dict[str, bytes] = {}
    for job in api.batch.list_namespaced_job(ns).items:
        found[f"k8s job {job.metadata.name}"] = _dump(api, job)
    for pod in core.list_namespaced_pod(ns).items:
        found[f"k8s pod {pod.metadata.name}"] = _dump(api, pod)
        found.update(_logs(api, pod))
    listers = (("service", core.list_namespaced_service), ("configmap", core.list_namespaced_config_map),
               ("event", core.list_namespaced_event))  # fmt: skip
    for kind, lister in listers:
        for item in lister(ns).items:
            found[f"k8s {kind} {item.metadata.name}"] = _dump(api, item)
    own: dict[str, bytes] = {}
    for item in core.list_namespaced_secret(ns).items:
        if item.metadata.name == secret_name:
            own = {key: base64.b64decode(value) for key, value in (item.data or {}).items()}
        else:
            found[f"k8s secret {item.metadata.name}"] = _dump(api, item)
    return found, own


def secret_references(pod: Any, secret_name: str) -> list[str]:
    """Where a pod takes the Secret from: `volume <name> -> <container>:<path>` and env references."""
    volumes = {v.name for v in pod.spec.volumes or [] if v.secret and v.secret.secret_name == secret_name}
    found = []
    for container in [*(pod.spec.init_containers or []), *pod.spec.containers]:
        found += [f"volume {m.name} -> {container.name}:{m.mount_path}"
                  for m in container.volume_mounts or [] if m.name in volumes]  # fmt: skip
        found += [f"env {e.name} -> {container.name}" for e in container.env or []
                  if e.value_from and e.value_from.secret_key_ref]  # fmt: skip
        found += [f"envFrom -> {container.name}" for e in container.env_from or [] if e.secret_ref]
    return found
