"""`tpi runner create|list|destroy` (and `%tpi runner ...`): a CI runner on a long-lived machine."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..grammar import _Parser
from ..machines import lifecycle
from ..machines.driver import MACHINE_KEYS, get_driver, machine_spec
from ..machines.verbs import destroy_one, parse, rows_of, table
from ..spec import SpecError, random_name
from ..task import TaskError
from . import forge
from .program import RunnerSettings, startup_script

Printer = Callable[[str], None]
_DURATION = re.compile(r"([0-9]+)([smh]?)")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parser(prog: str) -> argparse.ArgumentParser:
    top = _Parser(prog=f"{prog} runner", description="self-hosted CI runners on a machine")
    verbs = top.add_subparsers(dest="action", metavar="{create,list,destroy}", parser_class=_Parser)
    verbs.required = True
    create = verbs.add_parser("create", help="register a runner and start its machine",
                              description=f"machine keys: {', '.join(MACHINE_KEYS)}")  # fmt: skip
    create.add_argument("assignments", nargs="*", metavar="key=value")
    create.add_argument("--driver", required=True, choices=forge.DRIVERS)
    create.add_argument("--repo", required=True, metavar="URL")
    create.add_argument("--labels", required=True, metavar="a,b")
    create.add_argument("--idle-timeout", default="5m", metavar="DURATION", help="e.g. 300s, 5m, 1h")
    create.add_argument("--single", action="store_true", help="take one job, then unregister")
    create.add_argument("--name", default="", help="the runner's (and its machine's) name")
    create.add_argument("--api-url", default="", help="the forge's REST base (GitHub Enterprise, GitLab)")
    create.add_argument("--ssh-from", metavar="CIDR", default=None, help="who may reach port 22")
    create.add_argument("--stand-in", action="store_true",
                        help="run the project's stand-in runner instead of the real one (tests)")  # fmt: skip
    verbs.add_parser("list", help="every runner").add_argument("--json", action="store_true")
    verbs.add_parser("destroy", help="unregister and remove the machine").add_argument(
        "names", metavar="NAME", nargs="+"
    )
    return top


def duration(text: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if not match or int(match[1]) == 0:
        raise SpecError(f"--idle-timeout: {text!r} is not a duration; accepted: 300s, 5m, 1h (more than 0)")
    return int(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def labels(text: str) -> list[str]:
    found = [label.strip() for label in text.split(",") if label.strip()]
    bad = [label for label in found if not _LABEL.fullmatch(label)]
    if not found or bad:
        raise SpecError(
            f"--labels: {bad[0] if bad else text!r} is not a label; accepted: a,b (letters, digits, . _ -)"
        )
    return found


def main(words: Sequence[str], out: Printer, prog: str = "tpi") -> int:
    args = parse(parser(prog), words)
    if args.action == "create":
        create(args, out, prog)
    elif args.action == "list":
        rows = rows_of(kind="runner")
        out(json.dumps(rows, indent=1) if args.json else table(rows, "no runners"))
    else:
        secret = forge.token()  # before anything is removed: unregistering needs it
        for name in args.names:
            destroy_one(name, out, before=lambda machine: _unregister(machine, secret, out))
    return 0


def create(args: argparse.Namespace, out: Printer, prog: str) -> None:
    name = args.name or random_name()
    settings = RunnerSettings(forge.parse_repo(args.driver, args.repo, args.api_url), labels(args.labels),
                              duration(args.idle_timeout), args.single, args.stand_in)  # fmt: skip
    spec = machine_spec(name, args.assignments, ssh_from=args.ssh_from or "", kind="runner")
    driver = get_driver(spec.cloud)  # refuses a cloud without machines before the forge is asked
    if not driver.release_command:  # a runner's machine must be able to release itself
        raise SpecError(f"cloud: runners on {spec.cloud} are not built yet; accepted: local, aws, gcp, k8s")
    forge_client = forge.client(settings.repo, forge.token())
    registration = _checked(lambda: forge_client.register(spec.id, settings.labels))
    script = startup_script(settings, registration, driver.release_command)
    runner = {"driver": settings.repo.driver, "repo": settings.repo.url, "api": settings.repo.api,
              "labels": settings.labels, "idle_timeout": settings.idle_timeout,
              "single": settings.takes_one_job, "runner_id": registration.runner_id}  # fmt: skip
    try:
        lifecycle.create(replace(spec, startup_script=script), {"runner": runner})
    except BaseException:
        _checked(lambda: forge_client.unregister(registration.runner_id))  # the registration goes too
        raise
    jobs = "one job" if settings.takes_one_job else f"jobs until idle for {args.idle_timeout}"
    out(f"runner {name}: registered on {settings.repo.url} as runner {registration.runner_id} with labels "
        f"{','.join(settings.labels)}; takes {jobs}, then releases its {spec.cloud} machine; "
        f"remove it with {prog} runner destroy {name}")  # fmt: skip


def _checked(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except forge.ForgeError as error:
        raise TaskError(f"runner: the forge refused ({error})") from None


def _unregister(machine: lifecycle.Machine, secret: str, out: Printer) -> None:
    runner = machine.record.get("runner") or {}
    if not runner:
        raise TaskError(f"runner {machine.name}: not a runner; accepted: tpi machine destroy {machine.name}")
    repo = forge.parse_repo(runner["driver"], runner["repo"], runner["api"])
    removed = _checked(lambda: forge.client(repo, secret).unregister(int(runner["runner_id"])))
    out(f"runner {machine.name}: " + ("unregistered" if removed else "already unregistered (by itself)"))
