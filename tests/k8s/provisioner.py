"""A stand-in for a CSI provisioner: the test bed's default StorageClass, as hostPath volumes.

A cluster's default StorageClass names a provisioner (a CSI driver's external-provisioner) that
creates a volume for each claim. Here `tpi-standin-hostpath` names this one. The real
PersistentVolume controller (kube-controller-manager) marks a pending claim of the class with
`volume.kubernetes.io/storage-provisioner`; this controller then creates a `hostPath`
PersistentVolume under the bed's directory, pre-bound to the claim (`claimRef`), with the
claim's access modes (ReadWriteOnce, ReadWriteMany, ...) and its requested size as capacity and
as the label `tpi-jupyter/requested-size`. The real controller binds the two; the kubelet
stand-in mounts the directory. When a claim is deleted its volume is Released and, with the
class's reclaim policy Delete, this controller removes the directory and the PersistentVolume,
as external-provisioner does. Sizes are not enforced (a directory has no quota): say so.

It runs under its own identity bound to the bootstrap ClusterRole
`system:persistent-volume-provisioner`. Usage: python -m tests.k8s.provisioner --kubeconfig K
--dir D
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tests.k8s.node_agent import raw

NAME = "tpi-jupyter.test/hostpath-standin"
CLASS = "tpi-standin-hostpath"
SIZE_LABEL = "tpi-jupyter/requested-size"
ANNOTATIONS = ("volume.kubernetes.io/storage-provisioner", "volume.beta.kubernetes.io/storage-provisioner")
POLL = 0.5


def storage_class() -> dict[str, Any]:
    """The bed's default StorageClass (created by the bed as admin)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            "labels": {"tpi-jupyter/stand-in": "true"},
        },
        "provisioner": NAME,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def wanted(pvc: dict[str, Any]) -> bool:
    """A pending claim that the PV controller handed to this provisioner."""
    annotations = pvc["metadata"].get("annotations") or {}
    ours = any(annotations.get(key) == NAME for key in ANNOTATIONS)
    return ours and not pvc["spec"].get("volumeName") and pvc.get("status", {}).get("phase") == "Pending"


def volume_for(pvc: dict[str, Any], root: Path) -> dict[str, Any]:
    """The PersistentVolume for a claim: its modes, its size, pre-bound to it."""
    meta, spec = pvc["metadata"], pvc["spec"]
    size = str(spec["resources"]["requests"]["storage"])
    name = f"pvc-{meta['uid']}"  # as external-provisioner names them
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {SIZE_LABEL: size, "tpi-jupyter/stand-in": "true"},
            "annotations": {"pv.kubernetes.io/provisioned-by": NAME},
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName") or CLASS,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(root / name), "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


class Provisioner:
    def __init__(self, api: client.CoreV1Api, root: Path) -> None:
        self.api, self.root = api, root

    def provision(self, pvc: dict[str, Any]) -> None:
        if pvc["spec"].get("volumeMode") == "Block":
            return  # a directory cannot be a block device; the claim stays Pending, as unsupported
        volume = volume_for(pvc, self.root)
        Path(volume["spec"]["hostPath"]["path"]).mkdir(mode=0o777, parents=True, exist_ok=True)
        try:
            self.api.create_persistent_volume(volume)
        except ApiException as err:
            if err.status != 409:  # 409: made in an earlier round
                raise

    def reclaim(self, pv: dict[str, Any]) -> None:
        """A Released volume of ours with policy Delete: remove its directory, then the object."""
        path = Path(pv["spec"]["hostPath"]["path"])
        if path.is_relative_to(self.root):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(ApiException):
            self.api.delete_persistent_volume(pv["metadata"]["name"])

    def round(self) -> None:
        for pvc in raw(self.api.list_persistent_volume_claim_for_all_namespaces)["items"]:
            if wanted(pvc):
                self.provision(pvc)
        for pv in raw(self.api.list_persistent_volume)["items"]:
            ours = (pv["metadata"].get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == NAME
            released = pv.get("status", {}).get("phase") in ("Released", "Failed")
            if ours and released and pv["spec"].get("persistentVolumeReclaimPolicy") == "Delete":
                self.reclaim(pv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A stand-in provisioner (test bed only)")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--dir", required=True, type=Path, help="where the volumes' directories go")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    api = client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    provisioner = Provisioner(api, args.dir.resolve())
    while True:
        try:
            provisioner.round()
        except (ApiException, OSError) as err:  # the API server restarting: next round
            print(f"stand-in provisioner: {err}", flush=True)
        time.sleep(POLL)


if __name__ == "__main__":
    main()
