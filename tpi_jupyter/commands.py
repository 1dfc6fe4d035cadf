"""The verbs shared by `%tpi` / `%%tpi` and the `tpi` command: one grammar, one behaviour."""

from __future__ import annotations

import argparse
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .spec import SpecError, TaskSpec, parse_assignments
from .sync import ProgressCallback
from .task import FINAL, LogTail, Plan, Task, TaskError, format_line, launch
from .task import sweep as sweep_task
from .textview import clock, event_text

Printer = Callable[[str], None]


class UsageFailure(Exception):
    """Bad command words; the message is one line."""


class TaskFailed(Exception):
    """A task waited on ended failed or timed out; the message carries the log tail."""

    def __init__(self, task: Task, status: str, tail: str):
        self.task, self.status, self.tail = task, status, tail
        super().__init__(f"task {task.name} ended {status}")

    def lines(self) -> list[str]:
        ranks = [r for r in self.task.read().ranks if r.state in ("failed", "timeout")]
        detail = "; ".join(
            f"rank {r.rank} {r.state}" + (f" with code {r.code}" if r.code is not None else "") + (f" ({r.reason})" if r.reason else "")
            for r in ranks
        )  # fmt: skip
        return [f"TaskFailed: task {self.task.name} ({self.task.id}) ended {self.status}: {detail}",
                "--- last log lines ---", *(self.tail.splitlines() or ["(no log)"])]  # fmt: skip

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return self.lines()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UsageFailure(f"{message}; usage: {usage}")


VERBS = ("run", "list", "panel", "status", "logs", "events", "stop", "pull", "destroy", "attach", "preempt",
         "sweep")  # fmt: skip


def _launch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("assignments", nargs="*", metavar="key=value")
    parser.add_argument("--wait", action="store_true", help="block, stream the log, fail if the task fails")
    parser.add_argument("--dry-run", action="store_true", help="show what would be created; create nothing")
    parser.add_argument("--files", action="store_true", help="with --dry-run: list every file to upload")


def cell_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="%%tpi", add_help=False)
    _launch_options(parser)
    parser.add_argument("-o", dest="bind", metavar="NAME", help="bind the task handle to NAME")
    return parser


def verb_parser(prog: str = "tpi") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, add_help=prog == "tpi")
    verbs = parser.add_subparsers(dest="verb", metavar="{" + ",".join(VERBS) + "}", parser_class=_Parser)
    verbs.required = True
    verbs.add_parser("run", help="launch a task: tpi run key=value ... --script FILE [--wait] [--dry-run]")
    verbs.add_parser("list", help="every task in the registry")
    verbs.add_parser("panel", help="every task with live status (a widget in notebooks)")
    for verb, text in (("status", "status, ranks and events"), ("events", "the task's events"),
                       ("stop", "stop the machines (they sync back first)"),
                       ("pull", "download output into the workdir"),
                       ("destroy", "download output, then remove every resource"),
                       ("attach", "show the task again (after a kernel restart)")):  # fmt: skip
        verbs.add_parser(verb, help=text).add_argument("task", metavar="NAME")
    logs = verbs.add_parser("logs", help="the task's logs")
    logs.add_argument("task", metavar="NAME")
    logs.add_argument("--follow", "-f", action="store_true", help="stream until the task ends")
    logs.add_argument("--timestamps", "-t", action="store_true", help="prefix each line with its UTC time")
    preempt = verbs.add_parser("preempt", help="interrupt a rank's machine as a spot reclaim would")
    preempt.add_argument("task", metavar="NAME")
    preempt.add_argument("--rank", type=int, default=0)
    sweep = verbs.add_parser(
        "sweep", help="list resources tagged tpi-task whose task is gone; delete with --yes"
    )
    sweep.add_argument("cloud", metavar="CLOUD")
    sweep.add_argument("--yes", "-y", action="store_true", help="delete what is found without asking")
    sweep.add_argument("--region", help="where to look (a region, or all); default: the usual ones")
    sweep.add_argument("--all", dest="everyone", action="store_true",
                       help="include other creators' orphans (default: only yours)")  # fmt: skip
    return parser


def run_parser(prog: str = "tpi run") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog)
    _launch_options(parser)
    parser.add_argument("--script", required=True, metavar="FILE", help="the script to run ('-' for stdin)")
    return parser


def parse_words(words: Sequence[str], prog: str = "tpi") -> argparse.Namespace:
    """Verbs and their options; `run` takes key=value words and flags in any order."""
    if words and words[0] == "run":
        args = run_parser(f"{prog} run").parse_intermixed_args(list(words[1:]))
        args.verb = "run"
        return args
    return verb_parser(prog).parse_args(list(words))


def split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as error:
        raise UsageFailure(
            f"malformed line: {error} in {line!r}; accepted: key=value words, quoted with ' or \""
        ) from None


def parse_cell_line(line: str) -> argparse.Namespace:
    return cell_parser().parse_intermixed_args(split(line))


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
    files: bool = False,
) -> Launched:  # fmt: skip
    spec = build_spec(assignments, defaults, cwd)
    result = launch(spec, script, dry_run=dry_run, progress=progress)
    if isinstance(result, Plan):
        out(result.text(all_files=files))
        return Launched(None, result)
    if wait:
        out(result.summary())
        width = int(result.spec["parallelism"])
        status = result.wait(on_line=lambda rank, _stamp, text: out(format_line(rank, text, width)))
        if status != "succeeded":
            raise TaskFailed(result, status, result.tail_text(tail_lines))
    return Launched(result, None)


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


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status_text(task: Task) -> str:
    snapshot = task.read()
    lines = [task.summary(), "ranks:"]
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
        out(list_text())
        return None
    if args.verb == "sweep":
        sweep(args.cloud, args.yes, args.region, out, confirm, args.everyone)
        return None
    task = Task.find(args.task)
    if args.verb == "status":
        out(status_text(task))
    elif args.verb == "events":
        out(events_text(task))
    elif args.verb == "logs":
        width = int(task.spec["parallelism"])
        lines = task.follow() if args.follow else iter(LogTail(task).poll())
        for rank, stamp, text in lines:
            out(format_line(rank, f"{stamp} {text}" if args.timestamps else text, width))
    elif args.verb == "stop":
        task.stop()
        out(f"task {task.name}: stopped ({task.status})")
    elif args.verb == "pull":
        task.pull(progress)
        out(f"task {task.name}: pulled {_pulled(task)} into {task.record.get('workdir') or '(no workdir)'}")
    elif args.verb == "destroy":
        task.destroy(progress)
        out(
            f"task {task.name}: destroyed; pulled {_pulled(task)} of {task.spec.get('output') or '(no output)'}"
        )
    elif args.verb == "preempt":
        task.preempt(args.rank)
        out(f"task {task.name}: rank {args.rank} preempted; the group respawns it")
    elif args.verb == "attach":
        return task
    return None


ERRORS = (SpecError, TaskError, UsageFailure)
__all__ = ["ERRORS", "FINAL", "TaskFailed", "UsageFailure", "run_task", "run_verb"]
