"""The queue services the queue tests run against, one server per test module, all on 127.0.0.1:
moto server (SQS), Google's pstest (Pub/Sub, built from the Go module proxy by scripts/pstest)
and Azurite's queue service. Each function fixture points the SDKs at its server through the
environment, with dummy credentials, so no request can reach a real cloud."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import aws_placement, emulators
from .aws_moto import _reset, point_at_moto


@pytest.fixture(scope="module")
def moto_server_url() -> Iterator[str]:
    # through the placement-group contract front, as the AWS tests: `sweep` asks for placement groups
    for url in emulators.moto_server():
        with contextlib.contextmanager(aws_placement.front)(url) as (front, _store):
            yield front


@pytest.fixture(scope="module")
def pstest_address() -> Iterator[str]:
    try:
        yield from emulators.pstest()
    except RuntimeError as error:  # no Go toolchain: say so, do not pass
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def azurite_queue_connection() -> Iterator[str]:
    yield from emulators.azurite_queue()


@pytest.fixture
def moto_sqs(moto_server_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    point_at_moto(monkeypatch, moto_server_url, tmp_path)
    yield moto_server_url
    _reset(moto_server_url)


@pytest.fixture
def pubsub_emulator(pstest_address: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pstest_address)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "tpi-queues-test")
    return pstest_address


@pytest.fixture
def azurite_queues(azurite_queue_connection: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_queue_connection)
    return azurite_queue_connection
