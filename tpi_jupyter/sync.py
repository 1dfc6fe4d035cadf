"""Mirror a local directory and a remote prefix over any fsspec filesystem.

Used by the client (upload before launch, pull of `output`) and by the agent (pull at boot,
periodic push of what changed). No IPython or Jupyter imports: this runs on bare machines.

What moves
    Excludes use gitignore semantics (pathspec) over paths relative to the synced root; TPI's
    rclone-style `- rule` / `+ rule` lines are accepted; `.tpiignore` in the workdir adds lines.
    Excluded files are neither uploaded nor downloaded (nor deleted by a mirror). Symlinks are
    followed only when they point to a file inside the root; others are skipped with one
    warning each. Writers' temp files (`.<name>.tmp-<8 hex>`) are never synced, nor the paths
    the caller names in `exclude_paths` (the client's registry: it may lie inside a workdir).

Unsyncable files
    A file that cannot be read (a symlink loop, a FIFO, removed while uploading, a name the
    target cannot hold) is skipped with a warning ("skipped <path>: <why>") and the upload goes
    on; only a fault of the remote fails it. A download goes on past a file it cannot write,
    then fails with one line naming that file (`SyncError`).

Incremental
    `upload` skips a file whose size and mtime (ns) equal what the remote is known to hold: the
    caller's `Manifest` (the agent keeps one on its disk: a no-change sync is local stats only),
    or else the writers' metadata records below (one small listing and read, no listing of the
    data). `mirror=True` also lists the data and deletes, below `remote_root` only, remote files
    that are gone locally. `download` lists the remote, skips local files of the same size and
    recorded mtime, and never deletes local files. Completed files are checkpointed every few
    seconds, so an interrupted sync resumes without re-sending them.

Faithful
    A target never shows a half-written file: local targets get a temp file and a rename;
    object stores get one PUT or a multipart upload committed at the end. Content, relative
    paths (unicode, spaces, depth), mode bits, mtimes and empty directories round-trip.

Remote metadata format (object stores hold neither modes, mtimes nor empty directories)
    For `remote_root = <parent>/<name>`, each writer owns one object
    `<parent>/.tpi/sync/<name>/<writer>.json` (so `<remote>/.tpi/sync/data/client.json` for the
    workdir mirror); writers never write each other's, so concurrent ranks cannot clobber
    metadata. The client writes as `client`; an agent writes under its manifest's random writer
    id (one per machine boot). Body, UTF-8 JSON:
    `{"format": 1, "writer": str, "updated": unix_seconds,
      "files": {relpath: [size, mtime_ns, mode, stamp_ns]}, "dirs": [empty dir relpath, ...]}`
    `files` lists what this writer put (and has not deleted since); `stamp_ns` is when it put it
    (writer's clock); when records disagree on a path, the latest stamp wins. `dirs` is this
    writer's last view of the empty directories. A missing or damaged record only costs
    re-transfers; readers ignore entries whose size differs from the object's.

Speed
    Transfers run concurrently through an engine (`sync_engines`): kernel copies for local
    directories, obstore (Rust) for S3 when it can be configured like s3fs, fsspec otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import fsspec
import pathspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol

from . import storage_logs, sync_meta
from .sync_engines import (
    WORKERS,
    Engine,
    Skip,
    Transfer,
    TransferError,
    atomic_write_bytes,
    is_temp_name,
    select_engine,
)

log = logging.getLogger(__name__)

IGNORE_FILE = ".tpiignore"
CLIENT_WRITER = "client"
CHECKPOINT_SECONDS = 2.0
REST = 0.05  # seconds a young file must stand still before it is read: `tee` writes right after it truncates
REST_WAIT = 1.0  # seconds, at most, a push waits for that
RESENDS = 3  # a file changed while it was sent is sent again, this many times, within the round

__all__ = [
    "IGNORE_FILE", "WORKERS", "Excluder", "LocalFile", "Manifest", "Progress", "ProgressCallback",
    "SyncError", "SyncResult", "atomic_write_bytes", "download", "filesystem", "is_local", "local_manifest",
    "scan_local", "upload",
]  # fmt: skip


@dataclass
class Progress:
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[Progress], None]


class SyncError(Exception):
    """A sync that could not complete; the message is one line naming the first failed file."""


@dataclass
class SyncResult:
    files: list[str] = field(default_factory=list)  # relative paths transferred (or to transfer)
    bytes: int = 0
    skipped: int = 0  # unchanged files not transferred
    deleted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # empty directories created on the target
    engine: str = ""
    deferred: list[str] = field(default_factory=list)  # written just now: left for the next round
    held: list[str] = field(default_factory=list)  # written as the script was killed: left as synced


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
        self._dirs: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def excluded(self, relpath: str, is_dir: bool = False) -> bool:
        if not self.patterns:
            return False
        return bool(self._spec.match_file(relpath + "/" if is_dir else relpath))

    def excluded_with_parents(self, relpath: str) -> bool:
        """For remote listings, where directories are not walked one by one."""
        if not self.patterns:
            return False
        parts = relpath.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            hit = self._dirs.get(directory)
            if hit is None:
                hit = self._dirs[directory] = self.excluded(directory, is_dir=True)
            if hit:
                return True
        return self.excluded(relpath)


# ---------------------------------------------------------------- local scan


class LocalFile(NamedTuple):
    path: str  # absolute
    size: int
    mtime_ns: int
    mode: int


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _special_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):  # fmt: skip
        if test(mode):
            return kind
    return "not a regular file"


def scan_local(
    root: str | os.PathLike[str],
    excluder: Excluder,
    warnings: list[str] | None = None,
    exclude_paths: Iterable[str | os.PathLike[str]] = (),
) -> tuple[dict[str, LocalFile], list[str]]:
    """Files and empty directories below root, by relative posix path.

    Symlinks are followed only when they point to a file inside root; others, and files that
    are not regular (FIFOs, sockets, devices), are reported once. `exclude_paths` (absolute) are
    left out silently, and so are symlinks into them.
    """
    root = os.path.realpath(root)
    files: dict[str, LocalFile] = {}
    empty_dirs: list[str] = []
    warnings = warnings if warnings is not None else []
    owned = [os.path.realpath(path) for path in exclude_paths]
    if any(_inside(root, path) for path in owned):
        warnings.append(f"skipped {root}: it is inside tpi-jupyter's own files")
        return files, empty_dirs
    owned_relpaths = {
        os.path.relpath(path, root).replace(os.sep, "/") for path in owned if _inside(path, root)
    }

    def add_file(entry: os.DirEntry[str], relpath: str) -> None:
        if is_temp_name(entry.name) or excluder.excluded(relpath):
            return
        try:
            info = entry.stat()  # follows a symlink; a plain file's stat is the same
        except FileNotFoundError:
            return  # removed while we looked
        files[relpath] = LocalFile(entry.path, info.st_size, info.st_mtime_ns, info.st_mode)

    def odd_entry(entry: os.DirEntry[str], relpath: str) -> str | None:
        """Why a symlink or special file is skipped (None: follow it)."""
        if excluder.excluded(relpath) or excluder.excluded(relpath, is_dir=True):
            return ""
        if entry.is_symlink():
            target = os.path.realpath(entry.path)
            if any(_inside(target, path) for path in owned):
                return ""
            if not _inside(target, root):
                return f"skipped symlink {relpath} -> outside the workdir"
            try:
                mode = os.stat(target).st_mode
            except OSError:
                return f"skipped symlink {relpath}: a loop or a missing target"
            if stat.S_ISDIR(mode):
                return f"skipped symlink {relpath} -> a directory"
            return None if stat.S_ISREG(mode) else f"skipped symlink {relpath} -> {_special_kind(mode)}"
        if entry.is_dir(follow_symlinks=False):
            return None
        try:
            kind = _special_kind(entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return ""
        return f"skipped {relpath}: {kind}"

    def walk(directory: str, prefix: str) -> None:
        try:
            entries = list(os.scandir(directory))
        except OSError as error:
            warnings.append(f"skipped {prefix or './'}: cannot read it ({error.strerror})")
            return
        if not entries and prefix:
            empty_dirs.append(prefix.rstrip("/"))
        for entry in entries:
            relpath = prefix + entry.name
            if entry.is_file(follow_symlinks=False):  # the common case first
                if relpath not in owned_relpaths:
                    add_file(entry, relpath)
                continue
            if relpath in owned_relpaths:
                continue  # tpi-jupyter's own files (the registry, keys, local remotes)
            why = odd_entry(entry, relpath)
            if why is not None:
                if why:
                    warnings.append(why)
            elif entry.is_dir(follow_symlinks=False):
                if not excluder.excluded(relpath, is_dir=True):
                    walk(entry.path, relpath + "/")
            else:  # a symlink to a file inside root
                add_file(entry, relpath)

    walk(root, "")
    return files, empty_dirs


# ---------------------------------------------------------------- manifest


class Manifest:
    """What the remote holds as far as this writer knows: relpath -> [size, mtime_ns].

    A no-change sync then costs local stats only, no remote access at all. It also keeps this
    writer's metadata record (see the module docstring) so that pushes never read it back.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, writer: str | None = None):
        self.path = Path(path) if path else None
        self.entries: dict[str, list[int]] = {}
        self.writer = writer or f"w-{uuid.uuid4().hex[:12]}"
        self.written = sync_meta.Record(self.writer)
        if self.path and self.path.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                body: Any = json.loads(self.path.read_text())
                if isinstance(body, dict) and body.get("format") == sync_meta.FORMAT:
                    self.entries = {k: [int(x) for x in v] for k, v in body["entries"].items()}
                    self.writer = writer or str(body["writer"])
                    self.written = sync_meta.Record(self.writer, body.get("files", {}), body.get("dirs", []))
                elif isinstance(body, dict):  # the first format: entries only
                    self.entries = {k: [int(x) for x in v] for k, v in body.items()}
        self.deferred: set[str] = set()  # files a settling push left for later (in memory only)
        self.unsure: set[str] = set()  # files whose remote copy may be torn: changed as they were read
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
            with self._lock:
                body = {"format": sync_meta.FORMAT, "writer": self.writer, "entries": dict(self.entries),
                        "files": dict(self.written.files), "dirs": list(self.written.dirs)}  # fmt: skip
            atomic_write_bytes(self.path, json.dumps(body).encode())


# ---------------------------------------------------------------- helpers


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


AZURE_CREDENTIALS = {"connection_string", "account_name", "account_key", "sas_token", "credential", "anon"}


def filesystem(url: str, **options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path for a remote URL (a plain path means the local disk)."""
    storage_logs.quiet()
    protocol = get_protocol(url)
    if protocol not in ("file", "local", "memory"):
        # Machines write keys the client polls for: a cached parent listing would hide them.
        options.setdefault("use_listings_cache", False)
    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
    if protocol in ("az", "abfs", "abfss") and connection and not options.keys() & AZURE_CREDENTIALS:
        # fsspec reuses a filesystem made with the same arguments, whatever the environment was
        # then: named, another connection (another account, a new emulator) gets its own.
        options["connection_string"] = connection
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/")


class _Run:
    """Progress accounting and periodic checkpoints for one batch of transfers."""

    def __init__(self, jobs: list[Transfer], progress: ProgressCallback | None,
                 on_done: Callable[[Transfer], None], checkpoint: Callable[[], None],
                 why_skip: Callable[[Transfer, Exception], str | None] = lambda job, error: None):  # fmt: skip
        self.state = Progress(files_total=len(jobs), bytes_total=sum(job.size for job in jobs))
        self.progress, self.on_done, self.checkpoint = progress, on_done, checkpoint
        self.why_skip = why_skip
        self.skipped: dict[str, str] = {}  # relpath -> why
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.dirty = False

    def done(self, job: Transfer) -> None:
        with self.lock:
            self.on_done(job)
            self.dirty = True
        self._advance(job)

    def skip(self, job: Transfer, error: Exception) -> bool:
        """A file given up (the engine goes on with the others) when why_skip says why."""
        why = self.why_skip(job, error)
        if why is None:
            return False
        with self.lock:
            self.skipped[job.relpath] = why
        self._advance(job)
        return True

    def _advance(self, job: Transfer) -> None:
        with self.lock:
            self.state.files_done += 1
            self.state.bytes_done += job.size
            snapshot = Progress(**vars(self.state))
        if self.progress:
            self.progress(snapshot)

    def _saver(self) -> None:
        while not self.stop.wait(CHECKPOINT_SECONDS):
            self.save()

    def save(self) -> None:
        with self.lock:
            dirty, self.dirty = self.dirty, False
        if dirty:
            try:
                self.checkpoint()
            except Exception as error:  # the final checkpoint is strict
                log.warning("sync checkpoint failed: %s", error)

    def run(self, transfer: Callable[[list[Transfer], Callable[[Transfer], None], Skip], None],
            jobs: list[Transfer]) -> None:  # fmt: skip
        if self.progress:
            self.progress(Progress(**vars(self.state)))
        if not jobs:
            return
        saver = threading.Thread(target=self._saver, name="tpi-sync-checkpoint", daemon=True)
        saver.start()
        try:
            transfer(jobs, self.done, self.skip)
        finally:
            self.stop.set()
            saver.join()
            with contextlib.suppress(Exception):
                self.save()  # keep what finished, even when interrupted


_NAME_ERRORS = (errno.ENAMETOOLONG, errno.EILSEQ)


def _unreadable(job: Transfer, error: Exception) -> str | None:
    """Why an upload gives a file up: the local file's own fault; None for a remote fault."""
    if not isinstance(error, OSError):
        return None
    if isinstance(error, FileNotFoundError) and error.filename == job.src:
        return "removed while uploading"
    if error.filename == job.src or error.errno in _NAME_ERRORS:
        return error.strerror or str(error)
    return None


def _any_failure(job: Transfer, error: Exception) -> str:
    """Downloads go on past a failed file, then fail naming it."""
    return str(TransferError(job.relpath, error))


# ---------------------------------------------------------------- public API


def _restat(local: LocalFile) -> LocalFile | None:
    try:
        now = os.stat(local.path)
    except OSError:
        return None
    return LocalFile(local.path, now.st_size, now.st_mtime_ns, now.st_mode)


def _changed_since(local: LocalFile) -> bool:
    """Whether a file was written while it was sent (or is gone): then it is not synced yet."""
    now = _restat(local)
    return now is None or (now.size, now.mtime_ns) != (local.size, local.mtime_ns)


def _job(relpath: str, local: LocalFile, remote_root: str) -> Transfer:
    return Transfer(relpath, local.path, f"{remote_root}/{relpath}", local.size, local.mode, local.mtime_ns)


def _let_rest(files: dict[str, LocalFile], young: list[str], wait: float) -> None:
    """Until each young file has stood still for REST (or `wait` is over): a file rewritten every
    epoch is caught between `tee`'s truncation and its write only if read at once. The stats in
    `files` are brought up to date."""
    deadline = time.monotonic() + wait
    pending = set(young)
    while pending:
        for relpath in sorted(pending):
            fresh = _restat(files[relpath])
            if fresh is None or time.time_ns() - fresh.mtime_ns >= REST * 1e9:
                pending.discard(relpath)  # a file gone is reported by the transfer
            if fresh is not None:
                files[relpath] = fresh
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(REST / 2)


def upload(
    local_root: str | os.PathLike[str],
    fs: fsspec.AbstractFileSystem,
    remote_root: str,
    *,
    exclude: Iterable[str] = (),
    exclude_paths: Iterable[str | os.PathLike[str]] = (),
    manifest: Manifest | None = None,
    mirror: bool = False,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    workers: int = WORKERS,
    writer: str | None = None,
    engine: str | Engine | None = None,
    settle: float = 0.0,
    defer: bool = True,
    torn: tuple[int, int] | None = None,
) -> SyncResult:
    """Send new and changed files from local_root to remote_root.

    Unchanged files are found from local stats and the manifest (or, without one, the remote
    metadata records). `mirror` deletes remote files below remote_root that are gone locally.
    `writer` names this writer's metadata record (default: the manifest's writer, else
    "client"); `engine` forces "fsspec" or "obstore". `exclude_paths` are absolute local paths
    never uploaded. Unreadable files are skipped and reported in the result's warnings.

    `settle` (seconds, with a manifest: the pushes of a running script) leaves a file written
    less than that long ago for the next round, once: a script rewriting a file (`tee` truncates,
    then writes) must not have its half-written state mirrored. The next round (or this one, with
    `defer=False`: the push just before a script is stopped) takes it once it has stood still for
    REST. A file that changed while it was sent is sent again within the round (RESENDS times): the
    remote is left with a copy read whole. `torn` (nanosecond mtimes, open at both ends) leaves the
    files last written inside it as the remote has them, in the result's `held`: the last push
    after a script was killed then, halfway through a write (a file the remote has no copy of, or
    only a copy that changed as it was read, goes as it is: something beats nothing).
    """
    remote_root = remote_root.rstrip("/")
    mover = engine if isinstance(engine, Engine) else select_engine(fs, engine, workers)
    excluder = Excluder(exclude, local_root)
    result = SyncResult(engine=mover.name)
    # The remote metadata (or the mirror's listing) is fetched while the local tree is scanned.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="tpi-sync-meta") as pool:
        fetched = pool.submit(sync_meta.read_all, mover, remote_root) if manifest is None else None
        listed = pool.submit(mover.list_files, remote_root) if mirror else None
        files, empty_dirs = scan_local(local_root, excluder, result.warnings, exclude_paths)
        records = fetched.result() if fetched is not None else {}
        listing = listed.result() if listed is not None else None
    for warning in result.warnings:
        log.warning("%s", warning)

    if manifest is not None:
        record = manifest.written
        if writer and writer != record.writer:
            record = manifest.written = sync_meta.Record(writer, dict(record.files), list(record.dirs))
        known = {relpath: entry[:2] for relpath, entry in manifest.entries.items()}
    else:
        key = sync_meta.writer_key(writer or CLIENT_WRITER)
        record = records.get(key) or sync_meta.Record(writer or CLIENT_WRITER)
        merged, _ = sync_meta.merge(records)
        known = {relpath: entry[:2] for relpath, entry in merged.items()}
    if listing is not None:  # in mirror mode the listing is the truth about existence
        known = {relpath: entry for relpath, entry in known.items() if relpath in listing}

    unsure = manifest.unsure if manifest is not None else set()
    young = time.time_ns() - int(settle * 1e9)
    restless: list[str] = []  # young files taken on their second round
    for relpath, local in sorted(files.items()):
        if known.get(relpath) == [local.size, local.mtime_ns]:
            result.skipped += 1
            continue
        synced_whole = relpath in known and relpath not in unsure
        if torn is not None and synced_whole and torn[0] < local.mtime_ns < torn[1]:
            result.held.append(relpath)
            continue
        if manifest is not None and local.mtime_ns > young:
            if defer and relpath not in manifest.deferred:
                result.deferred.append(relpath)
                continue
            restless.append(relpath)
        result.files.append(relpath)
    if restless and not dry_run:
        _let_rest(files, restless, min(settle, REST_WAIT))
    jobs = [_job(relpath, files[relpath], remote_root) for relpath in result.files]
    result.bytes = sum(job.size for job in jobs)
    doomed = []
    if listing is not None:
        doomed = sorted(
            relpath for relpath in listing
            if relpath not in files and not excluder.excluded_with_parents(relpath)
        )  # fmt: skip
    result.deleted = doomed
    dirs_changed = sorted(empty_dirs) != sorted(record.dirs)
    if dry_run:
        return result

    by_path = {job.relpath: files[job.relpath] for job in jobs}
    changed: set[str] = set()  # sent while being written: the remote copy may be torn

    def on_done(job: Transfer) -> None:
        local = by_path[job.relpath]
        record.files[job.relpath] = [local.size, local.mtime_ns, local.mode, time.time_ns()]
        if manifest is None:  # a client upload: no round to resend in, nothing to record
            return
        if _changed_since(local):
            changed.add(job.relpath)
        else:
            changed.discard(job.relpath)
            manifest.entries[job.relpath] = [local.size, local.mtime_ns]

    def checkpoint() -> None:
        if manifest is not None:
            manifest.save()
        mover.write(sync_meta.record_path(remote_root, record.writer), record.to_bytes())

    if manifest is not None:
        manifest.deferred = set(result.deferred)
    run = _Run(jobs, progress, on_done, checkpoint, _unreadable)
    if jobs:
        run.run(mover.put, jobs)
    for _ in range(RESENDS if manifest is not None else 0):
        again = sorted(changed - run.skipped.keys())
        if not again:
            break
        _let_rest(by_path, again, REST_WAIT)
        retry = [_job(relpath, by_path[relpath], remote_root) for relpath in again]
        resend = _Run(retry, None, on_done, checkpoint, _unreadable)
        resend.run(mover.put, retry)
        run.skipped.update(resend.skipped)
    unsure.difference_update(result.files)
    unsure.update(changed)
    for relpath, why in sorted(run.skipped.items()):
        result.files.remove(relpath)
        result.warnings.append(f"skipped {relpath}: {why}")
        log.warning("%s", result.warnings[-1])
    for directory in empty_dirs:
        mover.makedirs(f"{remote_root}/{directory}")
    if doomed:
        mover.delete([f"{remote_root}/{relpath}" for relpath in doomed])
        for relpath in doomed:
            record.files.pop(relpath, None)
            if manifest is not None:
                manifest.forget(relpath)
    if dirs_changed:
        record.dirs = sorted(empty_dirs)
    if jobs or doomed or dirs_changed:
        checkpoint()
    result.dirs = sorted(empty_dirs)
    result.bytes = sum(by_path[relpath].size for relpath in result.files)
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
    engine: str | Engine | None = None,
) -> SyncResult:
    """Fetch remote files below `remote_root/subdir` into `local_root/subdir`.

    A local file of the same size and recorded mtime (or, without metadata, no older than the
    remote object) is left alone; local files are never deleted. Modes, mtimes and empty
    directories come from the writers' metadata records. Excludes match paths relative to the
    roots.
    """
    remote_root = remote_root.rstrip("/")
    local_root = os.fspath(local_root)
    mover = engine if isinstance(engine, Engine) else select_engine(fs, engine, workers)
    excluder = Excluder(exclude)
    subdir = subdir.strip("/") if subdir not in ("", ".") else ""
    base = f"{remote_root}/{subdir}" if subdir else remote_root
    result = SyncResult(engine=mover.name)
    merged, dirs = sync_meta.merge(sync_meta.read_all(mover, remote_root))
    jobs: list[Transfer] = []
    listing = mover.list_files(base)
    if not listing and subdir and (single := mover.stat(base)) is not None:
        listing = {"": single}  # subdir names a file
    for inner, (size, mtime) in sorted(listing.items()):
        relpath = "/".join(part for part in (subdir, inner) if part)
        if excluder.excluded_with_parents(relpath):
            continue
        entry = merged.get(relpath)
        if entry is not None and entry[0] != size:
            entry = None  # the object changed behind the record's back
        target = os.path.join(local_root, *relpath.split("/"))
        try:
            current = os.stat(target)
        except (FileNotFoundError, NotADirectoryError):
            pass
        else:
            if current.st_size == size and (
                (entry is not None and current.st_mtime_ns == entry[1])
                or (entry is None and mtime is not None and current.st_mtime >= mtime - 1e-6)
            ):
                result.skipped += 1
                continue
        result.files.append(relpath)
        result.bytes += size
        mode = entry[2] if entry is not None else None
        mtime_ns = entry[1] if entry is not None else (int(mtime * 1e9) if mtime is not None else None)
        jobs.append(Transfer(relpath, f"{base}/{inner}" if inner else base, target, size, mode, mtime_ns))
    prefix = f"{subdir}/" if subdir else ""
    wanted_dirs = sorted(
        directory for directory in dirs
        if directory.startswith(prefix) and not excluder.excluded_with_parents(directory)
        and not excluder.excluded(directory, is_dir=True)
    )  # fmt: skip
    result.dirs = wanted_dirs
    if dry_run:
        return result
    run = _Run(jobs, progress, lambda job: None, lambda: None, _any_failure)
    run.run(mover.get, jobs)
    for directory in wanted_dirs:
        with contextlib.suppress(FileExistsError):  # a local file of that name is the user's: kept
            os.makedirs(os.path.join(local_root, *directory.split("/")), exist_ok=True)
    if run.skipped:
        first = min(run.skipped)
        more = f" (and {len(run.skipped) - 1} more files)" if len(run.skipped) > 1 else ""
        raise SyncError(f"cannot download {run.skipped[first]}{more}")
    return result


def local_manifest(
    root: str | os.PathLike[str], exclude: Iterable[str] = (), path: str | None = None
) -> Manifest:
    """A manifest saying the remote holds exactly what root holds now (after a full pull)."""
    manifest = Manifest(path)
    manifest.entries = {}
    files, empty_dirs = scan_local(root, Excluder(exclude, root))
    for relpath, local in files.items():
        manifest.record(relpath, local)
    manifest.written.dirs = sorted(empty_dirs)
    return manifest
