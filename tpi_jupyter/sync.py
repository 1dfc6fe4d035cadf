"""Mirror a local directory and a remote prefix over any fsspec filesystem.

Used by the client (upload before launch, pull of `output`) and by the agent (pull at boot,
periodic push of what changed). No IPython or Jupyter imports: this runs on bare machines.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import fsspec
import pathspec
from fsspec.implementations.local import LocalFileSystem

log = logging.getLogger(__name__)

IGNORE_FILE = ".tpiignore"
WORKERS = 16


@dataclass
class Progress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[Progress], None]


@dataclass
class SyncResult:
    files: list[str] = field(default_factory=list)  # relative paths transferred (or to transfer)
    bytes: int = 0
    skipped: int = 0  # unchanged files not transferred
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- excludes


def _gitignore_lines(patterns: Iterable[str]) -> list[str]:
    """Gitignore lines from user patterns; TPI's rclone `- rule` / `+ rule` lines are accepted."""
    lines = []
    for pattern in patterns:
        if pattern.startswith("- "):
            lines.append(pattern[2:].strip())
        elif pattern.startswith("+ "):
            lines.append("!" + pattern[2:].strip())
        else:
            lines.append(pattern)
    return lines


class Excluder:
    """Gitignore semantics over paths relative to the synced root (posix separators)."""

    def __init__(self, patterns: Iterable[str] = (), root: str | os.PathLike[str] | None = None):
        lines = _gitignore_lines(patterns)
        if root is not None and (Path(root) / IGNORE_FILE).is_file():
            lines += (Path(root) / IGNORE_FILE).read_text(encoding="utf-8").splitlines()
        self.patterns = lines
        self._spec = pathspec.GitIgnoreSpec.from_lines(lines)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, relpath: str, is_dir: bool = False) -> bool:
        if not self.patterns:
            return False
        return self._spec.match_file(relpath + "/" if is_dir else relpath)

    def excluded_with_parents(self, relpath: str) -> bool:
        """For remote listings, where directories are not walked one by one."""
        parts = relpath.split("/")
        for depth in range(1, len(parts)):
            if self.excluded("/".join(parts[:depth]), is_dir=True):
                return True
        return self.excluded(relpath)


# ---------------------------------------------------------------- local scan


@dataclass(frozen=True)
class LocalFile:
    path: str  # absolute
    size: int
    mtime_ns: int
    mode: int


def scan_local(
    root: str | os.PathLike[str], excluder: Excluder, warnings: list[str] | None = None
) -> tuple[dict[str, LocalFile], list[str]]:
    """Files and empty directories below root, by relative posix path.

    Symlinks are followed only when they point inside root; others are reported once.
    """
    root = os.path.realpath(root)
    files: dict[str, LocalFile] = {}
    empty_dirs: list[str] = []
    warnings = warnings if warnings is not None else []

    def walk(directory: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            warnings.append(f"cannot read {prefix or '.'}: {error.strerror}")
            return
        if not entries and prefix:
            empty_dirs.append(prefix.rstrip("/"))
        for entry in entries:
            relpath = prefix + entry.name
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not (target + os.sep).startswith(root + os.sep):
                    warnings.append(f"skipped symlink {relpath} -> outside the workdir")
                    continue
                if os.path.isdir(target):
                    warnings.append(f"skipped symlink {relpath} -> a directory")
                    continue
            if entry.is_dir():
                if not excluder.excluded(relpath, is_dir=True):
                    walk(entry.path, relpath + "/")
            elif entry.is_file() and not excluder.excluded(relpath):
                info = entry.stat()
                files[relpath] = LocalFile(entry.path, info.st_size, info.st_mtime_ns, info.st_mode)

    walk(root, "")
    return files, empty_dirs


# ---------------------------------------------------------------- manifest


class Manifest:
    """What the remote holds as far as this writer knows: relpath -> [size, mtime_ns].

    A no-change sync then costs local stats only, no remote listing.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path else None
        self.entries: dict[str, list[int]] = {}
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}
        self._lock = threading.Lock()

    def unchanged(self, relpath: str, local: LocalFile) -> bool:
        return self.entries.get(relpath) == [local.size, local.mtime_ns]

    def record(self, relpath: str, local: LocalFile) -> None:
        with self._lock:
            self.entries[relpath] = [local.size, local.mtime_ns]

    def forget(self, relpath: str) -> None:
        with self._lock:
            self.entries.pop(relpath, None)

    def save(self) -> None:
        if self.path:
            atomic_write_bytes(self.path, json.dumps(self.entries).encode())


# ---------------------------------------------------------------- helpers


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Write a local file so that readers see the old or the new content, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def filesystem(url: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path for a remote URL (a plain path means the local disk)."""
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/")


def _put_file(fs: fsspec.AbstractFileSystem, local: LocalFile, target: str) -> None:
    if is_local(fs):
        directory = os.path.dirname(target)
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            shutil.copyfile(local.path, temp)
            os.chmod(temp, stat.S_IMODE(local.mode))
            os.utime(temp, ns=(local.mtime_ns, local.mtime_ns))
            os.replace(temp, target)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    else:
        fs.put_file(local.path, target)  # one object put: atomic on object stores


def _get_file(fs: fsspec.AbstractFileSystem, source: str, target: str, info: dict[str, Any]) -> None:
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    temp = os.path.join(directory, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if is_local(fs):
            shutil.copyfile(source, temp)
        else:
            fs.get_file(source, temp)
        mode = info.get("mode")
        if isinstance(mode, int):
            os.chmod(temp, stat.S_IMODE(mode))
        mtime = _remote_mtime(info)
        if mtime is not None:
            os.utime(temp, (mtime, mtime))
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _remote_mtime(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _run(
    jobs: list[tuple[str, int, Callable[[], None]]], progress: ProgressCallback | None, workers: int
) -> None:
    state = Progress(files_total=len(jobs), bytes_total=sum(size for _, size, _ in jobs))
    lock = threading.Lock()
    if progress:
        progress(Progress(**vars(state)))

    def run_one(job: tuple[str, int, Callable[[], None]]) -> None:
        job[2]()
        with lock:
            state.files_done += 1
            state.bytes_done += job[1]
            snapshot = Progress(**vars(state))
        if progress:
            progress(snapshot)

    if len(jobs) <= 1 or workers <= 1:
        for job in jobs:
            run_one(job)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        # list() re-raises the first failure after every started job has ended
        list(pool.map(run_one, jobs))


def _remote_files(fs: fsspec.AbstractFileSystem, root: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not fs.exists(root):
        return
    for path, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        relpath = (
            path[len(root) :].lstrip("/") if path.startswith(root) else path.split(root, 1)[-1].lstrip("/")
        )
        name = relpath.rsplit("/", 1)[-1]
        if ".tmp-" in name and name.startswith("."):
            continue  # another writer's file in flight
        yield relpath, info


# ---------------------------------------------------------------- public API


def upload(
    local_root: str | os.PathLike[str],
    fs: fsspec.AbstractFileSystem,
    remote_root: str,
    *,
    exclude: Iterable[str] = (),
    manifest: Manifest | None = None,
    mirror: bool = False,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    workers: int = WORKERS,
) -> SyncResult:
    """Send new and changed files from local_root to remote_root.

    With a manifest, unchanged files are found from local stats alone; without one, every file
    is sent. `mirror` deletes remote files (below remote_root only) that are gone locally.
    """
    excluder = Excluder(exclude, local_root)
    result = SyncResult()
    files, empty_dirs = scan_local(local_root, excluder, result.warnings)
    jobs: list[tuple[str, int, Callable[[], None]]] = []
    for relpath, local in sorted(files.items()):
        if manifest is not None and manifest.unchanged(relpath, local):
            result.skipped += 1
            continue
        result.files.append(relpath)
        result.bytes += local.size

        def send(relpath: str = relpath, local: LocalFile = local) -> None:
            _put_file(fs, local, f"{remote_root}/{relpath}")
            if manifest is not None:
                manifest.record(relpath, local)

        jobs.append((relpath, local.size, send))
    if dry_run:
        return result
    _run(jobs, progress, workers)
    if is_local(fs):
        for directory in empty_dirs:
            os.makedirs(f"{remote_root}/{directory}", exist_ok=True)
    if mirror:
        for relpath, _info in list(_remote_files(fs, remote_root)):
            if relpath not in files and not excluder.excluded_with_parents(relpath):
                fs.rm_file(f"{remote_root}/{relpath}")
                result.deleted.append(relpath)
                if manifest is not None:
                    manifest.forget(relpath)
    if manifest is not None:
        manifest.save()
    return result


def download(
    fs: fsspec.AbstractFileSystem,
    remote_root: str,
    local_root: str | os.PathLike[str],
    *,
    subdir: str = "",
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    workers: int = WORKERS,
) -> SyncResult:
    """Fetch remote files below `remote_root/subdir` into `local_root/subdir`.

    A local file of the same size and no older than the remote one is left alone; local
    files are never deleted. Excludes match paths relative to the roots.
    """
    local_root = os.fspath(local_root)
    excluder = Excluder(exclude)
    subdir = subdir.strip("/") if subdir not in ("", ".") else ""
    base = f"{remote_root}/{subdir}" if subdir else remote_root
    result = SyncResult()
    jobs: list[tuple[str, int, Callable[[], None]]] = []
    for inner, info in sorted(_remote_files(fs, base), key=lambda item: item[0]):
        relpath = f"{subdir}/{inner}" if subdir else inner
        if excluder.excluded_with_parents(relpath):
            continue
        target = os.path.join(local_root, *relpath.split("/"))
        size = int(info.get("size") or 0)
        mtime = _remote_mtime(info)
        try:
            current = os.stat(target)
            if current.st_size == size and mtime is not None and current.st_mtime >= mtime - 1e-6:
                result.skipped += 1
                continue
        except FileNotFoundError:
            pass
        result.files.append(relpath)
        result.bytes += size
        source = f"{base}/{inner}"
        jobs.append((relpath, size, functools.partial(_get_file, fs, source, target, info)))
    if not dry_run:
        _run(jobs, progress, workers)
    return result


def local_manifest(
    root: str | os.PathLike[str], exclude: Iterable[str] = (), path: str | None = None
) -> Manifest:
    """A manifest saying the remote holds exactly what root holds now (after a full pull)."""
    manifest = Manifest(path)
    files, _ = scan_local(root, Excluder(exclude, root))
    for relpath, local in files.items():
        manifest.record(relpath, local)
    return manifest
