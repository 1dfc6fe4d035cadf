"""What an agent watches while its script runs: a user stop in the remote, the cloud's notice.

A user stop is a key in the remote (`.tpi/control/stop`), never a signal: a signal also comes
when a cloud reclaims the machine, and the two must end differently. A stopped rank reports
"stopped" and releases its machine; an interrupted rank pushes its data and exits without a
status and without releasing, so the group respawns it and the next boot resumes.

No IPython or Jupyter imports: this runs on bare machines.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Callable

STOP_KEY = ".tpi/control/stop"

Check = Callable[[], "str | None"]  # a reason when it fires, else None


class Watch:
    """Polls checks in a thread; the first that fires sets its event with a reason."""

    def __init__(self, interval: float, checks: dict[str, tuple[Check, threading.Event]]):
        self.interval, self.checks = interval, checks
        self.reasons: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tpi-watch", daemon=True)

    def start(self) -> Watch:
        if self.checks:
            self._thread.start()
        return self

    def poll(self) -> None:
        for name, (check, event) in self.checks.items():
            if event.is_set():
                continue
            try:
                reason = check()
            except Exception as error:  # a flaky remote or metadata service: ask again next tick
                print(f"tpi-agent: watching {name} failed: {error}", file=sys.stderr)
                continue
            if reason:
                self.reasons[name] = reason
                event.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def stop_requested(exists: Callable[[str], bool]) -> Check:
    """A check firing once the remote holds the user's stop key."""
    return lambda: "stop requested by the user" if exists(STOP_KEY) else None


def shutting_down() -> bool:
    """Whether the operating system is shutting down (systemd says "stopping")."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return False
    try:
        state = subprocess.run([systemctl, "is-system-running"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return state.stdout.strip() == "stopping"
