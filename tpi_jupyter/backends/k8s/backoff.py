"""How long the Job controller waits before it recreates an index's failed or evicted pod.

Kubernetes 1.37 (`getRemainingTimePerIndex`) waits 10 s x 2^(n-1) after an index's n-th failed
pod, at most 10 minutes, and counts failures its `podFailurePolicy` ignores (evictions) in n
(kubernetes#130881). No Job field changes it: the events name the wait, so a rank that is not
back at once is explained.
"""

from __future__ import annotations

from typing import Any

BASE, CAP = 10, 600  # seconds: the controller's DefaultJobPodFailureBackOff, MaxJobPodFailureBackOff
FAILURES = "batch.kubernetes.io/job-index-failure-count"
IGNORED = "batch.kubernetes.io/job-index-ignored-failure-count"


def _count(notes: dict[str, str], key: str) -> int:
    value = notes.get(key, "0")
    return int(value) if value.isdigit() else 0


def delay(pod: Any) -> int:
    """Seconds between this pod's end and its replacement, when it is the index's last failure."""
    notes = pod.metadata.annotations or {}
    failures = 1 + _count(notes, FAILURES) + _count(notes, IGNORED)
    return min(CAP, BASE << min(failures - 1, 10))


def note(pod: Any) -> str:
    return f"the Job controller recreates it after its back-off, {delay(pod)} s"
