"""rms-cloud-tasks, the anchor of issue 15, in a throwaway venv of its own (never a dependency of
this project): its example worker for the compatibility test, its local mode for the benchmark.

Built once into the user cache from PyPI with pip; its sdist ships `examples/parallel_addition`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.5.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tpi-jupyter"
VENV = CACHE / f"rms-cloud-tasks-{VERSION}"
SDIST = CACHE / "rms-sdist"


def python() -> Path:
    """The venv's interpreter, with rms-cloud-tasks and its requirements installed."""
    interpreter = VENV / "bin" / "python"
    if not interpreter.exists() or _missing(interpreter):
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(interpreter), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        f"rms-cloud-tasks=={VERSION}"], check=True)  # fmt: skip
    return interpreter


def _missing(interpreter: Path) -> bool:
    found = subprocess.run(
        [str(interpreter), "-c", "import cloud_tasks.worker, filecache"], capture_output=True
    )
    return found.returncode != 0


def site_packages() -> Path:
    """Where the venv keeps its packages (for PYTHONPATH: the example imports cloud_tasks)."""
    found = subprocess.run([str(python()), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return Path(found.stdout.strip())


def example(destination: Path) -> Path:
    """`examples/parallel_addition` of the released sdist, copied into destination, unchanged."""
    archive = SDIST / f"rms_cloud_tasks-{VERSION}.tar.gz"
    if not archive.exists():
        SDIST.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(python()), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--no-binary", ":all:", f"rms-cloud-tasks=={VERSION}", "-d", str(SDIST)], check=True)  # fmt: skip
    prefix = f"rms_cloud_tasks-{VERSION}/examples/parallel_addition/"
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith(prefix) and member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                with source, open(destination / member.name.removeprefix(prefix), "wb") as out:
                    shutil.copyfileobj(source, out)
    return destination
