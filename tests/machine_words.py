"""What the machine and runner tests share: the `tpi` command in-process, and a clean-up."""

from __future__ import annotations

import pytest

from tpi_jupyter import cli
from tpi_jupyter.machines import lifecycle, registry


def tpi(capsys: pytest.CaptureFixture[str], *words: str) -> tuple[int, str]:
    """Run `tpi WORDS` here; its exit code and everything it printed."""
    code = cli.main(list(words))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def destroy_all() -> None:
    """Whatever a failed test left: every machine in the registry, while its cloud still answers."""
    for record in registry.records():
        lifecycle.destroy(lifecycle.Machine.of(record))
