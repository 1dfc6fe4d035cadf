"""Logs go up in chunks on object stores (moto S3): bytes uploaded grow with the log, and every
reader sees a (rank, boot) log as the concatenation of its chunks, with the cursor's shape kept."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout
from tpi_jupyter.agent import LogStream, Remote
from tpi_jupyter.task import LogTail, Task

from .aws_moto import moto_endpoint  # noqa: F401 - fixture

LINES, FLUSHES = 2000, 100


class CountingFs:
    """The real s3fs filesystem, counting the bytes every put sends."""

    def __init__(self, fs: Any):
        self.fs, self.bytes_put, self.puts = fs, 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def pipe_file(self, path: str, data: bytes, **options: Any) -> None:
        self.bytes_put += len(data)
        self.puts += 1
        self.fs.pipe_file(path, data, **options)


@pytest.fixture
def s3_task(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # noqa: F811
    import boto3
    import s3fs

    for name, value in (("AWS_ENDPOINT_URL", moto_endpoint), ("AWS_ACCESS_KEY_ID", "k"),
                        ("AWS_SECRET_ACCESS_KEY", "s"), ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="logs")
    yield "s3://logs/tpi-chunks"
    s3fs.S3FileSystem.clear_instance_cache()
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()


def write_log(url: str, tmp_path: Path) -> tuple[CountingFs, bytes]:
    remote = Remote(url)
    counting = CountingFs(remote.fs)
    remote.fs = counting
    stream = LogStream(remote, layout.log(0, 0), tmp_path / "log", interval=3600)
    for flush in range(FLUSHES):
        for line in range(LINES // FLUSHES):
            stream.line(f"epoch {flush} step {line}: loss 0.{flush:03d}{line:03d}")
        stream.flush()
    return counting, (tmp_path / "log").read_bytes()


def test_a_long_log_uploads_about_its_own_size(s3_task: str, tmp_path: Path) -> None:
    counting, whole = write_log(s3_task, tmp_path)
    assert len(whole.splitlines()) == LINES and counting.puts == FLUSHES
    assert counting.bytes_put < 1.3 * len(whole), (counting.bytes_put, len(whole))
    fs, root = counting.fs, Remote(s3_task).root
    chunks = sorted(fs.find(layout.join(root, layout.boot_dir(0, 0))))
    parsed = [layout.parse_report(layout.relative(root, path)) for path in chunks]
    assert [key.chunk for key in parsed if key] == list(range(FLUSHES))
    assert b"".join(fs.cat_file(path) for path in chunks) == whole


def test_readers_see_the_concatenation_and_the_cursor_keeps_its_shape(s3_task: str, tmp_path: Path) -> None:
    _, whole = write_log(s3_task, tmp_path)
    task = Task({"id": "tpi-chunks", "name": "chunks", "cloud": "aws", "remote": s3_task,
                 "spec": {"parallelism": 1}})  # fmt: skip
    _, _, parts = task._read_reports()
    task.log_parts = parts
    sizes = {key: sum(size for _, size in found) for key, found in parts.items()}
    assert sizes == {layout.log(0, 0): len(whole)}  # one log, one offset: the REST cursor's shape
    # Read the first half, then resume from the cursor in the middle of a chunk.
    half = {layout.log(0, 0): len(whole) // 2 + 7}
    first = LogTail(task)
    head = first.poll(half)
    rest = LogTail(task, first.offsets).poll(sizes)
    texts = [text for _, _, text in head + rest]
    expected = [line.split(b" ", 1)[1].decode() for line in whole.splitlines()]
    assert texts == expected
