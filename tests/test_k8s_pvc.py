"""The Kubernetes backend without `container` (issue 12, point 8, second half): the remote is a
PersistentVolumeClaim, served to the client by a transfer pod through the API server's pod proxy.

The transfer server and the fsspec filesystem over it are tested first as a real process on
127.0.0.1 (no cluster); then the whole lifecycle on the test bed (tests/k8s/README.md), where the
claim is bound by the bed's provisioner stand-in to a hostPath volume and every byte the client
moves goes through the real API server's pod proxy to the transfer pod's own network namespace.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import urllib3

from tpi_jupyter import layout, state
from tpi_jupyter.backends.base import Timing
from tpi_jupyter.backends.k8s import K8sBackend, manifests, proxyfs
from tpi_jupyter.commands import build_spec
from tpi_jupyter.spec import SpecError
from tpi_jupyter.sync import download, upload
from tpi_jupyter.task import FINAL, Task, TaskError, launch
from tpi_jupyter.task import sweep as sweep_tasks

from .conftest import created_nothing, wait_for
from .k8s import bed
from .test_k8s_backend import everything_but_the_secret, labelled, validate

SECRET = "pvc-s3cr3t-value-that-must-not-leak"
TOKEN = "transfer-token-for-the-test"


# ---------------------------------------------------------------- manifests: no cluster needed


@pytest.mark.parametrize(("words", "mode", "size"), [
    ([], "ReadWriteOnce", f"{manifests.DEFAULT_CLAIM_GB}Gi"),
    (["parallelism=3", "disk_size=50"], "ReadWriteMany", "50Gi"),
])  # fmt: skip
def test_claim_mode_manifests_validate_strictly(
    words: list[str], mode: str, size: str, tpi_home: Path
) -> None:
    spec = build_spec(["cloud=k8s", "name=claimed", *words], {})
    backend = K8sBackend()
    sent = backend.manifests(spec, backend.new_state(spec, time.time() + 600))
    service = ["Service"] if spec.parallelism > 1 else []  # multi-node: the ranks' headless Service
    assert [m["kind"] for m in sent] == ["Secret", "PersistentVolumeClaim", "Pod", *service, "Job"]
    for manifest in sent:
        validate(manifest)
    claim, transfer, job = sent[1], sent[2], sent[-1]
    assert claim["spec"] == {"accessModes": [mode], "resources": {"requests": {"storage": size}}}
    assert "storageClassName" not in claim["spec"]  # the cluster's default StorageClass
    assert transfer["metadata"]["labels"][manifests.ROLE] == "transfer"
    assert transfer["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == spec.id
    pod = job["spec"]["template"]["spec"]
    assert {"name": "tpi-remote", "persistentVolumeClaim": {"claimName": spec.id}} in pod["volumes"]
    command = pod["containers"][0]["command"]
    assert command[command.index("--remote") + 1] == f"{manifests.CLAIM_DIR}/{spec.id}"
    assert {"name": "tpi-remote", "mountPath": manifests.CLAIM_DIR} in pod["containers"][0]["volumeMounts"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert "ephemeral-storage" not in limits, "without a container disk_size sizes the claim, not the pod"


def test_a_container_that_is_no_url_is_refused_before_anything_exists(tpi_home: Path) -> None:
    with pytest.raises(SpecError, match=r"^container: 'my-claim' on k8s; accepted: .*or no container"):
        launch(build_spec(["cloud=k8s", "name=pvc", "container=my-claim"], {}), "echo hi")
    assert created_nothing(tpi_home)


# ---------------------------------------------------------------- the transfer server, as a process


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root, token_file = tmp_path / "claim", tmp_path / "token"
    token_file.write_text(TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "tpi_jupyter.backends.k8s.transfer", "--root", str(root),
                             "--token-file", str(token_file), "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().rsplit(" ", 1)[-1])
        yield root, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_transfer_server_read_write_list_delete_and_exclusive_create(server: tuple[Path, str]) -> None:
    root, base = server
    fs = proxyfs.ProxyFileSystem(base, urllib3.PoolManager(), token=TOKEN)
    fs.pipe_file("t/reports/0/0/claim", b"me")
    with pytest.raises(FileExistsError):
        fs.pipe_file("t/reports/0/0/claim", b"other", mode="create")
    assert (
        fs.cat_file("t/reports/0/0/claim") == b"me" and (root / "t/reports/0/0/claim").read_bytes() == b"me"
    )
    fs.pipe_file("t/reports/0/0/claim", b"again")  # a plain write replaces
    assert fs.cat_file("t/reports/0/0/claim") == b"again"
    fs.pipe_file("t/reports/1/0/claim", b"one", mode="create")
    assert fs.ls("t/reports", detail=False) == ["t/reports/0", "t/reports/1"]
    assert fs.info("t/reports/1/0/claim")["size"] == 3 and fs.info("t/reports")["type"] == "directory"
    assert sorted(fs.find("t")) == ["t/reports/0/0/claim", "t/reports/1/0/claim"]
    with pytest.raises(FileNotFoundError):
        fs.cat_file("t/missing")
    assert not fs.exists("t/missing") and fs.exists("t/reports/1/0/claim")
    fs.rm_file("t/reports/1/0/claim")
    assert not fs.exists("t/reports/1/0/claim")
    fs.rm("t", recursive=True)
    assert not (root / "t").exists() and list(root.iterdir()) == []


def test_transfer_server_needs_the_token_and_stays_inside_its_root(server: tuple[Path, str]) -> None:
    root, base = server
    (root.parent / "outside").write_text("private")
    stranger = proxyfs.ProxyFileSystem(base, urllib3.PoolManager(), token="wrong")
    with pytest.raises(OSError, match="401"):
        stranger.pipe_file("x", b"1")
    assert not (root / "x").exists()
    fs = proxyfs.ProxyFileSystem(base, urllib3.PoolManager(), token=TOKEN)
    pool = urllib3.PoolManager()
    answer = pool.request("GET", f"{base}/file/%2E%2E/outside", headers={"X-Tpi-Transfer-Token": TOKEN})
    assert answer.status == 403 and b"private" not in answer.data
    with pytest.raises(OSError, match="403"):
        fs.rm("", recursive=True)  # the root goes with the claim, never through the server


def test_the_syncer_moves_files_through_the_server_with_excludes(
    server: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = server
    fs = proxyfs.ProxyFileSystem(base, urllib3.PoolManager(), token=TOKEN)
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "a.py").write_text("print(1)\n")
    (work / "big.ckpt").write_bytes(b"x" * 1000)
    upload(work, fs, "t/data", exclude=["*.ckpt"])
    assert (root / "t/data/src/a.py").read_text() == "print(1)\n" and not (root / "t/data/big.ckpt").exists()
    (root / "t/data/results").mkdir()
    (root / "t/data/results/out.txt").write_text("done\n")
    back = tmp_path / "back"
    download(fs, "t/data", back, subdir="results")
    assert (back / "results/out.txt").read_text() == "done\n" and not (back / "src").exists()


def test_remote_urls_round_trip() -> None:
    url = proxyfs.remote_url("ctx/with@odd", "team-a", "tpi-x-1")
    assert proxyfs.parse_url(url) == ("ctx/with@odd", "team-a", "tpi-x-1")
    assert proxyfs.ProxyFileSystem._strip_protocol(url + "/data/a") == "tpi-x-1/data/a"
    assert proxyfs.ProxyFileSystem._get_kwargs_from_urls(url + "/data") == {
        "context": "ctx/with@odd", "namespace": "team-a", "task": "tpi-x-1"}  # fmt: skip


# ---------------------------------------------------------------- on the test bed

needs_bed = pytest.mark.skipif(
    not bed.built(), reason="the Kubernetes test bed is not built: run `scripts/k8s-testbed build`"
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bed.Bed]:
    root = tmp_path_factory.mktemp("k8s-pvc-bed")
    testbed = bed.up(root)
    try:
        yield testbed
    finally:
        bed.down(root)


@pytest.fixture
def k8s(cluster: bed.Bed, tpi_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bed.Bed:
    """KUBECONFIG at the bed, the agent's runtime (this venv's Python), fast cadences; no bucket."""
    runtime = tmp_path / "agent-runtime"
    (runtime / "bin").mkdir(parents=True)
    python = runtime / "bin" / "python"  # the stand-in runs it on this host
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    for name, value in {"KUBECONFIG": str(cluster.kubeconfig), "TPI_K8S_AGENT_RUNTIME": str(runtime),
                        "TPI_K8S_AGENT_IMAGE": "tpi-agent-runtime:test"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    fast = Timing(log_interval=0.25, heartbeat_interval=1, sync_interval=1)
    monkeypatch.setattr(K8sBackend, "capabilities",
                        replace(K8sBackend.capabilities, timing=fast, poll_interval=0.3))  # fmt: skip
    for name, value in (("STOP_WAIT", 30.0), ("DELETE_WAIT", 90.0), ("POLL", 0.3)):
        monkeypatch.setattr(K8sBackend, name, value)
    return cluster


SCRIPT = """#!/bin/bash
echo "rank $TPI_RANK of $TPI_WORLD_SIZE"
mkdir -p results
cat input.txt > results/out.txt
ls > results/listing.txt
[ "$SECRET_TOKEN" = "{secret}" ] && echo "token arrived"
"""


@needs_bed
def test_lifecycle_on_a_claim_output_through_the_proxy_nothing_left(k8s: bed.Bed, workdir: Path) -> None:
    (workdir / "input.txt").write_text("hello through the claim\n")
    (workdir / "skip.tmp").write_text("excluded\n")
    spec = build_spec(["cloud=k8s", "workdir=.", "output=results", "exclude=*.tmp", "disk_size=2",
                       f"environment=SECRET_TOKEN={SECRET}", "name=k8s-pvc", "timeout=600"], {})  # fmt: skip
    task = launch(spec, SCRIPT.format(secret=SECRET))
    assert isinstance(task, Task)
    api: Any = task.backend.api(task.backend_state)  # type: ignore[attr-defined]
    assert task.record["remote"].startswith(f"{proxyfs.PROTOCOL}://")
    claim = api.core.read_namespaced_persistent_volume_claim(task.id, api.namespace)
    assert claim.spec.access_modes == ["ReadWriteOnce"] and claim.spec.resources.requests["storage"] == "2Gi"
    assert claim.status.phase == "Bound" and claim.metadata.labels["tpi-task"] == task.id
    fs, root = task.remote
    assert isinstance(fs, proxyfs.ProxyFileSystem) and "/proxy" in fs.base
    assert fs.exists(layout.join(root, layout.TASK_JSON))
    assert not fs.exists(layout.join(root, layout.ENV)), "the environment stays in the remote"
    wait_for(lambda: task.read(fresh=True).status in FINAL, timeout=240, interval=0.5)
    assert task.read(fresh=True).status == "succeeded", task.tail_text()
    log = task.tail_text()
    assert "rank 0 of 1" in log and "token arrived" in log
    assert SECRET not in everything_but_the_secret(api, task.id)
    assert f"pod/{manifests.transfer_name(task.id)}" in labelled(api, task.id)
    task.destroy()
    assert (workdir / "results" / "out.txt").read_text() == "hello through the claim\n"
    listing = (workdir / "results" / "listing.txt").read_text().split()
    assert "input.txt" in listing and "skip.tmp" not in listing  # the exclude held on the way up
    wait_for(lambda: labelled(api, task.id) == [], timeout=60, interval=0.5)
    assert state.load(task.id) is None
    task.destroy()  # idempotent


@needs_bed
def test_two_ranks_share_a_read_write_many_claim(k8s: bed.Bed) -> None:
    script = '#!/bin/bash\necho "hello from rank $TPI_RANK of $TPI_WORLD_SIZE"\n'
    task = launch(build_spec(["cloud=k8s", "parallelism=2", "name=k8s-pvc-two"], {}), script)
    assert isinstance(task, Task)
    api: Any = task.backend.api(task.backend_state)  # type: ignore[attr-defined]
    claim = api.core.read_namespaced_persistent_volume_claim(task.id, api.namespace)
    assert claim.spec.access_modes == ["ReadWriteMany"]
    wait_for(lambda: task.read(fresh=True).status in FINAL, timeout=240, interval=0.5)
    assert task.read(fresh=True).status == "succeeded", task.tail_text()
    group = task.backend.read(task.task_spec, task.backend_state)
    assert sorted(m.rank for m in group.machines) == [0, 1]  # the transfer pod is no rank
    fs, root = task.remote
    for rank in (0, 1):
        assert fs.exists(layout.join(root, layout.status(rank)))
        assert f"hello from rank {rank} of 2" in task.tail_text()
    task.destroy()
    wait_for(lambda: labelled(api, task.id) == [], timeout=60, interval=0.5)


@needs_bed
def test_sweep_finds_and_deletes_a_forgotten_claim(k8s: bed.Bed) -> None:
    task = launch(build_spec(["cloud=k8s", "name=k8s-pvc-lost"], {}), "#!/bin/bash\nsleep 600\n")
    assert isinstance(task, Task)
    api: Any = task.backend.api(task.backend_state)  # type: ignore[attr-defined]
    state.delete(task.id)  # forgotten: only the cluster knows it now
    listed = sweep_tasks("k8s", delete=False)
    assert any(line.startswith(f"orphan {task.id} (default): ") and f"claim {task.id}" in line
               for line in listed), listed  # fmt: skip
    sweep_tasks("k8s", delete=True)
    wait_for(lambda: labelled(api, task.id) == [], timeout=90, interval=0.5)


@needs_bed
def test_a_transfer_pod_that_never_answers_rolls_back(k8s: bed.Bed, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K8sBackend, "TRANSFER_WAIT", 5.0)
    monkeypatch.setenv("TPI_K8S_AGENT_RUNTIME", "/nonexistent-runtime")  # the server cannot start
    spec = build_spec(["cloud=k8s", "name=k8s-pvc-broken"], {})
    with pytest.raises(TaskError, match=r"transfer pod .* did not answer"):
        launch(spec, "echo hi")
    assert state.load(spec.id) is None
    api: Any = K8sBackend().api(K8sBackend().new_state(spec, 0))
    wait_for(lambda: labelled(api, spec.id) == [], timeout=90, interval=0.5)


def test_the_claim_protocol_opens_in_a_fresh_process_without_the_backend() -> None:
    """`tpi pull NAME` in a new process opens the remote before anything imports the backend."""
    code = "import fsspec; print(fsspec.get_filesystem_class('tpi-k8s-pvc').__module__)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "tpi_jupyter.backends.k8s.proxyfs", found.stdout
