"""A fault-injecting HTTP proxy of the tests' own: Toxiproxy works on TCP and cannot answer
HTTP errors, so this one forwards requests to an object store's emulator and, for a seeded share
of them, answers without forwarding as the store does when it sheds load or fails, in its own
shape (`service_errors`): S3 `503 SlowDown` / `500 InternalError` (XML), GCS 503/429/500 (JSON
error body), Azure Blob `503 ServerBusy` / `500 InternalError` (XML and `x-ms-error-code`), the
Kubernetes API server's pod proxy 503/429/500 (a `Status` object; 429 with `Retry-After`).
Every injected answer is counted.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

ERRORS = (
    (503, "SlowDown", "Please reduce your request rate."),
    (500, "InternalError", "We encountered an internal error. Please try again."),
)
GCS_ERRORS = (
    (503, "backendError", "We encountered an internal error. Please try again."),
    (429, "rateLimitExceeded", "The rate of change requests to the object exceeds the rate limit."),
    (500, "internalError", "Internal Error"),
)
AZURE_ERRORS = (
    (503, "ServerBusy", "The server is currently unable to receive requests. Please retry your request."),
    (500, "InternalError", "The server encountered an internal error. Please retry the request."),
)
K8S_ERRORS = (  # the API server's pod proxy: the pod unreachable, priority and fairness, its own failure
    (503, "ServiceUnavailable", "error trying to reach service: dial tcp: connect: connection refused"),
    (429, "TooManyRequests", "Too many requests, please try again later."),
    (500, "InternalError", 'an error on the server ("") has prevented the request from succeeding'),
)
SERVICES = {"s3": ERRORS, "gcs": GCS_ERRORS, "azure": AZURE_ERRORS, "k8s": K8S_ERRORS}


def error_answer(service: str, code: int, name: str, message: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers a service sends with an error (its documented shapes)."""
    if service == "gcs":
        error = {"code": code, "message": message, "errors": [{"message": message, "domain": "global",
                                                               "reason": name}]}  # fmt: skip
        return json.dumps({"error": error}).encode(), {"Content-Type": "application/json; charset=UTF-8"}
    if service == "k8s":  # a metav1.Status, as the API server answers
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                  "reason": name, "code": code}  # fmt: skip
        return json.dumps(status).encode(), {"Content-Type": "application/json",
                                             **({"Retry-After": "1"} if code == 429 else {})}  # fmt: skip
    if service == "azure":
        text = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{name}</Code><Message>{message}\n'
                "RequestId:fault\nTime:2026-01-01T00:00:00.0000000Z</Message></Error>")  # fmt: skip
        return text.encode(), {"Content-Type": "application/xml", "x-ms-error-code": name,
                               "x-ms-request-id": "fault"}  # fmt: skip
    text = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
            f"<Message>{message}</Message><RequestId>fault</RequestId></Error>")  # fmt: skip
    return text.encode(), {"Content-Type": "application/xml"}


HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a connection Toxiproxy cut, or the upstream's: the client sees it and retries


class FaultInjectingHttpProxy:
    """Forward to upstream (http://host:port); answer `share` of requests with the service's errors."""

    def __init__(self, upstream: str, seed: int, share: float = 0.0, service: str = "s3",
                 listen: tuple[str, int] = ("127.0.0.1", 0)):  # fmt: skip
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.share = share
        self.limit: int | None = None  # at most this many injected answers (None: no cap)
        self.service = service
        self.errors = SERVICES[service]
        self.injected: dict[int, int] = {code: 0 for code, _, _ in self.errors}
        self.forwarded = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        proxy = self
        upstream_host = f"{self.upstream[0]}:{self.upstream[1]}"

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
                text, headers = error_answer(proxy.service, code, name, message)
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
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
                    if key.lower() == "location":  # a resumable upload's next URL: back through us
                        value = value.replace(upstream_host, self.headers.get("Host") or upstream_host)
                    if key.lower() not in HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()
                with proxy._lock:
                    proxy.forwarded += 1

        self.server = _QuietServer(listen, Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _pick(self) -> tuple[int, str, str] | None:
        with self._lock:
            if self._rng.random() >= self.share or sum(self.injected.values()) == self.limit:
                return None
            fault = self.errors[self._rng.randrange(len(self.errors))]
            self.injected[fault[0]] = self.injected.get(fault[0], 0) + 1
            return fault

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
