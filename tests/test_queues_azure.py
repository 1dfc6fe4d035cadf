"""Azure Storage queue specifics on Azurite's queue service: each update returns a new pop receipt
and the queue follows it; a lapsed message is lost to its first holder (LeaseLost on extend, a
harmless ack); the 64 KiB limit counts the XML-escaped text; the role the Azure backend grants is
on the very queue a map run makes."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tpi_jupyter.backends.azure.common import AzState, base_name
from tpi_jupyter.backends.azure.identity import queue_scope
from tpi_jupyter.backends.azure.storage import container_id
from tpi_jupyter.fanout.azure_queue import AzureQueue, account_of
from tpi_jupyter.fanout.cloudqueue import LARGE_FOLDER, LeaseLost
from tpi_jupyter.spec import task_id

from .queue_services import azurite_queue_connection, azurite_queues  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("azurite_queues")]


def new_queue(remote: Path) -> AzureQueue:
    made = AzureQueue.for_task(task_id(f"azure {uuid.uuid4().hex[:8]}"), str(remote), "westus2")
    made.create()
    return made


def test_each_extension_uses_the_pop_receipt_the_last_one_returned(tmp_path: Path) -> None:
    queue = new_queue(tmp_path)
    queue.send([("t1", 1)])
    [held] = queue.receive(1, 30)
    for _ in range(3):
        queue.extend(held, 30)  # a stale pop receipt would be refused (PopReceiptMismatch)
    queue.ack(held)
    assert queue.client.get_queue_properties().approximate_message_count == 0
    queue.delete()


def test_a_lapsed_message_is_lost_to_its_first_holder(tmp_path: Path) -> None:
    queue = new_queue(tmp_path)
    queue.send([("t1", 1)])
    [first] = queue.receive(1, 1)
    time.sleep(2)
    [second] = queue.receive(1, 30)
    assert (second.task_id, second.deliveries) == ("t1", 2)
    with pytest.raises(LeaseLost):
        queue.extend(first, 30)
    queue.ack(first)  # harmless: the message is the second holder's
    assert queue.client.get_queue_properties().approximate_message_count == 1
    queue.ack(second)
    assert queue.client.get_queue_properties().approximate_message_count == 0
    queue.delete()


def test_the_limit_counts_xml_escaped_text(tmp_path: Path) -> None:
    queue = new_queue(tmp_path)
    data = "<&>" * 8000  # 24,000 characters of JSON, 104,000 once escaped: more than 64 KiB
    queue.send([("xml", data)])
    assert len(list((tmp_path / LARGE_FOLDER).iterdir())) == 1
    [message] = queue.receive(1, 30)
    assert message.data == data
    queue.ack(message)
    queue.delete()


def test_the_granted_scope_is_the_queue_a_map_run_makes() -> None:
    tid = task_id("azure scope")
    state = AzState(
        subscription="sub", group="tpi-group", account="tpiacct", container="tpi", name=base_name(tid)
    )
    queue = AzureQueue.for_task(tid, f"abfs://tpi@tpiacct.dfs.core.windows.net/{tid}", "westus2")
    assert queue.address.place == "tpiacct" == account_of(queue.address.remote)
    assert queue_scope(container_id(state), state.name) == (
        "/subscriptions/sub/resourceGroups/tpi-group/providers/Microsoft.Storage/storageAccounts/tpiacct"
        f"/queueServices/default/queues/{queue.address.name}"
    )
