"""A placement-group contract server in front of moto (moto 5.2.5 has no placement groups).

It answers EC2's CreatePlacementGroup, DescribePlacementGroups and DeletePlacementGroup itself
and forwards every other request, unchanged, to moto. Each answered request is checked against
botocore's own EC2 service model: unknown parameters, missing required ones and values outside
an enum are refused as EC2 refuses them. Like AWS, deleting a group that an Auto Scaling group
still holds instances in fails with InvalidPlacementGroup.InUse (asked of moto). This is a
contract server, not an emulator: it plays only the documented shapes of these three calls.
"""

from __future__ import annotations

import http.client
import itertools
import re
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape

ACTIONS = ("CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup")
XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class ContractError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _model(action: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2").operation_model(action).input_shape


def _query_name(name: str, member: Any) -> str:
    """The EC2 query name botocore's serializer gives a member."""
    serialized = member.serialization
    if "queryName" in serialized:
        return str(serialized["queryName"])
    if "name" in serialized:
        return str(serialized["name"][0].upper() + serialized["name"][1:])
    return name


def validate(action: str, params: dict[str, str]) -> None:
    shape = _model(action)
    names = {_query_name(name, member): (name, member) for name, member in shape.members.items()}
    for key in params:
        top = key.split(".", 1)[0]
        if top not in names and top not in ("Action", "Version"):
            raise ContractError("UnknownParameter", f"The parameter {top} is not recognized")
    for name in shape.required_members:
        query = _query_name(name, shape.members[name])
        if not any(key == query or key.startswith(query + ".") for key in params):
            raise ContractError("MissingParameter", f"The request must contain the parameter {query}")
    for query, (_, member) in names.items():
        if getattr(member, "enum", None) and query in params and params[query] not in member.enum:
            raise ContractError(
                "InvalidParameterValue", f"Value ({params[query]}) for parameter {query} is invalid"
            )


def _indexed(params: dict[str, str], prefix: str) -> list[str]:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
    found = [(pattern.match(key), value) for key, value in params.items()]
    return [value for _, value in sorted((int(m.group(1)), value) for m, value in found if m)]


class Store:
    """The placement groups, by (region, name)."""

    def __init__(self, moto: str) -> None:
        self.moto = moto
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.calls: list[tuple[str, dict[str, str]]] = []

    def create(self, region: str, params: dict[str, str]) -> dict[str, Any]:
        name = params.get("GroupName", "")
        tags = []
        for n in itertools.count(1):
            kind = params.get(f"TagSpecification.{n}.ResourceType")
            if kind is None:
                break
            if kind != "placement-group":
                raise ContractError(
                    "InvalidParameterValue", f"'{kind}' is not a valid taggable resource type"
                )
            for m in itertools.count(1):
                if f"TagSpecification.{n}.Tag.{m}.Key" not in params:
                    break
                tags.append(
                    (
                        params[f"TagSpecification.{n}.Tag.{m}.Key"],
                        params.get(f"TagSpecification.{n}.Tag.{m}.Value", ""),
                    )
                )
        with self.lock:
            if (region, name) in self.groups:
                raise ContractError(
                    "InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists."
                )
            group = {
                "name": name,
                "strategy": params.get("Strategy", ""),
                "id": f"pg-{next(self.ids):017x}",
                "tags": tags,
            }
            self.groups[(region, name)] = group
        return group

    def describe(self, region: str, params: dict[str, str]) -> list[dict[str, Any]]:
        names = set(_indexed(params, "GroupName"))
        numbers = itertools.takewhile(lambda n: f"Filter.{n}.Name" in params, itertools.count(1))
        filters = [(params[f"Filter.{n}.Name"], set(_indexed(params, f"Filter.{n}.Value"))) for n in numbers]
        with self.lock:
            found = [g for (r, _), g in sorted(self.groups.items()) if r == region]
        if names:
            missing = names - {g["name"] for g in found}
            if missing:
                raise ContractError(
                    "InvalidPlacementGroup.Unknown", f"The Placement Group '{min(missing)}' is unknown."
                )
            found = [g for g in found if g["name"] in names]
        for name, values in filters:
            if name == "tag-key":
                found = [g for g in found if any(k in values for k, _ in g["tags"])]
            elif name.startswith("tag:"):
                found = [g for g in found if any(k == name[4:] and v in values for k, v in g["tags"])]
            else:
                raise ContractError("InvalidParameterValue", f"The filter '{name}' is invalid")
        return found

    def delete(self, region: str, params: dict[str, str]) -> None:
        name = params["GroupName"]
        with self.lock:
            if (region, name) not in self.groups:
                raise ContractError(
                    "InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown."
                )
        if self._in_use(region, name):
            raise ContractError(
                "InvalidPlacementGroup.InUse",
                f"The placement group '{name}' is in use and may not be deleted.",
            )
        with self.lock:
            self.groups.pop((region, name), None)

    def _in_use(self, region: str, name: str) -> bool:
        import boto3

        autoscaling = boto3.client("autoscaling", region_name=region, endpoint_url=self.moto)
        groups = autoscaling.describe_auto_scaling_groups()["AutoScalingGroups"]
        return any(g.get("PlacementGroup") == name and g.get("Instances") for g in groups)


def _group_xml(group: dict[str, Any]) -> str:
    tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in group["tags"])
    return (f"<groupName>{escape(group['name'])}</groupName><state>available</state>"
            f"<strategy>{escape(group['strategy'])}</strategy><groupId>{group['id']}</groupId>"
            f"<tagSet>{tags}</tagSet>")  # fmt: skip


def answer(store: Store, region: str, action: str, params: dict[str, str]) -> str:
    validate(action, params)
    store.calls.append((action, params))
    if action == "CreatePlacementGroup":
        body = f"<return>true</return><placementGroup>{_group_xml(store.create(region, params))}</placementGroup>"
    elif action == "DescribePlacementGroups":
        items = "".join(f"<item>{_group_xml(g)}</item>" for g in store.describe(region, params))
        body = f"<placementGroupSet>{items}</placementGroupSet>"
    else:
        store.delete(region, params)
        body = "<return>true</return>"
    return f'<?xml version="1.0" encoding="UTF-8"?><{action}Response xmlns="{XMLNS}"><requestId>contract</requestId>{body}</{action}Response>'


def _region(headers: Any) -> str:
    found = re.search(r"Credential=[^/]+/\d+/([^/]+)/", headers.get("Authorization", ""))
    return found.group(1) if found else "us-east-1"


def _handler(store: Store) -> type[BaseHTTPRequestHandler]:
    target = urllib.parse.urlsplit(store.moto)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _serve(self) -> None:
            body = self._body()
            if self.path.startswith("/moto-api/reset"):
                with store.lock:
                    store.groups.clear()
                    store.calls.clear()
            if "x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
                params = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
                if params.get("Action") in ACTIONS:
                    try:
                        xml = answer(store, _region(self.headers), params["Action"], params)
                        self._send(200, [("Content-Type", "text/xml")], xml.encode())
                    except ContractError as error:
                        xml = (f"<Response><Errors><Error><Code>{error.code}</Code><Message>{escape(str(error))}"
                               "</Message></Error></Errors><RequestID>contract</RequestID></Response>")  # fmt: skip
                        self._send(400, [("Content-Type", "text/xml")], xml.encode())
                    return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=300)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                self._send(response.status, response.getheaders(), response.read())
            finally:
                connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

    return Handler


def front(moto: str) -> Iterator[tuple[str, Store]]:
    """A contract server on 127.0.0.1 in front of `moto`; yields (its URL, its store)."""
    store = Store(moto)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(store))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", store
    finally:
        server.shutdown()
        server.server_close()
