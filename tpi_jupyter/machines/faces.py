"""The `machine` and `runner` words of `tpi` and `%tpi`, dispatched to their own parsers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def run_words(words: Sequence[str], out: Callable[[str], None], prog: str = "tpi") -> int:
    if words[0] == "machine":
        from .verbs import main
    else:
        from ..runners.verbs import main
    return main(words[1:], out, prog)


def parse_words(words: Sequence[str], prog: str = "tpi") -> argparse.Namespace:
    """The words as `run_words` reads them, without acting (one-line UsageFailure when wrong)."""
    from .verbs import parse
    from .verbs import parser as machine_parser

    if words[0] == "machine":
        return parse(machine_parser(prog), words[1:])
    from ..runners.verbs import parser as runner_parser

    return parse(runner_parser(prog), words[1:])


def magic_words(words: Sequence[str]) -> Any:
    """`%tpi machine|runner ...`: `list` is a live table when widgets can show, else text."""
    from ..textview import widgets_enabled

    if list(words[1:]) == ["list"] and widgets_enabled():
        from .widget import MachinePanel

        return MachinePanel("runner" if words[0] == "runner" else None)
    run_words(words, print, "%tpi")
    return None


def list_section() -> str:
    """Machines and runners under `tpi list`'s tasks ("" when there are none)."""
    from .verbs import rows_of, table

    rows = rows_of(kind=None)
    return f"\nmachines:\n{table(rows)}" if rows else ""
