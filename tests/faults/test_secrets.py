"""Secret scan over every artefact a run produced: distinct values planted in `environment=`
(literal, imported, glob) and in the client's credentials, then searched for, plain, base64 and
JSON-escaped, in the registry, the remote (all but the private `.tpi/env`), machine files and
logs, widget state and notebook outputs (a real kernel), user data, launch templates, tags,
contract-server request bodies (GCP, Azure) and Kubernetes manifests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout
from tpi_jupyter.commands import build_spec
from tpi_jupyter.sync import filesystem
from tpi_jupyter.task import Task, launch

from ..aws_moto import aws_env, client, group_instances, instance_user_data, moto_endpoint  # noqa: F401
from ..kernels import Kernel
from ..test_aws import play_all
from ..test_azure import arm, azurite, imds  # noqa: F401 - fixtures
from ..test_gcp import contract, gcp, gcs_url  # noqa: F401 - fixtures
from ..test_k8s_backend import cluster, k8s, needs_bed  # noqa: F401 - fixtures
from . import figures
from .secrets_scan import CREDENTIAL, PLANTED, as_bytes, files, leaks

pytestmark = pytest.mark.slow
SCRIPT = """#!/bin/bash
mkdir -p results
echo "imported: $IMPORTED_SECRET glob: $GLOB_SECRET_A"
echo "literal length ${#LITERAL_SECRET}" > results/out.txt
env | sort > results/env-names.txt
sed -i 's/=.*//' results/env-names.txt
"""
WORDS = ["workdir=.", "output=results", f"environment=LITERAL_SECRET={PLANTED['LITERAL_SECRET']}",
         "environment=IMPORTED_SECRET=", "environment=GLOB_*=", "tags=team=faults"]  # fmt: skip
SECRETS = [*PLANTED.values(), CREDENTIAL]


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMPORTED_SECRET", PLANTED["IMPORTED_SECRET"])
    monkeypatch.setenv("GLOB_SECRET_A", PLANTED["GLOB_SECRET_A"])


def remote_files(task: Task, env_file: bool = True) -> dict[str, bytes]:
    """Every object of the task's remote but the private environment file, which must hold them
    (Kubernetes keeps them in a Secret: `env_file=False`, and the whole remote is scanned)."""
    fs, root = filesystem(task.record["remote"])
    fs.invalidate_cache()
    found = {path: bytes(fs.cat_file(path)) for path in fs.find(root)}
    if not env_file:
        return {f"remote {path}": content for path, content in found.items()}
    (env_path,) = [path for path in found if path.endswith("/" + layout.ENV)]
    # the values reached the machines this way only, and the scan finds them where they are
    assert leaks({"env": found.pop(env_path)}, SECRETS) == [f"env: {v[:4]}..." for v in PLANTED.values()]
    return {f"remote {path}": content for path, content in found.items()}


def check(artefacts: dict[str, bytes], kinds: list[str], backend: str) -> None:
    for kind in kinds:  # the scan looked where it says it did
        assert any(where.startswith(kind) for where in artefacts), f"no {kind} artefact scanned"
    found = leaks(artefacts, SECRETS)
    figures.record("secrets", backend, {"artefacts": len(artefacts), "secrets": len(SECRETS), "leaks": found})
    assert found == []


@pytest.fixture
def widget_kernel(tpi_home: Path, workdir: Path) -> Iterator[Kernel]:
    env = {**os.environ, "TPI_JUPYTER_HOME": str(tpi_home), "IMPORTED_SECRET": PLANTED["IMPORTED_SECRET"],
           "GLOB_SECRET_A": PLANTED["GLOB_SECRET_A"], "AWS_SECRET_ACCESS_KEY": CREDENTIAL}  # fmt: skip
    env.pop("TPI_JUPYTER_NONINTERACTIVE", None)  # widgets, as in JupyterLab
    kernel = Kernel(env, workdir)
    try:
        yield kernel
    finally:
        kernel.shutdown()


def test_local_kernel_widgets_outputs_registry_remote_and_manifests(
    widget_kernel: Kernel, tpi_home: Path, workdir: Path
) -> None:
    kernel = widget_kernel
    outputs = {}
    kernel.ok("%load_ext tpi_jupyter")
    cell = f"%%tpi name=scan {' '.join(WORDS)}\n{SCRIPT}"
    launched = kernel.ok(cell)
    outputs["notebook launch"] = as_bytes(launched.outputs) + as_bytes(launched.comms)
    waited = kernel.ok(
        "%tpi attach scan\nfrom tpi_jupyter.task import Task\nTask.find('scan').wait(timeout=60)"
    )
    outputs["widget attach"] = as_bytes(waited.outputs) + as_bytes(waited.comms)
    for verb in ("status scan", "logs scan", "events scan", "list --json", "status --json scan", "pull scan"):
        outputs[f"notebook {verb}"] = as_bytes(kernel.ok(f"%tpi {verb}").outputs)
    assert "imported: *** glob: ***" in kernel.ok("%tpi logs scan").text  # masked at the source
    for cloud in ("k8s", "gcp", "aws", "az"):  # plans and manifests, as printed
        plan = kernel.execute(f"%%tpi cloud={cloud} container=s3://b/p name=scan-{cloud} {' '.join(WORDS)} "
                              f"--dry-run {'--manifests' if cloud == 'k8s' else '--json'}\n{SCRIPT}")  # fmt: skip
        outputs[f"manifests {cloud}"] = as_bytes(plan.outputs)
    from tpi_jupyter.task import Task

    task = Task.find("scan")
    artefacts = {**outputs, **remote_files(task), **files(workdir / "results", set())}
    artefacts.update(
        {f"registry {k}": v for k, v in files(tpi_home, {Path(task.record["remote"]) / layout.ENV}).items()}
    )
    check(artefacts, ["notebook", "widget", "manifests", "remote", "registry"], "local")
    assert "destroyed" in kernel.ok("%tpi destroy scan").text


def test_aws_user_data_tags_bucket_and_machine_logs(
    aws_env: str,  # noqa: F811 - the imported fixture
    planted: None,
    tpi_home: Path,
    workdir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIAL)  # moto takes any key
    task = launch(build_spec(["name=scan-aws", "spot=0", *WORDS], {"cloud": "aws"}), SCRIPT)
    assert isinstance(task, Task)
    machines = play_all(task, tmp_path / "machines")
    assert task.wait(timeout=120) == "succeeded", machines[0].output()
    aws = task.record["backend"]
    ec2, autoscaling = client("ec2"), client("autoscaling")
    artefacts = {**remote_files(task), **{f"machine {k}": v for k, v in files(tmp_path / "machines").items()}}
    artefacts["user data"] = "".join(
        instance_user_data(i) for i in group_instances(aws["group"], False)
    ).encode()
    artefacts["launch template"] = as_bytes(
        ec2.describe_launch_template_versions(LaunchTemplateId=aws["launch_template"])
    )
    artefacts["tags group"] = as_bytes(
        autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[aws["group"]])
    )
    artefacts["tags bucket"] = as_bytes(client("s3").get_bucket_tagging(Bucket=aws["bucket"]))
    artefacts["tags role"] = as_bytes(client("iam").list_role_tags(RoleName=aws["role"]))
    artefacts.update({f"registry {k}": v for k, v in files(tpi_home).items()})
    check(artefacts, ["remote", "machine", "user data", "launch template", "tags", "registry"], "aws")
    task.destroy()


def contract_scan(cloud: str, calls: list[Any]) -> None:
    """A task on a contract server's cloud: every request body it received, and the remote."""
    task = launch(build_spec([f"name=scan-{cloud}", "spot=0", *WORDS], {"cloud": cloud}), SCRIPT)
    assert isinstance(task, Task) and task.wait(timeout=120) == "succeeded"
    artefacts = {f"request {n}": as_bytes(call) for n, call in enumerate(calls)}
    artefacts.update(remote_files(task))
    check(artefacts, ["request", "remote"], cloud)
    task.destroy()


def test_gcp_requests_labels_and_bucket(gcp: Any, planted: None, workdir: Path) -> None:  # noqa: F811
    contract_scan("gcp", gcp.calls)


def test_azure_requests_tags_and_container(arm: Any, planted: None, workdir: Path) -> None:  # noqa: F811
    contract_scan("az", arm.calls)


@needs_bed
def test_k8s_live_objects_logs_registry_and_remote(
    k8s: dict[str, Any],  # noqa: F811 - the imported fixture
    planted: None,
    tpi_home: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A two-rank task on the test bed; then every object of its namespace, read back."""
    from tpi_jupyter.backends.k8s.manifests import CONTAINER, ENV_KEY, SECRET_DIR, STORAGE_KEY

    from .k8s_objects import namespace_objects, secret_references

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIAL)  # moto takes any key; forwarded to the pods
    words = ["name=scan-k8s", "parallelism=2", f"container=s3://{k8s['bucket']}/runs", *WORDS]
    task = launch(build_spec(words, {"cloud": "k8s"}), SCRIPT)
    assert isinstance(task, Task) and task.wait(timeout=120) == "succeeded", task.tail_text()
    api = task.backend.api(task.backend_state)  # type: ignore[attr-defined]
    artefacts, own = namespace_objects(api, task.backend_state.name)  # type: ignore[attr-defined]
    # the values are in the task's Secret, each in the key meant for it, and nowhere else
    assert leaks({ENV_KEY: own.pop(ENV_KEY)}, SECRETS) == [f"{ENV_KEY}: {v[:4]}..." for v in PLANTED.values()]
    assert leaks({STORAGE_KEY: own.pop(STORAGE_KEY)}, SECRETS) == [f"{STORAGE_KEY}: {CREDENTIAL[:4]}..."]
    assert own == {}, sorted(own)
    pods = api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task.id}").items
    assert len(pods) == 2
    for pod in pods:  # the agent's container mounts it; no init container, no environment variable
        assert secret_references(pod, task.backend_state.name) == [
            f"volume tpi-secret -> {CONTAINER}:{SECRET_DIR}"
        ]  # type: ignore[attr-defined]
    artefacts.update(remote_files(task, env_file=False))
    artefacts.update({f"registry {k}": v for k, v in files(tpi_home).items()})
    check(
        artefacts, ["k8s job", "k8s pod", "k8s log", "k8s service", "k8s event", "remote", "registry"], "k8s"
    )
    # what the script printed was scanned, masked at the source (the remote's log; the pods' own
    # logs, read through pods/log, hold only the agent's lines: none on a clean run)
    assert any(b"imported: *** glob: ***" in v for k, v in artefacts.items() if "/log." in k)
    task.destroy()
