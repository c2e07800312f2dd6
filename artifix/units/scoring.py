"""Unit scores: which units of a layer cause the flagged artifacts.

Components (each reported, all vectorised over units):
- `iou_iqr`: GAN Dissection's unit-region agreement. The unit map r_u is upsampled to image size and
  thresholded at t_u, chosen among top-fraction thresholds by the information quality ratio
  IQR = I(r_u > t; s) / H(r_u > t, s); IoU = |(r_u > t_u) & s| / |(r_u > t_u) | s| over the labelled samples,
  with s the artifact mask (human, else the classifier's pseudo mask; clean samples have an empty mask);
  counted by `artifix.units.tally.IouTally`, the tally concept dissection uses too.
- `auc`: image-level ROC-AUC of the unit's spatial max, flagged vs clean samples.
- `causal`: average causal effect of ablating the unit: drop of the artifact score on flagged samples
  minus the collateral change on clean samples (exact ablation for the top candidates of a first-order
  gradient x activation pre-ranking).
- `high`: GAN Dissection's automatic score, how bad the samples are where the unit fires most (mean artifact
  probability, or FD to a reference, of its top-q samples against the layer's average; `artifix.units.highact`).
- priors for a cold start (no labels): rarely-activated units (Choi et al. 2022).
Combined ranking: the mean of the available components' percentile ranks, weights in COMBINED_WEIGHTS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from .. import dist
from ..errors import UserError
from ..io import sha256_json
from ..model import devices
from ..model.generator import LoadedGenerator, check_output, forward, images_at, latents, to_uint8
from ..progress import Progress
from .highact import as_components, high_activation
from .stats import UnitStats, all_reduce_
from .tally import TOP_FRACTIONS, IouTally, iqr_from_counts  # noqa: F401  (TOP_FRACTIONS, iqr_from_counts: re-exported)
from ..model.trace import Ablation, Trace, ablation, get_layer

COMBINED_WEIGHTS = {"causal": 0.6, "iou": 0.2, "auc": 0.2, "high": 0.2}  # interventional evidence counts most


@dataclass
class IouResult:
    """Per unit: IoU at the IQR-optimal threshold, that IQR, and the threshold."""

    iou: torch.Tensor
    iqr: torch.Tensor
    threshold: torch.Tensor


def iou_iqr(acts: torch.Tensor, masks: torch.Tensor, thresholds: torch.Tensor, chunk: int = 16) -> IouResult:
    """Score every unit of `acts` (B, C, h, w) against bool `masks` (B, H, W) over candidate `thresholds` (C, T).

    Under torchrun each rank tallies some chunks of `chunk` samples and the integer counts are summed over ranks.
    """
    tally = IouTally(thresholds, 2)  # class 1: artifact pixels
    for i in range(dist.rank() * chunk, acts.shape[0], dist.world_size() * chunk):  # this rank's chunks, round robin
        tally.update(acts[i:i + chunk], masks[i:i + chunk])
    iou, iqr, best = tally.all_reduce_().result()
    col = best[:, 1]
    return IouResult(iou[:, 1].float(), iqr[:, 1].float(), thresholds[torch.arange(len(col)), col])


def auc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """ROC-AUC per unit of scores pos (P, C) vs neg (N, C); ties count one half."""
    if len(pos) == 0 or len(neg) == 0:
        return torch.full((pos.shape[1] if pos.dim() == 2 else neg.shape[1],), float("nan"))
    p = pos.T[:, :, None].double()
    n = neg.T[:, None, :].double()
    return ((p > n).double().mean((1, 2)) + 0.5 * (p == n).double().mean((1, 2))).float()


def robust_z(x: torch.Tensor, clip: float = 10.0) -> torch.Tensor:
    """(x - median) / (1.4826 MAD) over the non-NaN values, clipped to [-clip, clip]; NaN -> 0 (typical)."""
    v = x.double()
    ok = ~torch.isnan(v)
    if ok.sum() < 2:
        return torch.zeros_like(v).float()
    med = v[ok].median()
    mad = (v[ok] - med).abs().median() * 1.4826
    scale = mad if mad > 0 else (v[ok] - med).abs().mean().clamp(min=1e-12)
    return ((v - med) / scale).clamp(-clip, clip).nan_to_num(0.0).float()


def combined_score(components: dict[str, torch.Tensor], weights: dict[str, float] = COMBINED_WEIGHTS) -> torch.Tensor:
    """Weighted mean of the available components' robust z-scores (missing or all-NaN components dropped).

    Robust z-scores keep how far a unit stands out (artifact units are outliers), which ranks would flatten.
    """
    used = {k: w for k, w in weights.items() if k in components and not torch.isnan(components[k]).all()}
    if not used:
        raise ValueError("no score components to combine")
    total = sum(used.values())
    return torch.stack([robust_z(components[k]) * (w / total) for k, w in used.items()]).sum(0)


def rarity_prior(firing_rate: torch.Tensor, peak: torch.Tensor, max_rate: float = 0.3) -> torch.Tensor:
    """Cold-start unit prior (Choi et al. 2022): units firing in <= max_rate of samples, stronger peaks first."""
    rare = (firing_rate <= max_rate) & (firing_rate > 0)
    strength = peak / peak.max().clamp(min=1e-12)
    return torch.where(rare, (1 - firing_rate / max_rate) * 0.5 + 0.5 * strength, torch.zeros_like(strength))


def sample_suspicion(sample_max: torch.Tensor, unit_prior: torch.Tensor, unit_scale: torch.Tensor) -> torch.Tensor:
    """Per-sample review priority: how strongly a sample fires the rare units, weighted by their prior."""
    return (sample_max / unit_scale.clamp(min=1e-12)[None]).clamp(min=0) @ unit_prior


def recall_at_k(ranking: Sequence[int], truth: Sequence[int], k: int | None = None) -> float:
    """Fraction of `truth` units found in the first k (default len(truth)) of `ranking`."""
    k = k or len(truth)
    return len(set(ranking[:k]) & set(truth)) / max(len(truth), 1)


# ------------------------------------------------------------------------------------------ pipeline


ProbFn = Callable[[np.ndarray], np.ndarray]  # uint8 NHWC images -> artifact probability (N,)
ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # G output (N, 3, H, W) in G's range -> differentiable artifact score (N,)


def trace_batches(g: LoadedGenerator, layer: str, seed: int, indices: Sequence[int], batch: int = 64,
                  images: bool = False) -> Iterable[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
    """Yield (indices, activations at `layer` on G's device, uint8 CPU images or None) for the given samples,
    stopping early without images; `batch` at a time, halved on GPU out-of-memory."""
    get_layer(g.module, layer)
    idx = [int(i) for i in indices]

    def one(s: int, count: int) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        part = idx[s:s + count]
        z, y = latents(g.spec, seed, part)
        with torch.inference_mode(), Trace(g.module, layer, stop=not images) as t:
            out = forward(g, z, y)
        if not images:
            return part, t[layer][: len(part)], None
        out = check_output(out, len(part), part)  # the same NaN/Inf check as every rendered image
        return part, t[layer][: len(part)], to_uint8(out.float(), g.spec.range)

    yield from devices.backoff(one, len(idx), batch, "unit statistics")


def collect_stats(g: LoadedGenerator, layer: str, seed: int, n: int, batch: int = 64, start: int = 0,
                  indices: Sequence[int] | None = None) -> UnitStats:
    """Stream samples start..start+n-1 (or `indices`) through G up to `layer` and record per-unit statistics.

    Under torchrun each rank records its contiguous block of the samples and the shards are merged on every rank
    (`stats.all_reduce_`), so every rank returns the statistics of the whole run.
    """
    idx = list(indices) if indices is not None else list(range(start, start + n))
    mine = dist.shard(idx)
    stats: UnitStats | None = None
    bar = Progress(len(mine), "unit stats")
    for part, acts, _ in trace_batches(g, layer, seed, mine, batch):
        if stats is None:
            stats = UnitStats(layer, acts.shape[1], n, start=start, meta={"seed": seed, "fingerprint": g.fingerprint},
                              device=acts.device)
        stats.update(acts, part)
        bar.update(len(part))
    bar.close()
    if dist.active():
        channels = next(c for c in dist.all_gather_objects(None if stats is None else stats.channels) if c is not None)
        if stats is None:  # more ranks than samples: this rank recorded nothing but still takes part in the merge
            stats = UnitStats(layer, channels, n, start=start, meta={"seed": seed, "fingerprint": g.fingerprint})
        all_reduce_(stats)
    assert stats is not None
    return stats


def cached_stats(g: LoadedGenerator, layer: str, seed: int, n: int, cache_dir: str | Path) -> UnitStats:
    """Unit statistics for (G, layer, seed, n): loaded from cache_dir when present, else collected and cached.

    The cache key is a content hash of G's fingerprint, the layer, seed and n (never a user-chosen name).
    Under torchrun the ranks collect their shards together and only rank 0 writes the cache file.
    """
    key = sha256_json({"fingerprint": g.fingerprint, "layer": layer, "seed": seed, "n": n, "v": 1})[:20]
    path = Path(cache_dir) / f"stats-{key}.pt"
    if path.is_file():
        try:
            return UnitStats.load(path)
        except UserError:
            pass  # a damaged or foreign cache entry is recomputed and replaced, never trusted
    stats = collect_stats(g, layer, seed, n)
    if dist.is_main():
        stats.save(path)
    return stats


def _stack(g: LoadedGenerator, layer: str, seed: int, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations (B, C, h, w) and uint8 images for a small labelled set."""
    acts, imgs = [], []
    for _, a, im in trace_batches(g, layer, seed, indices, images=True):
        acts.append(a.cpu())  # a small labelled set: its IoU/AUC tallies run on the CPU beside the masks
        imgs.append(im)
    return torch.cat(acts), torch.cat(imgs)


def first_order_effect(g: LoadedGenerator, layer: str, seed: int, indices: Sequence[int], score_fn: ScoreFn,
                       batch: int = 16) -> torch.Tensor:
    """Per unit, the first-order estimate (gradient x activation) of the score change from ablating it, per sample mean.

    Under torchrun each rank takes a contiguous block of `indices`; the per-rank sums are added in rank order.
    """
    total: torch.Tensor | None = None
    held: dict[str, torch.Tensor] = {}

    def grab(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        held["x"] = x
        return x

    n_all = len(indices)
    idx = dist.shard(list(indices))
    for s in range(0, len(idx), batch):
        part = idx[s:s + batch]
        z, y = latents(g.spec, seed, part)
        with torch.enable_grad(), Trace(g.module, layer, edit={layer: grab}, retain=False):
            out = forward(g, z, y)
            score = score_fn(out.float()).sum()
            (grad,) = torch.autograd.grad(score, held["x"])
        act = held["x"].detach()[: len(part)]
        eff = -(grad[: len(part)] * act).flatten(2).sum(2).sum(0).cpu()  # (C,) sum over samples of delta score
        total = eff if total is None else total + eff
    if dist.active():
        parts = [t for t in dist.all_gather_objects(total) if t is not None]
        total = parts[0]
        for t in parts[1:]:
            total = total + t
    assert total is not None
    return total / n_all


def exact_effect(g: LoadedGenerator, layer: str, seed: int, flagged: Sequence[int], clean: Sequence[int], units: Sequence[int],
                 prob_fn: ProbFn | None, masks: dict[int, np.ndarray] | None = None,
                 edits: Callable[[int], Ablation] | None = None) -> pd.DataFrame:
    """Ablate each unit in turn: artifact-probability drop and in-mask change on flagged samples, pixel change on clean ones.

    Under torchrun the units are split between ranks (contiguous blocks) and every rank gets all rows, in `units` order.
    """
    masks = masks or {}
    mrows = [r for r, i in enumerate(flagged) if i in masks]
    m = np.stack([np.asarray(masks[flagged[r]], bool) for r in mrows]) if mrows else None
    edits = edits or (lambda u: ablation([u]))
    base_f = images_at(g, seed, flagged)
    base_c = images_at(g, seed, clean)
    p0 = prob_fn(base_f) if prob_fn is not None and len(flagged) else None
    rows = []
    mine = dist.shard(list(units))
    bar = Progress(len(mine), "ablations")
    for u in mine:
        with Trace(g.module, edit={layer: edits(u)}):
            abl_f = images_at(g, seed, flagged)
            abl_c = images_at(g, seed, clean)
        row = {"unit": int(u)}
        if p0 is not None:
            _mean_se(row, "prob_drop", p0 - prob_fn(abl_f))  # type: ignore[misc]
        diff_f = np.abs(abl_f.astype(np.int16) - base_f).max(-1) / 255.0 if len(flagged) else None
        _mean_se(row, "flagged_change", diff_f.mean((1, 2)) if diff_f is not None else np.zeros(0))
        if m is not None and diff_f is not None:
            d = diff_f[mrows]
            inside = (d * m).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
            outside = (d * ~m).sum((1, 2)) / np.maximum((~m).sum((1, 2)), 1)
            _mean_se(row, "mask_change", inside - outside)
        if len(clean):
            _mean_se(row, "collateral", (np.abs(abl_c.astype(np.int16) - base_c).max(-1) / 255.0).mean((1, 2)))
        else:
            row["collateral"], row["collateral_se"] = 0.0, 0.0
        rows.append(row)
        bar.update()
    bar.close()
    return pd.DataFrame(dist.all_gather_list(rows))


def _mean_se(row: dict, name: str, per_sample: np.ndarray) -> None:
    """row[name] = the mean of the per-sample values, row[name_se] = its standard error (nan with fewer than 2)."""
    v = np.asarray(per_sample, np.float64)
    row[name] = float(v.mean()) if v.size else float("nan")
    row[f"{name}_se"] = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")


@dataclass
class ScoreReport:
    """The ranked unit table and what went into it."""

    table: pd.DataFrame  # one row per unit, sorted by `combined` (rank 1 first)
    layer: str
    components: list[str]
    n_flagged: int
    n_clean: int
    n_masks: int  # flagged samples with a region: painted, plus the classifier's pseudo masks (n_pseudo of them)
    n_pseudo: int = 0


def score_units(g: LoadedGenerator, layer: str, seed: int, stats: UnitStats, flagged: Sequence[int], clean: Sequence[int],
                masks: dict[int, np.ndarray] | None = None, prob_fn: ProbFn | None = None, score_fn: ScoreFn | None = None,
                exact_top: int = 20, collateral_weight: float = 2.0, rare_rate: float = 0.3, high_q: int = 0,
                feature_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                reference: tuple[np.ndarray, np.ndarray] | None = None) -> ScoreReport:
    """Score and rank every unit of `layer` from flags (+ masks), an optional artifact classifier and high-activation samples."""
    flagged, clean = [int(i) for i in flagged], [int(i) for i in clean]
    masks = masks or {}
    c = stats.channels
    comp: dict[str, torch.Tensor] = {}
    extra: dict[str, torch.Tensor] = {}
    labelled = flagged + clean
    acts, imgs = _stack(g, layer, seed, labelled) if labelled else (None, None)
    if acts is not None and flagged and clean:
        mx = acts.flatten(2).amax(2)
        comp["auc"] = auc(mx[: len(flagged)], mx[len(flagged):])
    masked = [i for i in flagged if i in masks]
    if acts is not None and masked:
        h, w = imgs.shape[1:3]
        m = torch.zeros(len(labelled), h, w, dtype=torch.bool)
        for row, i in enumerate(labelled):
            if i in masks:
                m[row] = torch.from_numpy(np.asarray(masks[i], bool))
        thr = stats.top_fraction_threshold(TOP_FRACTIONS.double()).float()  # (C, T)
        res = iou_iqr(acts, m, thr)
        comp["iou"] = res.iou
        extra["iqr"], extra["iou_threshold"] = res.iqr, res.threshold
    if high_q > 0 and (prob_fn is not None or feature_fn is not None):
        hc = as_components(high_activation(stats, high_q, lambda ids: images_at(g, seed, ids), prob_fn, feature_fn, reference))
        comp["high"] = hc.pop("high")
        extra.update(hc)
    fr = stats.firing_rate().float()
    extra["firing_rate"] = fr
    extra["rarity"] = rarity_prior(fr, stats.max.float(), rare_rate)
    # pre-ranking for exact ablation: a unit is a candidate when ANY cheap signal singles it out. First-order
    # estimates alone miss units whose effect saturates the output (a Tanh at +-1 has no gradient).
    pre_scores = [robust_z(v) for v in comp.values()] + [robust_z(extra["rarity"])]
    if score_fn is not None and flagged:
        fo = first_order_effect(g, layer, seed, flagged, score_fn)
        extra["first_order"] = fo
        pre_scores.append(robust_z(fo))
    pre = torch.stack(pre_scores).amax(0)
    candidates = [int(u) for u in torch.argsort(pre, descending=True, stable=True)[:exact_top]]
    if flagged:
        ex = exact_effect(g, layer, seed, flagged, clean, candidates, prob_fn, masks)
        causal = torch.full((c,), float("nan"))
        # the artifact score s: the change inside the artifact regions (painted, else pseudo masks) when there are any,
        # else the classifier's probability drop; whole-image change is the last resort. The classifier's drop is
        # always reported: pooled backbone features see small local artifacts poorly (see README), regions do not.
        drop = ex["mask_change"] if "mask_change" in ex else ex["prob_drop"] if "prob_drop" in ex else ex["flagged_change"]
        causal[ex["unit"].to_numpy().copy()] = torch.tensor((drop - collateral_weight * ex["collateral"]).to_numpy().copy(), dtype=torch.float32)
        comp["causal"] = causal
        drop_se = ex[f"{drop.name}_se"] if f"{drop.name}_se" in ex else np.nan
        se = np.sqrt(np.asarray(drop_se, np.float64) ** 2 + (collateral_weight * ex["collateral_se"].to_numpy(np.float64)) ** 2)
        extra["causal_se"] = torch.full((c,), float("nan"))
        extra["causal_se"][ex["unit"].to_numpy().copy()] = torch.tensor(np.broadcast_to(se, (len(ex),)).copy(), dtype=torch.float32)
        for col in ("prob_drop", "mask_change", "flagged_change", "collateral"):
            if col in ex:
                v = torch.full((c,), float("nan"))
                v[ex["unit"].to_numpy().copy()] = torch.tensor(ex[col].to_numpy().copy(), dtype=torch.float32)
                extra[col] = v
    extra["mean"] = stats.mean.float()
    if comp:
        combined = combined_score(comp)
    else:
        combined = extra["rarity"]
    data = {"unit": np.arange(c)}
    for k, v in {**comp, **extra}.items():
        data[k] = v.double().numpy()
    data["combined"] = combined.double().numpy()
    table = pd.DataFrame(data).sort_values(["combined", "unit"], ascending=[False, True]).reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, c + 1))
    table.insert(1, "layer", layer)
    return ScoreReport(table, layer, sorted(comp), len(flagged), len(clean), len(masked))


# ---------------------------------------------------------------------------------- unsupervised priors


def realism_scores(fake: np.ndarray, real: np.ndarray, k: int = 3, chunk: int = 512) -> np.ndarray:
    """Per-sample realism (Kynkaanniemi et al. 2019): max over real r of radius_k(r) / |f - r|.

    radius_k(r) is the distance from r to its k-th nearest real neighbour; as in the paper, the half of the real
    samples with the largest radii is dropped. R >= 1 means the sample lies inside the estimated real manifold.
    """
    r = torch.from_numpy(np.asarray(real, np.float64))
    f = torch.from_numpy(np.asarray(fake, np.float64))
    if len(r) <= k:
        raise ValueError(f"realism needs more than k={k} reference samples, got {len(r)}")
    radii = torch.empty(len(r), dtype=torch.float64)
    for s in range(0, len(r), chunk):
        d = torch.cdist(r[s:s + chunk], r)
        radii[s:s + chunk] = d.kthvalue(k + 1, dim=1).values  # +1: the sample itself is at distance 0
    keep = radii <= radii.median()
    r, radii = r[keep], radii[keep]
    out = torch.empty(len(f), dtype=torch.float64)
    for s in range(0, len(f), chunk):
        d = torch.cdist(f[s:s + chunk], r).clamp(min=1e-12)
        out[s:s + chunk] = (radii[None] / d).amax(1)
    return out.numpy()


def review_priors(stats: UnitStats, indices: Sequence[int], realism: np.ndarray | None = None, rare_rate: float = 0.3) -> np.ndarray:
    """Per-sample suspicion for the review queue: fires rare units strongly (Choi et al.) and/or looks unreal (low realism).

    Each signal is turned into a robust z-score over the candidates and the available ones are averaged.
    """
    table = stats.samples()
    pos = {int(i): row for row, i in enumerate(table.index.tolist())}
    rows = [pos[int(i)] for i in indices]
    prior = rarity_prior(stats.firing_rate().float(), stats.max.float(), rare_rate)
    parts = [robust_z(sample_suspicion(table.max[rows].float(), prior, stats.max.float()))]
    if realism is not None:
        parts.append(robust_z(torch.from_numpy(-np.log(np.maximum(np.asarray(realism, np.float64), 1e-12)))))
    return torch.stack(parts).mean(0).double().numpy()
