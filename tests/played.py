"""Played machines' processes: a local agent that stands for a cloud instance, and its end.

Every process of a played machine carries an environment mark (the local backend's
`TPI_PROCESS_MARK`), so the machine vanishing ends the agent and the script the agent started in
a session of its own, and anything that script left behind, as a real instance's end does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from tpi_jupyter.agent import PROCESS_MARK
from tpi_jupyter.backends.local_group import kill_marked


def spawn(command: list[str], env: dict[str, str], log: Path, mark: str) -> subprocess.Popen[bytes]:
    """Start a played machine's agent, its output to `log`, every descendant marked `mark`.

    The machine gets a HOME of its own, as a fresh instance's root has: this host's rc files are
    not the machine's (a login shell reading ~/.bashrc here waited 60 s on a stale pyenv lock)."""
    home = Path(mark) / "home"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(command, env={**env, PROCESS_MARK: mark, "HOME": str(home)}, stdout=out,
                                stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def vanish(process: subprocess.Popen[bytes], mark: str) -> None:
    """The machine is gone at once: its agent, its script and whatever they started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    left = kill_marked(mark)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    assert not left, f"played machine {mark}: still running after it vanished: {', '.join(left)}"
