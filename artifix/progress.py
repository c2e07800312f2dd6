"""A small progress bar on stderr, shown only for work that takes more than a second."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
QUIET = False
TQDM = False  # inside the Python API's calls (`tqdm_bars`): bars drawn by tqdm.auto (widgets in Jupyter, text elsewhere)


@contextmanager
def tqdm_bars() -> Iterator[None]:
    """Draw progress bars with tqdm.auto while the block runs (the Python API); restores the previous style."""
    global TQDM
    before, TQDM = TQDM, True
    try:
        yield
    finally:
        TQDM = before


class Progress:
    """Count work units and redraw a one-line bar on stderr at most 5 times a second, after the first second."""

    def __init__(self, total: int, desc: str = "") -> None:
        self.total, self.desc, self.done = max(int(total), 0), desc, 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._shown = False
        self._tq = None
        if TQDM and not QUIET:
            from tqdm.auto import tqdm  # optional look: only the API turns it on

            self._tq = tqdm(total=self.total, desc=desc, leave=False)

    def update(self, k: int = 1) -> None:
        """Advance by k units."""
        self.done += k
        if self._tq is not None:
            self._tq.update(k)
            return
        now = time.monotonic()
        if QUIET or not sys.stderr.isatty() or now - self.t0 < 1.0 or now - self._last < 0.2:
            return
        self._last = now
        self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(24 * frac)
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        sys.stderr.write(f"\r{self.desc:<14} [{bar:<24}] {self.done}/{self.total} {rate:7.1f}/s eta {eta:4.0f}s")
        sys.stderr.flush()
        self._shown = True

    def close(self) -> None:
        """Finish the line if a bar was drawn."""
        now = time.monotonic()
        if self._tq is not None:
            self._tq.close()
            return
        if QUIET:
            return
        if self._shown:
            self._draw(now)
            sys.stderr.write("\n")
        elif now - self.t0 >= 1.0:  # not a terminal: one summary line for work that took a while
            sys.stderr.write(f"{self.desc}: {self.done}/{self.total} in {now - self.t0:.1f}s\n")
        sys.stderr.flush()


def track(items: Iterable[T], total: int, desc: str = "", weight=lambda item: 1) -> Iterator[T]:
    """Iterate `items`, advancing a progress bar by weight(item) per item."""
    p = Progress(total, desc)
    try:
        for item in items:
            yield item
            p.update(weight(item))
    finally:
        p.close()
