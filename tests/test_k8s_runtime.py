"""What a Kubernetes task's pods need, and nothing more (issue 12, points 5, 7, 8, 9).

- The agent's runtime (backends/k8s/runtime.py, docker/agent-runtime/Dockerfile): a bundled
  Python that runs in a root filesystem holding only busybox's `/bin/sh`, first under `chroot`
  (no bed needed), then on the test bed as both images of a task: the runtime image (busybox's
  sh and cp + /opt/tpi) and the user's image (busybox's sh only). Images are the stand-in's
  local root filesystems (tests/k8s/images.py): **nothing is pulled, no image is built**; what
  this proves is that the files the Dockerfile puts in the image suffice, not that the image
  builds.
- The environment values reach the Secret only and are never written to the remote, at any
  moment (every version of every object of a versioned bucket is read).
- `gs://` (fake-gcs-server) and `az://` (Azurite) containers: pods reach them through a Secret
  the task creates and deletes.
- In-cluster config: a pod with the service account token the API server projects runs `tpi run
  cloud=k8s ... --wait` and `tpi destroy` itself.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import agent_wheel, layout
from tpi_jupyter.backends.k8s import K8sBackend, config, manifests, runtime
from tpi_jupyter.backends.kit.tags import label_value
from tpi_jupyter.commands import build_spec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import FINAL, Task, launch

from . import emulators
from .aws_moto import moto_endpoint  # noqa: F401 - fixture
from .conftest import wait_for
from .emulator_fixtures import azurite_connection, gcs_url  # noqa: F401 - fixtures
from .k8s import bed, images
from .test_k8s_backend import everything_but_the_secret, labelled
from .test_k8s_pvc import cluster, k8s, needs_bed  # noqa: F401 - fixtures: a bed per module, fast cadences

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "agent-runtime" / "Dockerfile"
SECRET = "k8s-runtime-s3cr3t-that-must-not-leak"
RUNTIME_IMAGE = "tpi-standin/agent-runtime:test"
SH_ONLY_IMAGE = "tpi-standin/sh-only:test"
as_root = pytest.mark.skipif(shutil.which("chroot") is None or __import__("os").geteuid() != 0,
                             reason="chroot needs root")  # fmt: skip


# ---------------------------------------------------------------- the runtime image: no bed needed


def test_the_dockerfile_copies_what_the_code_builds(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    steps = [
        line.split("#")[0].strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    assert "COPY context/ /context/" in steps
    wheel_glob = re.search(r"/context/(tpi_jupyter-\*-py3-none-any\.whl)\)\[([a-z0-9,]+)\]", text)
    assert wheel_glob is not None and Path(agent_wheel.wheel_name()).match(wheel_glob[1])
    assert wheel_glob[2].split(",") == list(runtime.EXTRAS)
    assert f"-c /context/{agent_wheel.LOCK_NAME}" in text
    assert f"-m tpi_jupyter.backends.k8s.runtime bundle {config.DEFAULT_AGENT_RUNTIME}" in text
    final = text[text.rindex("\nFROM ") :]
    assert final.startswith("\nFROM busybox:")  # /bin/sh and cp for the init container
    assert f"COPY --from=build {config.DEFAULT_AGENT_RUNTIME} {config.DEFAULT_AGENT_RUNTIME}" in final
    # the context holds the very wheel and lock the client ships to machines
    written = runtime.context(tmp_path / "context")
    assert [p.name for p in written] == [agent_wheel.wheel_name(), agent_wheel.LOCK_NAME]
    assert written[0].read_bytes() == agent_wheel.build()[1]
    lock = written[1].read_text().splitlines()
    for extra in runtime.EXTRAS:
        assert set(agent_wheel.lock_text(extra).splitlines()) <= set(lock)
    from importlib.metadata import version

    for name in ("fsspec", "s3fs", "gcsfs", "adlfs"):
        assert f"{name}=={version(name)}" in lock
    # the init container's command uses only /bin/sh and cp from this image, at this path
    spec = build_spec(["cloud=k8s", "container=s3://bucket", "name=df"], {})
    job = K8sBackend().manifests(spec, K8sBackend().new_state(spec, time.time() + 60))[-1]
    init = job["spec"]["template"]["spec"]["initContainers"][0]
    assert init["command"][:3] == ["/bin/sh", "-c", 'cp -a "$1"/. "$2"/']
    assert init["command"][4:] == [config.DEFAULT_AGENT_RUNTIME, manifests.RUNTIME]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime as `bundle` builds it in the image: here from this Python, with the agent
    wheel and its lock's distributions (the base lock: a claim's remote needs no store library)."""
    dest = tmp_path_factory.mktemp("runtime") / "tpi"
    names = {line.split("==")[0] for line in agent_wheel.lock_text("").splitlines()}
    wheel = dest.parent / agent_wheel.wheel_name()
    wheel.write_bytes(agent_wheel.build()[1])
    runtime.bundle(dest, names, wheel)
    return dest


SHELL_PROBE = """
import os, subprocess, sys
from pathlib import Path
from tpi_jupyter.agent_shell import container_command
print("python", sys.executable, sys.prefix)
for name, body in (("plain", "echo plain $0\\n"), ("bash", "#!/bin/bash -e\\necho bash-shebang\\nfalse\\necho never\\n"),
                   ("sh", "#!/bin/sh\\ncommand -v python3 || echo no-python3; [ -e /bin/bash ] || echo no-bash\\n")):
    script = Path("/tmp") / name
    script.write_text(body); script.chmod(0o700)
    done = subprocess.run(container_command(script), capture_output=True, text=True, env={"PATH": "/bin"})
    print(name, done.returncode, repr(done.stdout), repr(done.stderr))
"""


@as_root
def test_the_bundled_runtime_runs_where_only_busybox_sh_exists(bundled: Path, tmp_path: Path) -> None:
    root = images.add(tmp_path, "probe", ("sh",), {"/tpi": bundled})
    assert sorted(p.name for p in (root / "bin").iterdir()) == ["busybox", "sh"]
    assert not (root / "usr").exists() and not (root / "lib").exists()  # no libc, no Python
    done = subprocess.run([str(shutil.which("chroot")), str(root), "/tpi/bin/python", "-c", SHELL_PROBE], env={"PATH": "/bin"},
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "python /tpi/bin/python /tpi"
    assert lines[1].startswith(
        "plain 0 'plain /tmp/plain\\n' 'tpi-agent: no shebang and no /bin/bash in this image"
    )
    assert lines[2].startswith("bash 1 'bash-shebang\\n' 'tpi-agent: the script asks for bash (/bin/bash -e)")
    assert lines[3] == "sh 0 'no-python3\\nno-bash\\n' ''"


# ---------------------------------------------------------------- on the test bed


def run_to_the_end(words: list[str], script: str, timeout: float = 240) -> Task:
    task = launch(build_spec(["cloud=k8s", *words], {}), script)
    assert isinstance(task, Task)
    wait_for(lambda: task.read(fresh=True).status in FINAL, timeout=timeout, interval=0.5)
    assert task.read(fresh=True).status == "succeeded", task.tail_text()
    return task


def api_of(task: Task) -> Any:
    return task.backend.api(task.backend_state)  # type: ignore[attr-defined]


SH_ONLY_SCRIPT = f"""echo "rank $TPI_RANK in $(busybox hostname)"
[ -e /bin/bash ] || echo "no bash here"
command -v python3 >/dev/null || echo "no python here"
[ "$SECRET_TOKEN" = "{SECRET}" ] && echo "token arrived"
busybox mkdir -p results
read -r line < input.txt
echo "$line, through sh" > results/out.txt
"""


@needs_bed
@as_root
def test_a_task_whose_images_hold_only_busybox_sh(k8s: bed.Bed, bundled: Path, workdir: Path,  # noqa: F811
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The runtime image (busybox sh + cp, /opt/tpi) and the user's image (busybox sh only) as the
    stand-in's local root filesystems: the init container copies the runtime, the transfer pod and
    the agent run it, the script (no shebang) runs under sh; the claim's lifecycle completes."""
    images.add(k8s.root, RUNTIME_IMAGE, ("sh", "cp"), {config.DEFAULT_AGENT_RUNTIME: bundled})
    images.add(k8s.root, SH_ONLY_IMAGE, ("sh",))
    monkeypatch.setenv("TPI_K8S_AGENT_IMAGE", RUNTIME_IMAGE)
    monkeypatch.setenv("TPI_K8S_AGENT_RUNTIME", config.DEFAULT_AGENT_RUNTIME)
    (workdir / "input.txt").write_text("hello from the workdir\n")
    task = run_to_the_end(["workdir=.", "output=results", f"image={SH_ONLY_IMAGE}", "name=k8s-sh-only",
                           f"environment=SECRET_TOKEN={SECRET}", "timeout=600"], SH_ONLY_SCRIPT)  # fmt: skip
    log = task.tail_text()
    for line in ("rank 0 in ", "no bash here", "no python here", "token arrived",
                 "tpi-agent: no shebang and no /bin/bash in this image: running the script with /bin/sh"):  # fmt: skip
        assert line in log, log
    api = api_of(task)
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items
    assert {c.image for p in pods for c in p.spec.containers} == {
        SH_ONLY_IMAGE,
        RUNTIME_IMAGE,
    }  # task, transfer
    assert SECRET not in everything_but_the_secret(api, task.id)
    task.destroy()
    assert (workdir / "results" / "out.txt").read_text() == "hello from the workdir, through sh\n"
    wait_for(lambda: labelled(api, task.id) == [], timeout=60, interval=0.5)


@pytest.fixture
def bucket(k8s: bed.Bed, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    """A fresh bucket on moto, reached by pods at the bed's gateway."""
    import boto3
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing-secret-key", "AWS_DEFAULT_REGION": "us-west-1",
                        "AWS_REGION": "us-west-1", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                        "TPI_K8S_STORAGE_ENDPOINT": moto_endpoint.replace("127.0.0.1", k8s.gateway)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    name = f"tpi-k8s-rt-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-1"}
    )
    s3fs.S3FileSystem.clear_instance_cache()
    return name


@needs_bed
def test_environment_values_are_never_written_to_the_remote(bucket: str, workdir: Path) -> None:
    """A versioned bucket keeps every object ever written, deleted ones included: none holds the
    value, and `.tpi/env` never existed. The Secret has it; no other object of the namespace does."""
    import boto3

    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    (workdir / "input.txt").write_text("data\n")
    task = run_to_the_end([f"container=s3://{bucket}/runs", "workdir=.", f"environment=SECRET_TOKEN={SECRET}",
                           "name=k8s-env-never"], '#!/bin/sh\necho "token of length ${#SECRET_TOKEN}"\n')  # fmt: skip
    assert f"token of length {len(SECRET)}" in task.tail_text()  # the script holds no value itself
    listed = s3.list_object_versions(Bucket=bucket, Prefix=f"runs/{task.id}/")
    versions = listed.get("Versions", [])
    keys = {v["Key"] for v in versions} | {m["Key"] for m in listed.get("DeleteMarkers", [])}
    assert f"runs/{task.id}/{layout.TASK_JSON}" in keys and f"runs/{task.id}/{layout.ENV}" not in keys
    bodies = [
        s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read() for v in versions
    ]
    assert len(bodies) > 5 and not [b for b in bodies if SECRET.encode() in b]
    api = api_of(task)
    held = api.core.read_namespaced_secret(task.id, api.namespace).data[manifests.ENV_KEY]
    assert json.loads(base64.b64decode(held)) == {"SECRET_TOKEN": SECRET}
    assert SECRET not in everything_but_the_secret(api, task.id)
    task.destroy()
    assert labelled(api, task.id) == []


def _store(kind: str, request: pytest.FixtureRequest, gateway: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh gs:// bucket or az:// container on its emulator; the client's and pods' settings."""
    name = f"tpi-k8s-{kind}-{uuid.uuid4().hex[:8]}"
    if kind == "gs":
        url = request.getfixturevalue("gcs_url")
        for key, value in {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "test",
                           "TPI_K8S_STORAGE_ENDPOINT": url.replace("127.0.0.1", gateway)}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        import gcsfs

        gcsfs.GCSFileSystem(endpoint_url=url, token="anon", project="test", skip_instance_cache=True).mkdir(
            name
        )
        return f"gs://{name}"
    connection = request.getfixturevalue("azurite_connection")
    endpoint = re.search(r"BlobEndpoint=([^;]+)", connection)[1]  # type: ignore[index]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection)
    monkeypatch.setenv("TPI_K8S_STORAGE_ENDPOINT", endpoint.replace("127.0.0.1", gateway))
    import adlfs

    adlfs.AzureBlobFileSystem(connection_string=connection, skip_instance_cache=True).mkdir(name)
    return f"az://{name}"


@needs_bed
@pytest.mark.parametrize("kind", ["gs", "az"])
def test_gs_and_az_containers_reached_through_the_task_secret(
    kind: str, k8s: bed.Bed, workdir: Path, request: pytest.FixtureRequest,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    container = _store(kind, request, k8s.gateway, monkeypatch)
    (workdir / "input.txt").write_text(f"hello from {kind}\n")
    script = '#!/bin/bash\nmkdir -p results\ncat input.txt > results/out.txt\necho "rank $TPI_RANK done"\n'
    task = launch(build_spec(["cloud=k8s", f"container={container}/runs", "workdir=.", "output=results",
                              f"name=k8s-{kind}", "timeout=600"], {}), script)  # fmt: skip
    assert isinstance(task, Task) and task.record["remote"].startswith(f"{container}/runs/")
    api = api_of(task)
    stored = json.loads(base64.b64decode(api.core.read_namespaced_secret(task.id, api.namespace).data[
        manifests.STORAGE_KEY]))  # fmt: skip
    wanted = "STORAGE_EMULATOR_HOST" if kind == "gs" else "AZURE_STORAGE_CONNECTION_STRING"
    assert k8s.gateway in stored[wanted]  # the endpoint as pods reach it
    wait_for(lambda: task.read(fresh=True).status in FINAL, timeout=240, interval=0.5)
    assert task.read(fresh=True).status == "succeeded", task.tail_text()
    assert "rank 0 done" in task.tail_text()
    if kind == "az":  # the account key is in the Secret only
        assert emulators.AZURITE_KEY not in everything_but_the_secret(api, task.id)
    pod = api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items[0]
    assert wanted not in json.dumps(api.core.api_client.sanitize_for_serialization(pod.spec))
    task.destroy()
    assert (workdir / "results" / "out.txt").read_text() == f"hello from {kind}\n"
    assert labelled(api, task.id) == []  # the Secret with the storage credentials is gone
    fs, root = filesystem(task.record["remote"], skip_instance_cache=True)
    assert not fs.exists(root)


CLIENT_SCRIPT = """set -e
mkdir -p /tmp/work && cd /tmp/work
echo "hello in-cluster" > input.txt
printf '#!/bin/sh\\nsleep 3\\ncat input.txt\\necho "rank $TPI_RANK ran"\\n' > /tmp/script.sh
tpi run cloud=k8s container=s3://{bucket}/runs workdir=. name=in-cluster timeout=300 --script /tmp/script.sh --wait
tpi destroy in-cluster
echo client-done
"""


@needs_bed
def test_in_cluster_a_pod_runs_a_task_with_its_service_account(k8s: bed.Bed, bucket: str,  # noqa: F811
                                                                moto_endpoint: str) -> None:  # noqa: F811  # fmt: skip
    """No kubeconfig in the pod: `load_incluster_config` with the token, CA and namespace the API
    server's projected volume mounts at /var/run/secrets/kubernetes.io/serviceaccount, and
    KUBERNETES_SERVICE_HOST; the Job it makes carries the service account as its creator."""
    from kubernetes import client

    api = K8sBackend().api(
        K8sBackend().new_state(build_spec(["cloud=k8s", "container=s3://bucket", "name=admin"], {}), 0)
    )
    admin = api.core.api_client
    rbac = client.RbacAuthorizationV1Api(admin)
    namespace = api.namespace
    account = f"tpi-client-{uuid.uuid4().hex[:6]}"
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    rules = [{"apiGroups": [""], "verbs": ["*"], "resources": ["secrets", "pods", "pods/log", "pods/eviction",
              "pods/proxy", "persistentvolumeclaims", "events", "configmaps", "services"]},
             {"apiGroups": ["batch"], "verbs": ["*"], "resources": ["jobs"]}]  # fmt: skip
    rbac.create_namespaced_role(namespace, {"metadata": {"name": account}, "rules": rules})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": account}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                   "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]})  # fmt: skip
    gateway_moto = moto_endpoint.replace("127.0.0.1", k8s.gateway)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": "/root",
           "TPI_JUPYTER_HOME": "/tmp/tpi-home", "TPI_JUPYTER_NONINTERACTIVE": "1",
           "AWS_ENDPOINT_URL": gateway_moto, "TPI_K8S_STORAGE_ENDPOINT": gateway_moto,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
           "AWS_DEFAULT_REGION": "us-west-1", "AWS_EC2_METADATA_DISABLED": "true",
           "TPI_K8S_AGENT_IMAGE": "tpi-agent-runtime:test",
           "TPI_K8S_AGENT_RUNTIME": config.Settings.from_environment().agent_runtime}  # fmt: skip
    pod = {"metadata": {"name": account}, "spec": {
        "serviceAccountName": account, "restartPolicy": "Never",
        "containers": [{"name": "client", "image": "python:3.11-slim", "command": ["/bin/sh", "-c",
                        CLIENT_SCRIPT.format(bucket=bucket)], "env": [{"name": k, "value": v} for k, v in env.items()]}]}}  # fmt: skip
    api.core.create_namespaced_pod(namespace, pod)
    creators: set[str] = set()

    def client_finished() -> bool:
        for job in api.batch.list_namespaced_job(namespace, label_selector="tpi-task").items:
            creators.add(job.metadata.labels.get("tpi-creator", ""))
        phase = api.core.read_namespaced_pod(account, namespace).status.phase
        return phase in ("Succeeded", "Failed")

    try:
        wait_for(client_finished, timeout=300, interval=0.3)
        log = api.core.read_namespaced_pod_log(account, namespace, _preload_content=False).data.decode()
        assert api.core.read_namespaced_pod(account, namespace).status.phase == "Succeeded", log
        assert "hello in-cluster" in log and "rank 0 ran" in log and log.rstrip().endswith("client-done")
        assert creators == {label_value(f"system:serviceaccount:{namespace}:{account}")}
        assert api.batch.list_namespaced_job(namespace, label_selector="tpi-task").items == []
    finally:
        api.core.delete_namespaced_pod(account, namespace, grace_period_seconds=0)
        rbac.delete_namespaced_role_binding(account, namespace)
        rbac.delete_namespaced_role(account, namespace)
        api.core.delete_namespaced_service_account(account, namespace)
