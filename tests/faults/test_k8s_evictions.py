"""Evictions on the Kubernetes test bed's real Job controller: what they cost a rank, and why.

An evicted pod gets `DisruptionTarget`; the Job's `podFailurePolicy` rule `Ignore` keeps it out
of the index's failure budget (`backoffLimitPerIndex`), so a script that fails still ends its
rank after BACKOFF_PER_INDEX respawns while evictions never do. The replacement is not at once:
the Job controller (1.37, `getRemainingTimePerIndex`) waits 10 s * 2^(n-1) before it recreates
an index's n-th failed pod and counts ignored failures in n (kubernetes#130881, open), up to
10 minutes. No Job field turns that off; this test measures it, so a change shows.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from tpi_jupyter import layout
from tpi_jupyter.backends.k8s.backoff import FAILURES, IGNORED
from tpi_jupyter.backends.k8s.manifests import INDEX_ANNOTATION
from tpi_jupyter.sync import filesystem

from ..aws_moto import moto_endpoint  # noqa: F401 - fixture
from ..conftest import wait_for
from ..test_k8s_backend import api_of, cluster, finish, k8s, needs_bed, start  # noqa: F401 - fixtures
from . import figures

pytestmark = pytest.mark.slow
BOOTS = 3  # the script ends on its third boot: two evictions
SCRIPT = f"""#!/bin/bash
mkdir -p results
boot=$(( $(cat results/boots 2>/dev/null || echo 0) + 1 ))
echo "$boot" > results/boots
echo "boot $boot"
if [ "$boot" -ge {BOOTS} ]; then exit 0; fi
sleep 600
"""


def rank_pods(api: Any, task_id: str, seen: dict[str, Any]) -> list[Any]:
    """Rank 0's pods, oldest first, as last seen: an evicted pod is gone once replaced."""
    for pod in api.core.list_namespaced_pod(api.namespace, label_selector=f"tpi-task={task_id}").items:
        if (pod.metadata.annotations or {}).get(INDEX_ANNOTATION) == "0":
            seen[pod.metadata.uid] = pod
    return sorted(seen.values(), key=lambda p: p.metadata.creation_timestamp)


def ended(pod: Any) -> float | None:
    """When the evicted pod's container ended (the Job controller's 'finished time')."""
    for status in pod.status.container_statuses or []:
        if status.state and status.state.terminated and status.state.terminated.finished_at:
            return float(status.state.terminated.finished_at.timestamp())
    return None


@needs_bed
@figures.soak_only  # 40 s; CI checks the failure count after one eviction (test_k8s_backend.py)
def test_evictions_never_count_against_the_budget_and_wait_the_controllers_backoff(
    k8s: dict[str, Any],  # noqa: F811 - the imported fixture
    workdir: Path,
) -> None:
    task = start(["workdir=.", "output=results", "spot=0", "name=k8s-evictions", "timeout=600"],
                 SCRIPT, k8s["bucket"])  # fmt: skip
    api = api_of(task)
    fs, root = filesystem(task.record["remote"])

    def synced(boot: int) -> bool:  # this boot's count reached the remote: a replacement resumes
        fs.invalidate_cache()
        try:
            return (
                bytes(fs.cat_file(layout.join(root, layout.data("results/boots")))).strip()
                == str(boot).encode()
            )
        except FileNotFoundError:
            return False

    evicted_at: list[float] = []
    seen: dict[str, Any] = {}

    def replaced(boot: int) -> bool:
        task.read(fresh=True)  # as a face polls: the evicted pod's event is seen before it goes
        return len(rank_pods(api, task.id, seen)) > boot

    for boot in range(1, BOOTS):
        wait_for(lambda: synced(boot), timeout=120, interval=0.3)  # noqa: B023 - used at once
        wait_for(lambda: task.read(fresh=True).ranks[0].state == "running", timeout=60, interval=0.3)
        evicted_at.append(time.time())
        task.preempt(0)  # the Eviction API
        wait_for(lambda: replaced(boot), timeout=300, interval=0.3)  # noqa: B023
    assert finish(task, timeout=180) == "succeeded", task.tail_text()

    pods = rank_pods(api, task.id, seen)
    assert len(pods) == BOOTS, [p.metadata.name for p in pods]
    notes = [p.metadata.annotations or {} for p in pods]
    # the failure budget is untouched; the evictions are counted as ignored, one per replacement
    assert [n.get(FAILURES) for n in notes] == ["0"] * BOOTS
    assert [n.get(IGNORED) for n in notes] == [None, *[str(k) for k in range(1, BOOTS)]]
    job = api.batch.read_namespaced_job(task.id, api.namespace)
    assert not job.status.failed and not job.status.failed_indexes, job.status
    for n, (old, new) in enumerate(itertools.pairwise(pods), start=1):
        stop, gone = evicted_at[n - 1], ended(old)
        assert gone is not None, old.status
        backoff = 10.0 * 2 ** (n - 1)
        created = new.metadata.creation_timestamp.timestamp()
        print(f"eviction {n}: the agent ended in {max(0.0, gone - stop):.0f} s; replaced {created - gone:.1f} s later "
              f"(the controller's back-off {backoff:.0f} s)")  # fmt: skip
        # the wait is the controller's (one-second timestamps), not the agent's: it synced and left
        assert backoff - 1.5 <= created - gone <= backoff + 30
        assert gone - stop < 30
    # the events name each wait before it happens
    waits = [e["detail"].rsplit(", ", 1)[1] for e in task.events() if e["kind"] == "preempted"]
    assert waits == [f"{10 * 2 ** (n - 1)} s" for n in range(1, BOOTS)], waits
    task.destroy()
