"""A minimal pure-Python wheel of the installed `tpi_jupyter` package, for cloud machines.

Machines install the agent at the very version the notebook runs, without PyPI holding that
version: at launch the client zips its own package files with a `.dist-info` (METADATA, WHEEL,
entry_points.txt, RECORD) and uploads the wheel to `<remote>/.tpi/agent/`. Its requirements are
only what the agent needs (no IPython, widgets or Jupyter), plus the machine extras (`aws`, ...).
`lock_text` pins them: the exact versions this client runs, transitive dependencies included,
used on the machine as `pip install -c lock.txt`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from . import __version__

DISTRIBUTION = "tpi_jupyter"
UI_ONLY = {"ipython", "traitlets", "ipywidgets", "jupyter-server"}  # the agent never imports these
CLIENT_EXTRAS = {"notebook", "test", "bench"}  # extras for the client, never for machines
LOCK_NAME = "lock.txt"
FALLBACK_REQUIRES = ["fsspec>=2023.6", "pathspec>=0.11", "platformdirs>=3"]
FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # reproducible bytes for the same files


def wheel_name(version: str = __version__) -> str:
    return f"{DISTRIBUTION}-{version}-py3-none-any.whl"


def _requirements() -> tuple[list[str], dict[str, list[str]]]:
    """(base requirements, extra -> requirements) from the installed metadata, UI packages left out."""
    try:
        declared = metadata.requires("tpi-jupyter") or []
    except metadata.PackageNotFoundError:
        return list(FALLBACK_REQUIRES), {}
    base: list[str] = []
    extras: dict[str, list[str]] = {}
    for requirement in declared:
        text, _, marker = requirement.partition(";")
        name = re.split(r"[\s<>=!~\[;(]", text.strip(), maxsplit=1)[0].lower().replace("_", "-")
        found = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if found is None:
            if name not in UI_ONLY:
                base.append(text.strip())
        elif found[1] not in CLIENT_EXTRAS:
            extras.setdefault(found[1], []).append(text.strip())
    return base, extras


def _installed_closure(requirements: list[str], extras: set[str]) -> dict[str, str]:
    """name -> installed version for requirements and everything they need, as installed here."""
    pinned: dict[str, str] = {}
    expanded: set[tuple[str, frozenset[str]]] = set()
    queue = [(text, frozenset(extras)) for text in requirements]
    while queue:
        text, wanted = queue.pop()
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        marker = requirement.marker
        if marker and not any(marker.evaluate({"extra": extra}) for extra in (wanted or {""})):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: the machine's pip resolves it from the ranges
        pinned[name] = dist.version
        key = (name, frozenset(requirement.extras))
        if key not in expanded:
            expanded.add(key)
            queue += [(item, key[1]) for item in dist.requires or []]
    pinned.pop("tpi-jupyter", None)
    return pinned


def lock_text(extra: str = "") -> str:
    """A pip constraints file: the exact versions of the agent's dependencies (with `extra`'s)."""
    base, extras = _requirements()
    wanted = base + extras.get(extra, [])
    lines = [f"{name}=={version}" for name, version in sorted(_installed_closure(wanted, set()).items())]
    return "".join(f"{line}\n" for line in lines)


def _entry_points_text() -> str:
    """The installed distribution's entry points, so machines find backends' hooks the same way."""
    try:
        return metadata.distribution("tpi-jupyter").read_text("entry_points.txt") or ""
    except metadata.PackageNotFoundError:
        return ""


def _metadata_text(version: str) -> str:
    base, extras = _requirements()
    lines = ["Metadata-Version: 2.1", "Name: tpi-jupyter", f"Version: {version}",
             "Summary: tpi-jupyter agent (built at launch)", "Requires-Python: >=3.10"]  # fmt: skip
    lines += [f"Requires-Dist: {item}" for item in base]
    for extra, items in sorted(extras.items()):
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {item}; extra == "{extra}"' for item in items]
    return "\n".join(lines) + "\n"


def build(version: str = __version__, package_dir: Path | None = None) -> tuple[str, bytes]:
    """The wheel's file name and bytes."""
    root = package_dir or Path(__file__).resolve().parent
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and "__pycache__" not in relative.parts and path.suffix in (".py", ".typed"):
            files[f"{DISTRIBUTION}/{relative.as_posix()}"] = path.read_bytes()
    info = f"{DISTRIBUTION}-{version}.dist-info"
    files[f"{info}/METADATA"] = _metadata_text(version).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: tpi-jupyter\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    entry_points = _entry_points_text()
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, FIXED_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, data)
    return wheel_name(version), buffer.getvalue()
