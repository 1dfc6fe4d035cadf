"""Build the test bed's binaries from the Go module proxy, into a cache keyed by version.

tests/k8s/testbed/go.mod requires k8s.io/kubernetes (its `tool` lines name kube-apiserver,
kube-controller-manager and kube-scheduler) and go.etcd.io/etcd/server/v3 (cmd/etcd wraps
etcdmain.Main). A build runs under `nice -n 19`; the binaries land in
${XDG_CACHE_HOME:-~/.cache}/tpi-jupyter/k8s-testbed/<k8s>-etcd-<etcd>/bin with a build.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.k8s import pki

TESTBED = Path(__file__).resolve().parent / "testbed"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class BuildError(RuntimeError):
    """The binaries could not be built; the message says why."""


def versions() -> tuple[str, str]:
    """(Kubernetes, etcd) versions that tests/k8s/testbed/go.mod requires."""
    text = (TESTBED / "go.mod").read_text()
    k8s = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)", text, re.M)
    etcd = re.search(r"^\s*(?:require\s+)?go\.etcd\.io/etcd/server/v3 (v\S+)", text, re.M)
    if not k8s or not etcd:
        raise BuildError(f"{TESTBED / 'go.mod'} must require k8s.io/kubernetes and go.etcd.io/etcd/server/v3")
    return k8s.group(1), etcd.group(1)


def bin_dir() -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/tpi-jupyter/k8s-testbed/<k8s>-etcd-<etcd>/bin."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    k8s, etcd = versions()
    return cache / "tpi-jupyter" / "k8s-testbed" / f"{k8s}-etcd-{etcd}" / "bin"


def built() -> bool:
    return all((bin_dir() / name).is_file() for name in BINARIES)


def _ldflags(k8s: str) -> str:
    # What Kubernetes' own build stamps in (hack/lib/version.sh), so /version reports the release.
    major, minor = k8s.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={k8s}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}"]
        flags += [f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def build() -> Path:
    """Build the four binaries unless the cache has them; return the bin directory."""
    target = bin_dir()
    if built():
        print(f"k8s-testbed: reusing {target}", file=sys.stderr)
        return target
    if not shutil.which("go"):
        raise BuildError(
            "go is not installed: the test bed is built with the Go toolchain (go 1.26 or newer)"
        )
    k8s, _ = versions()
    tmp = target.with_name(f"bin.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = ["nice", "-n", "19", "go", "build", "-trimpath", "-ldflags", _ldflags(k8s), "-o", f"{tmp}/"]
    cmd += ["tool", "./cmd/etcd"]  # go.mod's `tool` lines name the three Kubernetes commands
    print(
        f"k8s-testbed: building {', '.join(BINARIES)} into {target} (cold: tens of minutes)", file=sys.stderr
    )
    started = time.monotonic()
    env = {**os.environ, "GOFLAGS": "-mod=readonly"}
    result = subprocess.run(cmd, cwd=TESTBED, env=env, check=False)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"go build failed with exit status {result.returncode} (its errors are above)")
    return publish(tmp, target, "k8s-testbed", round(time.monotonic() - started), _tree_size(tmp))


def publish(tmp: Path, target: Path, what: str, seconds: int, size: int) -> Path:
    """Record what a build cost beside it, then move it into the cache in one rename."""
    record = {"seconds": seconds, "bytes": size, "go": _go_version()}
    pki.write_public(tmp / "build.json", json.dumps(record).encode())
    try:
        tmp.rename(target)
    except OSError:  # another build finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"k8s-testbed: {what} built in {seconds} s, {size >> 20} MiB", file=sys.stderr)
    return target


def _go_version() -> str:
    return subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=False
    ).stdout.strip()
