"""The verbs shared by `%tpi` / `%%tpi` and the `tpi` command: one behaviour (grammar.py: the words)."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .backends.base import get_backend
from .grammar import (
    UsageFailure,
    cell_parser,
    magic_help,
    parse_cell_line,
    parse_words,
    run_parser,
    split,
    strip_comment,
    verb_parser,
)
from .spec import SpecError, TaskSpec, check_name, parse_assignments, random_name
from .sync import ProgressCallback
from .task import FINAL, LogTail, Plan, Snapshot, Task, TaskError, failure_text, format_line, launch
from .task import sweep as sweep_task
from .textview import clock, cost_text, event_text

Printer = Callable[[str], None]


class TaskFailed(Exception):
    """A task waited on ended failed or timed out; the message carries the log tail."""

    def __init__(self, task: Task, status: str, tail: str | None):
        self.task, self.status, self.tail = task, status, tail  # tail None: the log was just shown
        super().__init__(f"task {task.name} ended {status}")

    def lines(self) -> list[str]:
        detail = failure_text(self.task.read().ranks)
        head = f"TaskFailed: task {self.task.name} ({self.task.id}) ended {self.status}: {detail}"
        if self.tail is None:
            return [head]
        return [head, "--- last log lines ---", *(self.tail.splitlines() or ["(no log)"])]

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return self.lines()


class WaitInterrupted(Exception):
    """Ctrl-C (or the kernel's interrupt) while waiting: the task itself goes on running."""

    def __init__(self, task: Task, prog: str):
        self.task = task
        super().__init__(
            f"interrupted: task {task.name} ({task.id}) is still running; "
            f"stop it with {prog} stop {task.name}, or remove it with {prog} destroy {task.name}"
        )

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def find_task(name: str) -> Task:
    """A task by name or id as the user typed it; a name that could be a path is refused."""
    return Task.find(check_name(name, key="NAME"))


def build_spec(assignments: Sequence[str], defaults: Mapping[str, Any], cwd: str | None = None) -> TaskSpec:
    raw = dict(defaults)
    raw.update(parse_assignments(assignments))
    return TaskSpec.from_args(raw, cwd=cwd or os.getcwd())


@dataclass
class Launched:
    task: Task | None
    plan: Plan | None


def run_task(
    assignments: Sequence[str], script: str, *, defaults: Mapping[str, Any], wait: bool, dry_run: bool,
    out: Printer, tail_lines: int = 20, cwd: str | None = None, progress: ProgressCallback | None = None,
    files: bool = False, prog: str = "tpi", as_json: bool = False, manifests: bool = False,
) -> Launched:  # fmt: skip
    if as_json and not dry_run:
        raise UsageFailure("--json: shows a launch plan; accepted: --dry-run --json")
    spec = build_spec(assignments, defaults, cwd)
    if manifests and not dry_run:
        raise UsageFailure("--manifests: only with --dry-run; accepted: run ... --dry-run --manifests")
    if manifests and not spec.name:
        spec = spec.with_name(random_name())  # the plan and the manifests name the same task
    try:
        script.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate: the machines could not read it
        raise UsageFailure(
            f"script: character {script[error.start]!r} at offset {error.start} is not valid text; "
            "accepted: UTF-8 text"
        ) from None
    result = launch(spec, script, dry_run=dry_run, progress=progress)
    if isinstance(result, Plan):
        out(result.json() if as_json else result.text(all_files=files))
        if manifests:
            out(manifests_text(spec))
        return Launched(None, result)
    for warning in result.record.get("warnings", []):  # before the widget or the log: seen first
        out(f"warning: {warning}")
    if wait:
        width = int(result.spec["parallelism"])
        try:
            out(result.summary())
            status = result.wait(on_line=lambda rank, _stamp, text: out(format_line(rank, text, width)))
        except KeyboardInterrupt:
            raise WaitInterrupted(result, prog) from None
        if status != "succeeded":
            raise TaskFailed(result, status, result.tail_text(tail_lines))
    return Launched(result, None)


def manifests_text(spec: TaskSpec) -> str:
    """The objects a backend that has manifests would send, as YAML documents."""
    import yaml

    backend = get_backend(spec.cloud)
    render = getattr(backend, "manifests", None)
    if render is None:
        raise UsageFailure(f"--manifests: cloud={spec.cloud} sends no manifests; accepted: cloud=k8s")
    state = backend.new_state(spec, time.time() + spec.timeout)
    return str(yaml.safe_dump_all(render(spec, state), sort_keys=False)).rstrip("\n")


def list_text() -> str:
    listed = Task.all_safe()
    if not listed:
        return "no tasks"
    rows = [("NAME", "ID", "CLOUD", "MACHINE", "STATUS", "AGE")]
    for item in listed:
        task, status = item.task, item.status
        age = _duration(time.time() - float(task.record["created"]))
        spec = task.spec
        rows.append(
            (task.name, task.id, spec["cloud"], f"{spec['machine']}x{spec['parallelism']}", status, age)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def task_json(task: Task, snapshot: Snapshot | None, error: Exception | None = None,
              detail: bool = False) -> dict[str, Any]:  # fmt: skip
    """A task as `tpi list --json` (and with detail, `tpi status --json`) prints it."""
    spec = task.spec
    entry: dict[str, Any] = {
        "id": task.id, "name": task.name, "cloud": spec["cloud"], "machine": spec["machine"],
        "parallelism": spec["parallelism"], "spot": spec["spot"], "created": task.record["created"],
        "workdir": task.record.get("workdir", ""), "output": spec.get("output", ""),
    }  # fmt: skip
    if snapshot is None:  # one unreadable task must not hide the others
        entry.update(status="unknown", error=f"{error.__class__.__name__}: {error}")
        return entry
    entry.update(status=snapshot.status, elapsed=round(task.elapsed(snapshot), 3))
    if detail:
        entry["ranks"] = [asdict(rank) for rank in snapshot.ranks]
        entry["events"] = task.events(snapshot)
        entry["cost"] = cost_text(task, snapshot)
    return entry


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_text(task: Task) -> str:
    snapshot = task.read()
    lines = [task.summary(), f"cost: {cost_text(task, snapshot)}", "ranks:"]
    for rank in snapshot.ranks:
        code = "" if rank.code is None else f" code {rank.code}"
        reason = f" ({rank.reason})" if rank.reason else ""
        lines.append(f"  {rank.rank}: {rank.state}, {rank.boots} boot(s){code}{reason}")
    return "\n".join(lines)


def events_text(task: Task) -> str:
    lines = [f"{clock(event['time'])} {event_text(event)}" for event in task.events()]
    return "\n".join(lines) or "no events"


def _pulled(task: Task) -> str:
    """What the pull just done brought (its event), e.g. "3 files, 1.2 KiB (2 already here)"."""
    if not task.record.get("workdir") or not task.spec.get("output"):
        return "nothing (no output set)"
    details = [event["detail"] for event in task.record.get("events", []) if event["kind"] == "pulled"]
    return details[-1] if details else "nothing"


def sweep(cloud: str, yes: bool, region: str | None, out: Printer,
          confirm: Callable[[str], bool] | None = None, everyone: bool = False) -> None:  # fmt: skip
    """List what gone tasks left (yours, or everyone's with --all); delete on --yes or "y"."""
    found = sweep_task(cloud, delete=False, region=region, everyone=everyone)
    orphans = [line for line in found if line.startswith("orphan ")]
    for line in found:
        out(line)
    if not orphans:
        out(f"sweep {cloud}: no resources of gone tasks" + (" of yours" if found else ""))
        return
    if not yes and not (confirm and confirm(f"delete the resources of {len(orphans)} gone task(s)? [y/N] ")):
        out(f"nothing deleted; to delete: tpi sweep {cloud} --yes" + (" --all" if everyone else ""))
        return
    for line in sweep_task(cloud, delete=True, region=region, everyone=everyone):
        out(line)


def run_verb(
    args: argparse.Namespace,
    out: Printer,
    confirm: Callable[[str], bool] | None = None,
    progress: ProgressCallback | None = None,
) -> Task | None:
    """Carry out a verb other than `run`; returns the task for `attach`."""
    if args.verb in ("list", "panel"):
        as_json = getattr(args, "json", False)
        listed = (
            [task_json(item.task, item.snapshot, item.error) for item in Task.all_safe()] if as_json else []
        )
        out(json.dumps(listed, indent=1) if as_json else list_text())
        return None
    if args.verb == "sweep":
        sweep(args.cloud, args.yes, args.region, out, confirm, args.everyone)
        return None
    if args.verb == "destroy":
        destroy(args.task, out, progress)
        return None
    if args.verb == "prices":
        from .prices.verb import prices

        prices(args, out)
        return None
    task = find_task(args.task)
    if args.verb == "status":
        out(
            json.dumps(task_json(task, task.read(), detail=True), indent=1)
            if args.json
            else status_text(task)
        )
    elif args.verb == "events":
        out(events_text(task))
    elif args.verb == "logs":
        logs(task, args.follow, args.timestamps, out)
    elif args.verb == "stop":
        task.stop()
        out(f"task {task.name}: stopped ({task.status})")
    elif args.verb == "pull":
        task.pull(progress)
        out(f"task {task.name}: pulled {_pulled(task)} into {task.record.get('workdir') or '(no workdir)'}")
    elif args.verb == "preempt":
        task.preempt(args.rank)
        out(f"task {task.name}: rank {args.rank} preempted; the group respawns it")
    elif args.verb == "attach":
        return task
    return None


def logs(task: Task, follow: bool, timestamps: bool, out: Printer) -> None:
    """Print the log; with follow, until the task ends, and fail (TaskFailed) if it did not succeed."""
    width = int(task.spec["parallelism"])
    lines = task.follow() if follow else iter(LogTail(task).poll())
    for rank, stamp, text in lines:
        out(format_line(rank, f"{stamp} {text}" if timestamps else text, width))
    if follow:
        status = task.status
        if status != "succeeded":
            raise TaskFailed(task, status, None)


def destroy(names: Sequence[str], out: Printer, progress: ProgressCallback | None = None) -> None:
    """Destroy each task; one already gone is not an error, so destroy can be repeated."""
    for name in names:
        check_name(name, key="NAME")
    failures = []
    for name in names:
        try:
            task = Task.find(name)
        except TaskError:
            out(f"task {name}: not in the registry; nothing to destroy (already gone)")
            continue
        try:
            task.destroy(progress)
        except TaskError as error:
            failures.append(str(error))
            continue
        out(
            f"task {task.name}: destroyed; pulled {_pulled(task)} of {task.spec.get('output') or '(no output)'}"
        )
    if failures:
        raise TaskError("; ".join(failures))


ERRORS = (SpecError, TaskError, UsageFailure)
__all__ = [
    "ERRORS", "FINAL", "TaskFailed", "UsageFailure", "WaitInterrupted", "cell_parser", "magic_help",
    "parse_cell_line", "parse_words", "run_parser", "run_task", "run_verb", "split", "strip_comment",
    "verb_parser",
]  # fmt: skip
