"""`tpi`: the notebook's verbs outside notebooks. Exit 2 on bad input, 1 when a task fails."""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from . import commands
from .sync import Progress
from .task import human_bytes


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:
        # The reader went away (`tpi logs X | head`): end quietly, as other tools do. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(words: list[str]) -> int:
    try:
        if words and words[0] in ("machine", "runner"):  # long-lived machines and CI runners
            from .machines.faces import run_words

            return run_words(words, print)
        args = commands.parse_words(words)
        if args.verb == "run":
            script = _read_script(args.script)
            launched = commands.run_task(
                args.assignments, script, defaults={}, wait=args.wait, dry_run=args.dry_run, files=args.files,
                manifests=args.manifests, out=print, as_json=args.json,
                progress=ProgressBar("uploading"),
            )  # fmt: skip
            if launched.task is not None and not args.wait:
                print(launched.task.summary())
            return 0
        if args.verb == "map":
            from .fanout.face import map_verb

            run = map_verb(args, {}, print)
            print(run.summary())
            counts = run.counts()  # every task done: 0; a failed task or an unfinished run: 1
            return 0 if counts.done == counts.total else 1
        task = commands.run_verb(args, print, confirm=_confirm, progress=ProgressBar("downloading"))
        if task is not None and "map" in task.record:  # attach to a map run: its counts
            from .fanout.run import MapRun

            print(MapRun(task).summary())
        elif task is not None:  # attach: the CLI shows the status
            print(commands.status_text(task))
        return 0
    except commands.ERRORS as error:
        print(f"tpi: error: {error}", file=sys.stderr)
        return 2
    except commands.TaskFailed as failure:
        print("\n".join(failure.lines()), file=sys.stderr)
        return 1
    except commands.WaitInterrupted as interrupted:
        print(f"\ntpi: {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


class ProgressBar:
    """The sync progress callback for a terminal: one line, redrawn; silent when not a terminal.

    Redraws at most `INTERVAL` apart (the last frame always), and never shows less than it did:
    parallel transfers may report out of order.
    """

    WIDTH = 24
    INTERVAL = 0.2

    def __init__(self, verb: str, stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.verb = verb
        self.stream = stream or sys.stderr
        self.clock = clock
        self.shown = Progress()
        self.drawn_at = -math.inf
        self.finished = False

    def __call__(self, progress: Progress) -> None:
        if not self.stream.isatty() or not progress.files_total:
            return
        totals = (progress.files_total, progress.bytes_total)
        restarted = self.finished and progress.files_done < progress.files_total  # the next sync
        if restarted or totals != (self.shown.files_total, self.shown.bytes_total):
            self.shown, self.drawn_at, self.finished = Progress(0, totals[0], 0, totals[1]), -math.inf, False
        if self.finished:
            return  # the last frame is drawn once
        self.shown.files_done = max(self.shown.files_done, progress.files_done)
        self.shown.bytes_done = max(self.shown.bytes_done, progress.bytes_done)
        done = self.shown.files_done >= self.shown.files_total
        now = self.clock()
        if not done and now - self.drawn_at < self.INTERVAL:
            return
        self.drawn_at, self.finished = now, done
        self.stream.write(self._frame() + ("\n" if done else ""))
        self.stream.flush()

    def _frame(self) -> str:
        shown = self.shown
        fraction = min(shown.bytes_done / shown.bytes_total, 1.0) if shown.bytes_total else 1.0
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (f"\r{self.verb} [{bar}] {shown.files_done}/{shown.files_total} files, "
                f"{human_bytes(shown.bytes_done)} of {human_bytes(shown.bytes_total)}")  # fmt: skip


def _confirm(question: str) -> bool:
    """Ask on a terminal; never when input is not interactive."""
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


def _read_script(path: str) -> str:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as error:
        raise commands.UsageFailure(
            f"--script: cannot read {path!r} ({error.strerror}); accepted: a readable file or -"
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise commands.UsageFailure(
            f"--script: {path!r} is not UTF-8 text (byte {data[error.start]:#04x} at offset {error.start}); "
            "accepted: a UTF-8 text file"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
