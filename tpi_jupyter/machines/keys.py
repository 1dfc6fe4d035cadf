"""A machine's own SSH key: a fresh ed25519 pair, the private half 0600, never printed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def new_key(path: Path, comment: str) -> str:
    """Write a fresh private key to path (0600, created exclusively); return the public line."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)
    try:
        private, public = _with_cryptography()
    except ImportError:  # the base install: OpenSSH's own tool
        return _with_ssh_keygen(path, comment)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "wb") as out:
        out.write(private)
    return f"{public.decode()} {comment}"


def _with_cryptography() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public


def _with_ssh_keygen(path: Path, comment: str) -> str:
    tool = shutil.which("ssh-keygen")
    if tool is None:
        raise RuntimeError("ssh-keygen is not installed (Debian: openssh-client)")
    subprocess.run([tool, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
    os.chmod(path, 0o600)
    public = path.with_name(path.name + ".pub")
    line = public.read_text().strip()
    public.unlink()
    return line
