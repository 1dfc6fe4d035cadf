"""Storage faults in the Kubernetes claim mode (no `container`): the remote is a
PersistentVolumeClaim that the client reaches only through the API server's pod proxy and the
transfer pod (tpi_jupyter/backends/k8s/proxyfs.py, transfer.py).

The chain, on the test bed: client -> Toxiproxy (latency, resets, stalls, connections cut after
N bytes; TLS passes through, the kubeconfig's `server` is the proxy's address) -> the real
kube-apiserver -> its pod proxy -> the transfer pod, where the tests' HTTP fault proxy answers a
seeded share of requests as the pod proxy does when it fails (503 ServiceUnavailable, 429
TooManyRequests with Retry-After, 500), in front of the real transfer server
(faulty_transfer.py; the test's agent runtime starts it in place of transfer.py). Toxiproxy
faults every request the client makes to the cluster (creates, status reads, logs, transfers);
the HTTP errors fall on the proxy path only. The pods' agents write the claim directly (a
mounted volume), so the faults are on the client's side: the upload at launch, status and log
reads, the pull. The scenarios are storage_faults.py's, as for S3, GCS and Azure Blob.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3

from tpi_jupyter.backends.k8s import manifests, proxy_retry, proxyfs

from ..conftest import wait_for
from ..emulators import REPO
from ..k8s import bed
from ..test_k8s_pvc import TOKEN, cluster, k8s, needs_bed, server  # noqa: F401 - fixtures
from . import figures
from .faulty_transfer import CONTROL_PORT
from .http_faults import FaultInjectingHttpProxy
from .storage_faults import FULL, SHORT, Store, delete_tasks, stays_down, survive
from .toxiproxy import toxiproxy

SOAK = bool(os.environ.get("TPI_FAULT_SOAK"))
SIZES = FULL if SOAK else SHORT
HTTP_LIMIT = None if SOAK else 12  # injected errors in CI's short round


class PodFaults:
    """HttpFaults for the transfer pod: `share` and `limit` go into the agent runtime's `python`,
    which starts faulty_transfer.py for the transfer pod (and the agent, untouched, for ranks);
    `injected` is read from the live transfer pod's control port, through the pod proxy."""

    def __init__(self, python: Path, seed: int, api: Any) -> None:
        self.python, self.seed, self.api = python, seed, api
        self._share, self._limit = 0.0, None
        self.last: dict[int, int] = {}
        self._write()

    def _write(self) -> None:
        limit = -1 if self._limit is None else self._limit
        self.python.write_text(
            "#!/bin/sh\n"
            'if [ "$1" = -m ] && [ "$2" = tpi_jupyter.backends.k8s.transfer ]; then\n  shift 2\n'
            f"  PYTHONPATH={REPO} exec {sys.executable} -m tests.faults.faulty_transfer --seed {self.seed} "
            f'--share {self._share} --limit {limit} "$@"\nfi\n'
            f'exec {sys.executable} "$@"\n'
        )
        self.python.chmod(0o755)

    @property
    def share(self) -> float:
        return self._share

    @share.setter
    def share(self, value: float) -> None:
        self._share = value
        self._write()

    @property
    def limit(self) -> int | None:
        return self._limit

    @limit.setter
    def limit(self, value: int | None) -> None:
        self._limit = value
        self._write()

    def _pods(self) -> list[str]:
        found = self.api.core.list_namespaced_pod("default", label_selector=f"{manifests.ROLE}=transfer")
        return [pod.metadata.name for pod in found.items if pod.status and pod.status.phase == "Running"]

    @property
    def injected(self) -> dict[int, int]:
        for pod in self._pods():
            answer = self.api.core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{CONTROL_PORT}", "default", "counts", _preload_content=False
            )
            self.last = {int(code): n for code, n in json.loads(answer.data)["injected"].items()}
        return self.last

    def heal(self) -> None:
        self.share = 0.0
        for pod in self._pods():
            self.api.core.connect_put_namespaced_pod_proxy_with_path(
                f"{pod}:{CONTROL_PORT}", "default", "heal"
            )


def claim_files(api: Any, prefix: str) -> dict[str, bytes]:
    """Every file of the live claims, read on their volumes (the bed's hostPath directories), no
    faults; keyed `runs/<path in the claim>` (a claim's remote is `<task id>/...` in it). A claim
    being deleted holds nothing a user can reach any more, and is left out."""
    found: dict[str, bytes] = {}
    for claim in api.core.list_namespaced_persistent_volume_claim("default").items:
        if claim.metadata.deletion_timestamp or not claim.spec.volume_name:
            continue
        root = Path(api.core.read_persistent_volume(claim.spec.volume_name).spec.host_path.path)
        for path in sorted(root.rglob("*")):
            key = f"runs/{path.relative_to(root)}"
            if path.is_file() and key.startswith(prefix):
                found[key] = path.read_bytes()
    return found


def through(kubeconfig: Path, listen: str, target: Path) -> Path:
    """A copy of the kubeconfig whose server is `listen` (same host, so TLS verification holds)."""
    config = json.loads(kubeconfig.read_text())
    for entry in config["clusters"]:
        scheme = urlsplit(entry["cluster"]["server"]).scheme
        entry["cluster"]["server"] = f"{scheme}://{listen}"
    target.write_text(json.dumps(config))
    target.chmod(0o600)
    return target


@pytest.fixture
def store(k8s: bed.Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:  # noqa: F811
    from tpi_jupyter.backends.k8s import job
    from tpi_jupyter.backends.k8s.config import connect

    direct = connect()  # the bed's own kubeconfig: no faults
    api = job.Api(direct.api, "default")
    seed = figures.seed()
    http = PodFaults(tmp_path / "agent-runtime" / "bin" / "python", seed, api)
    with toxiproxy(seed) as toxi:
        listen = toxi.proxy("apiserver", urlsplit(k8s.server).netloc)
        monkeypatch.setenv(
            "KUBECONFIG", str(through(k8s.kubeconfig, listen, tmp_path / "faulted.kubeconfig"))
        )
        try:
            yield Store(
                "apiserver", "", seed, toxi, http, lambda prefix: claim_files(api, prefix), cloud="k8s"
            )
        finally:
            toxi.heal("apiserver")
            http.heal()
            delete_tasks()
            wait_for(lambda: claim_files(api, "runs/") == {} and not api.core.list_namespaced_pod("default").items,
                     timeout=90, interval=0.5)  # fmt: skip
            direct.api.close()


@needs_bed
@pytest.mark.slow
def test_upload_logs_status_and_pull_survive_faults_on_the_pod_proxy(
    store: Store, workdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")  # its retries, for the figures
    survive(store, workdir, "k8s-claim", SIZES, HTTP_LIMIT)
    said = [record.getMessage() for record in caplog.records]
    broken = [line for line in said if "after connection broken by" in line]
    opened = [line for line in said if line.startswith("Starting new")]
    print(
        f"TCP toxics: {len(broken)} requests retried after a broken connection; {len(opened)} connections opened"
    )


@needs_bed
@pytest.mark.slow
def test_an_api_server_that_stays_down_fails_in_one_line_and_leaves_nothing_half_written(
    store: Store, workdir: Path, tmp_path: Path
) -> None:
    line = stays_down(store, workdir, tmp_path, SHORT)
    assert "k8s: creating the secret failed (ProtocolError: ('Connection aborted." in line, line
    assert "Max retries" not in line and "HTTPSConnectionPool" not in line, line  # the cause, not the pool


# ---------------------------------------------------------------- no cluster: the regression tests


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same policy with short back-offs (the unit tests time nothing)."""
    monkeypatch.setattr(proxy_retry, "POLICY", proxy_retry.POLICY.new(backoff_factor=0.01, backoff_max=0.05))


def test_proxyfs_retries_the_pod_proxys_errors_then_fails_in_one_line(
    server: tuple[Path, str],  # noqa: F811
    quick: None,
) -> None:
    """proxyfs made one attempt per request: one 503 from the pod proxy failed an upload or a pull."""
    _, base = server
    errors = FaultInjectingHttpProxy(base, seed=3, share=1.0, service="k8s")
    try:
        errors.limit = 4  # four error answers in a row, then the server's
        fs = proxyfs.ProxyFileSystem(errors.url, urllib3.PoolManager(), token=TOKEN)
        fs.pipe_file("t/data/a.bin", b"a" * 1000)
        assert fs.cat_file("t/data/a.bin") == b"a" * 1000 and sum(errors.injected.values()) == 4
        errors.limit = None  # errors for good: out of retries, one line naming the path and the status
        with pytest.raises(OSError) as raised:
            fs.cat_file("t/data/a.bin")
        message = str(raised.value)
        assert "\n" not in message and message.startswith("transfer pod: GET t/data/a.bin: "), message
        assert message.split(": ")[2] in {
            "503 ServiceUnavailable",
            "429 TooManyRequests",
            "500 InternalError",
        }, (
            message  # the Status's reason and message, not its JSON
        )
    finally:
        errors.close()


def test_proxyfs_out_of_connections_fails_in_one_line_without_the_url(quick: None) -> None:
    fs = proxyfs.ProxyFileSystem(
        "http://127.0.0.1:9/api/v1/namespaces/x/pods/y:8080/proxy", urllib3.PoolManager()
    )
    with pytest.raises(OSError) as raised:
        fs.cat_file("t/a")
    message = str(raised.value)
    assert message.startswith("transfer pod: GET t/a: ") and "\n" not in message and "/proxy" not in message


def test_a_put_whose_body_is_cut_writes_nothing(server: tuple[Path, str]) -> None:  # noqa: F811
    """transfer.py wrote what arrived of a cut upload and renamed it into place: half a file."""
    root, base = server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(f"PUT /file/t/half.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                    f"X-Tpi-Transfer-Token: {TOKEN}\r\n\r\n".encode() + b"x" * 1000)  # fmt: skip
        raw.shutdown(socket.SHUT_WR)  # the client's connection cut after 1000 of 100000 bytes
        raw.settimeout(10)
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.0 400") or answer.startswith(b"HTTP/1.1 400"), answer
    assert not (root / "t" / "half.bin").exists()
    assert not [p for p in root.rglob("*") if p.is_file()], "no temporary file left either"


@needs_bed
def test_a_create_resent_after_a_lost_answer_is_its_own_object_and_a_strangers_is_refused(
    k8s: bed.Bed,  # noqa: F811
) -> None:
    """The backend's API calls now retry dropped connections for every method (kubernetes'
    default: 3 retries, GET only), so a create can reach the API server twice: the second
    attempt's `409 AlreadyExists` on the task's own object is success, on anyone else's an error."""
    from kubernetes.client.exceptions import ApiException

    from tpi_jupyter.backends.k8s import job
    from tpi_jupyter.backends.k8s.config import connect

    here = connect()
    assert here.api.rest_client.pool_manager.connection_pool_kw["retries"] is proxy_retry.API_POLICY
    api = job.Api(here.api, "default")

    def secret(name: str, task: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "stringData": {"a": "b"},
                "metadata": {"name": name, "labels": {"tpi-task": task}}}  # fmt: skip

    try:
        job.create_secret(api, secret("tpi-twice", "tpi-twice"))
        job.create_secret(api, secret("tpi-twice", "tpi-twice"))  # as a resent create meets it
        api.core.create_namespaced_secret("default", secret("tpi-stranger", "someone-else"))
        with pytest.raises(ApiException) as raised:
            job.create_secret(api, secret("tpi-stranger", "tpi-stranger"))
        assert raised.value.status == 409
    finally:
        for name in ("tpi-twice", "tpi-stranger"):
            api.core.delete_namespaced_secret(name, "default")
        here.api.close()
