"""Multi-node tasks on Kubernetes (issue 16, point 5).

Without mpi-operator a multi-node task is an Indexed Job behind a headless Service; with the
MPIJob CRD installed, `launch=mpi` is an MPIJob. On the test bed (real control plane, the
kubelet stand-in) the real mpi-operator controller, built from the Go module proxy
(tests/k8s/mpi_operator.py), runs against the bed's API server and must accept the MPIJob and
make its launcher and workers. The MPIJob is also validated with the CRD's own OpenAPI schema,
taken from the module at build time. What the stand-in cannot do (sshd in the pods, so the
launcher's mpirun over SSH) is named in the README.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import cli, state
from tpi_jupyter.backends.k8s import K8sBackend, manifests, mpijob
from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import sweep as sweep_tasks

from .aws_moto import moto_endpoint  # noqa: F401 - fixture
from .conftest import wait_for
from .k8s import bed, mpi_operator
from .test_k8s_backend import api_of, cluster, k8s, labelled, start, validate  # noqa: F401 - fixtures

SCRIPT = "#!/bin/bash\nsleep 300\n"
needs_operator = pytest.mark.skipif(
    not mpi_operator.built(), reason="mpi-operator is not built: run `scripts/k8s-testbed build`"
)
needs_bed = pytest.mark.skipif(
    not (bed.built() and mpi_operator.built()),
    reason="the Kubernetes test bed or mpi-operator is not built: run `scripts/k8s-testbed build`",
)


def crd() -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(mpi_operator.crd_path().read_text()))


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema, closed as the API server's pruning is: fields it does not declare are errors."""
    found = {
        k: strict(v) if isinstance(v, dict) else v
        for k, v in schema.items()
        if not k.startswith("x-kubernetes-")
    }
    if "items" in found and isinstance(found["items"], dict):
        found["items"] = strict(schema["items"])
    if "properties" in schema:
        found["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            found["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        found.pop("type", None)
        found["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return found


def validate_mpijob(manifest: dict[str, Any]) -> None:
    import jsonschema

    (version,) = [v for v in crd()["spec"]["versions"] if v["name"] == mpijob.VERSION]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: checked by the API server itself
    jsonschema.validate(manifest, schema)


def mpi_manifests(words: list[str]) -> list[dict[str, Any]]:
    spec = build_spec(["cloud=k8s", "container=s3://bucket/runs", "name=mpi", *words], {})
    backend = K8sBackend()
    meta = manifests.metadata(spec, spec.id, "default", "me", "s3://bucket/runs")
    made = manifests.job(spec, meta, "s3://bucket/runs", 600, "runtime:1", "/opt/tpi")
    return mpijob.workload(spec, meta, made, mpi=True) if backend else []


# ---------------------------------------------------------------- manifests: no cluster needed


@needs_operator
def test_the_mpijob_validates_against_the_crds_own_schema() -> None:
    (job,) = mpi_manifests(["launch=mpi", "parallelism=3", "machine=4-8000"])
    validate_mpijob(job)
    spec = job["spec"]
    assert job["kind"] == "MPIJob" and job["apiVersion"] == "kubeflow.org/v2beta1"
    assert spec["slotsPerWorker"] == 4 and spec["runLauncherAsWorker"] is True
    assert spec["runPolicy"]["cleanPodPolicy"] == "Running" and spec["runPolicy"]["suspend"] is True
    assert 600 < spec["runPolicy"]["activeDeadlineSeconds"] <= 600 + manifests.DEADLINE_GRACE
    launcher, worker = spec["mpiReplicaSpecs"]["Launcher"], spec["mpiReplicaSpecs"]["Worker"]
    assert (launcher["replicas"], worker["replicas"]) == (1, 2)
    for replica in (launcher, worker):
        assert replica["template"]["metadata"]["labels"]["tpi-task"] == job["metadata"]["labels"]["tpi-task"]
    env = {e["name"]: e for e in worker["template"]["spec"]["containers"][0]["env"]}
    assert env[manifests.INDEX]["valueFrom"]["fieldRef"]["fieldPath"].endswith(f"['{mpijob.REPLICA_INDEX}']")
    # The check can fail: a field the CRD does not know is refused.
    import jsonschema

    job["spec"]["runPolicy"]["cleanupPolicy"] = "All"
    with pytest.raises(jsonschema.ValidationError):
        validate_mpijob(job)


def test_a_multi_node_job_gets_a_headless_service_and_a_subdomain(tpi_home: Path) -> None:
    spec = build_spec(["cloud=k8s", "container=s3://bucket/runs", "name=svc", "parallelism=3"], {})
    backend = K8sBackend()
    sent = backend.manifests(spec, backend.new_state(spec, time.time() + 600))
    assert [m["kind"] for m in sent] == ["Secret", "Service", "Job"]
    for manifest in sent:
        validate(manifest)
    service, job = sent[1], sent[2]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == job["metadata"]["name"]
    template = job["spec"]["template"]
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert f"headless service {spec.id}: rank i answers as {spec.id}-i.{spec.id}" in backend.plan(
        spec, backend.new_state(spec, 0.0))  # fmt: skip
    mpi = build_spec(
        ["cloud=k8s", "container=s3://bucket/runs", "name=mpi", "parallelism=3", "launch=mpi"], {}
    )
    assert any(line.startswith("launch=mpi: an MPIJob (kubeflow.org/v2beta1; launcher = rank 0, 2 worker(s)")
               for line in backend.plan(mpi, backend.new_state(mpi, 0.0)))  # fmt: skip
    single = build_spec(["cloud=k8s", "container=s3://bucket/runs", "name=one"], {})
    assert [m["kind"] for m in backend.manifests(single, backend.new_state(single, time.time() + 600))] == [
        "Secret", "Job"]  # fmt: skip


def test_placement_is_refused_in_one_line_before_anything_exists(tpi_home: Path) -> None:
    from tpi_jupyter.spec import SpecError
    from tpi_jupyter.task import launch

    words = ["cloud=k8s", "container=s3://bucket/runs", "name=pl", "parallelism=2", "placement=cluster"]
    for dry_run in (True, False):
        with pytest.raises(
            SpecError, match=r"^placement: cluster is not available on k8s .*; accepted: none$"
        ):
            launch(build_spec(words, {}), SCRIPT, dry_run=dry_run)
    assert state.records() == []


# ---------------------------------------------------------------- on the test bed, real controller


@pytest.fixture(scope="module")
def operator(cluster: bed.Bed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The CRD installed, and the real mpi-operator running against the bed (admin kubeconfig)."""
    from kubernetes import client, config

    api = client.ApiextensionsV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    state = {"installed": False, "process": None, "log": tmp_path_factory.mktemp("mpi-operator") / "log"}

    def install() -> None:
        api.create_custom_resource_definition(crd())
        wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in
                             api.read_custom_resource_definition(mpijob.CRD).status.conditions or []), timeout=30)  # fmt: skip
        with open(state["log"], "wb") as out:
            state["process"] = subprocess.Popen(
                [str(mpi_operator.home() / mpi_operator.BINARY), f"--kubeConfig={cluster.kubeconfig}",
                 "--lock-namespace=default", "--threadiness=1"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        state["installed"] = True

    state["install"] = install
    yield state
    process = state["process"]
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if state["installed"]:
        api.delete_custom_resource_definition(mpijob.CRD)


@needs_bed
def test_without_the_crd_launch_mpi_is_an_indexed_job_behind_a_headless_service(
    k8s: dict[str, Any],  # noqa: F811
    operator: dict[str, Any],
) -> None:
    task = start(["name=mpi-no-crd", "launch=mpi", "parallelism=2", "spot=-1"], SCRIPT, k8s["bucket"])
    api = api_of(task)
    assert task.record["backend"]["mpijob"] is False and task.record["backend"]["service"] is True
    found = api.core.read_namespaced_service(task.id, api.namespace)
    assert found.spec.cluster_ip == "None"
    job = api.batch.read_namespaced_job(task.id, api.namespace)
    assert job.spec.template.spec.subdomain == task.id
    # The real endpoints controller publishes both ranks' pods under the Service's name.
    wait_for(lambda: len(_addresses(api, task.id)) == 2, timeout=90)
    task.destroy()
    assert labelled(api, task.id) == []


def _addresses(api: Any, name: str) -> list[str]:
    from kubernetes import client

    slices = client.DiscoveryV1Api(api.core.api_client).list_namespaced_endpoint_slice(
        api.namespace, label_selector=f"kubernetes.io/service-name={name}"
    )
    return [a for s in slices.items for e in (s.endpoints or []) for a in e.addresses]


@needs_bed
def test_the_real_mpi_operator_makes_launcher_and_workers_and_destroy_removes_them(
    k8s: dict[str, Any],  # noqa: F811
    operator: dict[str, Any],
) -> None:
    operator["install"]()
    task = start(
        ["name=mpi-crd", "launch=mpi", "parallelism=3", "spot=-1", "machine=2-2000"], SCRIPT, k8s["bucket"]
    )
    api = api_of(task)
    backend = task.record["backend"]
    assert backend["mpijob"] is True and backend["job"] is False
    objects = mpijob._objects(api)

    def pods_by_type() -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for pod in api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items:
            found.setdefault(pod.metadata.labels.get(mpijob.ROLE, "?"), []).append(pod.metadata.name)
        return found

    wait_for(
        lambda: len(pods_by_type().get("worker", [])) == 2 and pods_by_type().get("launcher"), timeout=120
    )
    made = pods_by_type()
    assert sorted(made["worker"]) == [f"{task.id}-worker-0", f"{task.id}-worker-1"]
    assert made["launcher"][0].startswith(f"{task.id}-launcher")
    job = objects.get_namespaced_custom_object(
        mpijob.GROUP, mpijob.VERSION, api.namespace, mpijob.PLURAL, task.id
    )
    assert any(c["type"] == "Created" and c["status"] == "True" for c in job["status"]["conditions"])
    # The operator's own parts: the hostfile ConfigMap and the SSH key Secret for the launcher.
    hostfile = api.core.read_namespaced_config_map(f"{task.id}-config", api.namespace).data["hostfile"]
    assert f"{task.id}-worker-0" in hostfile and "slots=2" in hostfile
    # The launcher is a batch Job of the operator's (its pod made by the real Job controller).
    assert api.batch.read_namespaced_job(f"{task.id}-launcher", api.namespace).status.active == 1
    # The ranks as the backend reads them: launcher 0, workers 1 and 2, on the stand-in's node.
    wait_for(
        lambda: (
            sorted(m.rank for m in task.backend.read(task.task_spec, task.backend_state).machines if m.alive)
            == [0, 1, 2]
        ),
        timeout=120,
    )
    task.destroy()
    wait_for(lambda: labelled(api, task.id) == [], timeout=120)
    assert objects.list_namespaced_custom_object(mpijob.GROUP, mpijob.VERSION, api.namespace, mpijob.PLURAL)[
        "items"] == []  # fmt: skip


@needs_bed
def test_dry_run_prints_the_mpijob_when_the_cluster_serves_it_and_sweep_finds_one(
    k8s: dict[str, Any],  # noqa: F811
    operator: dict[str, Any],
    tpi_home: Path,
    tmp_path: Path,
) -> None:
    import yaml

    if not operator["installed"]:
        operator["install"]()
    script = tmp_path / "script.sh"
    script.write_text(SCRIPT)
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["run", "cloud=k8s", f"container=s3://{k8s['bucket']}/runs", "name=dry-mpi",
                         "launch=mpi", "parallelism=2", "--script", str(script), "--dry-run", "--manifests"])  # fmt: skip
    text = out.getvalue()
    assert code == 0, text
    documents = list(yaml.safe_load_all(text[text.index("apiVersion:") :]))
    assert [d["kind"] for d in documents] == ["Secret", "MPIJob"]
    validate_mpijob(documents[1])

    lost = start(["name=mpi-lost", "launch=mpi", "parallelism=2", "spot=-1"], SCRIPT, k8s["bucket"])
    state.delete(lost.id)
    lines = sweep_tasks("k8s", delete=False)
    assert any(lost.id in line and "mpijob" in line for line in lines), lines
    sweep_tasks("k8s", delete=True)
    wait_for(lambda: labelled(api_of(lost), lost.id) == [], timeout=120)
