"""A Pub/Sub subscription's backlog from Cloud Monitoring (Pub/Sub itself has no call for it).

`num_undelivered_messages` (waiting) and `num_outstanding_messages` (delivered, not acked), the
newest point of the last ten minutes; the service samples them every minute, so they lag. Called
through google-auth's AuthorizedSession (the REST API); `TPI_GCP_MONITORING_ENDPOINT` moves it.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import Any

from .queue import Depth

MONITORING = "https://monitoring.googleapis.com"
METRICS = {
    "waiting": "pubsub.googleapis.com/subscription/num_undelivered_messages",
    "in_flight": "pubsub.googleapis.com/subscription/num_outstanding_messages",
}
WINDOW = timedelta(minutes=10)


def _session() -> Any:
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    scopes = ["https://www.googleapis.com/auth/monitoring.read"]
    return AuthorizedSession(google.auth.default(scopes=scopes)[0])  # type: ignore[no-untyped-call]


def newest(answer: dict[str, Any]) -> int:
    """The newest point's value of a timeSeries.list answer (points come newest first); 0 if none."""
    for series in answer.get("timeSeries", []):
        for point in series.get("points", [])[:1]:
            value = point.get("value", {})
            return int(value.get("int64Value") or value.get("doubleValue") or 0)
    return 0


def subscription_depth(project: str, subscription: str, session: Any = None) -> Depth:
    session = session or _session()
    base = os.environ.get("TPI_GCP_MONITORING_ENDPOINT") or MONITORING
    end = datetime.now(timezone.utc)
    counts = {}
    for field, metric in METRICS.items():
        params = {
            "filter": f'metric.type = "{metric}" AND resource.labels.subscription_id = "{subscription}"',
            "interval.startTime": (end - WINDOW).isoformat().replace("+00:00", "Z"),
            "interval.endTime": end.isoformat().replace("+00:00", "Z"),
        }
        response = session.get(f"{base}/v3/projects/{project}/timeSeries", params=params, timeout=30)
        response.raise_for_status()
        counts[field] = newest(response.json())
    return Depth(**counts)
