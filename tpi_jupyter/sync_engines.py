"""Transfer engines for `sync`: how bytes move between the local disk and one filesystem.

`sync.py` decides *what* moves; an engine moves it. Three engines:

- `LocalEngine` for a local directory remote: copies with `shutil.copyfile` (kernel copy).
- `ObstoreEngine` for S3 through `obstore` (Rust object_store): chosen automatically when the
  filesystem is s3fs and `obstore` is importable; it signs with the keys given to s3fs, or else
  with boto3's own credential chain (obstore's `Boto3CredentialProvider`), as s3fs does. It is several times
  faster than s3fs for many small objects and uploads/downloads large ones in concurrent parts.
- `FsspecEngine` for every other fsspec filesystem (memory, gcs, abfs, ...), and the fallback.

`TPI_SYNC_ENGINE=fsspec|obstore|auto` overrides the choice. Credentials are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import stat
import threading
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

WORKERS = 16
PART_SIZE = 16 * 1024 * 1024  # large files move in parts of this size
LARGE_FILE = 2 * PART_SIZE
LOCAL_WORKERS = 2  # more threads only contend for the GIL on small local copies
MEDIUM_FILE = 1024 * 1024
_NULL = contextlib.nullcontext()
TEMP_NAME = re.compile(r"^\..+\.tmp-[0-9a-f]{8}$")

T = TypeVar("T")


@dataclass
class Transfer:
    relpath: str
    src: str  # local path (put) or remote path (get)
    dst: str  # remote path (put) or local path (get)
    size: int
    mode: int | None = None  # permission bits to give a local target
    mtime_ns: int | None = None  # modification time to give a local target


Done = Callable[[Transfer], None]
# Told of a job that failed; True: give that file up and go on with the others.
Skip = Callable[[Transfer, Exception], bool]
NAME_MAX = 255  # bytes in one path component on the filesystems we write to
TEMP_KEEP = NAME_MAX - len(".") - len(".tmp-12345678")


class TransferError(Exception):
    """One file failed to move; the message names it."""

    def __init__(self, relpath: str, error: BaseException):
        self.relpath, self.error = relpath, error
        reason = (
            error.strerror
            if isinstance(error, OSError) and error.strerror
            else str(error) or type(error).__name__
        )
        # One line: obstore's messages go on with a blank line and a multi-line debug dump.
        super().__init__(f"{relpath}: {' '.join(reason.split(chr(10) * 2)[0].split())}")


def temp_path(target: str) -> str:
    """A sibling temp name; long names are cut (on a character boundary) to fit NAME_MAX."""
    directory, name = os.path.split(target)
    encoded = os.fsencode(name)
    if len(encoded) > TEMP_KEEP:
        name = encoded[:TEMP_KEEP].decode("utf-8", "ignore")
    return os.path.join(directory, f".{name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Write a local file so that readers see the old or the new content, never a half."""
    target = os.fspath(path)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    temp = temp_path(target)
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temp, mode)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def attempt(work: Callable[[Transfer], None], job: Transfer, done: Done, skip: Skip | None) -> None:
    """Run one job; a failure is offered to skip, else raised naming the file."""
    try:
        work(job)
    except Exception as error:
        if skip is not None and skip(job, error):
            return
        if isinstance(error, TransferError):
            raise
        raise TransferError(job.relpath, error) from error
    done(job)


def is_temp_name(name: str) -> bool:
    """A writer's file in flight (see `temp_path`): never synced, never reported."""
    return bool(TEMP_NAME.match(name))


def finish_local(temp: str, job: Transfer) -> None:
    """Give a downloaded/copied temp file its mode and mtime, then rename it into place."""
    if job.mode is not None:
        os.chmod(temp, stat.S_IMODE(job.mode))
    if job.mtime_ns is not None:
        os.utime(temp, ns=(job.mtime_ns, job.mtime_ns))
    os.replace(temp, job.dst)


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC


def copy_local(job: Transfer) -> None:
    """Copy a local file to a local target so that it appears whole or not at all.

    Raw descriptors and sendfile: for thousands of small files the per-file cost is what counts.
    """
    temp = temp_path(job.dst)
    source = os.open(job.src, os.O_RDONLY | _CLOEXEC)
    try:
        try:
            target = os.open(temp, _NEW_FILE, 0o666)  # the umask applies, as for any new file
        except FileNotFoundError:  # the target's directory is missing
            os.makedirs(os.path.dirname(job.dst), exist_ok=True)
            target = os.open(temp, _NEW_FILE, 0o666)
        try:
            offset = 0
            while sent := os.sendfile(target, source, offset, 1 << 30):
                offset += sent
            if job.mode is not None:
                os.fchmod(target, stat.S_IMODE(job.mode))
            if job.mtime_ns is not None:
                os.utime(target, ns=(job.mtime_ns, job.mtime_ns))
        finally:
            os.close(target)
        os.replace(temp, job.dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        os.close(source)


def run_chunked(jobs: list[Transfer], work: Callable[[Transfer], None], done: Done, workers: int,
                skip: Skip | None = None) -> None:  # fmt: skip
    """Run many small jobs on a few threads, each taking a slice (one future per file costs more
    than the copy). Every slice ends before the first failure is re-raised."""
    if len(jobs) < 64 or workers <= 1:
        for job in jobs:
            attempt(work, job, done, skip)
        return

    def one_slice(part: list[Transfer]) -> None:
        for job in part:
            attempt(work, job, done, skip)

    slices = [jobs[index :: workers * 4] for index in range(workers * 4)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one_slice, part) for part in slices]
    errors = [future.exception() for future in futures if future.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def run_pool(jobs: list[Transfer], work: Callable[[Transfer], None], done: Done, workers: int,
             skip: Skip | None = None) -> None:  # fmt: skip
    """Run jobs on a thread pool; every job ends before the first failure is re-raised."""
    if not jobs:
        return

    def one(job: Transfer) -> None:
        attempt(work, job, done, skip)

    if len(jobs) == 1 or workers <= 1:
        for job in jobs:
            one(job)
        return
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(one, job) for job in jobs]
    errors = [future.exception() for future in futures if future.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def mtime_of(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "last_modified_time"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


class Engine:
    """Moves files and small objects for one filesystem. Paths are the fsspec paths."""

    name = "base"

    def __init__(self, fs: fsspec.AbstractFileSystem, workers: int = WORKERS):
        self.fs, self.workers = fs, workers

    def list_files(self, root: str) -> dict[str, tuple[int, float | None]]:
        """Files below root (recursively): relpath -> (size, mtime seconds)."""
        raise NotImplementedError

    def put(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        """Upload jobs; a failed file is offered to skip (True: go on), else raised."""
        raise NotImplementedError

    def get(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        raise NotImplementedError

    def stat(self, path: str) -> tuple[int, float | None] | None:
        """(size, mtime seconds) of the file at path; None when it is not a file."""
        raise NotImplementedError

    def read(self, path: str) -> bytes | None:
        raise NotImplementedError

    def write(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, paths: list[str]) -> None:
        raise NotImplementedError

    def makedirs(self, path: str) -> None:
        """Directories exist only on local remotes; object stores record them in metadata."""


def _relative(path: str, root: str) -> str | None:
    path, root = path.rstrip("/"), root.rstrip("/")
    if not path.startswith(root + "/"):
        return None
    return path[len(root) + 1 :]


class LocalEngine(Engine):
    name = "local"

    def list_files(self, root: str) -> dict[str, tuple[int, float | None]]:
        found: dict[str, tuple[int, float | None]] = {}

        def walk(directory: str, prefix: str) -> None:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, prefix + entry.name + "/")
                elif entry.is_file(follow_symlinks=False) and not is_temp_name(entry.name):
                    info = entry.stat(follow_symlinks=False)
                    found[prefix + entry.name] = (info.st_size, info.st_mtime)

        walk(root, "")
        return found

    def put(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        # Large files are kernel copies (sendfile) and overlap well; small ones are syscall-bound.
        small = [job for job in jobs if job.size < LARGE_FILE]
        large = [job for job in jobs if job.size >= LARGE_FILE]
        run_pool(large, copy_local, done, min(self.workers, 4), skip)
        run_chunked(small, copy_local, done, LOCAL_WORKERS, skip)

    get = put

    def stat(self, path: str) -> tuple[int, float | None] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_size, info.st_mtime) if stat.S_ISREG(info.st_mode) else None

    def read(self, path: str) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        atomic_write_bytes(path, data)

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)


class FsspecEngine(Engine):
    name = "fsspec"

    def list_files(self, root: str) -> dict[str, tuple[int, float | None]]:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(root)
        try:
            entries = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        if not isinstance(entries, dict):  # adlfs answers [root] when root is a file
            return {}
        found: dict[str, tuple[int, float | None]] = {}
        for path, info in entries.items():
            if info.get("type") == "directory":
                continue
            relpath = _relative(str(path), root)
            if relpath is None or is_temp_name(relpath.rsplit("/", 1)[-1]):
                continue
            found[relpath] = (int(info.get("size") or 0), mtime_of(info))
        return found

    def put(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        run_pool(jobs, lambda job: self.fs.put_file(job.src, job.dst), done, self.workers, skip)

    def stat(self, path: str) -> tuple[int, float | None] | None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(path)
        try:
            info = self.fs.info(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if info.get("type") != "file":
            return None
        return int(info.get("size") or 0), mtime_of(info)

    def get(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        def fetch(job: Transfer) -> None:
            os.makedirs(os.path.dirname(job.dst), exist_ok=True)
            temp = temp_path(job.dst)
            try:
                self.fs.get_file(job.src, temp)
                finish_local(temp, job)
            finally:
                if os.path.exists(temp):
                    os.unlink(temp)

        run_pool(jobs, fetch, done, self.workers, skip)

    def read(self, path: str) -> bytes | None:
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)  # one put: atomic on object stores

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(path)


def _run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop in its own thread (a kernel's loop may be running)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tpi-sync") as pool:
        return pool.submit(asyncio.run, coroutine).result()


_STORES: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
BOTO3_CREDENTIALS = "tpi_credentials"  # a config marker: sign with boto3's credential chain


def _s3_store(bucket: str, config: dict[str, Any], client: dict[str, Any]) -> Any:
    from obstore.store import S3Store

    options = dict(config)
    provider = None
    if options.pop(BOTO3_CREDENTIALS, None):
        from obstore.auth.boto3 import Boto3CredentialProvider

        provider = Boto3CredentialProvider()
    return S3Store(bucket, config=options, client_options=client, credential_provider=provider)  # type: ignore[arg-type]


_STORES_LOCK = threading.Lock()


class ObstoreEngine(Engine):
    """S3 through obstore; paths are s3fs paths `bucket/key`."""

    name = "obstore"
    CONCURRENCY = 64  # small objects in flight
    HEAVY = 2  # files of MEDIUM_FILE or more in flight
    PARTS = 8  # parts in flight per large upload, and in all for downloads
    # memory bound: CONCURRENCY * MEDIUM_FILE + HEAVY * max(LARGE_FILE, PARTS * PART_SIZE)

    def __init__(self, fs: fsspec.AbstractFileSystem, config: dict[str, Any], workers: int = WORKERS):
        super().__init__(fs, workers)
        self._config = config  # never logged: may hold keys
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _store(self, path: str) -> tuple[Any, str]:

        bucket, _, key = path.strip("/").partition("/")
        with self._lock:
            if bucket not in self._stores:
                cache_key = (bucket, tuple(sorted((k, str(v)) for k, v in self._config.items())))
                with _STORES_LOCK:
                    if cache_key not in _STORES:  # one HTTP client per bucket and config, reused
                        client = {"allow_http": True, "pool_max_idle_per_host": "64"}
                        _STORES[cache_key] = _s3_store(bucket, self._config, client)
                    self._stores[bucket] = _STORES[cache_key]
            return self._stores[bucket], key

    def list_files(self, root: str) -> dict[str, tuple[int, float | None]]:
        import obstore

        store, prefix = self._store(root)
        found: dict[str, tuple[int, float | None]] = {}
        for chunk in obstore.list(store, prefix=prefix.rstrip("/") + "/", chunk_size=1000):
            for meta in chunk:
                relpath = _relative(meta["path"], prefix)
                if relpath is None or is_temp_name(relpath.rsplit("/", 1)[-1]):
                    continue
                found[relpath] = (int(meta["size"]), meta["last_modified"].timestamp())
        return found

    def put(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        import obstore

        async def main() -> None:
            files, heavy = asyncio.Semaphore(self.CONCURRENCY), asyncio.Semaphore(self.HEAVY)

            async def one(job: Transfer) -> None:
                store, key = self._store(job.dst)
                async with files:
                    if job.size < MEDIUM_FILE:
                        data = Path(job.src).read_bytes()
                        await obstore.put_async(store, key, data, use_multipart=False)
                    else:  # multipart above PART_SIZE: parts read as they go, committed at the end
                        os.close(os.open(job.src, os.O_RDONLY | _CLOEXEC))  # unreadable: an OSError naming it
                        async with heavy:
                            await obstore.put_async(store, key, Path(job.src), chunk_size=PART_SIZE,
                                                    max_concurrency=self.PARTS)  # fmt: skip

            await _gather(_attempt_async(one, job, done, skip) for job in jobs)

        if jobs:
            _run_async(main())

    def get(self, jobs: list[Transfer], done: Done, skip: Skip | None = None) -> None:
        import obstore

        async def main() -> None:
            files, heavy = asyncio.Semaphore(self.CONCURRENCY), asyncio.Semaphore(self.HEAVY)
            parts = asyncio.Semaphore(self.PARTS)

            async def one(job: Transfer) -> None:
                store, key = self._store(job.src)
                os.makedirs(os.path.dirname(job.dst), exist_ok=True)
                temp = temp_path(job.dst)
                try:
                    if job.size < LARGE_FILE:
                        async with files, heavy if job.size >= MEDIUM_FILE else _NULL:
                            result = await obstore.get_async(store, key)
                            data = await result.bytes_async()
                            with open(temp, "wb") as handle:
                                handle.write(memoryview(data))
                            del data
                    else:
                        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                        try:
                            os.ftruncate(fd, job.size)

                            async def part(start: int) -> None:
                                async with parts:
                                    end = min(start + PART_SIZE, job.size)
                                    chunk = await obstore.get_range_async(store, key, start=start, end=end)
                                    await asyncio.to_thread(os.pwrite, fd, memoryview(chunk), start)

                            await _gather(part(start) for start in range(0, job.size, PART_SIZE))
                        finally:
                            os.close(fd)
                    finish_local(temp, job)
                finally:
                    if os.path.exists(temp):
                        os.unlink(temp)

            await _gather(_attempt_async(one, job, done, skip) for job in jobs)

        if jobs:
            _run_async(main())

    def stat(self, path: str) -> tuple[int, float | None] | None:
        import obstore
        from obstore.exceptions import NotFoundError

        store, key = self._store(path)
        try:
            meta = obstore.head(store, key)
        except (NotFoundError, FileNotFoundError):
            return None
        return int(meta["size"]), meta["last_modified"].timestamp()

    def read(self, path: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        store, key = self._store(path)
        try:
            return bytes(obstore.get(store, key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None

    def write(self, path: str, data: bytes) -> None:
        import obstore

        store, key = self._store(path)
        obstore.put(store, key, data, use_multipart=False)

    def delete(self, paths: list[str]) -> None:
        import obstore

        by_bucket: dict[int, tuple[Any, list[str]]] = {}
        for path in paths:
            store, key = self._store(path)
            by_bucket.setdefault(id(store), (store, []))[1].append(key)
        for store, keys in by_bucket.values():
            for start in range(0, len(keys), 1000):
                obstore.delete(store, keys[start : start + 1000])


async def _attempt_async(work: Callable[[Transfer], Coroutine[Any, Any, None]], job: Transfer, done: Done,
                         skip: Skip | None) -> None:  # fmt: skip
    """`attempt` for coroutines."""
    try:
        await work(job)
    except Exception as error:
        if skip is not None and skip(job, error):
            return
        raise TransferError(job.relpath, error) from error
    done(job)


async def _gather(coroutines: Any) -> None:
    """Await all; re-raise the first failure once every task has ended (finished files count)."""
    results = await asyncio.gather(*coroutines, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


# ---------------------------------------------------------------- choosing


def obstore_config(fs: Any) -> dict[str, Any] | None:
    """obstore's S3 config equivalent to an s3fs instance, or None when it cannot be matched."""
    options = dict(getattr(fs, "storage_options", None) or {})
    if options.get("session") is not None or getattr(fs, "s3_additional_kwargs", None):
        return None  # custom sessions, SSE-KMS, requester-pays...: only s3fs knows them
    if getattr(fs, "version_aware", False):
        return None
    client_kwargs = dict(getattr(fs, "client_kwargs", None) or {})
    config: dict[str, Any] = {}
    endpoint = (
        getattr(fs, "endpoint_url", None)
        or client_kwargs.get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    if endpoint:
        config["endpoint"] = endpoint
        config["virtual_hosted_style_request"] = False
    region = (
        client_kwargs.get("region_name")
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
    )
    if region:
        config["region"] = region
    elif not endpoint:
        return None  # s3fs finds a bucket's region itself; obstore would need it given
    if getattr(fs, "anon", False):
        config["skip_signature"] = True
        return config
    key, secret, token = getattr(fs, "key", None), getattr(fs, "secret", None), getattr(fs, "token", None)
    if key and secret:
        config.update(access_key_id=key, secret_access_key=secret)
        if token:
            config["token"] = token
        return config
    if importlib.util.find_spec("boto3") is None:
        return None  # obstore's Boto3CredentialProvider needs boto3 (the `aws` extra)
    # Environment, profiles, SSO, instance roles: boto3's own chain, as s3fs's botocore sees it.
    config[BOTO3_CREDENTIALS] = "boto3"
    return config


def select_engine(fs: fsspec.AbstractFileSystem, engine: str | None = None, workers: int = WORKERS) -> Engine:
    """The fastest engine that reproduces fsspec's behaviour for this filesystem."""
    choice = (engine or os.environ.get("TPI_SYNC_ENGINE") or "auto").lower()
    if isinstance(fs, LocalFileSystem):
        return LocalEngine(fs, workers)
    if choice in ("auto", "obstore") and "s3" in (
        fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    ):
        try:
            import obstore  # noqa: F401
        except ImportError:
            config = None
        else:
            config = obstore_config(fs)
        if config is not None:
            return ObstoreEngine(fs, config, workers)
        if choice == "obstore":
            raise ValueError("engine: obstore cannot serve this filesystem; accepted: auto, fsspec")
    return FsspecEngine(fs, workers)
