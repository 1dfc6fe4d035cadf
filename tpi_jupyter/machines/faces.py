"""The `machine` and `runner` words of `tpi` and `%tpi`, dispatched to their own parsers."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def run_words(words: Sequence[str], out: Callable[[str], None], prog: str = "tpi") -> int:
    if words[0] == "machine":
        from .verbs import main
    else:
        from ..runners.verbs import main
    return main(words[1:], out, prog)
