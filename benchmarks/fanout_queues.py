"""Cloud queue throughput for fan-out (issue 15): messages per second through send + receive + ack.

For each service on its local emulator (SQS on moto server, Pub/Sub on Google's pstest, Azure
Storage queues on Azurite), each run makes a fresh queue, sends N small tasks, then receives in
the service's batch size and acks every message one by one (as workers do: each task finishes on
its own). Timed apart: send, and receive + ack. Median of `--runs` runs.

In the same run, the bare SDK doing the same work as plainly as it can (SQS: SendMessageBatch,
ReceiveMessage of 10, DeleteMessage; Pub/Sub: the batching publisher, pull, acknowledge;
Azure: send_message, receive_messages, delete_message; one ack per message, as in ours) is what
our queue classes are compared with; the ratio is ours / bare (1.0 = as fast). Batched acks
would be faster on SQS and Pub/Sub, but a worker finishes its tasks one at a time.

Emulators are not the services: these numbers say what our code costs over the SDK, and the
emulators' own speed, not what the clouds do. Run: .venv/bin/python benchmarks/fanout_queues.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import emulators  # noqa: E402

Phase = tuple[float, float]  # seconds to send, seconds to receive + ack


def ours(cloud: str, count: int, batch: int, remote: str) -> Phase:
    from tpi_jupyter.fanout.queue import queue_class
    from tpi_jupyter.spec import task_id

    queue = queue_class(cloud).for_task(task_id(f"bench {uuid.uuid4().hex[:8]}"), remote, "us-west-1")
    queue.create()
    try:
        start = time.perf_counter()
        queue.send((f"t{index}", {"n": index}) for index in range(count))
        sent = time.perf_counter()
        done = 0
        while done < count:
            for message in queue.receive(batch, 60):
                queue.ack(message)
                done += 1
        return sent - start, time.perf_counter() - sent
    finally:
        queue.delete()


def bare_sqs(count: int) -> Phase:
    import boto3

    sqs = boto3.client("sqs", region_name="us-west-1")
    url = sqs.create_queue(QueueName=f"bare-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    try:
        start = time.perf_counter()
        for first in range(0, count, 10):
            entries = [
                {"Id": str(i), "MessageBody": f'{{"n":{i}}}'} for i in range(first, min(count, first + 10))
            ]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
        sent = time.perf_counter()
        done = 0
        while done < count:
            found = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            for message in found:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                done += 1
        return sent - start, time.perf_counter() - sent
    finally:
        sqs.delete_queue(QueueUrl=url)


def bare_pubsub(count: int) -> Phase:
    import google.cloud.pubsub_v1 as pubsub_v1

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    name = f"bare-{uuid.uuid4().hex[:8]}"
    topic, subscription = f"projects/bench/topics/{name}", f"projects/bench/subscriptions/{name}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)
    try:
        start = time.perf_counter()
        for future in [publisher.publish(topic, f'{{"n":{i}}}'.encode()) for i in range(count)]:
            future.result()
        sent = time.perf_counter()
        done = 0
        while done < count:
            found = subscriber.pull(subscription=subscription, max_messages=1000).received_messages
            for message in found:
                subscriber.acknowledge(subscription=subscription, ack_ids=[message.ack_id])
                done += 1
        return sent - start, time.perf_counter() - sent
    finally:
        subscriber.delete_subscription(subscription=subscription)
        publisher.delete_topic(topic=topic)


def bare_azure(count: int) -> Phase:
    from azure.storage.queue import QueueClient

    client = QueueClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"], f"bare-{uuid.uuid4().hex[:8]}"
    )
    client.create_queue()
    try:
        start = time.perf_counter()
        for index in range(count):
            client.send_message(f'{{"n":{index}}}')
        sent = time.perf_counter()
        done = 0
        while done < count:
            for message in client.receive_messages(
                messages_per_page=32, max_messages=32, visibility_timeout=60
            ):
                client.delete_message(message)
                done += 1
        return sent - start, time.perf_counter() - sent
    finally:
        client.delete_queue()


@contextlib.contextmanager
def service(cloud: str) -> Iterator[None]:
    """The cloud's emulator, and the environment that points its SDK there."""
    if cloud == "aws":
        servers: Iterator[str] = emulators.moto_server()
        endpoint = next(servers)
        values = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                  "AWS_DEFAULT_REGION": "us-west-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    elif cloud == "gcp":
        servers = emulators.pstest()
        values = {"PUBSUB_EMULATOR_HOST": next(servers), "GOOGLE_CLOUD_PROJECT": "bench"}
    else:
        servers = emulators.azurite_queue()
        values = {"AZURE_STORAGE_CONNECTION_STRING": next(servers)}
    os.environ.update(values)
    try:
        yield
    finally:
        for name in values:
            os.environ.pop(name, None)
        servers.close()  # ends the generator: its `finally` stops the server


BARE: dict[str, Callable[[int], Phase]] = {"aws": bare_sqs, "gcp": bare_pubsub, "az": bare_azure}
LABELS = {"aws": "SQS on moto server", "gcp": "Pub/Sub on pstest", "az": "Azure queue on Azurite"}
BATCH = {"aws": 10, "gcp": 1000, "az": 32}  # receive size: the most one call returns
COUNT = {"aws": 300, "gcp": 5000, "az": 1000}  # tasks per run: moto and Azurite are slow


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def measure(cloud: str, count: int, runs: int, remote: str) -> dict[str, Any]:
    with service(cloud):
        ours(cloud, min(count, 50), BATCH[cloud], remote)  # warm up: imports, connections
        mine, bare = [], []
        for _ in range(runs):  # interleaved: a shared machine's load drifts
            mine.append(ours(cloud, count, BATCH[cloud], remote))
            bare.append(BARE[cloud](count))
    median = {
        name: (statistics.median(p[0] for p in phases), statistics.median(p[1] for p in phases))
        for name, phases in (("ours", mine), ("bare", bare))
    }
    return {"cloud": cloud, "count": count, **median}


def table(results: list[dict[str, Any]], runs: int) -> str:
    lines = [
        f"## Cloud queue throughput ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, median of {runs} runs)",
        "",
        "| service | tasks | send/s ours (bare) | receive+ack/s ours (bare) | end to end/s ours | end to end/s bare | ours / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for found in results:
        count, (send, take), (bare_send, bare_take) = found["count"], found["ours"], found["bare"]
        mine, bare = rate(count, send + take), rate(count, bare_send + bare_take)
        lines.append(
            f"| {LABELS[found['cloud']]} | {count} | {rate(count, send):,.0f} ({rate(count, bare_send):,.0f}) | "
            f"{rate(count, take):,.0f} ({rate(count, bare_take):,.0f}) | "
            f"{mine:,.0f} | {bare:,.0f} | {mine / bare:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto server's request log
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=0, help="tasks per run (default: per service, COUNT)")
    parser.add_argument("--clouds", default="aws,gcp,az")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "RESULTS-fanout-queues.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as remote:
        clouds = args.clouds.split(",")
        results = [measure(cloud, args.count or COUNT[cloud], args.runs, remote) for cloud in clouds]
    text = table(results, args.runs)
    print(text)
    Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
