"""Active learning: which samples a reviewer should label next."""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from ...errors import UserError
from .backbone import _opt


def review_queue(
    probs: np.ndarray | Sequence[float],
    priors: Mapping[int, float] | np.ndarray | Sequence[float] | None = None,
    k: int | None = None,
    already_labelled: Iterable[int] = frozenset(),
) -> list[int]:
    """Indices to review next: most uncertain (p nearest 0.5) interleaved with the most suspicious by prior score."""
    k = int(_opt("review_k") if k is None else k)
    p = np.asarray(probs, np.float64)
    if p.ndim != 1:
        raise UserError(f"probs must be a 1-d array; got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise UserError("probs contain NaN or infinite values.")
    n = len(p)
    skip = {int(i) for i in already_labelled}
    idx = np.arange(n)
    uncertain = [int(i) for i in idx[np.lexsort((idx, np.abs(p - 0.5)))]]  # p nearest 0.5 first, ties by index
    suspicious: list[int] = []
    if priors is not None:
        if isinstance(priors, Mapping):
            bad = [i for i in priors if not 0 <= int(i) < n]
            if bad:
                raise UserError(f"prior score given for sample {bad[0]}, outside the {n} samples.")
            sc = np.full(n, np.nan)
            for i, v in priors.items():
                sc[int(i)] = float(v)
        else:
            sc = np.asarray(priors, np.float64)
            if sc.shape != (n,):
                raise UserError(f"priors must have one score per sample ({n}); got shape {sc.shape}.")
        have = idx[np.isfinite(sc)]
        suspicious = [int(i) for i in have[np.lexsort((have, -sc[have]))]]  # highest first, ties by index
    out: list[int] = []
    seen = set(skip)
    streams = [iter(uncertain), iter(suspicious)]
    live = [True, bool(suspicious)]
    turn = 0
    while len(out) < k and any(live):
        if live[turn]:
            for i in streams[turn]:
                if i not in seen:
                    seen.add(i)
                    out.append(i)
                    break
            else:
                live[turn] = False
        turn = 1 - turn
    return out
