"""A pod's volumes as directories, for the kubelet stand-in.

Each volume becomes a directory under the pod's directory (hostPath and bound hostPath/local
PersistentVolumes use theirs), which container_init.py bind-mounts at each mount path inside
the container's own mount namespace. Secret and ConfigMap files are written once at start
(a kubelet refreshes them later; the stand-in does not).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from tests.k8s import podenv


class MountError(RuntimeError):
    """A volume cannot be set up yet (a missing object) or at all (an unsupported type)."""


class Cluster(Protocol):
    def data(self, kind: str, namespace: str, name: str) -> dict[str, str] | None: ...
    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str: ...
    def claim_path(self, namespace: str, claim: str) -> str: ...


def _write(root: Path, rel: str, content: bytes, mode: int) -> None:
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise MountError(f"volume item path {rel!r} leaves the volume")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _keyed(root: Path, data: dict[str, str], source: dict[str, Any], default_mode: int, what: str) -> None:
    """Write a Secret's or ConfigMap's keys (all, or `items` with their paths and modes)."""
    items = source.get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise MountError(f"{what}: key {item['key']!r} not found")
        _write(
            root,
            item["path"],
            data[item["key"]].encode("utf-8", "surrogateescape"),
            item.get("mode", default_mode),
        )


def _object(cluster: Cluster, kind: str, ns: str, source: dict[str, Any]) -> dict[str, str] | None:
    name = source.get("name") or source.get("secretName", "")
    data = cluster.data(kind, ns, name)
    if data is None and not source.get("optional"):
        raise MountError(f"{kind} {ns}/{name} not found")
    return data


def _downward(root: Path, pod: dict[str, Any], items: list[dict[str, Any]], mode: int) -> None:
    for item in items:
        if "fieldRef" in item:
            value = podenv.field(pod, item["fieldRef"]["fieldPath"])
        else:
            raise MountError("downwardAPI resourceFieldRef volumes are not supported by the stand-in")
        _write(root, item["path"], value.encode(), item.get("mode", mode))


def _projected(cluster: Cluster, root: Path, pod: dict[str, Any], spec: dict[str, Any]) -> None:
    ns, mode = pod["metadata"]["namespace"], spec.get("defaultMode", 0o644)
    for source in spec.get("sources") or []:
        if "serviceAccountToken" in source:
            tok = source["serviceAccountToken"]
            token = cluster.token(pod, tok.get("audience"), int(tok.get("expirationSeconds", 3600)))
            _write(root, tok["path"], token.encode(), mode)
        elif "secret" in source or "configMap" in source:
            kind = "secret" if "secret" in source else "configmap"
            ref = source.get("secret") or source["configMap"]
            data = _object(cluster, kind, ns, ref)
            if data is not None:
                _keyed(root, data, ref, mode, f"{kind} {ref.get('name')}")
        elif "downwardAPI" in source:
            _downward(root, pod, source["downwardAPI"].get("items") or [], mode)
        else:
            raise MountError(f"projected source {sorted(source)} is not supported by the stand-in")


def prepare(cluster: Cluster, pod: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
    """Create every volume of the pod; return {volume name: directory to bind-mount}."""
    ns, paths = pod["metadata"]["namespace"], {}
    for volume in pod["spec"].get("volumes") or []:
        name, root = volume["name"], pod_dir / "volumes" / volume["name"]
        root.mkdir(parents=True, exist_ok=True)
        paths[name] = root
        if "emptyDir" in volume:
            continue  # medium Memory is a directory too: the stand-in has no tmpfs per pod
        if "secret" in volume or "configMap" in volume:
            kind = "secret" if "secret" in volume else "configmap"
            source = volume.get("secret") or volume["configMap"]
            data = _object(cluster, kind, ns, source)
            if data is not None:
                _keyed(root, data, source, source.get("defaultMode", 0o644), f"volume {name}")
        elif "projected" in volume:
            _projected(cluster, root, pod, volume["projected"])
        elif "downwardAPI" in volume:
            _downward(root, pod, volume["downwardAPI"].get("items") or [], 0o644)
        elif "hostPath" in volume:
            paths[name] = Path(volume["hostPath"]["path"])
        elif "persistentVolumeClaim" in volume:
            paths[name] = Path(cluster.claim_path(ns, volume["persistentVolumeClaim"]["claimName"]))
        else:
            kinds = sorted(set(volume) - {"name"})
            raise MountError(f"volume {name}: type {kinds} is not supported by the stand-in")
    return paths
