"""One progress story: tqdm bars on stderr (with ETA, nested by stage) and the same events for listeners.

Every loop that can take over a second advances a `Progress` (or iterates `track(...)`); a bar appears only after a
second of work, nests under the bar that is open around it, and is silent when `QUIET` is set (the CLI sets it for
`--quiet`, BARS off for `--json`). Listeners (`listening(fn)`) receive every update as an `Event` whether or not bars are drawn:
the dashboard shows the same stages with st.status / st.progress.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm.auto import tqdm as _auto_tqdm


class tqdm(_auto_tqdm):  # noqa: N801  (tqdm.auto's class, as tqdm names it)
    """tqdm.auto without its monitor thread, and with a lock of this process only.

    - No monitor thread: a process that forks (torchrun workers, a test's kill check) while that thread holds the
      write lock would leave the child waiting on it forever. The bars still refresh on update.
    - A threading lock, not tqdm's default, which adds a multiprocessing semaphore shared with every forked process:
      a forked process killed while drawing a bar left that semaphore taken, and the next bar in the parent and in
      every later child waited forever (what hung the kill test). Bars of other processes may interleave; none blocks.
    """

    monitor_interval = 0
    _lock = threading.RLock()


def _new_lock_in_child() -> None:
    """A forked child starts with a free lock (the parent's may be held by one of its threads at the fork)."""
    tqdm._lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


T = TypeVar("T")
QUIET = False  # --quiet: no bars and no human text
BARS = True  # False under --json: no bars (human text still on stderr)
DELAY = 1.0  # seconds of work before a bar appears
_listeners: list[Callable[["Event"], None]] = []
_open: list["Progress"] = []
_MUTED = 0  # > 0 inside `muted()`: no events reach the listeners (the bars still draw)


@dataclass(frozen=True)
class Event:
    """One progress update: the stage, its depth (0 = outermost), units done of total, and whether it ended."""

    stage: str
    done: int
    total: int
    depth: int
    finished: bool = False


def add_listener(fn: Callable[[Event], None]) -> None:
    """Call `fn(event)` on every progress update until `remove_listener(fn)`."""
    _listeners.append(fn)


def remove_listener(fn: Callable[[Event], None]) -> None:
    """Stop calling `fn`."""
    if fn in _listeners:
        _listeners.remove(fn)


@contextmanager
def listening(fn: Callable[[Event], None]) -> Iterator[None]:
    """Send progress events to `fn` inside the block."""
    add_listener(fn)
    try:
        yield
    finally:
        remove_listener(fn)


@contextmanager
def tqdm_bars() -> Iterator[None]:
    """Draw progress bars (tqdm.auto: widgets in Jupyter, text elsewhere) while the block runs (the Python API)."""
    global BARS
    before, BARS = BARS, True
    try:
        yield
    finally:
        BARS = before


class Progress:
    """Count work units; a tqdm bar on stderr after the first second (nested under open bars), unless QUIET."""

    def __init__(self, total: int, desc: str = "") -> None:
        self.total, self.desc, self.done = max(int(total), 0), desc, 0
        self.depth = len(_open)
        self.t0 = time.monotonic()
        self._last = 0.0
        self._bar = None if QUIET or not BARS else tqdm(total=self.total, desc=desc, file=sys.stderr, delay=DELAY, leave=self.depth == 0,
                                            position=self.depth, mininterval=0.2 if sys.stderr.isatty() else 5.0,
                                            dynamic_ncols=True, unit="it")
        _open.append(self)
        self._emit(False)

    def _emit(self, finished: bool) -> None:
        if not _listeners or _MUTED:
            return
        ev = Event(self.desc, self.done, self.total, self.depth, finished)
        for fn in list(_listeners):
            fn(ev)

    def update(self, k: int = 1) -> None:
        """Advance by k units."""
        self.done += k
        if self._bar is not None:
            self._bar.update(k)
        now = time.monotonic()
        if _listeners and now - self._last >= 0.2:
            self._last = now
            self._emit(False)

    def close(self) -> None:
        """End the bar (and tell the listeners)."""
        if self in _open:
            _open.remove(self)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._emit(True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stage(desc: str, total: int = 1) -> Progress:
    """A named stage (use as `with stage("repair", 3) as s: ... s.update()`); inner bars nest under it."""
    return Progress(total, desc)


def track(items: Iterable[T], total: int, desc: str = "", weight: Callable[[T], int] = lambda item: 1) -> Iterator[T]:
    """Iterate `items`, advancing a progress bar by weight(item) per item."""
    p = Progress(total, desc)
    try:
        for item in items:
            yield item
            p.update(weight(item))
    finally:
        p.close()


@contextmanager
def muted() -> Iterator[None]:
    """No progress events reach the listeners inside the block (e.g. in a Streamlit-cached function, whose element
    calls on a box created outside it cannot be replayed)."""
    global _MUTED
    _MUTED += 1
    try:
        yield
    finally:
        _MUTED -= 1
