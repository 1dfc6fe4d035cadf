"""`%tpi map` and `tpi map`: the words of grammar.map_parser turned into a map run."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..grammar import UsageFailure
from ..spec import parse_assignments
from ..task import FINAL
from .run import MapRun, continue_run, map_tasks

Printer = Callable[[str], None]
PROGRESS_EVERY = 2.0  # seconds between two progress lines while waiting


def map_verb(
    args: argparse.Namespace, defaults: Mapping[str, Any], out: Printer, cwd: str | None = None
) -> MapRun:
    """Launch (or continue) the run; with --wait or --results, block and report, as the CLI does."""
    raw = {**defaults, **parse_assignments(args.assignments)}
    options = {"workers": args.workers, "task_timeout": args.task_timeout, "retries": args.retries,
               "memory_gb": args.memory_gb, "fresh_process": args.fresh_process}  # fmt: skip
    if args.resume:
        if args.worker:
            raise UsageFailure("--worker: a continued run keeps its worker; accepted: map NAME --continue")
        run = continue_run(args.tasks, **parse_assignments(args.assignments))  # the run's own settings stay
    else:
        if not args.worker:
            raise UsageFailure(
                "--worker: missing; accepted: --worker module:function (e.g. worker:process_task)"
            )
        run = map_tasks(args.worker, args.tasks, cwd=cwd, **options, **raw)
    out(f"map run {run.name} ({run.task.id}): {run.total} task(s) queued")
    if args.wait or args.results:
        wait_and_report(run, out)
        if args.results:
            out(f"results: {run.to_jsonl(args.results)}")
    return run


def wait_and_report(run: MapRun, out: Printer) -> None:
    """Progress lines until every task finished (or the run's task ended)."""
    shown = ""
    last = 0.0
    while True:
        counts = run.counts()
        done = counts.finished >= counts.total or run.status() in FINAL
        text = counts.text()
        if done or (text != shown and time.monotonic() - last >= PROGRESS_EVERY):
            out(text)
            shown, last = text, time.monotonic()
        if done:
            break
        time.sleep(0.25)
    for error in run.errors()[-3:]:
        first = str(error.get("error", "")).splitlines()[0] if error.get("error") else ""
        out(f"error: task {error.get('task')}: {error['kind']}: {first}")
