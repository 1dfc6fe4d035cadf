"""Shared fixtures: every test gets its own TPI_JUPYTER_HOME, and no task outlives its test."""

from __future__ import annotations

import os

# Loopback only: boto3 must never probe the EC2 metadata service (169.254.169.254) for
# credentials or a region. Set before anything can import boto3 (this module loads first).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# google-auth must never probe the GCE metadata server (169.254.169.254): no GCE check, and a
# metadata host on loopback where nothing listens (machine tests start their own stand-in).
os.environ["NO_GCE_CHECK"] = "True"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
# gcsfs: without this, every call waits 40-100 s on a gRPC TLS handshake (shared/TESTING.md).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tpi_jupyter import state
from tpi_jupyter.task import Task


@pytest.fixture
def tpi_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "tpi-home"
    monkeypatch.setenv("TPI_JUPYTER_HOME", str(home))
    yield home
    for record in state.records():  # kill whatever a failed test left running
        task = Task(record)
        task.backend.delete(task.task_spec, task.backend_state)
        state.delete(record["id"])


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def wait_for(predicate: Callable[[], object], timeout: float = 60, interval: float = 0.1) -> object:
    """Poll until predicate() is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def created_nothing(home: Path) -> bool:
    """No registry entry and no local machine directory exist under home."""
    tasks = list((home / "tasks").glob("*.json")) if (home / "tasks").exists() else []
    machines = list((home / "local").iterdir()) if (home / "local").exists() else []
    return not tasks and not machines


os.environ.setdefault("TPI_JUPYTER_NONINTERACTIVE", "1")
