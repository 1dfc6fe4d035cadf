"""Pub/Sub specifics on Google's pstest: the task's service account is granted the subscriber role
on its run's subscription alone (through pstest's wrapper, whose small IAM service stores
policies of resources that exist), the dead-letter policy that makes Pub/Sub count deliveries,
and `depth`'s Cloud Monitoring request, answered by a local recording server (pstest has no
monitoring: a contract test, not the service)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tpi_jupyter.backends.gcp.common import GcpState, base_name
from tpi_jupyter.backends.gcp.identity import account_body
from tpi_jupyter.fanout.pubsub import DEAD_LETTER_ATTEMPTS, PubSubQueue
from tpi_jupyter.fanout.pubsub_depth import METRICS, subscription_depth
from tpi_jupyter.fanout.queue import Depth
from tpi_jupyter.spec import task_id

from .queue_services import pstest_address, pubsub_emulator  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("pubsub_emulator")]
PROJECT = "tpi-queues-test"  # queue_services.pubsub_emulator's GOOGLE_CLOUD_PROJECT


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[PubSubQueue]:
    made = PubSubQueue.for_task(task_id(f"pubsub {uuid.uuid4().hex[:8]}"), str(tmp_path), "us-central1")
    made.create()
    yield made
    made.delete()


def test_the_task_account_may_consume_its_subscription_only(queue: PubSubQueue) -> None:
    queue.create()  # again: the grant is not repeated
    tid = queue.address.task_id
    account = account_body(GcpState(name=base_name(tid)), tid)["accountId"]  # as the backend makes it
    policy = queue.subscriber.get_iam_policy(request={"resource": queue.subscription})
    assert [(b.role, list(b.members)) for b in policy.bindings] == [
        ("roles/pubsub.subscriber", [f"serviceAccount:{account}@{PROJECT}.iam.gserviceaccount.com"])
    ]
    for topic in (queue.topic, queue.dead_topic):  # machines never publish
        assert list(queue.publisher.get_iam_policy(request={"resource": topic}).bindings) == []


def test_the_subscription_counts_deliveries_through_a_dead_letter_policy(queue: PubSubQueue) -> None:
    found = queue.subscriber.get_subscription(request={"subscription": queue.subscription})
    assert found.dead_letter_policy.dead_letter_topic == queue.dead_topic
    assert found.dead_letter_policy.max_delivery_attempts == DEAD_LETTER_ATTEMPTS
    assert queue.publisher.get_topic(request={"topic": queue.dead_topic}).name == queue.dead_topic


class Monitoring(BaseHTTPRequestHandler):
    """Answers timeSeries.list as documented (points newest first) and records each query."""

    seen: list[dict[str, Any]] = []
    values = {METRICS["waiting"]: "7", METRICS["in_flight"]: "2"}

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        Monitoring.seen.append({"path": parts.path, **query})
        metric = next(m for m in self.values if f'metric.type = "{m}"' in query["filter"])
        points = [{"value": {"int64Value": self.values[metric]}}, {"value": {"int64Value": "99"}}]
        body = json.dumps({"timeSeries": [{"points": points}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_depth_reads_the_subscription_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Monitoring)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("TPI_GCP_MONITORING_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert subscription_depth(PROJECT, "tpi-abc", session=requests.Session()) == Depth(
            waiting=7, in_flight=2
        )
    finally:
        server.shutdown()
        server.server_close()
    assert [s["path"] for s in Monitoring.seen] == [f"/v3/projects/{PROJECT}/timeSeries"] * 2
    for query, metric in zip(Monitoring.seen, METRICS.values(), strict=True):
        assert query["filter"] == f'metric.type = "{metric}" AND resource.labels.subscription_id = "tpi-abc"'
        assert query["interval.startTime"] < query["interval.endTime"]
