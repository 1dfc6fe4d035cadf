"""`tpi machine ...` and `%tpi machine ...`: create, list, ssh, stop, start, destroy."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..grammar import UsageFailure, _Parser
from ..task import TaskError
from . import lifecycle, registry
from .driver import MACHINE_KEYS, get_driver, machine_spec

Printer = Callable[[str], None]


def parser(prog: str) -> argparse.ArgumentParser:
    top = _Parser(prog=f"{prog} machine", description="long-lived machines with SSH access")
    verbs = top.add_subparsers(dest="action", metavar="{create,list,ssh,stop,start,destroy}",
                               parser_class=_Parser)  # fmt: skip
    verbs.required = True
    create = verbs.add_parser(
        "create", help="make one machine", description=f"keys: {', '.join(MACHINE_KEYS)}"
    )
    create.add_argument("name", metavar="NAME")
    create.add_argument("assignments", nargs="*", metavar="key=value")
    create.add_argument(
        "--startup-script", metavar="FILE", help="a script the machine runs once at first boot"
    )
    create.add_argument("--ssh-from", metavar="CIDR", default=None,
                        help="who may reach port 22 (clouds; default: TPI_<CLOUD>_SSH_CIDR)")  # fmt: skip
    create.add_argument("--dry-run", action="store_true", help="show what would be made; make nothing")
    listing = verbs.add_parser("list", help="every machine, its status and cost so far")
    listing.add_argument("--json", action="store_true")
    ssh = verbs.add_parser("ssh", help="print the SSH command (with --run: run it)")
    ssh.add_argument("name", metavar="NAME")
    ssh.add_argument("--run", action="store_true", help="run ssh instead of printing the command")
    ssh.epilog = "after -- : a command to run on the machine"
    for action, text in (("stop", "stop it, keep its disk"), ("start", "start it again")):
        verbs.add_parser(action, help=text).add_argument("name", metavar="NAME")
    verbs.add_parser("destroy", help="remove everything; a machine already gone is fine").add_argument(
        "names", metavar="NAME", nargs="+"
    )
    return top


def parse(top: argparse.ArgumentParser, words: Sequence[str]) -> argparse.Namespace:
    """The action's own parser, so that key=value words and flags mix in any order."""
    choices: dict[str, argparse.ArgumentParser] = next(
        action.choices for action in top._actions if isinstance(action, argparse._SubParsersAction)
    )
    if not words or words[0] not in choices:
        top.parse_args(list(words[:1]))  # --help, or one line naming the accepted actions
        raise UsageFailure(f"{top.prog}: {words[0]!r} is not an action; accepted: {', '.join(choices)}")
    rest = list(words[1:])
    cut = rest.index("--") if "--" in rest else len(rest)  # what follows `--` is a remote command
    args = choices[words[0]].parse_intermixed_args(rest[:cut])
    args.action, args.remote = words[0], rest[cut + 1 :]
    return args


def main(words: Sequence[str], out: Printer, prog: str = "tpi") -> int:
    """Run one `machine` action; the exit code of `ssh --run`, else 0. Errors raise (one line)."""
    args = parse(parser(prog), words)
    if args.action == "create":
        script = read_script(args.startup_script) if args.startup_script else ""
        spec = machine_spec(args.name, args.assignments, startup_script=script, ssh_from=args.ssh_from or "")
        if args.dry_run:
            lines = [line for line in get_driver(spec.cloud).plan(spec) if line]
            out("\n".join([f"machine {spec.name} ({spec.id}) on {spec.cloud} would make:", *lines]))
            return 0
        machine = lifecycle.create(spec)
        out(
            f"machine {spec.name}: running on {spec.cloud} ({spec.id}); connect: {prog} machine ssh {spec.name}"
        )
    elif args.action == "list":
        rows = rows_of(kind=None)
        out(json.dumps(rows, indent=1) if args.json else table(rows))
    elif args.action == "ssh":
        target = lifecycle.ssh_target(lifecycle.find(args.name))
        if args.run:
            return subprocess.run(target.command(args.remote), check=False).returncode
        out(target.text(args.remote))
    elif args.action in ("stop", "start"):
        machine = lifecycle.find(args.name)
        (lifecycle.stop if args.action == "stop" else lifecycle.start)(machine)
        out(f"machine {machine.name}: {'stopped' if args.action == 'stop' else 'running'}")
    else:
        for name in args.names:
            destroy_one(name, out)
    return 0


def destroy_one(name: str, out: Printer, before: Callable[[lifecycle.Machine], None] | None = None) -> None:
    try:
        machine = lifecycle.find(name)
    except TaskError:
        out(f"machine {name}: not in the registry; nothing to destroy (already gone)")
        return
    if before is not None:
        before(machine)
    lifecycle.destroy(machine)
    out(f"machine {machine.name}: destroyed")


def read_script(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageFailure(
            f"--startup-script: cannot read {path!r} ({error}); accepted: a UTF-8 text file"
        ) from None


def rows_of(kind: str | None) -> list[dict[str, Any]]:
    """Each machine as the faces show it: status from the cloud, cost so far from the backend."""
    rows = []
    for record in registry.records():
        if kind is not None and record.get("kind") != kind:
            continue
        try:
            machine = lifecycle.Machine.of(record)
            status = record["status"] if record["status"] in ("creating", "failed") else machine.read().state
            if status in ("released", "gone") and record.get("running_since"):
                registry.update(record["id"], _billed_until_now)  # it ended itself: no more cost
                machine.record = registry.load(record["id"]) or record
            cost = machine.cost()
        except Exception as error:  # one unreadable machine must not hide the others
            status, cost = f"unknown ({error.__class__.__name__})", "n/a"
        spec = record["spec"]
        rows.append({"id": record["id"], "name": record["name"], "kind": record.get("kind", "machine"),
                     "cloud": record["cloud"], "machine": spec.get("machine", ""), "status": status,
                     "created": record["created"], "cost": cost, **_runner_fields(record)})  # fmt: skip
    return rows


def _billed_until_now(record: dict[str, Any]) -> None:
    record["billed_seconds"] = (
        float(record.get("billed_seconds", 0.0)) + time.time() - record["running_since"]
    )
    record["running_since"] = None


def _runner_fields(record: dict[str, Any]) -> dict[str, Any]:
    runner = record.get("runner")
    if not runner:
        return {}
    return {"driver": runner["driver"], "repo": runner["repo"], "labels": runner["labels"]}


def table(rows: list[dict[str, Any]], empty: str = "no machines") -> str:
    if not rows:
        return empty
    heads = ("NAME", "KIND", "CLOUD", "MACHINE", "STATUS", "COST")
    cells = [heads] + [tuple(str(row[key.lower()]) for key in heads) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(heads))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
