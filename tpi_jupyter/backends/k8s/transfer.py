"""The transfer pod's file server: `python -m tpi_jupyter.backends.k8s.transfer --root DIR`.

Serves the PersistentVolumeClaim mounted at DIR to the client, which reaches it only through
the API server's pod proxy (proxyfs.py); the pod opens no port beyond its own network. Keys
are paths below DIR; a request naming anything outside DIR is refused.

    GET    /file/<key>              the file's bytes (404 when missing)
    PUT    /file/<key>              atomic write (a temporary file renamed into place);
                                    with `If-None-Match: *` an exclusive create (412 if it exists)
    DELETE /file/<key>              a file; `?recursive=1` also a directory and all below it
    GET    /list/<key>              JSON [{"name", "type", "size", "mtime"}]; a file lists itself

Requests must carry `X-Tpi-Transfer-Token` equal to the token file's content, when one is given
(the task's Secret): other pods of the cluster can reach this pod's address directly.

No IPython, Jupyter or kubernetes imports: this runs in the pod.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import shutil
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PORT = 8080
TOKEN_HEADER = "X-Tpi-Transfer-Token"
FILE, LIST = "/file/", "/list/"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve(root: Path, key: str) -> Path:
    """The path of a key below root; anything that would leave root is refused."""
    target = (root / unquote(key).lstrip("/")).resolve()
    if target != root and root not in target.parents:
        raise Refused(403, f"outside the remote: {key}")
    return target


def entry(path: Path, root: Path) -> dict[str, Any]:
    found = path.stat()
    kind = "directory" if path.is_dir() else "file"
    return {"name": str(path.relative_to(root)), "type": kind, "size": 0 if kind == "directory" else found.st_size,
            "mtime": found.st_mtime}  # fmt: skip


def write(target: Path, data: bytes, exclusive: bool) -> None:
    """Whole files only: a temporary file beside the target, then renamed (or linked if exclusive)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=".tpi-transfer-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        if exclusive:
            try:
                os.link(temp, target)  # fails if the target exists: the conditional create
            except FileExistsError:
                raise Refused(412, "exists") from None
        else:
            os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


class Handler(BaseHTTPRequestHandler):
    root: Path
    token: str

    def log_message(self, format: str, *args: Any) -> None:  # quiet: paths only go to the pod log
        return

    def _answer(self, status: int, body: bytes = b"", kind: str = "application/octet-stream") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, method: str) -> None:
        try:
            if self.token and not hmac.compare_digest(self.headers.get(TOKEN_HEADER, ""), self.token):
                raise Refused(401, "no valid transfer token")
            url = urlsplit(self.path)
            prefix = FILE if url.path.startswith(FILE) else LIST if url.path.startswith(LIST) else ""
            if not prefix:
                raise Refused(404, "unknown route")
            target = resolve(self.root, url.path[len(prefix) :])
            body = self._act(method, prefix, target, parse_qs(url.query))
            self._answer(200, body, "application/json" if prefix == LIST else "application/octet-stream")
        except Refused as refused:
            self._answer(refused.status, str(refused).encode(), "text/plain")
        except FileNotFoundError:
            self._answer(404, b"not found", "text/plain")
        except IsADirectoryError:
            self._answer(409, b"a directory", "text/plain")

    def _act(self, method: str, prefix: str, target: Path, query: dict[str, list[str]]) -> bytes:
        if prefix == LIST and method == "GET":
            if target.is_dir():
                found = [entry(path, self.root) for path in sorted(target.iterdir())
                         if not path.name.startswith(".tpi-transfer-")]  # fmt: skip
            else:
                found = [entry(target, self.root)]
            return json.dumps(found).encode()
        if prefix == FILE and method == "GET":
            return target.read_bytes()
        if prefix == FILE and method == "PUT":
            length = int(self.headers.get("Content-Length", "0"))
            data = self.rfile.read(length)
            if len(data) != length:  # the connection was cut: never put part of a file in place
                raise Refused(400, f"incomplete body: {len(data)} of {length} bytes")
            write(target, data, self.headers.get("If-None-Match") == "*")
            return b""
        if prefix == FILE and method == "DELETE":
            if target == self.root:
                raise Refused(403, "the remote's root is deleted with its claim")
            if target.is_dir() and not target.is_symlink():
                if query.get("recursive") != ["1"]:
                    raise IsADirectoryError(str(target))
                shutil.rmtree(target)
            else:
                target.unlink()
            return b""
        raise Refused(405, f"{method} not allowed on {prefix}")

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


def serve(root: Path, token: str, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"root": root.resolve(), "token": token})
    return ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpi_jupyter.backends.k8s.transfer")
    parser.add_argument("--root", required=True)
    parser.add_argument("--token-file", default="")
    parser.add_argument("--host", default="0.0.0.0")  # the pod's own address (proxy target)
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    server = serve(root, token, args.host, args.port)
    print(f"tpi-transfer: serving {root} on port {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
