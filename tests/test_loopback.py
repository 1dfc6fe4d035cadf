"""No test reaches an address off the loopback range: the SDKs' metadata probes are off."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import pytest


def test_boto3_credential_chain_never_probes_the_metadata_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_DEFAULT_REGION", "AWS_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    off_loopback: list[Any] = []
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else ""
        if host and not ipaddress.ip_address(host).is_loopback:
            off_loopback.append(address)
            raise ConnectionRefusedError(f"test refused a connection to {address}")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    session = boto3.session.Session()
    assert session.get_credentials() is None and session.region_name is None
    assert off_loopback == []  # set by conftest for the whole session: AWS_EC2_METADATA_DISABLED=true
