"""`tpi`: the notebook's verbs outside notebooks. Exit 2 on bad input, 1 when a task fails."""

from __future__ import annotations

import sys
from typing import TextIO

from . import commands
from .sync import Progress
from .task import Task, human_bytes


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    try:
        args = commands.parse_words(words)
        if args.verb == "run":
            script = _read_script(args.script)
            launched = commands.run_task(
                args.assignments, script, defaults={}, wait=args.wait, dry_run=args.dry_run, files=args.files,
                out=print,
                progress=ProgressBar("uploading"),
            )  # fmt: skip
            if launched.task is not None and not args.wait:
                print(launched.task.summary())
            return 0
        commands.run_verb(args, print, confirm=_confirm, progress=ProgressBar("downloading"))
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


class ProgressBar:
    """The sync progress callback for a terminal: one line, redrawn; silent when not a terminal."""

    WIDTH = 24

    def __init__(self, verb: str, stream: TextIO | None = None):
        self.verb = verb
        self.stream = stream or sys.stderr

    def __call__(self, progress: Progress) -> None:
        if not self.stream.isatty() or not progress.files_total:
            return
        fraction = progress.bytes_done / progress.bytes_total if progress.bytes_total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = (f"\r{self.verb} [{bar}] {progress.files_done}/{progress.files_total} files, "
                f"{human_bytes(progress.bytes_done)} of {human_bytes(progress.bytes_total)}")  # fmt: skip
        done = progress.files_done >= progress.files_total
        self.stream.write(line + ("\n" if done else ""))
        self.stream.flush()


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
