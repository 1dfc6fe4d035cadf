"""SQS specifics on moto server: the task's role grants exactly what a machine does with its own
queue, batches stay within SQS's request limits, large task data goes to the task's S3 prefix,
and the AWS backend's sweep finds a leftover queue and its delete removes it (idempotent).

moto does not evaluate resource-scoped SQS grants (it authorizes SQS calls against "*"), so
the role is checked by its document: its resource is the ARN SQS gives the queue, and its
actions cover every call a machine's queue makes, recorded from the client."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from tpi_jupyter.backends.aws import AwsBackend
from tpi_jupyter.backends.aws.common import AwsState, Clients, base_name
from tpi_jupyter.backends.aws.identity import POLICY_NAME, create_role, delete_role
from tpi_jupyter.fanout.queue import open_queue, queue_class
from tpi_jupyter.fanout.sqs import LIMIT, SqsQueue
from tpi_jupyter.spec import task_id

from .aws_moto import REGION
from .queue_services import moto_server_url, moto_sqs  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("moto_sqs")]


def new_task() -> str:
    return task_id(f"sqs {uuid.uuid4().hex[:8]}")


def calls_of(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every operation the client sends from now on, with its parameters."""
    seen: list[tuple[str, dict[str, Any]]] = []
    client.meta.events.register(
        "provide-client-params.sqs.*", lambda params, model, **_: seen.append((model.name, dict(params)))
    )
    return seen


def test_the_role_grants_what_a_machine_does_on_its_own_queue_only(tmp_path: Path) -> None:
    tid = new_task()
    account = boto3.client("sts", region_name=REGION).get_caller_identity()["Account"]
    state = AwsState(region=REGION, account=account, name=base_name(tid), bucket="tpi-b", prefix=tid)
    clients = Clients()
    create_role(clients, SimpleNamespace(id=tid, permission_set=""), state, {"tpi-task": tid})  # type: ignore[arg-type]
    document = boto3.client("iam").get_role_policy(RoleName=state.role, PolicyName=POLICY_NAME)[
        "PolicyDocument"
    ]
    document = json.loads(document) if isinstance(document, str) else document
    [grant] = [s for s in document["Statement"] if s["Sid"] == "TaskQueue"]

    client_side = SqsQueue.for_task(tid, str(tmp_path), REGION)
    client_side.create()
    arn = client_side.client.get_queue_attributes(QueueUrl=client_side.queue_url, AttributeNames=["QueueArn"])
    assert grant["Resource"] == arn["Attributes"]["QueueArn"]  # this queue, no wildcard
    client_side.send([("a", 1), ("b", 2), ("c", 3)])

    machine = open_queue("aws", client_side.url)  # what an agent does with the url it gets
    machine_calls = calls_of(machine.client)  # type: ignore[attr-defined]
    first, second, third = machine.receive(3, 30)
    machine.extend(first, 60)
    machine.release(second)
    machine.ack(first)
    machine.ack(third)
    used = {f"sqs:{name}" for name, _ in machine_calls}
    assert used <= set(grant["Action"]), used - set(grant["Action"])
    assert "sqs:SendMessage" not in grant["Action"] and not any("*" in a for a in grant["Action"])
    client_side.delete()
    delete_role(clients, state)


def test_send_batches_stay_within_ten_messages_and_256_kib(tmp_path: Path) -> None:
    queue = SqsQueue.for_task(new_task(), str(tmp_path), REGION)
    queue.create()
    sent = calls_of(queue.client)
    tasks = [(f"t{i}", "d" * 100_000) for i in range(5)] + [(f"s{i}", i) for i in range(23)]
    assert queue.send(tasks) == 28
    batches = [params["Entries"] for name, params in sent if name == "SendMessageBatch"]
    assert sum(len(entries) for entries in batches) == 28
    assert all(len(entries) <= 10 for entries in batches)
    assert all(sum(len(e["MessageBody"].encode()) for e in entries) <= LIMIT for entries in batches)
    assert len(batches) == 5  # 2+2+1 large ones (two fit in 256 KiB), then 23 small in 10, 10, 3
    queue.delete()


def test_large_data_goes_to_the_task_s3_prefix() -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="tpi-queues", CreateBucketConfiguration={"LocationConstraint": REGION})
    tid = new_task()
    queue = SqsQueue.for_task(tid, f"s3://tpi-queues/{tid}", REGION)
    queue.create()
    queue.send([("big", {"rows": ["r" * 1000] * 300})])  # about 300 KB: more than one SQS message
    stored = s3.list_objects_v2(Bucket="tpi-queues", Prefix=f"{tid}/.tpi/queue/").get("KeyCount", 0)
    assert stored == 1
    [message] = queue.receive(1, 30)
    assert message.data == {"rows": ["r" * 1000] * 300}
    queue.ack(message)
    assert s3.list_objects_v2(Bucket="tpi-queues", Prefix=f"{tid}/.tpi/queue/").get("KeyCount", 0) == 0
    queue.delete()


def test_sweep_finds_a_leftover_queue_and_delete_removes_it(tmp_path: Path) -> None:
    tid = new_task()
    SqsQueue.for_task(tid, str(tmp_path), REGION).create()
    SqsQueue.for_task(new_task(), str(tmp_path), REGION)  # never created: nothing to find
    backend = AwsBackend()
    [orphan] = [o for o in backend.orphans(REGION) if o.task_id == tid]
    assert orphan.resources == {"queue": base_name(tid)}
    assert (
        orphan.creator
        == boto3.client("sts", region_name=REGION).get_caller_identity()["Arn"]
        == backend.caller()
    )
    backend.delete_orphan(orphan)
    assert boto3.client("sqs", region_name=REGION).list_queues().get("QueueUrls", []) == []
    backend.delete_orphan(orphan)  # idempotent: nothing left is nothing to do
    assert [o for o in backend.orphans(REGION) if o.task_id == tid] == []


def test_k8s_uses_the_queue_of_its_object_store_and_refuses_a_claim(tmp_path: Path) -> None:
    from tpi_jupyter.fanout.k8s_queue import K8sQueue

    tid = new_task()
    queue = queue_class("k8s").for_task(tid, f"s3://bucket/{tid}", REGION)
    assert isinstance(queue, SqsQueue) and queue.address.remote == f"s3://bucket/{tid}"
    queue.create()
    assert isinstance(open_queue("k8s", queue.url), SqsQueue)  # a pod reopens it from the url
    queue.delete()
    with pytest.raises(ValueError, match=r"^container: a map run on k8s needs an object-store container"):
        K8sQueue.for_task(tid, f"tpi-k8s-pvc://tpi-claim/{tid}", "")
    with pytest.raises(ValueError, match=r"^queue: 'file:///x' is not a queue url; accepted: sqs://"):
        open_queue("k8s", "file:///x")
