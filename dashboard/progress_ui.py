"""The CLI's progress stages in the dashboard: an st.status box whose label follows the running stage, and an
st.progress bar for the outermost stage's share done (the same events as the tqdm bars, via artifix.progress)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from artifix import progress


@contextmanager
def stages(label: str) -> Iterator[None]:
    """Show `label` and the live stages of the work inside the block (replaces st.spinner)."""
    with st.status(label, expanded=False) as box:
        bar = st.progress(0.0)

        def on_event(ev: progress.Event) -> None:
            frac = min(ev.done / ev.total, 1.0) if ev.total else 1.0
            box.update(label=f"{label} · {ev.stage}: {ev.done}/{ev.total}")
            bar.progress(frac, text=f"{ev.stage}: {ev.done}/{ev.total}")

        with progress.listening(on_event):
            yield
        box.update(label=label + " · done", state="complete")
