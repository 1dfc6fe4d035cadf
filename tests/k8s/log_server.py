"""The kubelet stand-in's HTTPS endpoint for container logs, so `pods/log` works through the API.

The API server fetches logs from a node's `/containerLogs/<ns>/<pod>/<container>` with its
kubelet-client certificate; this serves that one path on 127.0.0.1. Any client certificate
signed by the bed's CA is accepted (a kubelet asks the API server to authorise each caller; the
stand-in does not). Supported: `follow`, `tailLines`, `limitBytes`; the stand-in keeps no
timestamps and no previous runs apart.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# (namespace, pod, container) -> (log file, still running?) or None when unknown
Find = Callable[[str, str, str], "tuple[Path, Callable[[], bool]] | None"]


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def handler(find: Find) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass  # the API server's requests are not worth a line each

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            found = find(*parts[1:4]) if len(parts) == 4 and parts[0] == "containerLogs" else None
            if found is None:
                self.send_error(404, "no such container on this stand-in node")
                return
            path, running = found
            query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
            data = path.read_bytes() if path.exists() else b""
            if "tailLines" in query:
                data = _tail(data, int(query["tailLines"]))
            limit = int(query.get("limitBytes", 0)) or None
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            sent = self._send(data[:limit])
            if query.get("follow") == "true":
                self._follow(path, path.stat().st_size if path.exists() else 0, running, limit, sent)

        def _send(self, data: bytes) -> int:
            self.wfile.write(data)
            self.wfile.flush()
            return len(data)

        def _follow(
            self, path: Path, offset: int, running: Callable[[], bool], limit: int | None, sent: int
        ) -> None:
            while True:
                alive = running()  # read once more after the container ended
                with open(path, "rb") as log:
                    log.seek(offset)
                    chunk = log.read()
                offset += len(chunk)
                if limit is not None:
                    chunk = chunk[: max(0, limit - sent)]
                sent += self._send(chunk)
                if not alive or (limit is not None and sent >= limit):
                    return
                time.sleep(0.2)

    return Handler


def serve(find: Find, cert: Path, key: Path, ca: Path) -> int:
    """Serve in a daemon thread on a free 127.0.0.1 port; return the port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(find))
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return int(server.server_address[1])
