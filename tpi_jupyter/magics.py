"""`%%tpi` and `%tpi`: parse the line, dispatch to `commands`, show errors as one line."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from traitlets import Dict, Int, TraitError, Unicode, validate

from . import commands
from .task import format_line
from .textview import text_report, widgets_enabled


class SettingError(TraitError):
    """A bad `%config TpiMagics.*` value: IPython shows this one line, not a traceback."""

    def _render_traceback_(self) -> list[str]:
        return [f"{self.__class__.__name__}: {self}"]


@magics_class
class TpiMagics(Magics):
    default_cloud = Unicode("local", help="cloud used when a %%tpi cell names none").tag(config=True)
    defaults = Dict(
        help="default arguments for every %%tpi cell, e.g. {'spot': '0', 'region': 'eu-west'}"
    ).tag(config=True)
    log_tail_lines = Int(20, help="log lines shown when a waited-on task fails").tag(config=True)
    widget_log_lines = Int(200, help="log lines a task widget keeps (older ones are dropped)").tag(
        config=True
    )

    @validate("log_tail_lines", "widget_log_lines")
    def _not_negative(self, proposal: Any) -> int:
        name, value = proposal["trait"].name, proposal["value"]
        if value < 0:
            raise SettingError(f"TpiMagics.{name}: {value} is out of range; accepted: a whole number >= 0")
        return int(value)

    # The line is taken literally, like the CLI's words: no `$var` / `{expr}` expansion, which
    # would turn shell syntax meant for the machines (environment=X=$HOME) into local values.
    @line_cell_magic
    @no_var_expand
    def tpi(self, line: str, cell: str | None = None) -> Any:
        try:
            return self._cell(line, cell) if cell is not None else self._line(line)
        except commands.ERRORS as error:
            raise UsageError(str(error)) from None
        except SystemExit:  # --help printed the usage
            return None

    tpi.__doc__ = commands.magic_help()

    def _cell(self, line: str, cell: str) -> Any:
        args = commands.parse_cell_line(line)
        defaults = {"cloud": self.default_cloud, **self.defaults}
        view = None
        if not args.wait and not args.dry_run and widgets_enabled():
            from .widgets import TaskWidget

            view = TaskWidget(title="launching", tail_lines=self.widget_log_lines)
        try:
            launched = commands.run_task(
                args.assignments, cell, defaults=defaults, wait=args.wait, dry_run=args.dry_run,
                files=args.files, out=print, tail_lines=self.log_tail_lines, prog="%tpi", as_json=args.json,
                manifests=args.manifests,
                progress=view.upload_progress if view else None,
            )  # fmt: skip
        except (commands.WaitInterrupted, commands.TaskFailed) as error:
            if args.bind:
                self.shell.user_ns[args.bind] = error.task  # type: ignore[union-attr]
            raise
        handle = launched.task or launched.plan
        if args.bind:
            self.shell.user_ns[args.bind] = handle  # type: ignore[union-attr]
        if view is not None and launched.task is not None:
            view.attach(launched.task)
            view.show()
            return None
        return launched.task if launched.task is not None and not args.wait else None

    def _line(self, line: str) -> Any:
        words = commands.split(line)
        if not words or words[0] in ("help", "-h", "--help"):
            print(commands.magic_help())
            return None
        if words[0] in ("machine", "runner"):  # long-lived machines and CI runners
            from .machines.faces import magic_words

            return magic_words(words)
        if words[0] == "run":
            raise commands.UsageFailure(
                "run: use the cell magic %%tpi key=value ... with the script as its body"
            )
        args = commands.parse_words(words, "%tpi")
        if args.verb == "map":  # a map run shows itself (widget or text) as the cell's value
            from .fanout.face import map_verb

            return map_verb(args, {"cloud": self.default_cloud, **self.defaults}, print)
        if args.verb == "panel" and widgets_enabled():
            from .widgets import TaskPanel

            return TaskPanel()
        task = commands.run_verb(args, print)
        if task is None:
            return None
        if "map" in task.record:  # attach to a map run: its progress view
            from .fanout.run import MapRun

            return MapRun(task)
        if widgets_enabled():
            from .widgets import TaskWidget

            return TaskWidget(task, tail_lines=self.widget_log_lines)
        snapshot = task.read()
        from .task import LogTail

        width = int(task.spec["parallelism"])
        lines = [format_line(rank, text, width) for rank, _, text in LogTail(task).poll(snapshot.log_sizes)]
        print(text_report(task, snapshot, lines[-self.log_tail_lines :]))
        return None


def register(ipython: Any) -> None:
    magics = TpiMagics(shell=ipython, parent=ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)  # so that %config TpiMagics.* reaches it


def unregister(ipython: Any) -> None:
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, TpiMagics)]
