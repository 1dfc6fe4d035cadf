"""The Kubernetes backend (issue 12, points 5-12) on the test bed, with its remote on moto's S3.

The control plane is real (etcd, kube-apiserver, the Job controller, the scheduler, built by
`scripts/k8s-testbed build`); the kubelet is the bed's stand-in, which runs each container's
command as a local process and pulls no image (tests/k8s/README.md). So the agent's runtime,
which on a real cluster an init container copies from the runtime image, is here a directory
whose `bin/python` runs this venv's Python. Each pod has its own network namespace and reaches
moto (on this machine's 127.0.0.1) at the bed's gateway, which `TPI_K8S_STORAGE_ENDPOINT` tells
the backend. Manifest tests need no bed: they run everywhere.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import cli, layout, state
from tpi_jupyter.backends.base import Timing
from tpi_jupyter.backends.k8s import K8sBackend, backoff, manifests
from tpi_jupyter.commands import build_spec
from tpi_jupyter.spec import SpecError, TaskSpec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import FINAL, Task, TaskError, launch
from tpi_jupyter.task import sweep as sweep_tasks

from .aws_moto import moto_endpoint  # noqa: F401 - fixture
from .conftest import created_nothing, wait_for
from .k8s import bed

SECRET = "k8s-s3cr3t-value-that-must-not-leak"
VERSION = "1.37.0"  # the bed's Kubernetes minor; kubernetes-validate's newest schemas


def validate(manifest: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, VERSION, strict=True)


# ---------------------------------------------------------------- manifests: no cluster needed


@pytest.mark.parametrize(
    "words",
    [
        [],
        ["machine=m+t4", "spot=0", "disk_size=50", "region=pool=gpu,zone=b", "permission_set=trainer"],
        ["parallelism=4", "image=python:3.12-slim", "spot=0.5", "tags=team=ml"],
    ],
)
def test_every_manifest_validates_strictly(words: list[str], tpi_home: Path) -> None:
    spec = build_spec(["cloud=k8s", "container=s3://bucket/runs", "name=val", *words], {})
    backend = K8sBackend()
    sent = backend.manifests(spec, backend.new_state(spec, time.time() + 600))
    assert [m["kind"] for m in sent] == ["Secret", *(["Service"] if spec.parallelism > 1 else []), "Job"]
    for manifest in sent:
        validate(manifest)
    job = sent[-1]["spec"]
    pod = job["template"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", spec.parallelism,
                                                                                spec.parallelism)  # fmt: skip
    assert pod["restartPolicy"] == "Never" and job["backoffLimitPerIndex"] == manifests.BACKOFF_PER_INDEX
    assert job["podFailurePolicy"]["rules"][0] == {
        "action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}  # fmt: skip
    assert 600 < job["activeDeadlineSeconds"] <= 600 + manifests.DEADLINE_GRACE
    limits = pod["containers"][0]["resources"]["limits"]
    if "machine=m+t4" in words:
        assert limits["nvidia.com/gpu"] == "1" and limits["ephemeral-storage"] == "50Gi"
        assert pod["nodeSelector"] == {"pool": "gpu", "zone": "b", "accelerator": "nvidia-tesla-t4"}
        assert pod["serviceAccountName"] == "trainer" and pod["automountServiceAccountToken"] is True
    if spec.spot >= 0:
        assert {t["key"] for t in pod["tolerations"]} == {
            "cloud.google.com/gke-spot", "kubernetes.azure.com/scalesetpriority"}  # fmt: skip
    else:
        assert "tolerations" not in pod and "affinity" not in pod


def test_dry_run_prints_the_manifests_as_yaml(tpi_home: Path, tmp_path: Path) -> None:
    import yaml

    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["run", "cloud=k8s", "container=s3://bucket", f"environment=TOKEN={SECRET}",
                         "name=dry", "--script", str(script), "--dry-run", "--manifests"])  # fmt: skip
    assert code == 0
    text = out.getvalue()
    documents = list(yaml.safe_load_all(text[text.index("apiVersion:") :]))
    assert [d["kind"] for d in documents] == ["Secret", "Job"]
    for document in documents:
        validate(document)
    assert SECRET not in text and created_nothing(tpi_home)


def test_manifests_flag_needs_dry_run(tpi_home: Path, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("echo hi\n")
    err = io.StringIO()
    with redirect_stderr(err):
        code = cli.main(["run", "cloud=k8s", "container=s3://bkt", "--script", str(script), "--manifests"])
    assert code == 2 and err.getvalue().count("\n") == 1 and "--dry-run" in err.getvalue()


@pytest.mark.parametrize("container", ["my-claim"])  # no container is the claim mode: tests/test_k8s_pvc.py
def test_a_container_that_is_no_url_is_refused_before_anything_exists(container: str, tpi_home: Path) -> None:
    words = ["cloud=k8s", "name=pvc"] + ([f"container={container}"] if container else [])
    with pytest.raises(SpecError, match=r"^container: .* accepted: an object-store URL container=s3://"):
        launch(build_spec(words, {}), "echo hi")
    assert created_nothing(tpi_home)


def test_container_accepts_object_store_urls_on_k8s() -> None:
    for url in ("s3://bucket/prefix", "gs://bucket", "az://container/a/b", "my-claim"):
        assert TaskSpec.from_args({"cloud": "k8s", "container": url}).container == url
    with pytest.raises(SpecError, match="container: 'ftp://x' is not valid for cloud=k8s; accepted: "):
        TaskSpec.from_args({"cloud": "k8s", "container": "ftp://x"})


# ---------------------------------------------------------------- on the test bed

needs_bed = pytest.mark.skipif(
    not bed.built(), reason="the Kubernetes test bed is not built: run `scripts/k8s-testbed build`"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bed.Bed]:
    root = tmp_path_factory.mktemp("k8s-backend-bed")
    testbed = bed.up(root)
    try:
        yield testbed
    finally:
        bed.down(root)


@pytest.fixture
def k8s(cluster: bed.Bed, moto_endpoint: str, tpi_home: Path, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:  # fmt: skip
    """KUBECONFIG at the bed, S3 at moto with a fresh bucket, the agent's runtime, fast cadences."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    env = {"KUBECONFIG": str(cluster.kubeconfig), "AWS_ENDPOINT_URL": moto_endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
           "AWS_DEFAULT_REGION": "us-west-1", "AWS_REGION": "us-west-1",
           "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}  # fmt: skip
    runtime = tmp_path / "agent-runtime"
    (runtime / "bin").mkdir(parents=True)
    python = runtime / "bin" / "python"  # the stand-in runs it on this host: this venv's Python
    python.write_text(f'#!/bin/sh\nexec {Path(__import__("sys").executable)} "$@"\n')
    python.chmod(0o755)
    env.update(TPI_K8S_AGENT_RUNTIME=str(runtime), TPI_K8S_AGENT_IMAGE="tpi-agent-runtime:test")
    # Pods have their own network namespace: moto on 127.0.0.1:P is the bed's gateway:P from a pod.
    env["TPI_K8S_STORAGE_ENDPOINT"] = moto_endpoint.replace("127.0.0.1", cluster.gateway)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"tpi-k8s-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", region_name="us-west-1").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-1"})  # fmt: skip
    fast = Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=1)
    monkeypatch.setattr(K8sBackend, "capabilities",
                        replace(K8sBackend.capabilities, timing=fast, poll_interval=0.3))  # fmt: skip
    for name, value in (("STOP_WAIT", 30.0), ("DELETE_WAIT", 90.0), ("POLL", 0.3)):
        monkeypatch.setattr(K8sBackend, name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield {"bucket": bucket, "bed": cluster}
    s3fs.S3FileSystem.clear_instance_cache()


def api_of(task: Task) -> Any:
    return task.backend.api(task.backend_state)  # type: ignore[attr-defined]


def start(words: list[str], script: str, bucket: str) -> Task:
    task = launch(build_spec(["cloud=k8s", f"container=s3://{bucket}/runs", *words], {}), script)
    assert isinstance(task, Task)
    return task


def finish(task: Task, timeout: float = 240) -> str:
    wait_for(lambda: task.read(fresh=True).status in FINAL, timeout=timeout, interval=0.5)
    return task.read(fresh=True).status


def log_of(task: Task, rank: int, boot: int = 0) -> str:
    fs, _ = filesystem(task.record["remote"])
    parts = task.read(fresh=True).log_parts.get(layout.log(rank, boot), [])
    return b"".join(fs.cat_file(path) for path, _ in parts).decode()


def labelled(api: Any, task_id: str) -> list[str]:
    """Every object labelled with the task that still exists."""
    selector = f"tpi-task={task_id}"
    found = [
        f"job/{j.metadata.name}"
        for j in api.batch.list_namespaced_job(api.namespace, label_selector=selector).items
    ]
    for kind, lister in (("pod", api.core.list_namespaced_pod), ("secret", api.core.list_namespaced_secret),
                         ("configmap", api.core.list_namespaced_config_map),
                         ("service", api.core.list_namespaced_service),
                         ("pvc", api.core.list_namespaced_persistent_volume_claim)):  # fmt: skip
        found += [
            f"{kind}/{item.metadata.name}" for item in lister(api.namespace, label_selector=selector).items
        ]
    return found


def everything_but_the_secret(api: Any, secret_name: str) -> str:
    """Every object of the namespace (the task's Secret aside) and every event, as JSON text."""
    serialize = api.core.api_client.sanitize_for_serialization
    objects = [api.batch.list_namespaced_job(api.namespace), api.core.list_namespaced_pod(api.namespace),
               api.core.list_namespaced_config_map(api.namespace), api.core.list_namespaced_event(api.namespace)]  # fmt: skip
    secrets = [
        s for s in api.core.list_namespaced_secret(api.namespace).items if s.metadata.name != secret_name
    ]
    return json.dumps([serialize(o) for o in objects] + [serialize(s) for s in secrets])


LIFE_SCRIPT = f"""#!/bin/bash
echo "rank $TPI_RANK of $TPI_WORLD_SIZE on $(hostname)"
mkdir -p results
cat input.txt > results/out.txt
[ "$SECRET_TOKEN" = "{SECRET}" ] && echo "token arrived"
echo "storage keys visible to the script: ${{AWS_SECRET_ACCESS_KEY:-none}}"
"""


@needs_bed
def test_lifecycle_env_only_in_the_secret_and_nothing_left(k8s: dict[str, Any], workdir: Path) -> None:
    (workdir / "input.txt").write_text("hello from the workdir\n")
    task = start(["workdir=.", "output=results", f"environment=SECRET_TOKEN={SECRET}", "name=k8s-life",
                  "timeout=600"], LIFE_SCRIPT, k8s["bucket"])  # fmt: skip
    api = api_of(task)
    job = api.batch.read_namespaced_job(task.id, api.namespace)
    assert job.spec.completion_mode == "Indexed" and job.spec.suspend is False
    assert job.metadata.labels["tpi-task"] == task.id and job.metadata.labels["tpi-creator"]
    fs, root = filesystem(task.record["remote"])
    assert not fs.exists(layout.join(root, layout.ENV)), "the environment stays in the remote"
    assert finish(task) == "succeeded", task.tail_text()
    text = log_of(task, 0)
    assert "rank 0 of 1 on " + task.id in text and "token arrived" in text
    assert "storage keys visible to the script: none" in text
    assert SECRET not in everything_but_the_secret(api, task.id)
    assert labelled(api, task.id)
    fetched = task.destroy()
    assert "results/out.txt" in [Path(f).as_posix().split(str(workdir) + "/")[-1] for f in fetched] or fetched
    assert (workdir / "results" / "out.txt").read_text() == "hello from the workdir\n"
    assert labelled(api, task.id) == []
    fs.invalidate_cache()
    assert not fs.exists(root) and state.load(task.id) is None
    task.destroy()  # idempotent


@needs_bed
def test_parallelism_three_every_rank_log_and_status_survive(k8s: dict[str, Any]) -> None:
    script = '#!/bin/bash\necho "hello from rank $TPI_RANK of $TPI_WORLD_SIZE"\nsleep 1\n'
    # every rank waits for the others' addresses (issue 16): all three must fit on the node at once
    task = start(["parallelism=3", "machine=2-4000", "name=k8s-three"], script, k8s["bucket"])
    assert finish(task) == "succeeded", task.tail_text()
    snapshot = task.read(fresh=True)
    assert [(r.rank, r.state, r.code) for r in snapshot.ranks] == [(i, "succeeded", 0) for i in range(3)]
    api = api_of(task)
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items
    consoles = {  # what `kubectl logs` shows: the script's lines too, as the remote log has them
        int(pod.metadata.annotations[manifests.INDEX_ANNOTATION]): api.core.read_namespaced_pod_log(
            pod.metadata.name, api.namespace, _preload_content=False
        ).data.decode()
        for pod in pods
    }
    for rank in range(3):
        assert f"hello from rank {rank} of 3" in log_of(task, rank)
        assert f"hello from rank {rank} of 3" in consoles[rank]
    task.destroy()
    assert labelled(api_of(task), task.id) == []


@needs_bed
def test_a_failing_rank_fails_the_task_with_its_exit_code(k8s: dict[str, Any]) -> None:
    script = '#!/bin/bash\nif [ "$TPI_RANK" = 1 ]; then echo failing; exit 7; fi\nsleep 300\n'
    task = start(["parallelism=2", "name=k8s-fail"], script, k8s["bucket"])
    assert finish(task) == "failed"
    ranks = {r.rank: r for r in task.read(fresh=True).ranks}
    assert (ranks[1].state, ranks[1].code) == ("failed", 7)
    # policy: a failed rank stops the others (rank 0 sees the request, stops, syncs and reports)
    wait_for(lambda: task.read(fresh=True).ranks[0].state == "stopped", timeout=60, interval=0.5)
    api = api_of(task)

    def codes() -> list[int]:  # the status reaches the remote a moment before the pod's reaches the API
        return [
            s.state.terminated.exit_code
            for p in api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items
            if p.metadata.annotations[manifests.INDEX_ANNOTATION] == "1"
            for s in p.status.container_statuses or [] if s.state.terminated
        ]  # fmt: skip

    wait_for(codes, timeout=30, interval=0.3)
    assert codes() == [7]  # the pod exits with the script's code: the Job fails that index with it
    task.destroy()
    assert labelled(api, task.id) == []


@needs_bed
def test_the_deadline_ends_the_task_as_timeout(k8s: dict[str, Any]) -> None:
    task = start(["timeout=15", "name=k8s-late"], "#!/bin/bash\necho started\nsleep 600\n", k8s["bucket"])
    assert finish(task, timeout=120) == "timeout"
    assert task.read(fresh=True).ranks[0].state == "timeout"
    task.destroy()
    assert labelled(api_of(task), task.id) == []


RESUME_SCRIPT = """#!/bin/bash
if [ -f progress.txt ]; then echo "resumed from $(cat progress.txt)"; exit 0; fi
echo "first boot" > progress.txt
echo "first boot ran"
sleep 600
"""


@needs_bed
def test_an_evicted_pod_respawns_and_resumes_from_synced_data(k8s: dict[str, Any], workdir: Path) -> None:
    task = start(["workdir=.", "spot=0", "name=k8s-evict", "timeout=600"], RESUME_SCRIPT, k8s["bucket"])
    fs, root = filesystem(task.record["remote"])

    def synced() -> bool:
        fs.invalidate_cache()
        return bool(fs.exists(layout.join(root, layout.data("progress.txt"))))

    wait_for(lambda: "first boot ran" in log_of(task, 0), timeout=120, interval=0.5)
    wait_for(synced, timeout=60, interval=0.5)
    task.preempt(0)  # the Eviction API: the pod gets DisruptionTarget, the Job ignores the failure
    wait_for(lambda: "preempted" in [e["kind"] for e in task.read(fresh=True).group.events], timeout=60)  # type: ignore[union-attr]
    assert finish(task) == "succeeded", task.tail_text()
    assert "resumed from first boot" in log_of(task, 0, boot=1)
    assert [e["kind"] for e in task.events()].count("machine-started") == 2  # evicted pod, then its successor
    api = api_of(task)
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items
    (notes,) = [p.metadata.annotations for p in pods if p.metadata.deletion_timestamp is None]
    assert (notes[backoff.FAILURES], notes[backoff.IGNORED]) == ("0", "1")  # the failure budget is whole
    (evicted,) = [e["detail"] for e in task.events() if e["kind"] == "preempted"]
    assert evicted.endswith("the Job controller recreates it after its back-off, 10 s"), evicted
    task.destroy()
    assert labelled(api_of(task), task.id) == []


@needs_bed
def test_sweep_finds_and_deletes_a_forgotten_task(k8s: dict[str, Any]) -> None:
    task = start(["name=k8s-orphan", "timeout=600"], "#!/bin/bash\nsleep 600\n", k8s["bucket"])
    api = api_of(task)
    state.delete(task.id)  # the registry forgets it; the cluster does not
    listed = sweep_tasks("k8s", delete=False)
    assert any(line.startswith(f"orphan {task.id} (default): job {task.id}") for line in listed), listed
    assert labelled(api, task.id)
    sweep_tasks("k8s", delete=True)
    assert labelled(api, task.id) == []
    fs, root = filesystem(task.record["remote"])
    fs.invalidate_cache()
    assert not fs.exists(root)


@needs_bed
def test_a_failure_midway_rolls_back_and_spares_what_is_not_ours(k8s: dict[str, Any]) -> None:
    """The Job cannot be created (a Job of that name exists, not the task's): the Secret made
    before it is deleted, the other Job is left alone, the registry forgets the task."""
    spec = build_spec(["cloud=k8s", f"container=s3://{k8s['bucket']}/runs", "name=k8s-clash"], {})
    backend = K8sBackend()
    api = backend.api(backend.new_state(spec, time.time()))
    theirs = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": spec.id},
              "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never",
                       "containers": [{"name": "c", "image": "busybox", "command": ["true"]}]}}}}  # fmt: skip
    api.batch.create_namespaced_job(api.namespace, theirs)
    try:
        with pytest.raises(
            TaskError,
            match=r"creating the job failed \(409 AlreadyExists.*everything created so far was removed",
        ):
            launch(spec, "echo hi")
        assert labelled(api, spec.id) == [] and state.load(spec.id) is None
        assert api.batch.read_namespaced_job(spec.id, api.namespace).metadata.name == spec.id
    finally:
        api.batch.delete_namespaced_job(spec.id, api.namespace)


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- {name: c, cluster: {server: "https://127.0.0.1:1"}}
users:
- {name: alice@example.com, user: {token: not-a-real-token}}
contexts:
- {name: first, context: {cluster: c, user: alice@example.com, namespace: team-a}}
- {name: second, context: {cluster: c, user: alice@example.com}}
current-context: first
"""


def test_kubeconfig_context_and_namespace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tpi_jupyter.backends.k8s import config

    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    for name in (config.NAMESPACE_ENV, config.CONTEXT_ENV, "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    found = config.connect()
    assert (found.context, found.namespace, found.user) == ("first", "team-a", "alice@example.com")
    monkeypatch.setenv(config.NAMESPACE_ENV, "elsewhere")
    assert config.connect().namespace == "elsewhere"
    monkeypatch.delenv(config.NAMESPACE_ENV)
    monkeypatch.setenv(config.CONTEXT_ENV, "second")
    assert (config.connect().context, config.connect().namespace) == ("second", "default")
    monkeypatch.setenv(config.CONTEXT_ENV, "third")
    with pytest.raises(
        config.ConfigError, match=r"^k8s: context 'third' is not in .*; accepted: first, second$"
    ):
        config.connect()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(config.ConfigError, match=r"^k8s: no kubeconfig .*accepted: KUBECONFIG=<file>"):
        config.connect()
