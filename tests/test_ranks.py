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
