"""The `prices` verb: a table of machines, or `prices refresh [CLOUD...]`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .constraints import ConstraintError
from .refresh.http import RefreshError
from .table import DEFAULT_ROWS, Query, render


def prices(args: argparse.Namespace, out: Callable[[str], None]) -> None:
    """Errors come back as the faces' one-line usage errors (exit 2 in the CLI)."""
    from ..grammar import UsageFailure
    from ..task import TaskError

    words = list(args.query)
    try:
        if words and words[0] == "refresh":
            from .refresh import refresh

            refresh(words[1:], out)
            return
        if len(words) > 1:
            raise UsageFailure(f"QUERY: one query, got {len(words)} words; accepted: one word such as "
                               "m+t4 or cpu>=8,memory>=32 (no spaces)")  # fmt: skip
        query = Query(
            words[0] if words else "", args.cloud, args.region, args.spot, 0 if args.every else DEFAULT_ROWS
        )
        out(render(query))
    except ConstraintError as error:
        raise UsageFailure(str(error)) from None
    except RefreshError as error:
        raise TaskError(f"prices refresh: {error}") from None
