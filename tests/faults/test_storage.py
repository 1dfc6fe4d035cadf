"""Storage faults between the machines/client and the object store (moto's S3).

The chain: client and machines -> Toxiproxy (latency, resets, stalls, connections cut after N
bytes) -> a fault-injecting HTTP proxy of the tests' own (500 InternalError, 503 SlowDown) ->
moto server. A local-backend task keeps its remote in an S3 bucket (`container=s3://...`), so its
upload, its machines' sync-back and log streaming, and the client's reads and pull all cross the
faults. What must hold: every operation completes after retries, or fails with one line; every
file that arrives is whole (hashes), and none is lost.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import state
from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, TaskError, launch

from ..aws_moto import moto_endpoint  # noqa: F401 - fixture
from . import figures
from .http_faults import FaultInjectingHttpProxy
from .toxiproxy import Toxiproxy, toxiproxy

LINES = 150

SCRIPT = """#!/bin/bash
set -e
mkdir -p results
for f in inputs/*; do cp "$f" "results/$(basename "$f").out"; done
head -c 3000000 /dev/urandom > results/big.bin
for i in $(seq 1 LINES); do echo "line $i"; sleep 0.01; done
(cd results && sha256sum * > ../SHA256SUMS && mv ../SHA256SUMS .)
""".replace("LINES", str(LINES))


@dataclass
class Store:
    """The faulted path to moto: what the task uses, and how to read moto directly."""

    moto: str
    toxi: Toxiproxy
    http: FaultInjectingHttpProxy
    bucket: str

    def direct(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.moto, region_name="us-east-1")

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under prefix, read from moto itself (not through the faults)."""
        s3, found = self.direct(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
        return found


@pytest.fixture
def store(moto_endpoint: str, tpi_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:  # noqa: F811
    seed = figures.seed()
    bucket = f"faults-{seed}"
    with toxiproxy(seed) as toxi:
        http = FaultInjectingHttpProxy(moto_endpoint, seed)
        listen = toxi.proxy("s3", http.url.removeprefix("http://"))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (("AWS_ENDPOINT_URL", f"http://{listen}"), ("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1"),
                            ("AWS_REGION", "us-east-1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        found = Store(moto_endpoint, toxi, http, bucket)
        found.direct().create_bucket(Bucket=bucket)
        try:
            yield found
        finally:
            toxi.heal("s3")
            http.share = 0.0
            for record in state.records():  # torn down while the store still answers
                task = Task(record)
                task.backend.delete(task.task_spec, task.backend_state)
                state.delete(record["id"])
            http.close()


def inputs(workdir: Path, seed: int) -> dict[str, str]:
    """A seeded workdir: small files and one of a few MB; their sha256 by relative path."""
    rng = random.Random(seed)
    folder = workdir / "inputs"
    folder.mkdir()
    sizes = [rng.randrange(1, 64 * 1024) for _ in range(24)] + [6 * 1024 * 1024]
    hashes = {}
    for number, size in enumerate(sizes):
        data = rng.randbytes(size)
        (folder / f"in-{number:02d}.bin").write_bytes(data)
        hashes[f"inputs/in-{number:02d}.bin"] = hashlib.sha256(data).hexdigest()
    return hashes


def poison(store: Store) -> None:
    """Faults on every path, each on a share of connections or requests (seeded)."""
    store.http.share = 0.15  # 500 InternalError / 503 SlowDown, instead of the answer
    store.toxi.toxic("s3", "latency", "downstream", 1.0, latency=30, jitter=30)
    store.toxi.toxic("s3", "reset_peer", "upstream", 0.05, timeout=50)
    store.toxi.toxic("s3", "timeout", "downstream", 0.03, timeout=400)
    store.toxi.toxic("s3", "limit_data", "downstream", 0.05, bytes=48 * 1024)
    store.toxi.toxic("s3", "limit_data", "upstream", 0.05, bytes=96 * 1024)


def whole(files: dict[str, bytes], hashes: dict[str, str], prefix: str) -> list[str]:
    """What is missing or differs from its hash, of hashes' files under prefix."""
    return [
        path for path, digest in hashes.items()
        if hashlib.sha256(files.get(prefix + path, b"<missing>")).hexdigest() != digest
    ]  # fmt: skip


def sums(text: str) -> dict[str, str]:
    return {f"results/{name}": digest for digest, name in (line.split("  ", 1) for line in text.splitlines())}


@pytest.mark.slow
def test_upload_sync_back_logs_and_pull_survive_storage_faults(store: Store, workdir: Path) -> None:
    seed = int(store.bucket.split("-")[1])
    sent = inputs(workdir, seed)
    poison(store)
    words = [
        "workdir=.",
        "output=results",
        "name=storm",
        f"container=s3://{store.bucket}/runs",
        "timeout=600",
    ]
    task = launch(build_spec(words, {"cloud": "local"}), SCRIPT)  # upload through the faults
    assert isinstance(task, Task)
    prefix = f"runs/{task.id}/data/"
    assert whole(store.objects(prefix), sent, prefix) == []  # every uploaded file whole

    assert task.wait(timeout=300) == "succeeded", task.tail_text(40)
    texts = [line.split(" ", 1)[1] for line in task.logs()[0].splitlines()]  # "<time> <text>"
    lines = [text for text in texts if text.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, LINES + 1)]  # streamed: none lost, none twice

    remote = store.objects(prefix)
    made = sums(remote[prefix + "results/SHA256SUMS"].decode())
    assert len(made) == len(sent) + 1  # the copies and big.bin
    assert whole(remote, made, prefix) == []  # every synced-back file whole
    fetched = task.pull()  # through the faults
    assert sorted(fetched) == sorted([*made, "results/SHA256SUMS"])
    local = {f"results/{p.name}": p.read_bytes() for p in (workdir / "results").iterdir()}
    assert whole(local, made, "") == [] and set(local) == {*made, "results/SHA256SUMS"}  # no temp file
    injected = dict(store.http.injected)
    assert sum(injected.values()) > 0  # the faults happened
    task.destroy()
    assert store.objects(f"runs/{task.id}/") == {}
    figures.record("storage", "local+s3", {"seed": seed, "http_errors": injected, "files": len(sent) + len(made),
                                           "log_lines": LINES, "lost": 0})  # fmt: skip


def tpi(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", *words], capture_output=True, text=True,
                          timeout=240, env=os.environ.copy())  # fmt: skip


@pytest.mark.slow
def test_a_store_that_stays_down_fails_in_one_line_and_leaves_nothing_half_written(
    store: Store, workdir: Path, tmp_path: Path
) -> None:
    sent = inputs(workdir, 7)
    (tmp_path / "script").write_text("#!/bin/bash\ntrue\n")
    store.toxi.toxic("s3", "reset_peer", "upstream", 1.0, timeout=0)  # every connection cut
    launched = tpi("run", "workdir=.", "output=inputs", "name=down", f"container=s3://{store.bucket}/runs",
                   "--script", str(tmp_path / "script"))  # fmt: skip
    assert launched.returncode != 0, launched.stderr
    (line,) = launched.stderr.strip().splitlines()  # one line, no traceback, naming what to do
    assert "launch of down failed: Could not connect" in line and "destroy it to retry" in line, line
    assert store.objects("runs/") == {}  # nothing half-made in the store
    store.toxi.heal("s3")
    assert tpi("destroy", "down").returncode == 0  # the store is back: destroy finishes the job
    assert state.records() == [] and tpi("destroy", "down").returncode == 0

    task = launch(build_spec(["workdir=.", "output=inputs", "name=later", f"container=s3://{store.bucket}/runs"],
                             {"cloud": "local"}), "#!/bin/bash\ntrue\n")  # fmt: skip
    assert isinstance(task, Task) and task.wait(timeout=120) == "succeeded"
    for path in (workdir / "inputs").iterdir():
        path.unlink()
    store.toxi.toxic("s3", "limit_data", "downstream", 1.0, bytes=200 * 1024)  # every download cut
    with pytest.raises(TaskError) as raised:
        task.pull()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("pull of task later: cannot download inputs/in-"), (
        message
    )
    here = {f"inputs/{p.name}": p.read_bytes() for p in (workdir / "inputs").iterdir()}
    assert whole(here, {k: v for k, v in sent.items() if k in here}, "") == []  # what arrived is whole
    assert not [name for name in os.listdir(workdir / "inputs") if name not in {k[7:] for k in sent}]
    store.toxi.heal("s3")
    task.pull()  # the store is back: the rest arrives, and every file is whole
    here = {f"inputs/{p.name}": p.read_bytes() for p in (workdir / "inputs").iterdir()}
    assert set(here) == set(sent) and whole(here, sent, "") == []
