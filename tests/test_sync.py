"""The workdir syncer against a local directory, memory, S3 (moto; s3fs and obstore engines),
GCS (fake-gcs-server) and Azure Blob (Azurite): excludes, incremental, faithful round trips.

Correctness only: speed is measured by benchmarks/sync_bench.py, never asserted here.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tests import emulators
from tpi_jupyter import sync, sync_engines, sync_meta
from tpi_jupyter.sync import Manifest, Progress, download, local_manifest, upload
from tpi_jupyter.sync_engines import Engine, FsspecEngine, Transfer, select_engine

BACKENDS = ["local", "memory", "s3", "s3-obstore", "gcs", "azure"]


@dataclass
class Remote:
    fs: fsspec.AbstractFileSystem
    root: str  # the synced prefix, like <remote>/data
    engine: str | None = None

    def names(self, root: str | None = None) -> set[str]:
        """Files below the prefix as the filesystem itself lists them."""
        base = (root or self.root).rstrip("/")
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return set()
        return {str(path)[len(base) + 1 :] for path in found if str(path).startswith(base + "/")}

    def cat(self, relpath: str) -> bytes:
        return bytes(self.fs.cat_file(f"{self.root}/{relpath}"))


# ---------------------------------------------------------------- emulators (session-scoped)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    yield from emulators.moto_server()


@pytest.fixture(scope="session")
def gcs_url() -> Iterator[str]:
    yield from emulators.fake_gcs_server()


@pytest.fixture(scope="session")
def azurite_connection() -> Iterator[str]:
    yield from emulators.azurite()


@pytest.fixture(scope="session")
def s3fs_instance(moto_url: str) -> Any:
    s3fs = emulators.require("s3fs")
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=moto_url,
                           skip_instance_cache=True, use_listings_cache=False)  # fmt: skip
    fs.mkdir("tpi-test")
    return fs


@pytest.fixture(scope="session")
def gcsfs_instance(gcs_url: str) -> Any:
    gcsfs = emulators.require("gcsfs")
    fs = gcsfs.GCSFileSystem(endpoint_url=gcs_url, token="anon", project="test",
                             skip_instance_cache=True, use_listings_cache=False)  # fmt: skip
    fs.mkdir("tpi-test")
    return fs


@pytest.fixture(scope="session")
def adlfs_instance(azurite_connection: str) -> Any:
    adlfs = emulators.require("adlfs")
    fs = adlfs.AzureBlobFileSystem(connection_string=azurite_connection, skip_instance_cache=True)
    fs.mkdir("tpi-test")
    return fs


@pytest.fixture(params=BACKENDS)
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Remote:
    unique = uuid.uuid4().hex[:10]
    kind = request.param
    if kind == "local":
        (tmp_path / "remote").mkdir()
        return Remote(fsspec.filesystem("file"), str(tmp_path / "remote" / "data"))
    if kind == "memory":
        return Remote(fsspec.filesystem("memory"), f"/t-{unique}/data")
    if kind in ("s3", "s3-obstore"):
        emulators.require("obstore")
        fs = request.getfixturevalue("s3fs_instance")
        return Remote(fs, f"tpi-test/t-{unique}/data", "obstore" if kind == "s3-obstore" else "fsspec")
    if kind == "gcs":
        return Remote(request.getfixturevalue("gcsfs_instance"), f"tpi-test/t-{unique}/data")
    return Remote(request.getfixturevalue("adlfs_instance"), f"tpi-test/t-{unique}/data")


def up(local: Path, remote: Remote, **options: Any) -> sync.SyncResult:
    return upload(local, remote.fs, remote.root, engine=remote.engine, **options)


def down(remote: Remote, local: Path, **options: Any) -> sync.SyncResult:
    return download(remote.fs, remote.root, local, engine=remote.engine, **options)


# ---------------------------------------------------------------- trees


def write(root: Path, relpath: str, data: bytes | str, mode: int | None = None) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)
    return path


def faithful_tree(root: Path) -> None:
    write(root, "train.py", "print('hi')\n")
    write(root, "run.sh", "#!/bin/sh\necho run\n", 0o755)
    write(root, "empty.txt", b"")
    write(root, "data/blob.bin", bytes(range(256)) * 300)
    write(root, "dir with spaces/ünïcødé ✓.txt", "unicode")
    write(root, "a/b/c/d/e/f/g/h/deep.txt", "deep")
    (root / "empty_dir").mkdir()
    (root / "nested/empty").mkdir(parents=True)


def local_files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def empty_dirs(root: Path) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_dir() and not any(path.iterdir())
    }


# ---------------------------------------------------------------- round trips (point 4)


def test_round_trip_is_faithful(remote: Remote, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    faithful_tree(source)
    result = up(source, remote)
    assert sorted(result.files) == sorted(local_files(source))
    assert remote.names() == set(local_files(source))  # no temp files or metadata in the prefix
    got = down(remote, target)
    assert sorted(got.files) == sorted(local_files(source))
    assert local_files(target) == local_files(source)
    assert empty_dirs(target) == {"empty_dir", "nested/empty"}
    assert os.stat(target / "run.sh").st_mode & 0o777 == 0o755
    assert not os.stat(target / "train.py").st_mode & stat.S_IXUSR
    assert os.stat(target / "train.py").st_mtime_ns == os.stat(source / "train.py").st_mtime_ns
    again = down(remote, target)  # nothing changed: nothing moves
    assert again.files == [] and again.skipped == len(local_files(source))


def test_round_trip_large_file_in_parts(remote: Remote, tmp_path: Path) -> None:
    """Above LARGE_FILE: obstore moves parts, the others their own streaming; all must be exact."""
    source, target = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(1024 * 1024) * 40 + b"tail"  # > LARGE_FILE: multipart up, ranged parts down
    write(source, "big.bin", data)
    up(source, remote)
    down(remote, target)
    assert (target / "big.bin").read_bytes() == data


def test_symlinks_outside_are_skipped_and_reported_once(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    write(source, "real.txt", "real")
    write(tmp_path, "secret.txt", "outside")
    (source / "inside").symlink_to(source / "real.txt")
    (source / "outside").symlink_to(tmp_path / "secret.txt")
    (source / "outdir").symlink_to(tmp_path)
    result = up(source, remote)
    assert remote.names() == {"real.txt", "inside"}
    assert remote.cat("inside") == b"real"
    assert sum(warning.startswith("skipped symlink outside ") for warning in result.warnings) == 1
    assert len(result.warnings) == 2  # `outside` and `outdir`, once each


# ---------------------------------------------------------------- excludes and dry run (point 2)


EXCLUDE_TREE = {
    "keep.py": "k", "top.pyc": "x", "pkg/mod.pyc": "x", "pkg/deep/er/mod.pyc": "x", "pkg/mod.py": "k",
    ".dvc/cache/ab/cdef": "x", ".dvc/config": "k", "logs/a.log": "x", "logs/keep.log": "k",
    "tmp/scratch.txt": "x", "notes.md": "k", "ignored-by-file.txt": "x",
}  # fmt: skip
EXCLUDES = ["*.pyc", ".dvc/cache", "*.log", "!keep.log", "- tmp/", "+ notes.md"]


def test_excludes_follow_gitignore_semantics(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for relpath, text in EXCLUDE_TREE.items():
        write(source, relpath, text)
    write(source, ".tpiignore", "ignored-by-file.txt\n.tpiignore\n")
    up(source, remote, exclude=EXCLUDES)
    kept = {relpath for relpath, text in EXCLUDE_TREE.items() if text == "k"}
    assert remote.names() == kept


def test_excluded_files_are_not_downloaded(remote: Remote, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    for relpath, text in EXCLUDE_TREE.items():
        write(source, relpath, text)
    up(source, remote)  # everything is on the remote
    down(remote, target, exclude=[*EXCLUDES, "ignored-by-file.txt"])
    assert set(local_files(target)) == {relpath for relpath, text in EXCLUDE_TREE.items() if text == "k"}


def test_dry_run_lists_what_would_move_and_moves_nothing(remote: Remote, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    faithful_tree(source)
    plan = up(source, remote, dry_run=True)
    assert sorted(plan.files) == sorted(local_files(source))
    assert plan.bytes == sum(len(data) for data in local_files(source).values())
    assert remote.names() == set()
    up(source, remote)
    write(source, "train.py", "print('changed')\n")
    assert up(source, remote, dry_run=True).files == ["train.py"]
    assert remote.cat("train.py") == b"print('hi')\n"
    plan = down(remote, target, dry_run=True)
    assert sorted(plan.files) == sorted(local_files(source))
    assert not target.exists()


# ---------------------------------------------------------------- incremental (point 3)


def test_incremental_upload_sends_only_changes(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for index in range(20):
        write(source, f"f{index:02d}.txt", f"v1 {index}")
    assert len(up(source, remote).files) == 20
    again = up(source, remote)  # no manifest: the writers' metadata records stand in for one
    assert again.files == [] and again.skipped == 20
    write(source, "f03.txt", "v2 changed")
    write(source, "new.txt", "new")
    assert sorted(up(source, remote).files) == ["f03.txt", "new.txt"]
    assert remote.cat("f03.txt") == b"v2 changed"


def test_no_change_sync_with_manifest_touches_no_remote(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for index in range(5):
        write(source, f"f{index}.txt", f"v1 {index}")
    manifest = Manifest(tmp_path / "manifest.json")
    up(source, remote, manifest=manifest)

    class Untouchable(Engine):
        name = "untouchable"

        def __getattribute__(self, name: str) -> Any:
            if name in ("list_files", "put", "get", "read", "write", "delete"):
                raise AssertionError(f"remote access: {name}")
            return super().__getattribute__(name)

    result = upload(source, remote.fs, remote.root, manifest=Manifest(tmp_path / "manifest.json"),
                    engine=Untouchable(remote.fs))  # fmt: skip
    assert result.files == [] and result.skipped == 5


def test_mirror_deletes_only_below_the_prefix(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    write(source, "a.txt", "a")
    write(source, "sub/b.txt", "b")
    write(source, "keep.pyc", "excluded on the remote stays")
    up(source, remote)
    sibling = Remote(remote.fs, remote.root + "2", remote.engine)  # `data2` next to `data`
    up(source, sibling)
    (source / "sub/b.txt").unlink()
    (source / "keep.pyc").unlink()
    not_mirror = up(source, remote, exclude=["*.pyc"])
    assert not_mirror.deleted == [] and "sub/b.txt" in remote.names()
    mirrored = up(source, remote, mirror=True, exclude=["*.pyc"])
    assert mirrored.deleted == ["sub/b.txt"]
    assert remote.names() == {"a.txt", "keep.pyc"}
    assert sibling.names() == {"a.txt", "sub/b.txt", "keep.pyc"}


def test_download_never_deletes_and_refreshes_changed_files(remote: Remote, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    write(source, "out/result.txt", "r1")
    write(source, "other.txt", "o")
    up(source, remote)
    write(target, "local-only.txt", "mine")
    got = down(remote, target, subdir="out")
    assert got.files == ["out/result.txt"]
    assert set(local_files(target)) == {"local-only.txt", "out/result.txt"}
    write(source, "out/result.txt", "r2 longer")
    up(source, remote)
    assert down(remote, target, subdir="out").files == ["out/result.txt"]
    assert (target / "out/result.txt").read_text() == "r2 longer"


def test_interrupted_upload_resumes_without_resending(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for index in range(10):
        write(source, f"f{index}.txt", f"content {index}")

    class Flaky(FsspecEngine):
        def put(self, jobs: list[Transfer], done: Any, skip: Any = None) -> None:
            real = select_engine(remote.fs, remote.engine)
            for job in jobs:
                if job.relpath == "f6.txt":
                    raise ConnectionError("network went away")
                real.put([job], done, skip)

        def list_files(self, root: str) -> dict[str, Any]:
            return select_engine(remote.fs, remote.engine).list_files(root)

        def write(self, path: str, data: bytes) -> None:
            select_engine(remote.fs, remote.engine).write(path, data)

    with pytest.raises(ConnectionError):
        upload(source, remote.fs, remote.root, engine=Flaky(remote.fs))
    assert remote.names() == {f"f{index}.txt" for index in range(6)}
    resumed = up(source, remote)
    assert resumed.files == ["f6.txt", "f7.txt", "f8.txt", "f9.txt"]


# ---------------------------------------------------------------- the agent's pushes (point 6)


def test_ranks_push_changes_without_clobbering_each_other(remote: Remote, tmp_path: Path) -> None:
    client, rank0, rank1, home = (tmp_path / name for name in ("client", "r0", "r1", "home"))
    write(client, "train.py", "train")
    up(client, remote)
    manifests = []
    for work in (rank0, rank1):
        down(remote, work)
        manifests.append(local_manifest(work, path=str(work.parent / f"{work.name}.json")))
    for work, manifest in zip((rank0, rank1), manifests, strict=True):
        assert up(work, remote, manifest=manifest).files == []  # nothing changed since the pull
    write(rank0, "out/r0.sh", "#!/bin/sh\n", 0o755)
    write(rank1, "out/r1.txt", "rank 1")
    (rank1 / "out/empty").mkdir(parents=True)
    assert up(rank0, remote, manifest=manifests[0]).files == ["out/r0.sh"]
    assert up(rank1, remote, manifest=manifests[1]).files == ["out/r1.txt"]
    write(rank0, "out/r0.sh", "#!/bin/sh\necho 2\n", 0o755)
    assert up(rank0, remote, manifest=manifests[0]).files == ["out/r0.sh"]
    records = sync_meta.read_all(select_engine(remote.fs, remote.engine), remote.root)
    assert len(records) == 3  # client + one per rank
    assert remote.names() == {"train.py", "out/r0.sh", "out/r1.txt"}
    got = down(remote, home, subdir="out")
    assert sorted(got.files) == ["out/r0.sh", "out/r1.txt"]
    assert os.stat(home / "out/r0.sh").st_mode & 0o777 == 0o755
    assert (home / "out/r0.sh").read_text() == "#!/bin/sh\necho 2\n"
    assert (home / "out/empty").is_dir()


def test_progress_reports_files_and_bytes(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for index in range(8):
        write(source, f"f{index}.bin", b"x" * (index + 1) * 100)
    seen: list[Progress] = []
    up(source, remote, progress=seen.append)
    assert seen[0].files_done == 0 and seen[0].files_total == 8
    assert seen[-1].files_done == 8 and seen[-1].bytes_done == seen[-1].bytes_total == 3600


# ---------------------------------------------------------------- pure units


def test_excluder_units() -> None:
    excluder = sync.Excluder(["*.pyc", ".dvc/cache", "!keep.pyc", "- build/", "+ build/keep"])
    assert excluder.excluded("a/b/c.pyc") and not excluder.excluded("a/keep.pyc")
    assert excluder.excluded(".dvc/cache", is_dir=True)
    assert excluder.excluded_with_parents(".dvc/cache/x/y")
    assert not excluder.excluded_with_parents(".dvc/config")
    assert excluder.excluded_with_parents("build/out.o")


def test_engine_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    s3fs = emulators.require("s3fs")
    emulators.require("obstore")
    monkeypatch.delenv("TPI_SYNC_ENGINE", raising=False)
    assert select_engine(fsspec.filesystem("file")).name == "local"
    assert select_engine(fsspec.filesystem("memory")).name == "fsspec"
    fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url="http://127.0.0.1:9", skip_instance_cache=True)
    assert select_engine(fs).name == "obstore"
    assert select_engine(fs, "fsspec").name == "fsspec"
    monkeypatch.setenv("TPI_SYNC_ENGINE", "fsspec")
    assert select_engine(fs).name == "fsspec"
    odd = s3fs.S3FileSystem(key="k", secret="s", endpoint_url="http://127.0.0.1:9", skip_instance_cache=True,
                            s3_additional_kwargs={"RequestPayer": "requester"})  # fmt: skip
    monkeypatch.delenv("TPI_SYNC_ENGINE")
    assert select_engine(odd).name == "fsspec"


def test_metadata_lives_outside_the_prefix() -> None:
    assert sync_meta.meta_dir("bucket/task/data") == "bucket/task/.tpi/sync/data"
    assert sync_meta.record_path("/r/data", "rank 0/x") == "/r/.tpi/sync/data/rank_0_x.json"
    assert sync_meta.Record.from_bytes(b"not json", "w").files == {}


# ---------------------------------------------------------------- issue 11: results


LONG_NAME = "é" * 126 + "xyz"  # 255 bytes in UTF-8, the most one path component may hold


def test_names_of_255_bytes_sync_both_ways(remote: Remote, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    write(source, f"out/{LONG_NAME}", "long")
    assert up(source, remote).files == [f"out/{LONG_NAME}"]
    assert down(remote, target).files == [f"out/{LONG_NAME}"]
    assert (target / "out" / LONG_NAME).read_text() == "long"


def test_temp_names_fit_the_name_limit() -> None:
    temp = os.path.basename(sync_engines.temp_path(f"/x/{LONG_NAME}"))
    assert len(temp.encode()) <= sync_engines.NAME_MAX and sync_engines.is_temp_name(temp)
    assert os.path.basename(sync_engines.temp_path("/x/a.txt")).startswith(".a.txt.tmp-")


def test_a_subdir_naming_a_file_downloads_that_file(remote: Remote, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    write(source, "metrics.json", '{"loss": 1}', 0o640)
    write(source, "other.txt", "not wanted")
    up(source, remote)
    assert down(remote, target, subdir="metrics.json").files == ["metrics.json"]
    assert set(local_files(target)) == {"metrics.json"}
    assert os.stat(target / "metrics.json").st_mode & 0o777 == 0o640
    assert down(remote, target, subdir="metrics.json").skipped == 1
    assert down(remote, target, subdir="missing").files == []


def test_a_file_removed_while_uploading_is_skipped_and_the_rest_goes(remote: Remote, tmp_path: Path) -> None:
    source = tmp_path / "src"
    for index in range(5):
        write(source, f"f{index}.txt", f"content {index}")

    def autosave(progress: Progress) -> None:
        if progress.files_done == 0:  # scanned, nothing sent yet: an editor swaps its file away
            (source / "f2.txt").unlink(missing_ok=True)

    result = up(source, remote, progress=autosave)
    assert result.warnings == ["skipped f2.txt: removed while uploading"]
    assert "f2.txt" not in result.files and result.bytes == 4 * len("content 0")
    assert remote.names() == {"f0.txt", "f1.txt", "f3.txt", "f4.txt"}
    write(source, "f2.txt", "back")
    assert up(source, remote).files == ["f2.txt"]  # not recorded as sent: sent once it exists


def test_special_files_and_symlink_loops_are_reported(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write(source, "a.txt", "a")
    os.mkfifo(source / "pipe")
    (source / "loop").symlink_to("loop")
    (source / "gone").symlink_to("nowhere")
    (source / "to-pipe").symlink_to("pipe")  # opening it would block the upload for ever
    warnings: list[str] = []
    files, _ = sync.scan_local(source, sync.Excluder(["gone"]), warnings)
    assert set(files) == {"a.txt"}
    assert sorted(warnings) == ["skipped pipe: a FIFO", "skipped symlink loop: a loop or a missing target",
                                "skipped symlink to-pipe -> a FIFO"]  # fmt: skip


UPLOAD_AS_NOBODY = """
import json, sys
import fsspec
from tpi_jupyter.sync import upload
result = upload(sys.argv[1], fsspec.filesystem("file"), sys.argv[2])
print(json.dumps([result.files, result.warnings]))
"""


def test_unreadable_files_and_directories_are_skipped(tmp_path: Path) -> None:
    """Root reads everything, so the upload runs as nobody (setpriv) over a world-readable tree."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the upload as another user")
    probe = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        "import fsspec",
    ]
    if subprocess.run(probe, capture_output=True, timeout=60).returncode != 0:  # a checkout in a 0700 dir
        pytest.skip("nobody cannot read this checkout's virtual environment (a parent directory is private)")
    base = Path(tempfile.mkdtemp(prefix="tpi-unreadable-"))
    try:
        os.chmod(base, 0o755)
        write(base, "src/a.txt", "a")
        write(base, "src/locked.txt", "secret", 0o000)
        (base / "src/closed").mkdir(mode=0o000)
        (base / "remote").mkdir(mode=0o777)
        os.chmod(base / "remote", 0o777)
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
             UPLOAD_AS_NOBODY, str(base / "src"), str(base / "remote" / "data")],
            capture_output=True, text=True, timeout=60, cwd=base,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        files, warnings = json.loads(result.stdout)
        assert files == ["a.txt"]
        assert sorted(warnings) == ["skipped closed/: cannot read it (Permission denied)",
                                    "skipped locked.txt: Permission denied"]  # fmt: skip
        assert sorted(os.listdir(base / "remote" / "data")) == ["a.txt"]
    finally:
        os.chmod(base / "src/closed", 0o755)
        shutil.rmtree(base)


def test_exclude_paths_leave_out_a_directory_and_links_into_it(tmp_path: Path) -> None:
    source = tmp_path / "src"
    write(source, "a.txt", "a")
    write(source, "own/tasks/t.json", "{}")
    (source / "link.json").symlink_to(source / "own/tasks/t.json")
    files, _ = sync.scan_local(source, sync.Excluder(), exclude_paths=[source / "own"])
    assert set(files) == {"a.txt"}
    warnings: list[str] = []
    files, _ = sync.scan_local(source / "own", sync.Excluder(), warnings, exclude_paths=[source])
    assert files == {} and len(warnings) == 1


def test_a_download_goes_past_a_blocked_file_then_names_it(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    (tmp_path / "remote").mkdir()
    remote = Remote(fsspec.filesystem("file"), str(tmp_path / "remote" / "data"))
    for name in ("a.txt", "b.txt", "c.txt"):
        write(source, f"out/{name}", name)
    up(source, remote)
    (target / "out" / "b.txt").mkdir(parents=True)  # a directory where a file must go
    with pytest.raises(sync.SyncError, match=r"^cannot download out/b.txt: Is a directory$"):
        down(remote, target, subdir="out")
    assert (target / "out" / "a.txt").read_text() == "a.txt" and (target / "out" / "c.txt").is_file()


# ---------------------------------------------------------------- issue 11: test gaps (item 21)


def test_two_writers_on_one_path_the_newest_wins(remote: Remote, tmp_path: Path) -> None:
    client, rank0, rank1, home = (tmp_path / name for name in ("client", "r0", "r1", "home"))
    write(client, "seed.txt", "seed")
    up(client, remote)
    manifests = []
    for work in (rank0, rank1):
        down(remote, work)
        manifests.append(local_manifest(work, path=str(work.parent / f"{work.name}.json")))
    write(rank0, "out/model.txt", "rank0 v1", 0o600)
    os.utime(rank0 / "out/model.txt", ns=(1_000_000_000, 1_000_000_000))
    up(rank0, remote, manifest=manifests[0])
    assert down(remote, home, subdir="out").files == ["out/model.txt"]
    write(rank1, "out/model.txt", "rank1 v2", 0o644)  # same size, later writer
    os.utime(rank1 / "out/model.txt", ns=(2_000_000_000, 2_000_000_000))
    up(rank1, remote, manifest=manifests[1])
    assert down(remote, home, subdir="out").files == ["out/model.txt"]
    assert (home / "out/model.txt").read_text() == "rank1 v2"
    assert os.stat(home / "out/model.txt").st_mtime_ns == 2_000_000_000
    assert os.stat(home / "out/model.txt").st_mode & 0o777 == 0o644
    write(rank0, "out/model.txt", "rank0 v3", 0o600)  # rank 0 writes again: now it is the newest
    os.utime(rank0 / "out/model.txt", ns=(3_000_000_000, 3_000_000_000))
    up(rank0, remote, manifest=manifests[0])
    assert down(remote, home, subdir="out").files == ["out/model.txt"]
    assert (home / "out/model.txt").read_text() == "rank0 v3"
    assert os.stat(home / "out/model.txt").st_mode & 0o777 == 0o600


@pytest.mark.parametrize("with_manifest", [False, True])
def test_upload_compares_mtime_as_well_as_size(tmp_path: Path, with_manifest: bool) -> None:
    source = tmp_path / "src"
    (tmp_path / "remote").mkdir()
    remote = Remote(fsspec.filesystem("file"), str(tmp_path / "remote" / "data"))
    manifest = Manifest(tmp_path / "manifest.json") if with_manifest else None
    write(source, "a.txt", "old!")
    os.utime(source / "a.txt", ns=(1_000_000_000, 1_000_000_000))
    assert up(source, remote, manifest=manifest).files == ["a.txt"]
    write(source, "a.txt", "new!")  # same size
    os.utime(source / "a.txt", ns=(1_000_000_000, 1_000_000_001))
    assert up(source, remote, manifest=manifest).files == ["a.txt"]
    assert remote.cat("a.txt") == b"new!"
    assert up(source, remote, manifest=manifest).files == []


def test_a_settling_push_leaves_a_file_written_just_now_for_the_next_round(tmp_path: Path) -> None:
    """A script that rewrites a file (`tee` truncates, then writes) must not have an empty file
    mirrored by a push that caught it in between: the push of a running script waits a round."""
    source = tmp_path / "src"
    (tmp_path / "remote").mkdir()
    remote = Remote(fsspec.filesystem("file"), str(tmp_path / "remote" / "data"))
    manifest = Manifest(tmp_path / "manifest.json")
    write(source, "old.txt", "settled")
    os.utime(source / "old.txt", ns=(1_000_000_000, 1_000_000_000))
    write(source, "epoch.txt", "")  # caught between the truncation and the write
    first = upload(str(source), remote.fs, remote.root, manifest=manifest, settle=60)
    assert first.files == ["old.txt"] and first.deferred == ["epoch.txt"]
    assert not remote.fs.exists(f"{remote.root}/epoch.txt")
    write(source, "epoch.txt", "7\n")  # still young next round: it goes anyway, once deferred
    second = upload(str(source), remote.fs, remote.root, manifest=manifest, settle=60)
    assert second.files == ["epoch.txt"] and second.deferred == []
    assert remote.cat("epoch.txt") == b"7\n"
    # the final push (no settle) takes whatever is there
    write(source, "epoch.txt", "8\n")
    assert upload(str(source), remote.fs, remote.root, manifest=manifest).files == ["epoch.txt"]


def test_the_last_push_after_a_kill_keeps_the_synced_copy_of_a_file_torn_by_it(tmp_path: Path) -> None:
    """The script was killed at t; a file last written within the window around t may be torn
    (emptied by `tee`, not yet rewritten): the remote keeps the copy synced before."""
    source = tmp_path / "src"
    (tmp_path / "remote").mkdir()
    remote = Remote(fsspec.filesystem("file"), str(tmp_path / "remote" / "data"))
    manifest = Manifest(tmp_path / "manifest.json")
    write(source, "epoch.txt", "41\n")
    write(source, "done.txt", "old")
    up(source, remote, manifest=manifest)
    killed = 50_000_000_000
    write(source, "epoch.txt", "")  # torn at the kill
    os.utime(source / "epoch.txt", ns=(killed - 1000, killed - 1000))
    write(source, "done.txt", "written long before the kill")
    os.utime(source / "done.txt", ns=(killed - 10**9, killed - 10**9))
    write(source, "trap.txt", "a trap's checkpoint, after the window")
    os.utime(source / "trap.txt", ns=(killed + 10**9, killed + 10**9))
    write(source, "new.txt", "never synced: it goes as it is")
    os.utime(source / "new.txt", ns=(killed, killed))
    result = upload(
        str(source), remote.fs, remote.root, manifest=manifest, torn=(killed - 10**8, killed + 10**8)
    )
    assert result.held == ["epoch.txt"] and sorted(result.files) == ["done.txt", "new.txt", "trap.txt"]
    assert remote.cat("epoch.txt") == b"41\n" and remote.cat("done.txt") == b"written long before the kill"


class Tearing(sync_engines.LocalEngine):
    """Sends a file caught between `tee`'s truncation and its write: the first `tears` puts
    empty the source, send it, then write it whole again (the write that lands after the read)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, tears: int) -> None:
        super().__init__(fs)
        self.tears = tears

    def put(
        self, jobs: list[Transfer], done: sync_engines.Done, skip: sync_engines.Skip | None = None
    ) -> None:
        for job in jobs:
            if not self.tears:
                super().put([job], done, skip)
                continue
            self.tears -= 1
            whole = Path(job.src).read_bytes()
            Path(job.src).write_bytes(b"")
            super().put([job], done, skip)
            Path(job.src).write_bytes(whole)


def local_remote(tmp_path: Path) -> Remote:
    (tmp_path / "remote").mkdir()
    return Remote(fsspec.filesystem("file"), str(tmp_path / "remote" / "data"))


def test_a_file_torn_as_it_was_sent_is_sent_again_in_the_same_round(tmp_path: Path) -> None:
    source, remote = tmp_path / "src", local_remote(tmp_path)
    manifest = Manifest(tmp_path / "manifest.json")
    write(source, "epoch.txt", "41\n")
    os.utime(source / "epoch.txt", ns=(1_000_000_000, 1_000_000_000))
    result = upload(str(source), remote.fs, remote.root, manifest=manifest, engine=Tearing(remote.fs, 1))
    assert result.files == ["epoch.txt"] and remote.cat("epoch.txt") == b"41\n"
    assert manifest.unchanged("epoch.txt", sync._restat(sync.LocalFile(str(source / "epoch.txt"), 0, 0, 0)))
    assert not manifest.unsure


def test_a_copy_torn_on_every_send_is_not_kept_by_the_last_push(tmp_path: Path) -> None:
    """Only a copy read whole is held at the kill: a torn one is replaced by what the file holds."""
    source, remote = tmp_path / "src", local_remote(tmp_path)
    manifest = Manifest(tmp_path / "manifest.json")
    write(source, "epoch.txt", "40\n")
    up(source, remote, manifest=manifest)
    write(source, "epoch.txt", "41\n")
    upload(
        str(source), remote.fs, remote.root, manifest=manifest, engine=Tearing(remote.fs, 1 + sync.RESENDS)
    )
    assert remote.cat("epoch.txt") == b"" and manifest.unsure == {"epoch.txt"}
    killed = os.stat(source / "epoch.txt").st_mtime_ns
    result = upload(
        str(source), remote.fs, remote.root, manifest=manifest, torn=(killed - 10**8, killed + 10**8)
    )
    assert result.held == [] and result.files == ["epoch.txt"] and remote.cat("epoch.txt") == b"41\n"
    assert not manifest.unsure


def test_settling_pushes_never_leave_a_rewritten_file_torn_on_the_remote(tmp_path: Path) -> None:
    """A script rewriting its epoch file as `echo N | tee` does (truncate, a pause, write) while
    the pushes of a running script go on: after every push the remote holds a whole epoch."""
    source, remote = tmp_path / "src", local_remote(tmp_path)
    manifest = Manifest(tmp_path / "manifest.json")
    write(source, "epoch.txt", "0\n")
    stop = threading.Event()

    def rewrite() -> None:
        for epoch in itertools.count(1):
            with open(source / "epoch.txt", "wb") as file:  # truncated here
                time.sleep(0.03)
                file.write(f"{epoch}\n".encode())
            if stop.wait(0.1):
                return

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen, sent, pause = [], 0, random.Random(18)
    try:
        for _ in range(40):
            sent += len(upload(str(source), remote.fs, remote.root, manifest=manifest, settle=0.2).files)
            seen.append(remote.cat("epoch.txt") if remote.fs.exists(f"{remote.root}/epoch.txt") else None)
            time.sleep(pause.uniform(0.0, 0.13))  # not in step with the writer
    finally:
        stop.set()
        writer.join()
    assert sent >= 15, "the rewritten file syncs every other round"
    assert b"" not in seen, f"a torn epoch file reached the remote: {seen}"


def test_a_file_changed_while_sent_is_not_recorded_as_synced(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("one")
    status = os.stat(path)
    scanned = sync.LocalFile(str(path), status.st_size, status.st_mtime_ns, status.st_mode)
    assert not sync._changed_since(scanned)
    path.write_text("three")
    assert sync._changed_since(scanned)
    path.unlink()
    assert sync._changed_since(scanned)
