"""kubeflow mpi-operator for the test bed: built from the Go module proxy, cached by version.

tests/k8s/mpioperator/go.mod requires the module and names `cmd/mpi-operator` as its tool (a
plain `go install ...@version` asks the proxy for the version list, which it refuses here);
`go build tool` runs under `nice -n 19` and writes into
${XDG_CACHE_HOME:-~/.cache}/tpi-jupyter/k8s-testbed/mpi-operator-<VERSION>/ with the MPIJob CRD
copied from the module cache (`manifests/base/kubeflow.org_mpijobs.yaml`, shipped in the
module; never committed here) and a build.json (seconds, bytes, Go version).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.k8s import pki
from tests.k8s.build import BuildError, publish

MODULE = "github.com/kubeflow/mpi-operator"
GO_MODULE = Path(__file__).resolve().parent / "mpioperator"
CRD_IN_MODULE = "manifests/base/kubeflow.org_mpijobs.yaml"
BINARY = "mpi-operator"
CRD_FILE = "kubeflow.org_mpijobs.yaml"


def version() -> str:
    """The mpi-operator version tests/k8s/mpioperator/go.mod requires."""
    found = re.search(
        rf"^\s*(?:require\s+)?{re.escape(MODULE)} (v\S+)", (GO_MODULE / "go.mod").read_text(), re.M
    )
    if not found:
        raise BuildError(f"{GO_MODULE / 'go.mod'} must require {MODULE}")
    return found.group(1)


def home() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tpi-jupyter" / "k8s-testbed" / f"mpi-operator-{version()}"


def built() -> bool:
    return all((home() / name).is_file() for name in (BINARY, CRD_FILE))


def crd_path() -> Path:
    return home() / CRD_FILE


def _module_dir() -> Path:
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True)
    return Path(cache.stdout.strip()) / f"{MODULE}@{version()}"


def _compile(tmp: Path) -> None:
    """The binary and the CRD from the module cache into `tmp`; BuildError (tmp removed) else."""
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    cmd = ["nice", "-n", "19", "go", "build", "-trimpath", "-ldflags=-s -w", "-o", f"{tmp}/", "tool"]
    crd = None
    if subprocess.run(cmd, cwd=GO_MODULE, env=env, check=False).returncode == 0:
        crd = _module_dir() / CRD_IN_MODULE
        if crd.is_file():
            pki.write_public(tmp / CRD_FILE, crd.read_bytes())
            return
    shutil.rmtree(tmp, ignore_errors=True)
    if crd is None:
        raise BuildError("go build of mpi-operator failed (its errors are above)")
    raise BuildError(f"the module {MODULE}@{version()} has no {CRD_IN_MODULE}")


def build() -> Path:
    """Build mpi-operator and take its CRD unless the cache has both; return the directory."""
    target = home()
    if built():
        print(f"k8s-testbed: reusing {target}", file=sys.stderr)
        return target
    if not shutil.which("go"):
        raise BuildError("go is not installed: mpi-operator is built with the Go toolchain")
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"k8s-testbed: building {MODULE}/cmd/{BINARY}@{version()} into {target}", file=sys.stderr)
    started = time.monotonic()
    _compile(tmp)
    seconds, size = round(time.monotonic() - started), (tmp / BINARY).stat().st_size
    return publish(tmp, target, "mpi-operator", seconds, size)
