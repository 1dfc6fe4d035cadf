"""A map run on AWS, end to end: its queue is a real SQS queue (moto server), its machines are the
Auto Scaling group's instances played by local agents from their user data, as tests/test_aws.py
plays them; results come back once per task and destroy leaves no queue and nothing tagged."""

from __future__ import annotations

from pathlib import Path

from tpi_jupyter import map_tasks

from .aws_moto import aws_env, client, moto_endpoint, tagged  # noqa: F401 - fixtures
from .test_aws import home, play_all  # noqa: F401 - fixture


def test_a_map_run_goes_through_sqs_on_the_groups_played_machines(
    home: Path,  # noqa: F811 - the imported fixture
    workdir: Path,
    tmp_path: Path,
) -> None:
    run = map_tasks(
        lambda x: x * x, range(40), cloud="aws", parallelism=2, spot=-1, name="aws-map", workers=2
    )
    task = run.task
    sqs = client("sqs")
    (url,) = sqs.list_queues(QueueNamePrefix="tpi-").get("QueueUrls", [])
    queue_name = url.rsplit("/", 1)[1]  # the run's own SQS queue, made before machines start
    assert task.record["map"]["queue_url"].startswith(f"sqs://us-west-1/{queue_name}?")
    machines = play_all(task, tmp_path / "machines")
    assert len(machines) == 2
    rows = run.results(timeout=180)
    assert rows, task.tail_text(40)  # the worker's log, when it could not reach the queue
    assert [(row["task_id"], row["status"], row["result"]) for row in rows] == [
        (str(i), "done", i * i) for i in range(40)
    ]
    counts = run.counts()
    assert (counts.done, counts.failed) == (40, 0)
    task.destroy()
    for machine in machines:
        machine.kill()
    assert sqs.list_queues(QueueNamePrefix="tpi-").get("QueueUrls", []) == []
    assert tagged(task.id) == []
