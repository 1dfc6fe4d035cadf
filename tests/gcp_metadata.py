"""A GCE metadata server stand-in on 127.0.0.1, for machine-side tests.

Answers `GET /computeMetadata/v1/<path>` with the `Metadata-Flavor: Google` header (403
without it, as GCE does): `instance/name`, `instance/zone`, `project/project-id`, and
`instance/preempted` (FALSE until a test preempts the instance). Point code at it with
`GCE_METADATA_HOST=<stand-in>.host`. One stand-in per played instance.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Metadata:
    def __init__(self, name: str, zone: str, project: str):
        self.values = {
            "instance/name": name,
            "instance/zone": f"projects/{project}/zones/{zone}",
            "project/project-id": project,
            "instance/preempted": "FALSE",
        }
        self.asked: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def preempt(self) -> None:
        self.values["instance/preempted"] = "TRUE"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0].removeprefix("/computeMetadata/v1/")
                owner.asked.append(path)
                if self.headers.get("Metadata-Flavor") != "Google":
                    code, body = 403, "Missing Metadata-Flavor:Google header."
                elif path in owner.values:
                    code, body = 200, owner.values[path]
                else:
                    code, body = 404, "not found"
                data = body.encode()
                self.send_response(code)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Type", "application/text")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
