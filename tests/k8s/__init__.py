"""The Kubernetes test bed: a real control plane built from the Go module proxy, and a stand-in
for the kubelet (see README.md here)."""

from __future__ import annotations

import importlib
import subprocess
import sys

CLIENT_PIN = "kubernetes==36.0.3"  # 37.x wants python-dateutil>=3, which botocore forbids


def require_client() -> None:
    """Import the kubernetes client, installing its pinned version first when it is missing."""
    try:
        importlib.import_module("kubernetes")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", CLIENT_PIN], check=True)
        importlib.invalidate_caches()
        importlib.import_module("kubernetes")
