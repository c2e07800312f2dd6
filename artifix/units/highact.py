"""Per-unit high-activation scores: how bad are the samples where each unit fires most (GAN Dissection's automatic route).

For every unit u of a layer, T_u is the set of the q samples with the largest spatial max of u (the top-q of the
streaming top-k in `UnitStats`). Each distinct sample of the union of the T_u is rendered and scored once:
- `high_prob`: the mean artifact probability over T_u, minus the mean of that over all units of the layer;
- `high_fd`: the Frechet distance of T_u's features to a reference (mu, cov), minus the layer's average;
- `high_swd`: the sliced Wasserstein distance of T_u's images to reference images, minus the layer's average.
Positive = the unit's favourite samples are worse than a typical unit's. `high_score` is `high_prob` when a
probability was given, else `high_fd`, else `high_swd`. With q samples and d-dim features the FD's trace term
is computed from the q x q matrix A S_ref A^T / (q - 1) (A: centred features), so small subsets stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..metrics.swd import swd
from .stats import UnitStats

ImagesFn = Callable[[Sequence[int]], np.ndarray]  # sample indices -> uint8 NHWC images
ProbFn = Callable[[np.ndarray], np.ndarray]
FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> (N, d) features


@dataclass
class HighActivation:
    """Per unit (C,) arrays of the high-activation scores and the top samples they were measured on."""

    q: int
    top: np.ndarray  # (C, q) sample indices
    scores: dict[str, np.ndarray]  # name -> (C,)

    @property
    def high_score(self) -> np.ndarray:
        """The primary score: probability, else FD, else SWD (relative to the layer's average)."""
        for k in ("high_prob", "high_fd", "high_swd"):
            if k in self.scores:
                return self.scores[k]
        raise ValueError("no high-activation score was computed")

    def ranking(self) -> list[int]:
        """Units worst first (largest high_score; ties by unit index)."""
        s = self.high_score
        return [int(u) for u in np.lexsort((np.arange(len(s)), -s))]


def fd_to_reference(feats: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> float:
    """Frechet distance of the Gaussian of `feats` (q, d) to (mu, cov); the trace term via a q x q eigenproblem."""
    x = np.asarray(feats, np.float64)
    q = len(x)
    m = x.mean(0)
    a = x - m
    tr1 = float((a * a).sum() / max(q - 1, 1))
    small = a @ cov @ a.T / max(q - 1, 1)
    lam = np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)
    return float(((m - mu) ** 2).sum() + tr1 + np.trace(cov) - 2 * np.sqrt(lam).sum())


def _relative(v: np.ndarray) -> np.ndarray:
    return v - v.mean()


def high_activation(stats: UnitStats, q: int, images_fn: ImagesFn, prob_fn: ProbFn | None = None,
                    feature_fn: FeatureFn | None = None, reference: tuple[np.ndarray, np.ndarray] | None = None,
                    swd_reference: np.ndarray | None = None, swd_seed: int = 0) -> HighActivation:
    """Score every unit of `stats` by the quality of its top-q samples; each distinct sample is rendered and scored once."""
    top, _ = stats.top_samples(int(q))
    top = top.numpy()
    distinct = np.unique(top)
    pos = np.searchsorted(distinct, top)  # (C, q) rows into the distinct set
    imgs = images_fn([int(i) for i in distinct])
    scores: dict[str, np.ndarray] = {}
    if prob_fn is not None:
        p = np.asarray(prob_fn(imgs), np.float64)
        scores["high_prob_raw"] = p[pos].mean(1)
        scores["high_prob"] = _relative(scores["high_prob_raw"])
    if feature_fn is not None:
        f = np.asarray(feature_fn(imgs), np.float64)
        mu, cov = reference if reference is not None else (f.mean(0), np.cov(f, rowvar=False))
        scores["high_fd_raw"] = np.array([fd_to_reference(f[r], mu, cov) for r in pos])
        scores["high_fd"] = _relative(scores["high_fd_raw"])
    if swd_reference is not None:
        scores["high_swd_raw"] = np.array([float(swd(imgs[r], swd_reference, seed=swd_seed)["value"]) for r in pos])
        scores["high_swd"] = _relative(scores["high_swd_raw"])
    return HighActivation(int(top.shape[1]), top, scores)


def as_components(h: HighActivation) -> dict[str, torch.Tensor]:
    """The scores as float32 tensors, for `scoring.score_units`' table and ranking."""
    out = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in h.scores.items()}
    out["high"] = torch.from_numpy(np.asarray(h.high_score, np.float32))
    return out
