"""An EC2 instance metadata service (IMDSv2) stand-in on 127.0.0.1, for machine-side tests.

It answers what the agent and the boot script ask: `PUT /latest/api/token` (the TTL header is
required, as on EC2), then `GET /latest/meta-data/<path>` with that token (401 without it):
`instance-id`, `placement/region`, `placement/availability-zone`, and the two notices a test can
raise, `spot/instance-action` and `events/recommendations/rebalance` (404 until raised, as on
EC2). Point the code at it with `TPI_IMDS_URL=<stand-in>.url`.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"


class Imds:
    def __init__(self, instance_id: str = "i-0123456789abcdef0", region: str = "us-west-1"):
        self.values: dict[str, str] = {
            "instance-id": instance_id,
            "placement/region": region,
            "placement/availability-zone": f"{region}a",
        }
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/latest"

    def start(self) -> Imds:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set_instance(self, instance_id: str) -> None:
        with self._lock:
            self.values["instance-id"] = instance_id

    def interrupt(self, action: str = "terminate", in_seconds: int = 120) -> None:
        """Raise a spot interruption notice, as EC2 does two minutes ahead."""
        when = datetime.now(timezone.utc) + timedelta(seconds=in_seconds)
        body = {"action": action, "time": when.strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self._lock:
            self.values["spot/instance-action"] = json.dumps(body)

    def recommend_rebalance(self) -> None:
        body = {"noticeTime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        with self._lock:
            self.values["events/recommendations/rebalance"] = json.dumps(body)

    def clear_notices(self) -> None:
        with self._lock:
            self.values.pop("spot/instance-action", None)
            self.values.pop("events/recommendations/rebalance", None)

    def asked(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, seen in self.requests if seen.endswith(path))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:
                with imds._lock:
                    imds.requests.append(("PUT", self.path))
                if self.path != "/latest/api/token" or not self.headers.get(TOKEN_TTL_HEADER):
                    self._send(400, "token TTL header missing")
                    return
                token = secrets.token_urlsafe(16)
                with imds._lock:
                    imds.tokens.add(token)
                self._send(200, token)

            def do_GET(self) -> None:
                with imds._lock:
                    imds.requests.append(("GET", self.path))
                    known = self.headers.get(TOKEN_HEADER) in imds.tokens
                    value = imds.values.get(self.path.removeprefix("/latest/meta-data/"))
                if not known:
                    self._send(401)
                elif value is None or not self.path.startswith("/latest/meta-data/"):
                    self._send(404, "Not Found")
                else:
                    self._send(200, value)

        return Handler


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[Imds]:
    server = Imds().start()
    monkeypatch.setenv("TPI_IMDS_URL", server.url)
    yield server
    server.close()
