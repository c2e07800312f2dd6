"""Markdown tables for reports (unit cards are drawn by `unitviz`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def table_markdown(rows: list[dict], columns: Sequence[str], floatfmt: str = ".3f") -> str:
    """A Markdown table of `columns` from dict rows."""
    def fmt(v: object) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return "nan" if np.isnan(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |\n" for r in rows)


