"""The script's raw output as log lines: carriage returns, secret masking, draining at exit.

Runs on bare machines with the agent: standard library only.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections.abc import Callable, Iterable

MASK_MIN = 4  # shorter imported values are not masked: "1" would blank every digit
MAX_LINE = 64 * 1024  # an unterminated run of bytes longer than this is cut into a line
EXIT_IDLE = 0.05  # after the script exits, the pipe counts as drained once idle this long
EXIT_DRAIN = 1.0  # at most this long reading what a background child still writes


def mask_values(values: Iterable[str]) -> list[str]:
    """What to blank in log lines: every value, and each line of a multi-line one (a PEM key).

    Logs are masked line by line, so a value spanning lines never appears whole in one; each
    of its lines long enough to mask is blanked on its own. Longest first, so a value wins over
    its parts.
    """
    found: set[str] = set()
    for value in values:
        for part in (value, *value.replace("\r\n", "\n").split("\n")):
            part = part.strip("\r")
            if len(part.strip()) >= MASK_MIN:
                found.add(part)
    return sorted(found, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def latest_state(raw: bytes) -> bytes:
    """What a terminal shows of a line rewritten with carriage returns: its last state."""
    for segment in reversed(raw.split(b"\r")):
        if segment:
            return segment
    return b""


class Lines:
    """Splits output into lines; a line rewritten with `\\r` (a progress bar) is emitted at
    most once per `interval` while it changes, and its last state when it ends."""

    def __init__(
        self, emit: Callable[[str], None], interval: float, clock: Callable[[], float] = time.monotonic
    ):
        self.emit, self.interval, self.clock = emit, interval, clock
        self._partial = b""
        self._shown: bytes | None = None  # the state of the current line already emitted
        self._shown_at = float("-inf")

    def feed(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self._finish(latest_state(raw))
        if len(self._partial) > MAX_LINE:
            self._finish(latest_state(self._partial))
            self._partial = b""
        self.tick()

    def tick(self) -> None:
        """Emit the progress line's newest state if the last one is older than the interval."""
        if b"\r" not in self._partial or self.clock() - self._shown_at < self.interval:
            return
        state = latest_state(self._partial)
        if state and state != self._shown:
            self._send(state)
            self._shown, self._shown_at = state, self.clock()

    def close(self) -> None:
        """The output ended: whatever is left is the last line."""
        if self._partial:
            self._finish(latest_state(self._partial))
        self._partial = b""

    def _finish(self, state: bytes) -> None:
        if self._shown is None or state != self._shown:
            self._send(state)
        self._shown, self._shown_at = None, float("-inf")

    def _send(self, state: bytes) -> None:
        self.emit(state.decode("utf-8", "replace"))


def read_output(fd: int, lines: Lines, exited: threading.Event, wake_fd: int) -> None:
    """Read the script's output until EOF, or until the script has exited and the pipe is idle.

    A background child (`sleep 30 &`) keeps the pipe open after the script exits: the task ends
    with the script, not with EOF. `wake_fd` becomes readable when the script exits.
    """
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    selector.register(wake_fd, selectors.EVENT_READ)
    drain_until = float("inf")
    try:
        while time.monotonic() < drain_until:
            timeout = EXIT_IDLE if exited.is_set() else lines.interval
            ready = [key.fd for key, _ in selector.select(timeout)]
            if exited.is_set() and drain_until == float("inf"):
                drain_until = time.monotonic() + EXIT_DRAIN
                selector.unregister(wake_fd)
            if fd in ready:
                data = os.read(fd, 65536)
                if not data:
                    break
                lines.feed(data)
            elif exited.is_set() and not ready:
                break  # the script is gone and nothing more came
            lines.tick()
    finally:
        selector.close()
        lines.close()
