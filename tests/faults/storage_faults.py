"""What the storage-fault tests share, whatever the object store (S3, GCS, Azure Blob).

The chain: client and machines -> Toxiproxy (latency, resets, stalls, connections cut after N
bytes) -> the tests' fault-injecting HTTP proxy (the service's own error answers) -> the
emulator. A local-backend task keeps its remote in the store (`container=<url>`), so its upload,
its machines' sync-back and log streaming, and the client's reads, pull and destroy all cross
the faults. `survive` and `stays_down` are the two scenarios; each store's test file only says
how to reach its emulator directly (`Store.read`) and which environment points at the faults.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from tpi_jupyter import state
from tpi_jupyter.commands import build_spec
from tpi_jupyter.task import Task, TaskError, launch

from . import figures
from .http_faults import FaultInjectingHttpProxy
from .toxiproxy import Toxiproxy, toxiproxy


@dataclass(frozen=True)
class Sizes:
    """How much one round moves: small inputs, one big input, one big output, log lines."""

    small_files: int
    big_input: int
    big_output: int
    lines: int


FULL = Sizes(small_files=24, big_input=6 * 1024 * 1024, big_output=3_000_000, lines=150)
SHORT = Sizes(small_files=8, big_input=1024 * 1024, big_output=600_000, lines=40)  # CI's time budget


def script(sizes: Sizes) -> str:
    return f"""#!/bin/bash
set -e
mkdir -p results
for f in inputs/*; do cp "$f" "results/$(basename "$f").out"; done
head -c {sizes.big_output} /dev/urandom > results/big.bin
for i in $(seq 1 {sizes.lines}); do echo "line $i"; sleep 0.01; done
(cd results && sha256sum * > ../SHA256SUMS && mv ../SHA256SUMS .)
"""


class HttpFaults(Protocol):
    """The HTTP error answers: FaultInjectingHttpProxy, or one that runs elsewhere (a pod)."""

    share: float
    limit: int | None

    @property
    def injected(self) -> dict[int, int]: ...


@dataclass
class Store:
    """The faulted path to one emulator; `read(prefix)` reads the emulator itself, no faults.

    Keys are `runs/<task id>/...`: the container's `runs/` prefix, or (no container: the
    backend's own storage, a Kubernetes claim) the task's remote as `cloud` keeps it."""

    name: str  # the Toxiproxy proxy's name
    container: str  # the task's container URL, e.g. s3://faults-1; "" for the cloud's own storage
    seed: int
    toxi: Toxiproxy
    http: HttpFaults
    read: Callable[[str], dict[str, bytes]]
    cloud: str = "local"

    def objects(self, prefix: str) -> dict[str, bytes]:
        return self.read(prefix)

    def place(self) -> list[str]:
        """The `tpi run` words that put a task's remote behind the faults."""
        return [f"cloud={self.cloud}", *([f"container={self.container}/runs"] if self.container else [])]


def read_all(fs: Any, root: str, prefix: str) -> dict[str, bytes]:
    """Every object under root/prefix of an fsspec filesystem, keyed relative to root."""
    paths = fs.find(f"{root}/{prefix}")
    return {path.removeprefix(f"{root}/"): fs.cat_file(path) for path in paths}


@contextlib.contextmanager
def faulted(
    name: str, upstream: str, service: str
) -> Iterator[tuple[int, Toxiproxy, FaultInjectingHttpProxy, str]]:
    """Toxiproxy and the HTTP fault proxy in front of upstream: (seed, toxi, http, listen host:port).
    On exit the faults are healed first, then every task left is torn down while the store answers."""
    seed = figures.seed()
    with toxiproxy(seed) as toxi:
        http = FaultInjectingHttpProxy(upstream, seed, service=service)
        try:
            yield seed, toxi, http, toxi.proxy(name, http.url.removeprefix("http://"))
        finally:
            toxi.heal(name)
            http.share = 0.0
            delete_tasks()
            http.close()


def delete_tasks() -> None:
    """Every task the test left, torn down (once the faults are healed: the store answers)."""
    for record in state.records():
        task = Task(record)
        task.backend.delete(task.task_spec, task.backend_state)
        state.delete(record["id"])


def inputs(workdir: Path, seed: int, sizes: Sizes = FULL) -> dict[str, str]:
    """A seeded workdir: small files and one bigger one; their sha256 by relative path."""
    rng = random.Random(seed)
    folder = workdir / "inputs"
    folder.mkdir()
    lengths = [rng.randrange(1, 64 * 1024) for _ in range(sizes.small_files)] + [sizes.big_input]
    hashes = {}
    for number, size in enumerate(lengths):
        data = rng.randbytes(size)
        (folder / f"in-{number:02d}.bin").write_bytes(data)
        hashes[f"inputs/in-{number:02d}.bin"] = hashlib.sha256(data).hexdigest()
    return hashes


def poison(store: Store, http_limit: int | None = None) -> None:
    """Faults on every path, each on a share of connections or requests (seeded)."""
    store.http.share, store.http.limit = 0.15, http_limit  # the service's errors instead of the answer
    store.toxi.toxic(store.name, "latency", "downstream", 1.0, latency=30, jitter=30)
    store.toxi.toxic(store.name, "reset_peer", "upstream", 0.05, timeout=50)
    store.toxi.toxic(store.name, "timeout", "downstream", 0.03, timeout=400)
    store.toxi.toxic(store.name, "limit_data", "downstream", 0.05, bytes=48 * 1024)
    store.toxi.toxic(store.name, "limit_data", "upstream", 0.05, bytes=96 * 1024)


def whole(files: dict[str, bytes], hashes: dict[str, str], prefix: str) -> list[str]:
    """What is missing or differs from its hash, of hashes' files under prefix."""
    return [
        path for path, digest in hashes.items()
        if hashlib.sha256(files.get(prefix + path, b"<missing>")).hexdigest() != digest
    ]  # fmt: skip


def sums(text: str) -> dict[str, str]:
    return {f"results/{name}": digest for digest, name in (line.split("  ", 1) for line in text.splitlines())}


def survive(
    store: Store, workdir: Path, backend: str, sizes: Sizes = FULL, http_limit: int | None = None
) -> None:
    """Upload, sync-back, log streaming, pull and destroy through the faults: nothing lost."""
    sent = inputs(workdir, store.seed, sizes)
    poison(store, http_limit)
    words = ["workdir=.", "output=results", "name=storm", *store.place(), "timeout=600"]
    task = launch(build_spec(words, {}), script(sizes))  # upload through the faults
    assert isinstance(task, Task)
    prefix = f"runs/{task.id}/data/"
    assert whole(store.objects(prefix), sent, prefix) == []  # every uploaded file whole

    assert task.wait(timeout=300) == "succeeded", task.tail_text(40)
    texts = [line.split(" ", 1)[1] for line in task.logs()[0].splitlines()]  # "<time> <text>"
    lines = [text for text in texts if text.startswith("line ")]
    assert lines == [f"line {i}" for i in range(1, sizes.lines + 1)]  # streamed: none lost, none twice

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
    figures.record("storage", backend, {"seed": store.seed, "http_errors": injected, "files": len(sent) + len(made),
                                        "log_lines": sizes.lines, "lost": 0})  # fmt: skip


def tpi(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tpi_jupyter.cli", *words], capture_output=True, text=True,
                          timeout=240, env=os.environ.copy())  # fmt: skip


def stays_down(store: Store, workdir: Path, tmp_path: Path, sizes: Sizes = FULL) -> str:
    """A store that stays down: `tpi run` and `pull` fail in one line, nothing half-written,
    and both finish once it is back. Returns the run's line for store-specific checks."""
    sent = inputs(workdir, 7, sizes)
    (tmp_path / "script").write_text("#!/bin/bash\ntrue\n")
    store.toxi.toxic(store.name, "reset_peer", "upstream", 1.0, timeout=0)  # every connection cut
    launched = tpi("run", "workdir=.", "output=inputs", "name=down", *store.place(),
                   "--script", str(tmp_path / "script"))  # fmt: skip
    assert launched.returncode != 0, launched.stderr
    (line,) = launched.stderr.strip().splitlines()  # one line, no traceback, naming what to do
    assert "launch of down failed: " in line and "destroy it to retry" in line, line
    assert store.objects("runs/") == {}  # nothing half-made in the store
    store.toxi.heal(store.name)
    assert tpi("destroy", "down").returncode == 0  # the store is back: destroy finishes the job
    assert state.records() == [] and tpi("destroy", "down").returncode == 0

    task = launch(
        build_spec(["workdir=.", "output=inputs", "name=later", *store.place()], {}), "#!/bin/bash\ntrue\n"
    )
    assert isinstance(task, Task) and task.wait(timeout=120) == "succeeded"
    for path in (workdir / "inputs").iterdir():
        path.unlink()
    store.toxi.toxic(store.name, "limit_data", "downstream", 1.0, bytes=200 * 1024)  # every download cut
    with pytest.raises(TaskError) as raised:
        task.pull()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("pull of task later: cannot download inputs/in-"), (
        message
    )
    here = {f"inputs/{p.name}": p.read_bytes() for p in (workdir / "inputs").iterdir()}
    assert whole(here, {k: v for k, v in sent.items() if k in here}, "") == []  # what arrived is whole
    assert not [name for name in os.listdir(workdir / "inputs") if name not in {k[7:] for k in sent}]
    store.toxi.heal(store.name)
    task.pull()  # the store is back: the rest arrives, and every file is whole
    here = {f"inputs/{p.name}": p.read_bytes() for p in (workdir / "inputs").iterdir()}
    assert set(here) == set(sent) and whole(here, sent, "") == []
    return line
