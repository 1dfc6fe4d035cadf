"""What every backend asks of a multi-node task's spec."""

from __future__ import annotations

from ...spec import SpecError, TaskSpec


def multi_node(spec: TaskSpec) -> bool:
    return spec.parallelism > 1


def refuse_placement(spec: TaskSpec, cloud: str, why: str) -> None:
    """One line before anything exists: `placement` means something on AWS only."""
    if spec.placement != "none":
        raise SpecError(f"placement: {spec.placement} is not available on {cloud} ({why}); accepted: none")
