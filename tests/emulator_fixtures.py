"""Module-scoped emulator fixtures for test modules that want their own fake-gcs-server and
Azurite (import them by name: `from .emulator_fixtures import azurite_connection, gcs_url`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import emulators


@pytest.fixture(scope="module")
def gcs_url() -> Iterator[str]:
    yield from emulators.fake_gcs_server()


@pytest.fixture(scope="module")
def azurite_connection() -> Iterator[str]:
    yield from emulators.azurite()
