"""The transfer pod of the claim-mode storage-fault tests (test_storage_claim.py).

Runs in the pod, in place of `python -m tpi_jupyter.backends.k8s.transfer` (the test's agent
runtime redirects it here): the real transfer server on the pod's 127.0.0.1, and in front of
it, on the port the API server's pod proxy reaches, the tests' HTTP fault proxy answering a
seeded share of requests as the pod proxy does when it fails (503 ServiceUnavailable, 429
TooManyRequests, 500). A control port (not faulted, reached through the same pod proxy) reports
what was injected and heals the faults: `GET /counts`, `PUT /heal`.
"""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tpi_jupyter.backends.k8s import transfer

from .http_faults import FaultInjectingHttpProxy

CONTROL_PORT = 8081


def control(proxy: FaultInjectingHttpProxy) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(json.dumps({"injected": proxy.injected, "forwarded": proxy.forwarded}).encode())

        def do_PUT(self) -> None:
            proxy.share = 0.0
            self._send(b"healed")

    return ThreadingHTTPServer(("0.0.0.0", CONTROL_PORT), Handler)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--share", type=float, required=True)
    parser.add_argument("--limit", type=int, default=-1)  # -1: no cap
    parser.add_argument("--root", required=True)
    parser.add_argument("--token-file", default="")
    parser.add_argument("--port", type=int, default=transfer.PORT)
    args = parser.parse_args()
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    server = transfer.serve(root, token, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{server.server_address[1]}"
    proxy = FaultInjectingHttpProxy(
        upstream, args.seed, args.share, service="k8s", listen=("0.0.0.0", args.port)
    )
    proxy.limit = None if args.limit < 0 else args.limit
    print(f"tpi-transfer (faulted, share {args.share}): serving {root} on port {args.port}", flush=True)
    control(proxy).serve_forever()


if __name__ == "__main__":
    main()
