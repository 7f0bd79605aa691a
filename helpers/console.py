"""Loggers whose INFO messages a notebook or a terminal shows without any set-up.

The kit's library code never calls ``print()``; a message meant for the reader (the loop's
summary line per iteration, how many descriptions were generated or read back) goes to a logger
from :func:`console_logger`, which writes INFO and above to the *current* standard output unless
the application gave that logger handlers of its own first. To route the messages through your
own logging configuration instead: ``logger.handlers.clear(); logger.propagate = True``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["console_logger"]


class _StdoutHandler(logging.Handler):
    """Writes each message to the current ``sys.stdout`` (Jupyter and pytest replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
        except Exception:  # a closed stream must not break the caller
            self.handleError(record)


def console_logger(name: str) -> logging.Logger:
    """The logger ``name``, writing INFO messages to standard output when nobody configured it."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        logger.addHandler(_StdoutHandler(logging.INFO))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
