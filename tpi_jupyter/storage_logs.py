"""Storage clients' own retry logs stay out of the faces.

gcsfs reports a request that ran out of retries with `logger.exception`, and then raises: the
caller turns that error into one line. With no logging configured, Python's last-resort handler
printed the report's traceback (40 lines) to stderr first, in `tpi` and in notebook cells. A
NullHandler on those loggers ends that; logging the user configures (root handlers) still
receives the records.
"""

from __future__ import annotations

import logging

# Loggers that write tracebacks for errors their library also raises.
RAISING_LOGGERS = ("gcsfs",)


def quiet() -> None:
    for name in RAISING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
            logger.addHandler(logging.NullHandler())
