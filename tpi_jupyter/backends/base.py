"""The backend contract: what a cloud driver does for `task.py`, what it declares, how it is found.

A backend gets the validated `TaskSpec` and its own typed state (a dataclass) that `task.py`
persists in the registry; it never writes the registry itself. `create` runs its steps through a
`Steps` runner whose checkpoint saves the state after every step, so a crash midway leaves a
record that `destroy` can finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

# The agent imports Timing from here on every machine start: entry points and the spec module
# are imported where they are used, so that start does not pay for them (issue 11, item 12).
if TYPE_CHECKING:
    from ..spec import TaskSpec
    from .kit.steps import Steps
    from .kit.sweep import Orphan

ENTRY_POINT_GROUP = "tpi_jupyter.backends"
MACHINE_GROUP = "tpi_jupyter.machines"  # machine-side hooks: identity(), release(machine_id)
# optional: notice() (a spot notice), script_command(script) -> argv (how the script is started),
# address() (this machine's private address; default_address() when absent)


@dataclass(frozen=True)
class Timing:
    """How often machines report (seconds): a local disk is cheap, clouds bill per request."""

    log_interval: float = 2.0
    heartbeat_interval: float = 10.0
    sync_interval: float = 30.0


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports; the core asks this instead of the cloud's name."""

    preemption: bool  # `tpi preempt` can interrupt a rank as a spot reclaim would
    sweep: bool  # the backend can list and delete resources of forgotten tasks
    ranks: Literal["claims", "index"]  # machines claim ranks in the remote, or the platform numbers them
    prices: bool  # a price lookup exists: cost() gets machine-seconds run (else elapsed; may show "n/a")
    poll_interval: float  # the least seconds between two reads of the cloud for one task
    env_protection: str  # one line: how `.tpi/env` is kept private
    timing: Timing = field(default_factory=Timing)
    # True: the backend stores the environment values itself (EnvironmentHolder), and
    # `.tpi/env` is never written to the remote
    holds_environment: bool = False


@dataclass
class Machine:
    rank: int
    boot: int
    alive: bool
    address: str = ""


@dataclass
class GroupState:
    """What the cloud says about a task's machines (the remote's reports are read by task.py)."""

    exists: bool  # the group (or its local stand-in) is still there and may run machines
    machines: list[Machine] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # {"time", "kind", "rank", "detail"}


S = TypeVar("S")


def pricing_text(spot: float) -> str:
    """The `spot` argument in words, the same in every face and plan."""
    if spot < 0:
        return "on-demand"
    if spot == 0:
        return "spot, capped at the on-demand price"
    return f"spot, at most ${spot:g}/h"


class Backend(Protocol[S]):
    name: str
    capabilities: Capabilities
    state_type: type[S]

    def new_state(self, spec: TaskSpec, deadline: float) -> S:
        """The state of a task about to be created (nothing exists yet)."""

    def remote_url(self, spec: TaskSpec, state: S) -> str:
        """Where the task's remote lives (bucket prefix, container or directory)."""

    def plan(self, spec: TaskSpec, state: S) -> list[str]:
        """What create + start would make, one line per resource (for `--dry-run`)."""

    def create(self, spec: TaskSpec, state: S, steps: Steps) -> None:
        """Create storage and a machine group of size 0, recording each resource in `state`."""

    def start(self, spec: TaskSpec, state: S) -> None:
        """Scale the group to `parallelism` once the remote holds everything."""

    def read(self, spec: TaskSpec, state: S) -> GroupState: ...

    def stop(self, spec: TaskSpec, state: S) -> None:
        """Ask every machine to stop (they sync back and report); idempotent."""

    def delete(self, spec: TaskSpec, state: S) -> None:
        """Remove every cloud resource of the task, storage included; idempotent."""

    def preempt(self, spec: TaskSpec, state: S, rank: int) -> None:
        """Interrupt one rank's machine as the cloud reclaiming a spot machine would."""

    def cost(self, spec: TaskSpec, state: S, seconds: float) -> str:
        """Cost so far as text ("n/a" without a price lookup). `seconds`: machine-seconds run
        (prices/usage.py) when `capabilities.prices`, else the task's elapsed seconds."""


class EnvironmentHolder(Protocol):
    """A backend with `capabilities.holds_environment`: it keeps the values out of the remote."""

    def hold_environment(self, spec: TaskSpec, state: Any, values: dict[str, str]) -> None:
        """Store the task's environment values (after create, before start)."""


class Sweepable(Protocol):
    """A backend with `capabilities.sweep`: lists and deletes what forgotten tasks left."""

    def caller(self) -> str:
        """Who is asking (the creator tag this caller's resources carry)."""

    def orphans(self, region: str | None) -> list[Orphan]: ...

    def delete_orphan(self, orphan: Orphan) -> None: ...


def available() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {entry.name: entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}


def get_backend(cloud: str) -> Backend[Any]:
    from importlib.metadata import entry_points

    from ..spec import SpecError

    found = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    if cloud not in found:
        raise SpecError(
            f"cloud: {cloud!r} has no backend installed in this version; accepted: {', '.join(sorted(found))}"
        )
    backend: Backend[Any] = found[cloud].load()()
    return backend


def machine_hooks(cloud: str) -> Any:
    """The module with a cloud's machine-side hooks, found by entry point."""
    from importlib.metadata import entry_points

    from ..spec import SpecError

    found = {entry.name: entry for entry in entry_points(group=MACHINE_GROUP)}
    if cloud not in found:
        raise SpecError(f"release: {cloud!r} has no machine hooks; accepted: {', '.join(sorted(found))}")
    return found[cloud].load()


def default_address() -> str:
    """The address of the default-route interface (127.0.0.1 without one).

    A UDP socket "connected" to a documentation address (TEST-NET-1) picks the route's source
    address; connecting a UDP socket sends no packet."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def machine_address(cloud: str) -> str:
    """This machine's private address: the cloud's `address()` hook when it has one, else the
    default-route interface's (clouds need no core edit for either)."""
    hook = getattr(machine_hooks(cloud), "address", None) if cloud else None
    return str(hook()) if hook is not None else default_address()
