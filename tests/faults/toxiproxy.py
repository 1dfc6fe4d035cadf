"""Toxiproxy (built by scripts/toxiproxy from the Go module proxy), driven through its HTTP API.

A proxy listens on 127.0.0.1 and forwards to an upstream (an object store's emulator); toxics
add latency, cut connections (reset_peer), stall them (timeout) or close them after N bytes
(limit_data), on the upstream or downstream direction, for a share of connections (toxicity).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..emulators import REPO, free_port, wait_port


def binary() -> Path:
    found = subprocess.run([str(REPO / "scripts" / "toxiproxy"), "path"], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip("toxiproxy is not built: run scripts/toxiproxy build (scripts/test does)")
    return Path(found.stdout.strip())


class Toxiproxy:
    """One toxiproxy server; `proxy(name, upstream)` returns the 127.0.0.1 address to use."""

    def __init__(self, seed: int):
        self.port = free_port()
        self.process = subprocess.Popen(
            [str(binary()), "-host", "127.0.0.1", "-port", str(self.port), "-seed", str(seed)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)
        self.listen: dict[str, int] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def proxy(self, name: str, upstream: str) -> str:
        """A proxy to upstream (host:port); returns its listen address host:port."""
        port = free_port()
        self._call("POST", "/proxies", {"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream})
        self.listen[name] = port
        return f"127.0.0.1:{port}"

    def toxic(self, proxy: str, kind: str, stream: str = "downstream", toxicity: float = 1.0,
              **attributes: int) -> str:  # fmt: skip
        name = f"{kind}-{stream}-{len(self.toxics(proxy))}"
        self._call("POST", f"/proxies/{proxy}/toxics", {"name": name, "type": kind, "stream": stream,
                                                         "toxicity": toxicity, "attributes": attributes})  # fmt: skip
        return name

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/proxies/{proxy}/toxics"))

    def heal(self, proxy: str) -> None:
        """Remove every toxic of proxy: the link is clean again."""
        for toxic in self.toxics(proxy):
            self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic['name']}")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def toxiproxy(seed: int) -> Iterator[Toxiproxy]:
    server = Toxiproxy(seed)
    try:
        yield server
    finally:
        server.close()
