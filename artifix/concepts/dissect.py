"""Concept dissection: what each unit draws, and the causal checks (ablate / insert a concept's units).

**Dissection** (GAN Dissection, Bau et al. 2019). For every unit u of a layer and every segmentation class c,
the unit's map r_u is upsampled (bilinear) to the image resolution and thresholded at top-fraction thresholds
t (0.1 % .. 100 % of the unit's values, from a first streaming pass of quantile sketches); the threshold of
(u, c) maximises the information quality ratio I(r_u > t; s_c) / H(r_u > t, s_c) (`tally.iqr_from_counts`),
and IoU_{u,c} = sum |(r_u > t) & s_c| / sum |(r_u > t) | s_c| over the N samples, with s_c the segmenter's
mask of class c on the generated image. A unit's concept is its highest-IoU class; it is *interpretable*
when that IoU exceeds 0.05. Tallies are accumulated streaming by `artifix.units.tally.IouTally` (the artifact
scorer's IoU@IQR uses the same one): each activation is binned by how many of its unit's thresholds it
exceeds, and one `bincount` per batch over (unit, class, bin) gives every count, so a run never holds
N x C x H x W.

**Causal checks.** Ablating the top-k units of a concept (out = x * (1 - a), a = 1 on the units) and
counting the concept's pixels before and after on the same seeds gives the fraction removed (the average
causal effect, as a fraction); the same number for k random units is the control. Insertion sets the
units to a high value (their 99th-percentile activation) inside a region; `paint` does either on one sample.
`concept_collateral` lists, for a set of removed units, how much of every class disappears.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import intervals
from ..errors import UserError
from ..io import sha256_file, sha256_json, write_json_atomic
from ..model.generator import LoadedGenerator, forward, images_at, latents, to_uint8
from ..model.trace import Trace, ablation, get_layer
from ..progress import Progress
from ..units.stats import UnitStats
from ..units.tally import TOP_FRACTIONS, IouTally
from .segmenter import Segmenter, load_segmenter

IOU_MIN = 0.05  # a unit is interpretable when its best concept's IoU exceeds this (as in GAN Dissection)
# the example's dissection layers and causal-check layer are in its profile (`artifix.example.model.example_profile`)


# ------------------------------------------------------------------------------------------- tallies


ConceptTally = IouTally  # the streaming (unit, class, threshold) counts, shared with the artifact scorer (`artifix.units.tally`)


# ------------------------------------------------------------------------------------------ results


@dataclass
class LayerDissection:
    """Per unit of one layer: IoU with every class (C, K), the best concept, and the thresholds used."""

    layer: str
    classes: tuple[str, ...]
    iou: np.ndarray  # (C, K) IoU at each (unit, class)'s IQR-optimal threshold
    iqr: np.ndarray  # (C, K)
    threshold: np.ndarray  # (C, K) activation threshold chosen for each (unit, class)
    class_share: np.ndarray  # (K,) fraction of pixels of each class on the dissected samples
    n: int
    iou_min: float = IOU_MIN

    @property
    def units(self) -> int:
        """Number of units in the layer."""
        return int(self.iou.shape[0])

    def best(self) -> list[dict[str, Any]]:
        """One row per unit: unit, concept (highest IoU), iou, iqr, threshold, interpretable."""
        k = self.iou.argmax(1)
        return [{"layer": self.layer, "unit": u, "concept": self.classes[k[u]], "iou": float(self.iou[u, k[u]]),
                 "iqr": float(self.iqr[u, k[u]]), "threshold": float(self.threshold[u, k[u]]),
                 "interpretable": bool(self.iou[u, k[u]] > self.iou_min)} for u in range(self.units)]

    def counts(self) -> dict[str, int]:
        """Number of interpretable units per concept (units whose best IoU exceeds iou_min), every class listed."""
        out = {c: 0 for c in self.classes}
        for r in self.best():
            if r["interpretable"]:
                out[r["concept"]] += 1
        return out

    def interpretable(self) -> int:
        """Number of units whose best concept's IoU exceeds iou_min."""
        return int((self.iou.max(1) > self.iou_min).sum())

    def top_units(self, concept: str, k: int = 20) -> list[int]:
        """The k units with the highest IoU for `concept` (whatever their best concept), best first."""
        c = class_index(self.classes, concept)
        return [int(u) for u in np.argsort(-self.iou[:, c], kind="stable")[:k]]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (IoU and IQR matrices rounded to 5 decimals)."""
        return {"layer": self.layer, "classes": list(self.classes), "n": self.n, "iou_min": self.iou_min,
                "iou": np.round(self.iou, 5).tolist(), "iqr": np.round(self.iqr, 5).tolist(),
                "threshold": np.round(self.threshold, 6).tolist(), "class_share": np.round(self.class_share, 6).tolist(),
                "interpretable": self.interpretable(), "counts": self.counts()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "LayerDissection":
        """Rebuild from `to_json` output."""
        return cls(d["layer"], tuple(d["classes"]), np.asarray(d["iou"], np.float64), np.asarray(d["iqr"], np.float64),
                   np.asarray(d["threshold"], np.float64), np.asarray(d["class_share"], np.float64), int(d["n"]), float(d["iou_min"]))


def class_index(classes: Sequence[str], name: str) -> int:
    """Index of concept `name`, or a UserError listing the known ones."""
    if name not in classes:
        raise UserError(f"unknown concept {name!r}; the segmenter knows: {', '.join(classes)}.")
    return list(classes).index(name)


def concepts_of_units(d: LayerDissection, units: Sequence[int], top: int = 3, iou_min: float | None = None) -> list[dict[str, Any]]:
    """For each unit, its `top` concepts by IoU (those above iou_min, default the dissection's): [{unit, concepts: [{concept, iou}]}]."""
    lo = d.iou_min if iou_min is None else iou_min
    out = []
    for u in units:
        u = int(u)
        if not 0 <= u < d.units:
            raise UserError(f"unit {u} is out of range: layer {d.layer} has {d.units} units (0..{d.units - 1}).")
        order = np.argsort(-d.iou[u], kind="stable")[:top]
        out.append({"unit": u, "concepts": [{"concept": d.classes[k], "iou": round(float(d.iou[u, k]), 4)} for k in order if d.iou[u, k] > lo]})
    return out


# ------------------------------------------------------------------------------------------ passes


def _trace(g: LoadedGenerator, layers: Sequence[str], seed: int, idx: Sequence[int], images: bool):
    """Activations of every layer (dict) and, when asked, uint8 NHWC images for the given samples."""
    z, y = latents(g.spec, seed, idx)
    with torch.inference_mode(), Trace(g.module, list(layers), stop=not images) as t:
        out = forward(g, z, y)
    acts = {name: t[name][: len(idx)] for name in layers}
    return acts, (to_uint8(out.float(), g.spec.range).numpy() if images else None)


def layer_stats(g: LoadedGenerator, layers: Sequence[str], seed: int, n: int, batch: int = 64) -> dict[str, UnitStats]:
    """Streaming unit statistics (quantile sketches) of several layers over samples 0..n-1, one forward per batch."""
    stats: dict[str, UnitStats] = {}
    bar = Progress(n, "unit quantiles")
    for s in range(0, n, batch):
        idx = list(range(s, min(s + batch, n)))
        acts, _ = _trace(g, layers, seed, idx, images=False)
        for name, a in acts.items():
            if name not in stats:
                stats[name] = UnitStats(name, a.shape[1], n, meta={"seed": seed, "fingerprint": g.fingerprint}, device=a.device)
            stats[name].update(a, idx)
        bar.update(len(idx))
    bar.close()
    return stats


def _check_layers(g: LoadedGenerator, layers: Sequence[str]) -> list[str]:
    """The distinct layer names, each checked against G (UserError with close names otherwise)."""
    names = list(dict.fromkeys(layers))
    if not names:
        raise UserError("no layers to dissect; pass --layers like 'main.5,main.8'.")
    for name in names:
        get_layer(g.module, name)
    return names


def dissect(g: LoadedGenerator, layers: Sequence[str], segmenter: Segmenter, seed: int = 0, n: int = 500, batch: int = 64,
            iou_min: float = IOU_MIN, stats: dict[str, UnitStats] | None = None) -> dict[str, LayerDissection]:
    """Dissect every unit of `layers` against the segmenter's classes on samples 0..n-1 of `seed`."""
    if n <= 0:
        raise UserError(f"--dissect-n must be a positive number of samples, got {n}.")
    names = _check_layers(g, layers)
    stats = stats or layer_stats(g, names, seed, n, batch)
    tallies = {name: ConceptTally(stats[name].top_fraction_threshold(TOP_FRACTIONS.double()).float(), len(segmenter.classes))
               for name in names}
    thresholds = {name: stats[name].top_fraction_threshold(TOP_FRACTIONS.double()).double().numpy() for name in names}
    bar = Progress(n, "dissection")
    for s in range(0, n, batch):
        idx = list(range(s, min(s + batch, n)))
        acts, imgs = _trace(g, names, seed, idx, images=True)
        labels = segmenter.labels(imgs)
        for name in names:
            tallies[name].update(acts[name], labels)
        bar.update(len(idx))
    bar.close()
    out = {}
    for name in names:
        iou, iqr, best = tallies[name].result()
        thr = np.take_along_axis(thresholds[name], best.numpy(), 1)
        share = (tallies[name].class_pixels.double() / max(tallies[name].pixels, 1)).numpy()
        out[name] = LayerDissection(name, segmenter.classes, iou.numpy(), iqr.numpy(), thr, share, n, iou_min)
    return out


def segmenter_id(segmenter: Segmenter) -> str:
    """A content hash of the segmenter file and its class names (for cache keys)."""
    p = Path(segmenter.source)
    return sha256_json({"file": sha256_file(p) if p.is_file() else segmenter.source, "classes": list(segmenter.classes)})[:16]


def cached_dissect(g: LoadedGenerator, layers: Sequence[str], segmenter: Segmenter, seed: int, n: int, cache_dir: str | Path,
                   batch: int = 64) -> dict[str, LayerDissection]:
    """`dissect`, loaded from cache_dir when this (G, layers, segmenter, seed, n) was dissected before (content-hash key)."""
    names = _check_layers(g, layers)
    key = sha256_json({"fingerprint": g.fingerprint, "layers": names, "segmenter": segmenter_id(segmenter), "seed": seed, "n": n, "v": 1})[:20]
    path = Path(cache_dir) / f"dissect-{key}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        return {d["layer"]: LayerDissection.from_json(d) for d in data["layers"]}
    res = dissect(g, names, segmenter, seed, n, batch)
    write_json_atomic(path, {"layers": [d.to_json() for d in res.values()]})
    return res


# ------------------------------------------------------------------------------------ interventions


_HIGH: dict[tuple[str, str], torch.Tensor] = {}


def unit_high_values(g: LoadedGenerator, layer: str, seed: int = 0, n: int = 64, q: float = 0.99) -> torch.Tensor:
    """Per unit of `layer`, its q-quantile activation over n samples (the value insertion writes); cached per (G, layer)."""
    key = (g.fingerprint, layer)
    if key not in _HIGH:
        acts, _ = _trace(g, [layer], seed, list(range(n)), images=False)
        a = acts[layer].float().transpose(0, 1).reshape(acts[layer].shape[1], -1)
        _HIGH[key] = torch.quantile(a, q, dim=1)
    return _HIGH[key]


def _region(mask: np.ndarray | torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """A [0, 1] mask (H, W) at any resolution, resized (area) to the layer's (h, w)."""
    if mask is None:
        return None
    m = torch.as_tensor(np.asarray(mask, np.float32) if not isinstance(mask, torch.Tensor) else mask).float()
    if m.dim() != 2:
        raise UserError(f"the paint mask must be 2-D (H, W), got shape {tuple(m.shape)}.")
    if float(m.min()) < 0 or float(m.max()) > 1:
        raise UserError("the paint mask must hold values in [0, 1].")
    if tuple(m.shape) != size:
        m = F.interpolate(m[None, None], size=size, mode="area")[0, 0]
    return m


def unit_edit(g: LoadedGenerator, layer: str, units: Sequence[int], mode: str = "remove", mask: Any = None,
              values: torch.Tensor | None = None, seed: int = 0):
    """The Ablation edit that removes units (set to 0) or adds them (set to their high value) inside an optional region."""
    if mode not in ("add", "remove"):
        raise UserError(f"mode must be 'add' or 'remove', got {mode!r}.")
    units = [int(u) for u in units]
    if not units:
        raise UserError("no units given to paint with.")
    acts, _ = _trace(g, [layer], seed, [0], images=False)
    c, h, w = acts[layer].shape[1:]
    bad = [u for u in units if not 0 <= u < c]
    if bad:
        raise UserError(f"unit {bad[0]} is out of range: layer {layer} has {c} units (0..{c - 1}).")
    region = _region(mask, (h, w))
    if mode == "remove":
        return ablation(units, 1.0, region)
    high = values if values is not None else unit_high_values(g, layer, seed)[units]
    return ablation(units, 1.0, region, replacement=torch.as_tensor(high, dtype=torch.float32))


def images_with(g: LoadedGenerator, seed: int, indices: Sequence[int], layer: str | None = None, edit: Any = None,
                batch: int = 64) -> np.ndarray:
    """uint8 NHWC images of the given samples, optionally with an edit of `layer` applied."""
    if edit is None:
        return images_at(g, seed, indices, batch)
    with Trace(g.module, edit={layer: edit}):
        return images_at(g, seed, indices, batch)


def paint(g: LoadedGenerator, layer: str, units: Sequence[int], mask: Any, mode: str = "add", seed: int = 0,
          index: int = 0, values: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GANpaint: (before, after) uint8 HxWx3 images of sample `index` with `units` added or removed inside `mask` (H, W)."""
    get_layer(g.module, layer)
    edit = unit_edit(g, layer, units, mode, mask, values, seed)
    before = images_with(g, seed, [index])[0]
    after = images_with(g, seed, [index], layer, edit)[0]
    return before, after


def class_pixels(g: LoadedGenerator, segmenter: Segmenter, seed: int, indices: Sequence[int], layer: str | None = None,
                 edit: Any = None, batch: int = 64) -> np.ndarray:
    """Per sample, the number of pixels of every class (N, K) the segmenter finds, optionally under an edit."""
    idx = [int(i) for i in indices]
    out = []
    for s in range(0, len(idx), batch):
        imgs = images_with(g, seed, idx[s:s + batch], layer, edit, batch)
        lab = segmenter.labels(imgs).reshape(len(imgs), -1)
        out.append(F.one_hot(lab, len(segmenter.classes)).sum(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(segmenter.classes)), np.int64)


def _fraction_ci(before: np.ndarray, after: np.ndarray, seed: int, reps: int = 1000,
                 confidence: float = intervals.DEFAULT_CONFIDENCE) -> tuple[float, list[float]]:
    """Fraction removed sum(before - after) / sum(before) over samples, with a paired percentile-bootstrap interval at `confidence`."""
    tb = float(before.sum())
    frac = (tb - float(after.sum())) / tb if tb > 0 else float("nan")
    if tb <= 0 or len(before) < 2:
        return frac, [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(before), (reps, len(before)))
    b, a = before[pick].sum(1).astype(np.float64), after[pick].sum(1).astype(np.float64)
    boots = np.where(b > 0, (b - a) / np.maximum(b, 1), np.nan)
    return frac, intervals.percentile_interval(boots, confidence)


def random_units(channels: int, k: int, exclude: Sequence[int] = (), seed: int = 0) -> list[int]:
    """k random units of a layer with `channels` units, none of `exclude` (seeded)."""
    others = [u for u in range(channels) if u not in set(int(e) for e in exclude)]
    if len(others) < k:
        raise UserError(f"the layer has too few other units ({len(others)}) for a random control of {k}.")
    return sorted(int(u) for u in np.random.default_rng(seed).choice(others, k, replace=False))


def ablation_effect(g: LoadedGenerator, layer: str, units: Sequence[int], segmenter: Segmenter, concept: str, seed: int = 0,
                    n: int = 200, start: int = 0, control_seed: int = 0,
                    confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """ACE of removing `units` on `concept`: its pixels before/after on samples start..start+n-1, vs as many random units."""
    k = class_index(segmenter.classes, concept)
    units = [int(u) for u in units]
    channels = _trace(g, [layer], seed, [0], images=False)[0][layer].shape[1]
    control = random_units(channels, len(units), units, control_seed)
    idx = list(range(start, start + n))
    before = class_pixels(g, segmenter, seed, idx)[:, k]
    after = class_pixels(g, segmenter, seed, idx, layer, unit_edit(g, layer, units, "remove"))[:, k]
    ctrl = class_pixels(g, segmenter, seed, idx, layer, unit_edit(g, layer, control, "remove"))[:, k]
    frac, ci = _fraction_ci(before, after, seed, confidence=confidence)
    cfrac, cci = _fraction_ci(before, ctrl, seed, confidence=confidence)
    return {"layer": layer, "concept": concept, "units": units, "n": n, "seed": seed, "pixels_before": int(before.sum()),
            "pixels_after": int(after.sum()), "removed_fraction": frac, "removed_ci": ci, "control_units": control,
            "control_pixels_after": int(ctrl.sum()), "control_removed_fraction": cfrac, "control_removed_ci": cci,
            "samples_with_concept": int((before > 0).sum()), "confidence": float(confidence)}


def insertion_effect(g: LoadedGenerator, layer: str, units: Sequence[int], segmenter: Segmenter, concept: str, mask: Any,
                     seed: int = 0, n: int = 50, start: int = 0) -> dict[str, Any]:
    """Insert `units` inside `mask` (H, W, image resolution): concept pixels added inside vs outside the region."""
    k = class_index(segmenter.classes, concept)
    idx = list(range(start, start + n))
    edit = unit_edit(g, layer, units, "add", mask, seed=seed)
    m = torch.as_tensor(np.asarray(mask, np.float32)) > 0.5
    inside = outside = 0.0
    before_in = before_out = 0.0
    for s in range(0, n, 64):
        part = idx[s:s + 64]
        b = segmenter.labels(images_with(g, seed, part)) == k
        a = segmenter.labels(images_with(g, seed, part, layer, edit)) == k
        if b.shape[-2:] != m.shape:
            raise UserError(f"the region mask is {tuple(m.shape)} but the images are {tuple(b.shape[-2:])}.")
        before_in += float((b & m).sum())
        before_out += float((b & ~m).sum())
        inside += float((a & m).sum())
        outside += float((a & ~m).sum())
    area_in, area_out = float(m.sum()) * n, float((~m).sum()) * n
    return {"layer": layer, "concept": concept, "units": [int(u) for u in units], "n": n,
            "share_inside_before": before_in / max(area_in, 1), "share_inside_after": inside / max(area_in, 1),
            "share_outside_before": before_out / max(area_out, 1), "share_outside_after": outside / max(area_out, 1),
            "added_inside": inside - before_in, "added_outside": outside - before_out}


def concept_collateral(g: LoadedGenerator, layer: str, units: Sequence[int], segmenter: Segmenter | None = None, seed: int = 0,
                       n: int = 200, dissection: LayerDissection | None = None,
                       confidence: float = intervals.DEFAULT_CONFIDENCE) -> list[dict[str, Any]]:
    """For removed `units`, every class's pixels before/after on n samples and the fraction removed, most removed first.

    Each row: concept, pixels_before, pixels_after, removed_fraction (negative = the class grew), removed_ci (paired
    bootstrap at `confidence`), and, when a dissection is given, drawn_by: the removed units whose IoU with the class exceeds its iou_min.
    """
    seg = segmenter or load_segmenter()
    get_layer(g.module, layer)
    idx = list(range(n))
    before = class_pixels(g, seg, seed, idx)
    after = class_pixels(g, seg, seed, idx, layer, unit_edit(g, layer, units, "remove"))
    rows = []
    for k, name in enumerate(seg.classes):
        frac, ci = _fraction_ci(before[:, k], after[:, k], seed, confidence=confidence)
        row = {"concept": name, "pixels_before": int(before[:, k].sum()), "pixels_after": int(after[:, k].sum()),
               "removed_fraction": frac, "removed_ci": ci}
        if dissection is not None:
            row["drawn_by"] = [int(u) for u in units if dissection.iou[int(u), k] > dissection.iou_min]
        rows.append(row)
    rows.sort(key=lambda r: -np.nan_to_num(r["removed_fraction"], nan=-np.inf))
    return rows


# ---------------------------------------------------------------------------------------- reporting


def summary_rows(res: dict[str, LayerDissection]) -> list[dict[str, Any]]:
    """One row per layer: units, interpretable units and their count per concept."""
    rows = []
    for name, d in res.items():
        row: dict[str, Any] = {"layer": name, "units": d.units, "interpretable": d.interpretable()}
        row.update(d.counts())
        rows.append(row)
    return rows
