"""The Job controller's replacement wait, as the k8s backend names it in an eviction's event
(measured on the real controller: tests/faults/test_k8s_evictions.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tpi_jupyter.backends.k8s import backoff


def pod(failures: str | None, ignored: str | None) -> SimpleNamespace:
    notes = {k: v for k, v in ((backoff.FAILURES, failures), (backoff.IGNORED, ignored)) if v is not None}
    return SimpleNamespace(metadata=SimpleNamespace(annotations=notes or None))


@pytest.mark.parametrize(
    ("failures", "ignored", "seconds"),
    [
        (None, None, 10),
        ("0", None, 10),
        ("0", "1", 20),
        ("1", "2", 80),
        ("0", "5", 320),
        ("0", "6", 600),
        ("0", "99", 600),
        ("x", "-3", 10),
    ],
)
def test_the_wait_doubles_with_every_failure_evictions_included(
    failures: str | None, ignored: str | None, seconds: int
) -> None:
    assert backoff.delay(pod(failures, ignored)) == seconds
    assert backoff.note(pod(failures, ignored)).endswith(f", {seconds} s")
