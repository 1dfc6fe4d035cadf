"""Sync metadata on the remote: what object stores cannot hold themselves.

One JSON object per writer, so that ranks pushing into the same prefix never overwrite each
other's metadata (format in `tpi_jupyter.sync`'s docstring).
"""

from __future__ import annotations

import json
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .sync_engines import Engine

FORMAT = 1


def meta_dir(remote_root: str) -> str:
    """`<parent>/.tpi/sync/<name>` for remote_root `<parent>/<name>` (outside the synced prefix)."""
    root = remote_root.rstrip("/")
    parent, name = posixpath.split(root)
    if not parent or not name:
        return f"{root}/.tpi/sync/@root"
    return f"{parent}/.tpi/sync/{name}"


def writer_key(writer: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", writer) or "writer"


@dataclass
class Record:
    """The files one writer put below a prefix, with what the store cannot keep for them."""

    writer: str
    files: dict[str, list[int]] = field(default_factory=dict)  # relpath -> [size, mtime_ns, mode, stamp_ns]
    dirs: list[str] = field(default_factory=list)  # empty directories (relpaths)

    def to_bytes(self) -> bytes:
        body = {"format": FORMAT, "writer": self.writer, "updated": time.time(),
                "files": self.files, "dirs": sorted(self.dirs)}  # fmt: skip
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, writer: str = "") -> Record:
        try:
            body: Any = json.loads(data)
            files = body.get("files", {})
            if not isinstance(files, dict) or not all(
                isinstance(v, list) and len(v) == 4 and all(type(x) is int for x in v) for v in files.values()
            ):
                raise ValueError("bad files")
            return cls(str(body.get("writer", writer)), files, [str(d) for d in body.get("dirs", [])])
        except (ValueError, TypeError, AttributeError):
            return cls(writer)  # a damaged record only costs re-sending


def record_path(remote_root: str, writer: str) -> str:
    return f"{meta_dir(remote_root)}/{writer_key(writer)}.json"


def read_all(engine: Engine, remote_root: str) -> dict[str, Record]:
    """Every writer's record for this prefix, by writer key (one small listing + small reads)."""
    records: dict[str, Record] = {}
    for relpath in engine.list_files(meta_dir(remote_root)):
        if "/" in relpath or not relpath.endswith(".json"):
            continue
        data = engine.read(f"{meta_dir(remote_root)}/{relpath}")
        if data is not None:
            records[relpath[: -len(".json")]] = Record.from_bytes(data, relpath[: -len(".json")])
    return records


def merge(records: dict[str, Record]) -> tuple[dict[str, list[int]], set[str]]:
    """Per path the most recent writer's entry wins; empty directories are the union."""
    files: dict[str, list[int]] = {}
    dirs: set[str] = set()
    for record in records.values():
        dirs.update(record.dirs)
        for relpath, entry in record.files.items():
            current = files.get(relpath)
            if current is None or entry[3] > current[3]:
                files[relpath] = entry
    return files, dirs
