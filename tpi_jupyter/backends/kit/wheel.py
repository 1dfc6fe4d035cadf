"""Shipping the agent to machines: its wheel and the lock of exact dependency versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ... import agent_wheel, layout

AGENT_PREFIX = ".tpi/agent"


@dataclass(frozen=True)
class Shipped:
    wheel_key: str  # relative to the task's remote
    lock_key: str
    extra: str


def keys(extra: str) -> Shipped:
    """Where the wheel and its lock go, known before they are uploaded (the boot script needs them)."""
    return Shipped(
        layout.join(AGENT_PREFIX, agent_wheel.wheel_name()),
        layout.join(AGENT_PREFIX, agent_wheel.LOCK_NAME),
        extra,
    )


def ship(put: Callable[[str, bytes], object], extra: str) -> Shipped:
    """Upload the wheel and the lock with `put(relative_key, data)`."""
    shipped = keys(extra)
    _, wheel = agent_wheel.build()
    put(shipped.wheel_key, wheel)
    put(shipped.lock_key, agent_wheel.lock_text(extra).encode())
    return shipped
