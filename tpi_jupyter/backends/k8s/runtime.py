"""The agent's runtime for Kubernetes pods: a Python, with the agent, that runs from any directory
of any image holding `/bin/sh` (no libc, no Python needed from the image).

The Job's init container copies it from the runtime image (`TPI_K8S_AGENT_IMAGE`, at
`TPI_K8S_AGENT_RUNTIME`, default `/opt/tpi`) into the pod; `docker/agent-runtime/Dockerfile`
builds that image in two steps, both this module's:

    python -m tpi_jupyter.backends.k8s.runtime context DIR   # the agent wheel and lock.txt
    python -m tpi_jupyter.backends.k8s.runtime bundle DEST   # in the image: DEST from this Python

The bundle holds this interpreter's binary, its standard library, the shared libraries that it
and every extension module load (found with `ldd`, the dynamic loader included), the site-packages
of the agent, and `bin/python`: a `/bin/sh` script that starts the interpreter through the bundled
loader with `--library-path` (the script's own processes never see those libraries). Linux only.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from ... import agent_wheel

EXTRAS = ("s3", "gcs", "azure")  # a pod's agent reaches any object-store container
LEFT_OUT = {"site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip",
            "lib2to3", "pydoc_data", "__pycache__"}  # fmt: skip
NOT_NEEDED = {"pip", "setuptools", "wheel"}
_LIBRARY = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def lock(extras: Iterable[str] = EXTRAS) -> str:
    """One constraints file for the agent with every object store's extra (exact versions here)."""
    lines = {line for extra in extras for line in agent_wheel.lock_text(extra).splitlines() if line}
    return "".join(f"{line}\n" for line in sorted(lines))


def context(directory: Path) -> list[Path]:
    """The Docker build context's inputs: the agent wheel this client would ship, and its lock."""
    directory.mkdir(parents=True, exist_ok=True)
    name, wheel = agent_wheel.build()
    written = [directory / name, directory / agent_wheel.LOCK_NAME]
    written[0].write_bytes(wheel)
    written[1].write_text(lock())
    return written


def _stdlib(dest: Path) -> Path:
    source = Path(sysconfig.get_paths()["stdlib"])
    target = dest / "lib" / source.name
    ignore = shutil.ignore_patterns(*LEFT_OUT, "config-*", "_tkinter*")
    shutil.copytree(source, target, ignore=ignore, symlinks=False, dirs_exist_ok=True)
    return target


def _site_packages(target: Path, names: set[str] | None) -> None:
    """Distributions of this environment (all but pip's tools, or those in `names`)."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in NOT_NEEDED or (names is not None and name not in names):
            continue
        for file in dist.files or []:
            if ".." in file.parts or file.suffix == ".pyc":
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                (target / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / file)


def _libraries(files: list[Path]) -> set[Path]:
    """Every shared library the files load, the dynamic loader included (by `ldd`)."""
    found: set[Path] = set()
    for start in range(0, len(files), 200):
        done = subprocess.run(["ldd", *map(str, files[start : start + 200])], capture_output=True, text=True)
        found |= {Path(match) for match in _LIBRARY.findall(done.stdout)}
    return found


def _launcher(loader: str, python: str) -> str:
    return f"""#!/bin/sh
# tpi-jupyter's agent runtime: the bundled Python, started by the bundled loader, so the image
# it runs in needs only /bin/sh. Its libraries are not in the environment of what it starts.
here="${{0%/*}}"
exec "$here/../lib/{loader}" --library-path "$here/../lib" --argv0 "$0" "$here/{python}" "$@"
"""


def bundle(dest: Path, names: set[str] | None = None, wheel: Path | None = None) -> Path:
    """Build the runtime in `dest`; returns `dest/bin/python`. `names`: only these distributions
    (else all of this environment, where pip installed the agent wheel); `wheel`: a wheel to unpack."""
    binary = Path(sys.executable).resolve()
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, dest / "bin" / binary.name)
    stdlib = _stdlib(dest)
    site = stdlib / "site-packages"
    site.mkdir(exist_ok=True)
    _site_packages(site, names)
    if wheel is not None:  # a wheel is a zip of what pip would install (no scripts: none needed)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    libraries = _libraries([dest / "bin" / binary.name, *dest.rglob("*.so"), *dest.rglob("*.so.*")])
    loader = next(path for path in libraries if path.name.startswith("ld-linux"))
    for library in libraries:
        shutil.copy2(library.resolve(), dest / "lib" / library.name)
    launcher = dest / "bin" / "python"
    launcher.write_text(_launcher(loader.name, binary.name))
    launcher.chmod(0o755)
    return launcher


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpi_jupyter.backends.k8s.runtime")
    verbs = parser.add_subparsers(dest="verb", required=True)
    verbs.add_parser("context", help="write the agent wheel and lock.txt for the image build").add_argument(
        "dir"
    )
    verbs.add_parser("bundle", help="build the runtime from this Python and environment").add_argument("dest")
    args = parser.parse_args(argv)
    if args.verb == "context":
        for path in context(Path(args.dir)):
            print(path)
        return 0
    if sys.platform != "linux":
        parser.error("bundle: Linux only (the runtime runs in Linux containers)")
    print(bundle(Path(args.dest)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
