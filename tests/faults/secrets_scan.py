"""The secret scan: planted values, and every artefact a run produced, searched for them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

# Distinct values per channel, so a leak names its way out.
PLANTED = {
    "LITERAL_SECRET": "lit-9f2c-planted-literal-value",  # environment=NAME=value in the cell
    "IMPORTED_SECRET": "imp-7b41-planted-imported-value",  # environment=NAME= (from the client)
    "GLOB_SECRET_A": "glob-3e88-planted-glob-value",  # environment=GLOB_*=
}
CREDENTIAL = "cred-51aa-planted-aws-secret-key"  # the client's AWS_SECRET_ACCESS_KEY


def needles(value: str) -> list[bytes]:
    """The value as it could leak: plain, base64 (user data, custom data), JSON-escaped."""
    raw = value.encode()
    return [raw, base64.b64encode(raw), json.dumps(value).encode()[1:-1]]


def leaks(artefacts: dict[str, bytes], secrets: list[str]) -> list[str]:
    """`where: which secret` for every planted value found in an artefact."""
    return [
        f"{where}: {secret[:4]}..."
        for where, content in artefacts.items()
        for secret in secrets
        if any(needle in content for needle in needles(secret))
    ]  # fmt: skip


def files(root: Path, skip: set[Path] = frozenset()) -> dict[str, bytes]:  # type: ignore[assignment]
    """Every regular file under root (the private env files named in skip aside)."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and p not in skip}


def as_bytes(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()
