"""`tpi`: the notebook's verbs outside notebooks. Exit 2 on bad input, 1 when a task fails."""

from __future__ import annotations

import sys

from . import commands
from .task import Task


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    try:
        args = commands.parse_words(words)
        if args.verb == "run":
            script = _read_script(args.script)
            launched = commands.run_task(
                args.assignments, script, defaults={}, wait=args.wait, dry_run=args.dry_run, out=print
            )
            if launched.task is not None and not args.wait:
                print(launched.task.summary())
            return 0
        commands.run_verb(args, print, confirm=_confirm)
        if args.verb == "attach":
            print(commands.status_text(Task.find(args.task)))
        return 0
    except commands.ERRORS as error:
        print(f"tpi: error: {error}", file=sys.stderr)
        return 2
    except commands.TaskFailed as failure:
        print("\n".join(failure.lines()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _confirm(question: str) -> bool:
    """Ask on a terminal; never when input is not interactive."""
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


def _read_script(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise commands.UsageFailure(
            f"--script: cannot read {path!r} ({error.strerror}); accepted: a readable file or -"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
