"""Library messages go through stdlib `logging` (logger "artifix"); the CLI formats them as plain lines on stderr.

Library code calls `log.say(text)` (or takes a `say` callable defaulting to it) instead of printing. A program or
notebook using the API sees nothing unless it configures logging (`logging.basicConfig(level=logging.INFO)`) or
calls `artifix.log.to_stderr()`; the `artifix` command installs that handler itself.
"""

from __future__ import annotations

import logging
import sys

from . import progress

LOGGER = logging.getLogger("artifix")


def say(text: str) -> None:
    """Log one line of human text at INFO on the "artifix" logger."""
    LOGGER.info(text)


class StderrHandler(logging.Handler):
    """Plain message lines on the *current* sys.stderr (so redirection at run time works), silent when quiet."""

    def emit(self, record: logging.LogRecord) -> None:
        if progress.QUIET and record.levelno < logging.WARNING:
            return
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # a closed stream must not turn a message into a crash
            self.handleError(record)


def to_stderr(level: int = logging.INFO) -> logging.Handler:
    """Show artifix's messages as plain lines on stderr (what the CLI does); idempotent; returns the handler."""
    for h in LOGGER.handlers:
        if isinstance(h, StderrHandler):
            return h
    h = StderrHandler()
    h.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(h)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    return h
