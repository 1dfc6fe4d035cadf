"""The words of `%%tpi`, `%tpi` and `tpi`: parsers, comments, help generated from the spec table."""

from __future__ import annotations

import argparse
import keyword
import re
import shlex
import textwrap
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .spec import ARGUMENT_TABLE


class UsageFailure(Exception):
    """Bad command words; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        usage = " ".join(self.format_usage().split()).removeprefix("usage: ")
        raise UsageFailure(f"{message}; usage: {usage}")


VERBS = ("run", "list", "panel", "status", "logs", "events", "stop", "pull", "destroy", "attach", "preempt",
         "sweep", "prices")  # fmt: skip


def _launch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("assignments", nargs="*", metavar="key=value", help="the arguments below")
    parser.add_argument("--wait", action="store_true", help="block, stream the log, fail if the task fails")
    parser.add_argument("--dry-run", action="store_true", help="show what would be created; create nothing")
    parser.add_argument("--files", action="store_true", help="with --dry-run: list every file to upload")
    parser.add_argument(
        "--json", action="store_true", help="with --dry-run: the plan as JSON, with request bodies"
    )
    parser.add_argument("--manifests", action="store_true",
                        help="with --dry-run: print the objects a Kubernetes task sends, as YAML")  # fmt: skip


def arguments_help(width: int = 100) -> str:
    """Every key=value argument with its default and what is accepted, from spec's one table."""
    lines = ["arguments (key=value; environment, tags and exclude may repeat):"]
    for argument in ARGUMENT_TABLE:
        lines.append(f"  {argument.name:<15} default: {argument.shown}")
        lines.extend(textwrap.wrap(f"accepted: {argument.accepted}", width, initial_indent=" " * 18,
                                   subsequent_indent=" " * 28))  # fmt: skip
    return "\n".join(lines)


def _parser(prog: str, description: str = "", epilog: str = "", add_help: bool = True) -> _Parser:
    return _Parser(prog=prog, description=description, epilog=epilog, add_help=add_help,
                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip


def cell_parser() -> argparse.ArgumentParser:
    parser = _parser("%%tpi", "Launch the cell body as a task's script.", arguments_help())
    _launch_options(parser)
    parser.add_argument("-o", dest="bind", metavar="NAME", help="bind the task handle (or plan) to NAME")
    return parser


VERB_HELP = {
    "list": "every task in the registry",
    "panel": "every task with live status (a widget in notebooks)",
    "status": "status, ranks and events",
    "logs": "the task's logs",
    "events": "the task's events",
    "stop": "stop the machines (they sync back first)",
    "pull": "download output into the workdir",
    "destroy": "download output, then remove every resource; a task already gone is fine",
    "attach": "show the task again (after a kernel restart)",
    "preempt": "interrupt a rank's machine as a spot reclaim would",
    "sweep": "list resources tagged tpi-task whose task is gone; delete with --yes",
    "prices": "machines matching QUERY across clouds and regions, cheapest first; "
    "prices refresh [aws|gcp|az] updates the catalogue",
}


def verb_parser(prog: str = "tpi") -> argparse.ArgumentParser:
    return _verbs(prog)[0]


def _verbs(prog: str) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The verb parser and its sub-parsers by verb."""
    parser = _parser(prog)
    if prog == "tpi":
        parser.add_argument("--version", action="version", version=f"tpi-jupyter {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="{" + ",".join(VERBS) + "}", parser_class=_Parser)
    verbs.required = True
    verbs.add_parser("run", help="launch a task: run key=value ... --script FILE [--wait] [--dry-run]")
    for verb in VERBS[1:]:
        sub = verbs.add_parser(verb, help=VERB_HELP[verb], description=VERB_HELP[verb])
        if verb in ("list", "status"):
            sub.add_argument("--json", action="store_true", help="print JSON instead of text")
        if verb == "destroy":
            sub.add_argument("task", metavar="NAME", nargs="+")
        elif verb not in ("list", "panel", "sweep", "prices"):
            sub.add_argument("task", metavar="NAME")
    logs = verbs.choices["logs"]
    logs.add_argument(
        "--follow", "-f", action="store_true", help="stream until the task ends (exit 1 if it failed)"
    )
    logs.add_argument("--timestamps", "-t", action="store_true", help="prefix each line with its UTC time")
    verbs.choices["preempt"].add_argument("--rank", type=_rank, default=0)
    sweep = verbs.choices["sweep"]
    sweep.add_argument("cloud", metavar="CLOUD")
    sweep.add_argument("--yes", "-y", action="store_true", help="delete what is found without asking")
    sweep.add_argument("--region", help="where to look (a region, or all); default: the usual ones")
    sweep.add_argument("--all", dest="everyone", action="store_true",
                       help="include other creators' orphans (default: only yours)")  # fmt: skip
    _prices_options(verbs.choices["prices"])
    return parser, dict(verbs.choices)


def _prices_options(prices: argparse.ArgumentParser) -> None:
    prices.add_argument("query", nargs="*", metavar="QUERY",
                        help="m+t4, t4, g4dn.xlarge or cpu>=8,memory>=32,gpu=t4 (none: every type); "
                        "or: refresh [aws|gcp|az]")  # fmt: skip
    prices.add_argument("--cloud", default="", help="only this cloud (aws, gcp, az)")
    prices.add_argument("--region", default="", help="only this region (generic or native)")
    prices.add_argument("--spot", action="store_true", help="order by spot price")
    prices.add_argument(
        "--all", dest="every", action="store_true", help="every match (default: the 30 cheapest)"
    )


def _rank(text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):  # int() would also take "1_0" and other scripts' digits
        raise argparse.ArgumentTypeError(f"{text!r} is not a rank; accepted: 0, 1, ... below parallelism")
    return int(text)


def run_parser(prog: str = "tpi run") -> argparse.ArgumentParser:
    parser = _parser(prog, "Launch a task running FILE on its machines.", arguments_help())
    _launch_options(parser)
    parser.add_argument("--script", required=True, metavar="FILE", help="the script to run ('-' for stdin)")
    return parser


def magic_help() -> str:
    """`%tpi?` and `%tpi --help`: the usage of every verb, generated from the parsers."""
    _, verbs = _verbs("%tpi")
    parsers = [cell_parser(), *(sub for verb, sub in verbs.items() if verb != "run")]
    usage = [" ".join(p.format_usage().replace(" [-h]", "").split()[1:]) for p in parsers]
    usage[0] += "   (the cell body is the script)"
    return "\n".join([*usage, "", arguments_help()])


def parse_words(words: Sequence[str], prog: str = "tpi") -> argparse.Namespace:
    """Verbs and their options; `run` takes key=value words and flags in any order."""
    if words and words[0] == "run":
        args = run_parser(f"{prog} run").parse_intermixed_args(list(words[1:]))
        args.verb = "run"
        return args
    return verb_parser(prog).parse_args(list(words))


def strip_comment(line: str) -> str:
    """Cut a trailing `# comment` as a shell does: only a `#` that starts a word, outside quotes.

    shlex's own comment handling also cuts inside a word (`name=run#2`), which a shell does not.
    """
    quote, escaped, word_start = "", False, True
    for index, char in enumerate(line):
        if escaped:  # a backslash-escaped character is literal
            escaped = False
        elif quote:
            quote = "" if char == quote else quote
            escaped = quote == '"' and char == "\\"
        elif char == "#" and word_start:
            return line[:index]
        elif char in "'\"\\":
            quote, escaped = ("", True) if char == "\\" else (char, False)
        else:
            word_start = char.isspace()
            continue
        word_start = False
    return line


def split(line: str) -> list[str]:
    try:
        return shlex.split(strip_comment(line))
    except ValueError as error:
        raise UsageFailure(
            f"malformed line: {error} in {line!r}; accepted: key=value words, quoted with ' or \""
        ) from None


def parse_cell_line(line: str) -> argparse.Namespace:
    args = cell_parser().parse_intermixed_args(split(line))
    if args.bind is not None and (not args.bind.isidentifier() or keyword.iskeyword(args.bind)):
        raise UsageFailure(
            f"-o: {args.bind!r} is not a Python variable name; accepted: an identifier such as task"
        )
    return args
