"""Seeds and sizes of the fault tests, and where they leave their figures for benchmarks/soak.py.

CI runs small forms; the soak sets TPI_FAULT_PREEMPTIONS=20 (and may fix TPI_FAULT_SEED) and
reads the JSON lines the tests append to TPI_FAULT_FIGURES.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, is_dataclass
from typing import Any

import pytest


def seed() -> int:
    """The run's seed: TPI_FAULT_SEED, else a fresh one. Printed, so a failure can be replayed."""
    value = int(os.environ.get("TPI_FAULT_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"fault seed {value} (replay with TPI_FAULT_SEED={value})")
    return value


# The long forms (benchmarks/soak.py sets TPI_FAULT_SOAK=1); CI covers those paths in short.
soak_only = pytest.mark.skipif(
    not os.environ.get("TPI_FAULT_SOAK"), reason="long form: benchmarks/soak.py runs it"
)


def preemptions(ci_default: int) -> int:
    return int(os.environ.get("TPI_FAULT_PREEMPTIONS") or ci_default)


def record(kind: str, backend: str, figures: Any) -> None:
    """Append one row of figures for the soak's table (only when the soak asked for them)."""
    target = os.environ.get("TPI_FAULT_FIGURES")
    if not target:
        return
    row = {"kind": kind, "backend": backend, **(asdict(figures) if is_dataclass(figures) else figures)}
    with open(target, "a") as out:
        out.write(json.dumps(row) + "\n")
