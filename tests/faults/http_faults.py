"""A fault-injecting HTTP proxy of the tests' own: Toxiproxy works on TCP and cannot answer
HTTP errors, so this one forwards requests to an object store's emulator and, for a seeded share
of them, answers as S3 does when it sheds load (`503 SlowDown`) or fails (`500 InternalError`)
without forwarding. Every injected answer is counted.
"""

from __future__ import annotations

import http.client
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

ERRORS = (
    (503, "SlowDown", "Please reduce your request rate."),
    (500, "InternalError", "We encountered an internal error. Please try again."),
)
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a connection Toxiproxy cut, or the upstream's: the client sees it and retries


class FaultInjectingHttpProxy:
    """Forward to upstream (http://host:port); answer `share` of requests with a 500/503."""

    def __init__(self, upstream: str, seed: int, share: float = 0.0):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.share = share
        self.injected: dict[int, int] = {500: 0, 503: 0}
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._pick()
                if fault is not None:
                    self._answer(*fault)
                else:
                    self._forward(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

            def _answer(self, code: int, name: str, message: str) -> None:
                text = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
                        f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()  # fmt: skip
                self.send_response(code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(text)

            def _forward(self, body: bytes) -> None:
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()
                with proxy._lock:
                    proxy.forwarded += 1

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _pick(self) -> tuple[int, str, str] | None:
        with self._lock:
            if self._rng.random() >= self.share:
                return None
            fault = ERRORS[self._rng.randrange(len(ERRORS))]
            self.injected[fault[0]] += 1
            return fault

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
