"""Fan-out throughput (issue 15, item 7): no-op tasks per second, ours against the anchors.

In one run, each measured `--runs` times (median reported):
- ours: `map_tasks` on the local backend (one machine, one worker process per core, the SQLite
  queue, per-task isolation: each task runs in a worker process the supervisor replaces on a
  crash, timeout or memory limit), timed from the call to the last result read by the client;
- `ProcessPoolExecutor.map` of the same no-op over the same count (no queue, no records);
- rms-cloud-tasks' local mode (`--task-file`, one new process per task, as it isolates tasks),
  in a venv of its own (tests/rms_cloud_tasks.py), timed from start to exit, on fewer tasks
  (it is two orders of magnitude slower; tasks/s is what is compared).
Queues of other clouds (moto SQS, ...) add a function to QUEUE_BENCHES below.

Goal: >= 1,000 tasks/s locally on 2 cores; within 2x of ProcessPoolExecutor.map.
Run: .venv/bin/python benchmarks/fanout_bench.py [--runs 3] [--tasks 5000,20000] [--rms-tasks 20]
Writes benchmarks/RESULTS-fanout.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.rms_cloud_tasks: the anchor's venv and example

NOOP = "def process_task(task_id, task_data, worker_data):\n    return False, None\n"
RMS_WORKER = """import asyncio, sys
from cloud_tasks.worker import Worker

def process_task(task_id, task_data, worker_data):
    return False, None

async def main():
    await Worker(process_task, args=sys.argv[1:]).start()

if __name__ == "__main__":
    asyncio.run(main())
"""


STEADY: dict[int, list[float]] = {}  # ours, per task count: tasks/s from the first to the last result


def noop(_: object) -> None:
    return None


def ours_fresh(count: int, workers: int, scratch: Path) -> float:
    """As `ours`, with a new worker process forked for every task (`--fresh-process`)."""
    return ours(count, workers, scratch, fresh_process=True)


def ours(count: int, workers: int, scratch: Path, fresh_process: bool = False) -> float:
    """Seconds from map_tasks() to the last result, on the local backend."""
    from tpi_jupyter.fanout.run import map_tasks

    workdir = scratch / f"ours-{time.monotonic_ns()}"
    workdir.mkdir()
    (workdir / "noop.py").write_text(NOOP)
    began = time.perf_counter()
    run = map_tasks(
        "noop:process_task",
        range(count),
        workers=workers,
        workdir=str(workdir),
        cwd=str(workdir),
        fresh_process=fresh_process,
    )
    rows = run.results(timeout=600, poll=0.05)
    took = time.perf_counter() - began
    assert len(rows) == count and all(row["status"] == "done" for row in rows)
    finished = sorted(record["time"] for record in run.fold.results.values())
    if not fresh_process:
        STEADY.setdefault(count, []).append(count / (finished[-1] - finished[0]))  # the machine's pace
    run.task.destroy()
    return took


def pool(count: int, workers: int, _: Path) -> float:
    began = time.perf_counter()
    with ProcessPoolExecutor(workers) as executor:
        assert len(list(executor.map(noop, range(count)))) == count
    return time.perf_counter() - began


def rms(count: int, workers: int, scratch: Path) -> float:
    from tests import rms_cloud_tasks

    python = rms_cloud_tasks.python()
    workdir = scratch / f"rms-{time.monotonic_ns()}"
    workdir.mkdir()
    (workdir / "worker_noop.py").write_text(RMS_WORKER)
    (workdir / "tasks.json").write_text(json.dumps([{"task_id": f"t{i}", "data": {}} for i in range(count)]))
    began = time.perf_counter()
    subprocess.run([str(python), "worker_noop.py", "--task-file", "tasks.json", "--num-simultaneous-tasks",
                    str(workers), "--event-log-to-file", "--event-log-file", "events.jsonl"],
                   cwd=workdir, check=True, capture_output=True, timeout=1800)  # fmt: skip
    took = time.perf_counter() - began
    events = (workdir / "events.jsonl").read_text().splitlines()
    assert sum('"task_completed"' in line for line in events) == count
    return took


# Other queues (the cloud helper adds moto SQS, ...): name -> (function, uses --tasks or --rms-tasks)
QUEUE_BENCHES: dict[str, tuple[Callable[[int, int, Path], float], str]] = {}


OURS = "tpi-jupyter map (local, SQLite)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanout_bench.py")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", default="5000,20000", help="task counts, comma-separated")
    parser.add_argument("--rms-tasks", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    counts = [int(count) for count in args.tasks.split(",")]
    benches: list[tuple[str, Callable[[int, int, Path], float], list[int]]] = [
        (OURS, ours, counts),
        ("tpi-jupyter map, --fresh-process", ours_fresh, counts[:1]),
        ("ProcessPoolExecutor.map", pool, counts),
        ("rms-cloud-tasks local mode", rms, [args.rms_tasks]),
        *(
            (name, bench, counts if size == "tasks" else [args.rms_tasks])
            for name, (bench, size) in QUEUE_BENCHES.items()
        ),
    ]
    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tpi-fanout-bench-") as scratch:
        os.environ["TPI_JUPYTER_HOME"] = str(Path(scratch) / "home")
        for run in range(args.runs):
            for name, bench, sizes in benches:
                for count in sizes:
                    seconds = bench(count, args.workers, Path(scratch))
                    rates.setdefault((name, count), []).append(count / seconds)
                    print(f"run {run + 1}: {name}: {count} tasks in {seconds:.2f} s = {count / seconds:.1f} tasks/s",
                          flush=True)  # fmt: skip
    write(rates, counts, args)
    return 0


def write(rates: dict[tuple[str, int], list[float]], counts: list[int], args: argparse.Namespace) -> None:
    medians = {key: statistics.median(values) for key, values in rates.items()}
    lines = [
        "# Fan-out throughput: no-op tasks per second (benchmarks/fanout_bench.py)",
        "",
        f"{os.cpu_count()} cores, {args.workers} worker processes, median of {args.runs} runs, "
        f"all in the same run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). The machine is shared "
        "with other work, so absolute rates vary between runs; ratios come from the same run.",
        "",
        "| tool | tasks per run | runs (tasks/s) | median tasks/s | ours / tool |",
        "|---|---|---|---|---|",
    ]
    for (name, count), values in rates.items():
        ours_rate = medians.get((OURS, count), medians[(OURS, counts[0])])  # same count, else the first
        runs = ", ".join(f"{value:.1f}" for value in values)
        lines.append(
            f"| {name} | {count} | {runs} | {medians[(name, count)]:.1f} | {ours_rate / medians[(name, count)]:.2f}x |"
        )
    steady = ", ".join(
        f"{count} tasks: {statistics.median(STEADY[count]):.1f}" for count in counts if STEADY.get(count)
    )
    lines += [
        "",
        f"Ours once its machine runs (first to last result; launch and machine start left out), median tasks/s: {steady}.",
        "",
        "Ours is timed end to end as a user sees it: launch (registry, remote, queue filled), the",
        "machine's start, every task through the queue (receive, run in an isolated worker process,",
        "record, ack) and the client reading every result. ProcessPoolExecutor.map has no queue, no",
        "records and no launch. rms-cloud-tasks' local mode starts one process per task; its ratio",
        f"is against ours at {counts[0]} tasks.",
    ]
    text = "\n".join(lines) + "\n"
    (ROOT / "benchmarks" / "RESULTS-fanout.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
