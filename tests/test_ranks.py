"""Rank claiming by identical machines: a local directory (O_EXCL) and S3 on moto (If-None-Match)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout, ranks
from tpi_jupyter.sync import filesystem

from .aws_moto import moto_endpoint  # noqa: F401 - fixture


@pytest.fixture(params=["local", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    if request.param == "local":
        yield filesystem(str(tmp_path / "remote"))
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    import boto3
    import s3fs

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
    s3.create_bucket(Bucket="ranks-test")
    fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url=endpoint, skip_instance_cache=True)
    yield fs, "ranks-test/task"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()


def put(fs: Any, root: str, key: str, text: str) -> None:
    path = layout.join(root, key)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)  # a no-op on S3
    fs.pipe_file(path, text.encode())


def test_conditional_create_is_exclusive(remote: tuple[Any, str]) -> None:
    fs, root = remote
    path = layout.join(root, ranks.claim_key(0, 0))
    assert ranks.create_exclusive(fs, path, b"first") is True
    assert ranks.create_exclusive(fs, path, b"second") is False
    assert fs.cat_file(path) == b"first"


def test_racing_machines_get_distinct_ranks(remote: tuple[Any, str]) -> None:
    fs, root = remote
    claims: dict[str, ranks.Claim | None] = {}
    barrier = threading.Barrier(4)

    def machine(name: str) -> None:
        barrier.wait()
        claims[name] = ranks.claim_rank(
            fs, root, 3, name, stale_after=30, give_up_at=time.time() + 1, poll=0.1
        )

    threads = [threading.Thread(target=machine, args=(f"i-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = sorted((c.rank, c.boot) for c in claims.values() if c is not None)
    assert got == [(0, 0), (1, 0), (2, 0)]  # the fourth machine found nothing free and gave up
    owners = ranks.read_claims(fs, root)
    assert sorted(owners) == [(0, 0), (1, 0), (2, 0)]
    assert {owners[(c.rank, c.boot)] for c in claims.values() if c} == {n for n, c in claims.items() if c}


def test_dead_boot_is_taken_over_with_the_next_boot(remote: tuple[Any, str]) -> None:
    fs, root = remote
    old = layout.timestamp(time.time() - 120)
    put(fs, root, ranks.claim_key(0, 0), f"i-dead\n{old}\n")
    put(fs, root, layout.heartbeat(0, 0), old)  # stale: the machine died
    put(fs, root, ranks.claim_key(1, 0), f"i-alive\n{layout.timestamp()}\n")
    put(fs, root, layout.heartbeat(1, 0), layout.timestamp())  # fresh: alive
    assert ranks.claim_rank(fs, root, 2, "i-new", stale_after=10, give_up_at=time.time()) == ranks.Claim(0, 1)
    # Boot 1 of rank 0 is now live (its claim is fresh): nothing is free for another machine.
    assert ranks.try_claim(fs, root, 2, "i-other", stale_after=10) is False


def test_reported_ranks_are_never_claimed_and_all_reported_means_none(remote: tuple[Any, str]) -> None:
    fs, root = remote
    put(fs, root, layout.status(0), '{"result": "success"}')
    assert ranks.try_claim(fs, root, 2, "i-a", stale_after=10) == ranks.Claim(1, 0)
    put(fs, root, layout.status(1), '{"result": "failure"}')
    assert ranks.claim_rank(fs, root, 2, "i-b", stale_after=10) is None


# ---------------------------------------------------------------- S3's conditional-write answers


class FaultyS3:
    """The moto-backed s3fs, with faults injected into `pipe_file` only (everything else is real)."""

    def __init__(self, fs: Any, faults: list[str]):
        self.fs, self.faults, self.puts = fs, faults, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def pipe_file(self, path: str, data: bytes, **options: Any) -> None:
        self.puts += 1
        fault = self.faults.pop(0) if self.faults else ""
        if fault == "conflict":  # 409: another conditional write to this key was in flight
            from botocore.exceptions import ClientError
            from s3fs.errors import translate_boto_error

            raise translate_boto_error(ClientError(
                {"Error": {"Code": "ConditionalRequestConflict", "Message": "in flight"},
                 "ResponseMetadata": {"HTTPStatusCode": 409}}, "PutObject"))  # fmt: skip
        self.fs.pipe_file(path, data, **options)
        if fault == "lost-response":  # the put succeeded, its answer was lost: the SDK puts again
            self.fs.pipe_file(path, data, **options)  # moto answers this retry with a real 412


@pytest.fixture
def s3_remote(moto_endpoint: str) -> Iterator[tuple[Any, str]]:  # noqa: F811 - the imported fixture
    import boto3
    import s3fs

    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
    s3.create_bucket(Bucket="ranks-faults")
    yield (
        s3fs.S3FileSystem(key="k", secret="s", endpoint_url=moto_endpoint, skip_instance_cache=True),
        "ranks-faults/task",
    )
    urllib.request.urlopen(urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")).read()


def test_conflict_409_is_retried_until_the_claim_lands(s3_remote: tuple[Any, str]) -> None:
    fs, root = s3_remote
    faulty = FaultyS3(fs, ["conflict", "conflict"])
    assert ranks.claim_rank(faulty, root, 2, "i-a", stale_after=10, give_up_at=time.time()) == ranks.Claim(
        0, 0
    )
    assert faulty.puts == 3
    assert ranks.read_claims(fs, root) == {(0, 0): "i-a"}


def test_412_answering_our_own_retried_write_is_our_claim(s3_remote: tuple[Any, str]) -> None:
    fs, root = s3_remote
    faulty = FaultyS3(fs, ["lost-response"])
    # Without reading the owner back, the machine would think it lost rank 0 and take rank 1.
    assert ranks.claim_rank(faulty, root, 2, "i-a", stale_after=10, give_up_at=time.time()) == ranks.Claim(
        0, 0
    )
    assert ranks.read_claims(fs, root) == {(0, 0): "i-a"}
    # Another machine's 412 is still a lost race.
    path = layout.join(root, ranks.claim_key(0, 0))
    assert ranks.create_exclusive(fs, path, f"i-b\n{layout.timestamp()}\n".encode()) is False


def test_other_s3_errors_are_not_retried(s3_remote: tuple[Any, str]) -> None:
    fs, root = s3_remote

    class Refusing(FaultyS3):
        def pipe_file(self, path: str, data: bytes, **options: Any) -> None:
            self.puts += 1
            raise PermissionError("AccessDenied")

    refusing = Refusing(fs, [])
    with pytest.raises(PermissionError):
        ranks.create_exclusive(refusing, layout.join(root, ranks.claim_key(0, 0)), b"i-a\n")
    assert refusing.puts == 1
