"""Rank claiming for machines of a scaling group, which do not know their rank.

A machine started with `--rank auto` claims the lowest rank that has no
`reports/<rank>/status.json` and no live boot, by creating `reports/<rank>/<boot>/claim`
(content: its machine id, then the claim time) with a conditional create: S3's
`If-None-Match: *` (s3fs `pipe_file(mode="create")`) or `open(path, "x")` on a local disk.
Two machines racing for the same boot of the same rank: exactly one create succeeds, the other
moves on to the next rank. S3 answers a conditional write that races another with `409
ConditionalRequestConflict`: it is retried. A `412` can answer a write of our own that the SDK
retried after a lost response: reading the claim's owner back tells it from a lost race. The boot number is one more than the rank's highest boot, so a
machine respawned after a spot interruption takes the next boot of the rank whose machine died.

A boot is live while its heartbeat (or, before the first heartbeat, its claim) is younger than
`stale_after` seconds (about three heartbeat intervals). Only the newest boot of a rank counts.

No IPython or Jupyter imports here: this runs on bare machines.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from . import layout
from .sync import is_local

CLAIM = "claim"
STALE_HEARTBEATS = 3  # a boot is dead after this many missed heartbeats
CONFLICT_RETRIES = 6  # 409 ConditionalRequestConflict: another conditional write was in flight
CONFLICT_BACKOFF = 0.05  # seconds, doubled per retry, with jitter


def claim_key(rank: int, boot: int) -> str:
    return f"{layout.boot_dir(rank, boot)}/{CLAIM}"


@dataclass(frozen=True)
class Claim:
    rank: int
    boot: int


@dataclass
class RankView:
    """What the remote says about one rank."""

    done: bool = False
    boots: dict[int, set[str]] | None = None  # boot -> names of the files below it

    @property
    def latest(self) -> int | None:
        return max(self.boots) if self.boots else None

    @property
    def next_boot(self) -> int:
        latest = self.latest
        return 0 if latest is None else latest + 1


def _conflict(error: OSError) -> bool:
    """S3's 409 ConditionalRequestConflict, as s3fs raises it (the ClientError is the cause)."""
    response = getattr(error.__cause__, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return (
        response.get("Error", {}).get("Code") == "ConditionalRequestConflict"
        or status == 409
        or (error.errno == errno.EBUSY and "conditional" in str(error).lower())
    )


def _written_by_us(fs: Any, path: str, data: bytes) -> bool:
    """Whether the object at path is our own write: its first line (the writer) is ours."""
    try:
        found = bytes(fs.cat_file(path))
    except FileNotFoundError:
        return False
    return found.split(b"\n", 1)[0] == data.split(b"\n", 1)[0]


def create_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """Create path with data (its first line names the writer) unless it exists; True when ours.

    Atomic on a local disk (O_EXCL) and on S3 (conditional put). Other fsspec filesystems get
    their own `mode="create"`, atomic where they implement it.
    """
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return True
    for attempt in range(CONFLICT_RETRIES):
        try:
            fs.pipe_file(path, data, mode="create")
            return True
        except FileExistsError:  # 412: another machine's claim, or our own retried write
            return _written_by_us(fs, path, data)
        except OSError as error:
            if not _conflict(error) or attempt == CONFLICT_RETRIES - 1:
                raise
            time.sleep(CONFLICT_BACKOFF * 2**attempt * (1 + random.random()))
    return False  # not reached: the last attempt returns or raises


def _listing(fs: Any, root: str) -> list[tuple[layout.ReportKey, str]]:
    """Every report key under `reports/` with its path, read fresh (no listing cache)."""
    reports = layout.join(root, layout.REPORTS)
    with contextlib.suppress(AttributeError):
        fs.invalidate_cache()  # other machines write here: no cached listing may answer
    try:
        found = fs.find(reports)
    except FileNotFoundError:
        return []
    return layout.parse_reports(root, found)


def survey(fs: Any, root: str, world_size: int) -> dict[int, RankView]:
    views = {rank: RankView(boots={}) for rank in range(world_size)}
    for key, _ in _listing(fs, root):
        view = views.get(key.rank)
        if view is None:
            continue
        if key.boot is None and key.name == layout.STATUS:
            view.done = True
        elif key.boot is not None:
            assert view.boots is not None
            view.boots.setdefault(key.boot, set()).add(key.name)
    return views


def _stamp_of(fs: Any, root: str, key: str, line: int) -> float | None:
    try:
        text = fs.cat_file(layout.join(root, key)).decode("utf-8", "replace").splitlines()
        return layout.parse_timestamp(text[line].strip())
    except (FileNotFoundError, IndexError, ValueError):
        return None


def last_sign_of_life(fs: Any, root: str, rank: int, boot: int, names: set[str]) -> float | None:
    """When the boot last showed it was alive: its heartbeat, else its claim time."""
    if "heartbeat" in names:
        stamp = _stamp_of(fs, root, layout.heartbeat(rank, boot), 0)
        if stamp is not None:
            return stamp
    if CLAIM in names:
        return _stamp_of(fs, root, claim_key(rank, boot), 1)
    return None


def is_live(fs: Any, root: str, rank: int, view: RankView, stale_after: float, now: float) -> bool:
    latest = view.latest
    if latest is None:
        return False
    assert view.boots is not None
    stamp = last_sign_of_life(fs, root, rank, latest, view.boots[latest])
    return stamp is not None and now - stamp < stale_after


def try_claim(fs: Any, root: str, world_size: int, owner: str, stale_after: float) -> Claim | bool | None:
    """One pass: a Claim, None when every rank has reported, False when nothing is free now."""
    views = survey(fs, root, world_size)
    if all(view.done for view in views.values()):
        return None
    for rank in range(world_size):
        view = views[rank]
        if view.done or is_live(fs, root, rank, view, stale_after, time.time()):
            continue
        boot = view.next_boot
        content = f"{owner}\n{layout.timestamp()}\n".encode()
        if create_exclusive(fs, layout.join(root, claim_key(rank, boot)), content):
            return Claim(rank, boot)
    return False


def claim_rank(
    fs: Any,
    root: str,
    world_size: int,
    owner: str,
    stale_after: float,
    *,
    give_up_at: float | None = None,
    poll: float | None = None,
) -> Claim | None:
    """Claim the lowest free rank, waiting while every unreported rank is live.

    Returns None when every rank has reported (nothing left for this machine) or when
    `give_up_at` (epoch seconds) passes without a free rank.
    """
    poll = poll if poll is not None else max(0.2, stale_after / STALE_HEARTBEATS / 2)
    while True:
        result = try_claim(fs, root, world_size, owner, stale_after)
        if result is None or isinstance(result, Claim):
            return result
        if give_up_at is not None and time.time() > give_up_at:
            return None
        time.sleep(poll)


def read_claims(fs: Any, root: str, cache: dict[str, str] | None = None) -> dict[tuple[int, int], str]:
    """(rank, boot) -> the machine id that claimed it; claims never change, so `cache` keeps them."""
    cache = {} if cache is None else cache
    claims: dict[tuple[int, int], str] = {}
    for key, path in _listing(fs, root):
        if key.boot is None or key.name != CLAIM:
            continue
        relative = claim_key(key.rank, key.boot)
        if relative not in cache:
            with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
                cache[relative] = fs.cat_file(path).decode("utf-8").split("\n", 1)[0].strip()
        if relative in cache:
            claims[(key.rank, key.boot)] = cache[relative]
    return claims
