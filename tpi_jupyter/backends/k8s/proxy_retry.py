"""How the client retries requests to the cluster: to the transfer pod through the API
server's pod proxy (`POLICY`), and the backend's own API calls (`API_POLICY`).

The path crosses two hops (client -> API server -> pod), and either can drop a connection or
answer 429/5xx (the API server's priority and fairness, a pod that is restarting, a proxy
error); the object-store clients retry such failures themselves, so proxyfs does too, with
urllib3's own policy: exponential back-off, `Retry-After` honoured, about 10 s in all.
An exclusive create is retried only when the connection could not be made (a retry after a
lost answer could find its own file and report it as someone else's). Every request has a
timeout, so a stalled connection is retried rather than waited on for ever.
"""

from __future__ import annotations

import json
from typing import Any

from urllib3.util import Retry, Timeout

ATTEMPTS = 6
TRANSIENT = frozenset({429, 500, 502, 503, 504})
TIMEOUT = Timeout(connect=10.0, read=60.0)
POLICY = Retry(
    total=ATTEMPTS, backoff_factor=0.2, backoff_max=4.0, status_forcelist=TRANSIENT,
    allowed_methods=frozenset({"GET", "PUT", "DELETE"}), raise_on_status=False, raise_on_redirect=False,
    respect_retry_after_header=True,
)  # fmt: skip
CREATE_POLICY = POLICY.new(read=0, status=0, other=0)
# Every method: a create resent after a lost answer meets its own object (job.create_once); the
# status codes are those the API server sends for work it did not do. Shorter (about 1.5 s): the
# callers poll or report, and an API server that is down fails `tpi run` within seconds.
API_POLICY = POLICY.new(total=4, backoff_factor=0.1, allowed_methods=None,
                        status_forcelist=frozenset({429, 503, 504}))  # fmt: skip


def policy(exclusive: bool, patient: bool = True) -> Retry | bool:
    if not patient:
        return False
    return CREATE_POLICY if exclusive else POLICY


def retried(response: Any) -> bool:
    """Whether the answer came after a retry (so a 404 to a DELETE may be its own earlier success)."""
    history = getattr(getattr(response, "retries", None), "history", ())
    return bool(history)


def reason(error: BaseException) -> str:
    """A failed connection as one short line: the last cause, without the URL and pool details."""
    cause = getattr(error, "reason", None) or error
    return " ".join(f"{cause.__class__.__name__}: {cause}".split())[:200]


def answer_text(data: bytes) -> str:
    """An error answer's body as one short line: a Kubernetes `Status` by its reason and message
    (the API server's own, or what it relays), else the body's first 200 characters."""
    text = data.decode(errors="replace")
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if isinstance(found, dict) and found.get("kind") == "Status":
        text = f"{found.get('reason', '')}: {found.get('message', '')}"
    return " ".join(text.split())[:200]
