"""A loopback stand-in for the Azure instance metadata service: instance compute metadata,
Scheduled Events (a `Preempt` per evicted instance), and managed identity tokens
(`AZURE_POD_IDENTITY_AUTHORITY_HOST` points azure-identity's IMDS credential here)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class AzureImds:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.tokens = 0
        self.lock = threading.Lock()
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                if self.headers.get("Metadata") != "true":
                    return self._send(400, {"error": "Metadata header missing"})
                if self.path.startswith("/metadata/scheduledevents"):
                    with imds.lock:
                        return self._send(
                            200, {"DocumentIncarnation": len(imds.events), "Events": list(imds.events)}
                        )
                if self.path.startswith("/metadata/identity/oauth2/token"):
                    with imds.lock:
                        imds.tokens += 1
                    expires = int(time.time()) + 3600
                    return self._send(200, {"access_token": "machine-identity-token", "expires_in": "3600",
                                            "expires_on": str(expires), "resource": "https://management.azure.com/",
                                            "token_type": "Bearer"})  # fmt: skip
                self._send(404, {"error": "not here"})

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def preempt(self, name: str) -> None:
        with self.lock:
            self.events.append({"EventId": f"evict-{name}", "EventType": "Preempt", "ResourceType": "VirtualMachine",
                                "Resources": [name], "EventStatus": "Scheduled", "NotBefore": "", "EventSource": "Platform"})  # fmt: skip

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
