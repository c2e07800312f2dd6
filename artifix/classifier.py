"""Artifact classifier: learn "artifact vs clean" from reviewer flags, localise artifacts, pick what to review next.

The classifier is a class-balanced L2 logistic regression on standardised pooled backbone features
(EfficientNet-Lite0 by default, 1280-d, from `artifix.metrics.features`). The pooled feature is the mean of
the backbone's last spatial grid (7x7 at 224 px, read with a forward hook), and the model is linear, so the
sample's logit is exactly the mean of per-cell logits: projecting each grid cell onto the weight vector gives
an exact class-activation map (CAM). `localize` upsamples it to image size and normalises it;
`pseudo_masks` keeps its top pixels as pseudo artifact masks for samples flagged without a painted region
(as Tousi et al., CVPR 2021). `differentiable_score` is the same model as a torch function of G's output
(for first-order unit effects).

One alternative model, "logreg+pixels" (the same regression on backbone features plus the means of simple
per-pixel statistics: colour, squared colour, saturation, value, local contrast; the pixel block is
up-weighted so that it carries as much variance as the backbone block), is cross-validated on the same
folds and kept only when its ROC-AUC beats the plain model by at least `min_gain`. Its pixel terms are means
of per-pixel quantities, so its localisation map (backbone CAM + per-pixel term) stays exact too.

Every number in `ArtifactClassifier.report` comes from out-of-fold predictions of a seeded stratified
k-fold (folds clipped to the smaller class); C is chosen by an inner cross-validation inside each outer
fold, so the AUC is not tuned on its own test folds (choosing between the two models still favours the
winner slightly). Mean pooling dilutes small local artifacts: with few labels the plain model needs
artifacts covering several grid cells. Classifiers save to one `.pt` file of tensors and a JSON string that
loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import defaults, devices
from .errors import RuntimeFailure, UserError
from .io import atomic_path
from .progress import Progress

FORMAT = "artifix-classifier"
FORMAT_VERSION = 1
PIXEL_STATS = "pixel-stats-v1"
PIXEL_STAT_NAMES: tuple[str, ...] = ("r", "g", "b", "r2", "g2", "b2", "saturation", "saturation2", "value", "contrast")
MODELS: tuple[str, ...] = ("logreg", "logreg+pixels")


def _opt(name: str) -> Any:
    """The `classify` default `name`."""
    return defaults.get("classify", name)


# ----------------------------------------------------------------------------------------------- features


@dataclass
class FeatureSet:
    """Precomputed inputs of the classifier for N images: pooled backbone features, optional spatial grid, pixel stats."""

    features: str  # backbone name, e.g. "effnet-lite0"
    pooled: np.ndarray  # (N, D) float32: mean over the grid cells
    pixels: np.ndarray | None = None  # (N, P) float64 means of per-pixel statistics
    grid: np.ndarray | None = None  # (N, D, h, w) float32 last spatial feature grid (large: only for small N)

    def __len__(self) -> int:
        return int(self.pooled.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> "FeatureSet":
        """The same features restricted to rows `index`."""
        idx = np.asarray(index, dtype=np.int64)
        return FeatureSet(
            self.features,
            self.pooled[idx],
            None if self.pixels is None else self.pixels[idx],
            None if self.grid is None else self.grid[idx],
        )


def _check_images(images: Any, what: str = "images") -> np.ndarray:
    """Images (uint8, NHWC or NCHW, numpy or torch) as a uint8 RGB NHWC array; anything else is a UserError."""
    from .metrics.features import as_uint8_nhwc

    return as_uint8_nhwc(images, what)


def _pixel_maps_t(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel statistics (N, P, H, W) of RGB images (N, H, W, 3) in [0, 1], in the order of PIXEL_STAT_NAMES."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hi, lo = x.amax(-1), x.amin(-1)
    sat = hi - lo
    lum = x.mean(-1)
    dx = (lum.diff(dim=2, append=lum[:, :, -1:])).abs()
    dy = (lum.diff(dim=1, append=lum[:, -1:, :])).abs()
    contrast = (dx + dy).clamp(max=1.0)
    return torch.stack([r, g, b, r * r, g * g, b * b, sat, sat * sat, hi, contrast], dim=1)


def _pixel_maps(images: np.ndarray) -> np.ndarray:
    """Per-pixel statistics (N, P, H, W) float64 of uint8 NHWC images."""
    return _pixel_maps_t(torch.from_numpy(np.ascontiguousarray(images)).double() / 255.0).numpy()


def pixel_stats(images: np.ndarray) -> np.ndarray:
    """Means of the per-pixel statistics PIXEL_STAT_NAMES for each image: (N, P) float64."""
    images = _check_images(images)
    out = np.empty((len(images), len(PIXEL_STAT_NAMES)), np.float64)
    for s in range(0, len(images), 256):
        out[s:s + 256] = _pixel_maps(images[s:s + 256]).mean(axis=(2, 3))
    return out


# Module (relative to the extractor's `net`) whose output is the last spatial feature grid; the extractor's pooled
# feature is exactly the mean of that grid over its cells, which makes the linear model's CAM exact. The
# top-level `_swish` of EfficientNet runs twice per forward (stem, then head): the last call is the head's grid.
GRID_MODULES: dict[str, str] = {"effnet-lite0": "model._swish", "inception": "Mixed_7c"}


def _feature_batch() -> int:
    """Images per backbone forward pass (the metrics `feature_batch` option)."""
    return int(defaults.get("metrics", "feature_batch"))


class _Backbone:
    """A feature extractor from artifix.metrics.features plus a forward hook that captures its last spatial grid."""

    def __init__(self, name: str):
        from .metrics.features import get_extractor

        if name not in GRID_MODULES:
            raise UserError(
                f"classifier backbone {name!r} has no known spatial feature grid for localisation; "
                f"use one of {', '.join(GRID_MODULES)}."
            )
        self.name = name
        self.extractor = get_extractor(name, batch=_feature_batch())
        mods = dict(self.extractor.net.named_modules())
        if GRID_MODULES[name] not in mods:
            raise RuntimeFailure(f"the {name} extractor has no module {GRID_MODULES[name]!r} to read its feature grid from.")
        self.grid_module = mods[GRID_MODULES[name]]

    def __call__(self, images: np.ndarray, grid: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Pooled features (B, D) and, when asked, the grid (B, D, h, w) of uint8 NHWC images, in one pass."""
        if not grid:
            return self.extractor(images), None
        grids: list[np.ndarray] = []
        last: list[torch.Tensor] = []

        def hook(_m: Any, _inp: Any, out: torch.Tensor) -> None:
            last[:] = [out]

        def flush(_m: Any, _inp: Any, _out: Any) -> None:
            grids.append(last[0].float().contiguous().cpu().numpy().copy())

        h1 = self.grid_module.register_forward_hook(hook)
        h2 = self.extractor.net.register_forward_hook(flush)  # once per batch, after the grid's last call
        try:
            pooled = self.extractor(images)
        finally:
            h1.remove()
            h2.remove()
        g = np.concatenate(grids) if grids else np.zeros((0, pooled.shape[1], 1, 1), np.float32)
        if g.shape[:2] != pooled.shape:
            raise RuntimeFailure(
                f"the captured {self.name} feature grid {g.shape} does not match its pooled features {pooled.shape}."
            )
        return pooled, g


_BACKBONES: dict[tuple[str, str], _Backbone] = {}


def _backbone(name: str) -> _Backbone:
    """The cached backbone `name` on the current device."""
    key = (name, str(devices.current()))
    if key not in _BACKBONES:
        _BACKBONES[key] = _Backbone(name)
    return _BACKBONES[key]


def compute_features(
    images: np.ndarray,
    features: str | None = None,
    *,
    grid: bool = False,
    pixels: bool = True,
    batch: int | None = None,
) -> FeatureSet:
    """Run the backbone once over `images` (uint8 NHWC): pooled features, pixel statistics and optionally the grid."""
    images = _check_images(images)
    features = features or _opt("backbone")
    batch = int(batch or _feature_batch())
    bb = _backbone(features)
    pooled: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    bar = Progress(len(images), "classifier features")
    for s in range(0, len(images), batch):
        p, g = bb(images[s:s + batch], grid)
        pooled.append(np.asarray(p, np.float32))
        if grid:
            grids.append(np.asarray(g, np.float32))
        bar.update(len(p))
    bar.close()
    d = pooled[0].shape[1] if pooled else int(bb.extractor.dim)
    return FeatureSet(
        features,
        np.concatenate(pooled) if pooled else np.zeros((0, d), np.float32),
        pixel_stats(images) if pixels else None,
        (np.concatenate(grids) if grids else None) if grid else None,
    )


# ----------------------------------------------------------------------------------------------- model

Precomputed = FeatureSet | np.ndarray | None  # precomputed features: a FeatureSet or pooled (N, D) features


@dataclass
class ArtifactClassifier:
    """A trained artifact classifier: p(artifact | image) = sigmoid(coef . standardise(x) + intercept)."""

    features: str  # backbone name
    model: str  # "logreg" or "logreg+pixels"
    coef: np.ndarray  # (D [+ P],) float64, on standardised inputs
    intercept: float
    mean: np.ndarray  # (D [+ P],) scaler mean
    scale: np.ndarray  # (D [+ P],) scaler std (1 where a column is constant)
    threshold: float  # p >= threshold -> artifact
    report: dict[str, Any] = field(default_factory=dict)
    pixel_stats: str | None = None  # PIXEL_STATS when model uses pixel statistics

    @property
    def n_backbone(self) -> int:
        """Number of backbone feature columns (the rest are pixel statistics)."""
        return int(self.coef.shape[0]) - (len(PIXEL_STAT_NAMES) if self.pixel_stats else 0)

    def _design(self, fs: FeatureSet) -> np.ndarray:
        """The model's raw input matrix for a FeatureSet."""
        if fs.features != self.features:
            raise UserError(f"features were computed with {fs.features!r} but the classifier was trained on {self.features!r}.")
        x = np.asarray(fs.pooled, np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_backbone:
            raise UserError(f"expected {self.n_backbone}-d {self.features} features, got shape {x.shape}.")
        if self.pixel_stats:
            if fs.pixels is None:
                raise UserError("this classifier uses pixel statistics; pass images or features computed with pixels=True.")
            x = np.concatenate([x, np.asarray(fs.pixels, np.float64)], axis=1)
        return x

    def check_extractor(self) -> None:
        """Raise UserError when this artifix's feature extractor differs from the one the classifier was trained with."""
        was = self.report.get("extractor")
        if not was:
            return
        now = _backbone(self.features).extractor.fingerprint()
        keys = ("weights_sha256", "preprocess", "resize", "dim")
        if any(was.get(k) != now.get(k) for k in keys if k in was):
            diff = ", ".join(f"{k} {was.get(k)!r} -> {now.get(k)!r}" for k in keys if k in was and was.get(k) != now.get(k))
            raise UserError(
                f"the {self.features} feature extractor changed since this classifier was trained ({diff}); retrain it."
            )

    def _features(self, images: np.ndarray | None, precomputed: FeatureSet | np.ndarray | None) -> FeatureSet:
        """Resolve either images or precomputed features into a FeatureSet."""
        if precomputed is None:
            self.check_extractor()
        return _resolve_features(images, precomputed, self.features, pixels=bool(self.pixel_stats))

    def decision_function(self, images: np.ndarray | None = None, *, precomputed: Precomputed = None) -> np.ndarray:
        """The logit of p(artifact) for each image: (N,) float64."""
        x = self._design(self._features(images, precomputed))
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def predict_proba(self, images: np.ndarray | None = None, *, precomputed: Precomputed = None) -> np.ndarray:
        """p(artifact) for each image (uint8 NHWC), or for precomputed features: (N,) float64 in [0, 1]."""
        from scipy.special import expit

        return expit(self.decision_function(images, precomputed=precomputed))

    def predict(self, images: np.ndarray | None = None, *, precomputed: Precomputed = None) -> np.ndarray:
        """True where p(artifact) >= the classifier's threshold: (N,) bool."""
        return self.predict_proba(images, precomputed=precomputed) >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """The classifier as a dict of tensors, numbers and a JSON string (what `save` writes)."""
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "features": self.features,
            "model": self.model,
            "pixel_stats": self.pixel_stats,
            "pixel_stat_names": list(PIXEL_STAT_NAMES) if self.pixel_stats else [],
            "threshold": float(self.threshold),
            "intercept": float(self.intercept),
            "report": self.report,
        }
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "meta_json": json.dumps(meta, sort_keys=True, default=_json_default),
            "coef": torch.from_numpy(np.asarray(self.coef, np.float64).copy()),
            "mean": torch.from_numpy(np.asarray(self.mean, np.float64).copy()),
            "scale": torch.from_numpy(np.asarray(self.scale, np.float64).copy()),
        }

    def save(self, path: str | Path) -> Path:
        """Write the classifier to `path` atomically (tensors + JSON, loadable with torch.load(weights_only=True))."""
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(self.to_dict(), tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ArtifactClassifier":
        """Read a classifier written by `save` (no arbitrary pickles are executed)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"classifier file {str(path)!r} does not exist.")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a user-input problem
            raise UserError(f"{str(path)!r} is not a readable artifix classifier file ({type(e).__name__}); check --classifier "
                            "or train one with 'artifix classify train'.") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise UserError(f"{str(path)!r} is not an artifix classifier file.")
        if d.get("version") != FORMAT_VERSION:
            raise UserError(
                f"{str(path)!r} has classifier format version {d.get('version')!r}; this artifix reads version {FORMAT_VERSION}."
            )
        try:
            meta = json.loads(d["meta_json"])
            clf = cls(
                features=str(meta["features"]),
                model=str(meta["model"]),
                coef=d["coef"].numpy().astype(np.float64),
                intercept=float(meta["intercept"]),
                mean=d["mean"].numpy().astype(np.float64),
                scale=d["scale"].numpy().astype(np.float64),
                threshold=float(meta["threshold"]),
                report=dict(meta.get("report", {})),
                pixel_stats=meta.get("pixel_stats"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{str(path)!r} is a damaged artifix classifier file ({type(e).__name__}: {e}).") from None
        if clf.pixel_stats not in (None, PIXEL_STATS):
            raise UserError(f"{str(path)!r} uses pixel statistics {clf.pixel_stats!r}; this artifix has {PIXEL_STATS!r}.")
        if not (clf.coef.ndim == 1 and clf.coef.shape == clf.mean.shape == clf.scale.shape and clf.n_backbone > 0):
            raise UserError(f"{str(path)!r} is a damaged artifix classifier file (inconsistent coefficient shapes).")
        return clf


def _json_default(o: Any) -> Any:
    """JSON for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _resolve_features(
    images: np.ndarray | None, features: FeatureSet | np.ndarray | None, name: str, pixels: bool, grid: bool = False
) -> FeatureSet:
    """A FeatureSet from precomputed features (a FeatureSet or an (N, D) array) or else from images."""
    if features is None:
        if images is None:
            raise UserError("pass images or precomputed features.")
        return compute_features(images, name, grid=grid, pixels=pixels)
    if isinstance(features, FeatureSet):
        fs = features
    else:
        arr = np.asarray(features)
        if arr.ndim != 2:
            raise UserError(f"precomputed features must be an (N, D) array; got shape {arr.shape}.")
        fs = FeatureSet(name, arr.astype(np.float32, copy=False))
    if not np.isfinite(fs.pooled).all():
        raise UserError("precomputed features contain NaN or infinite values.")
    if pixels and fs.pixels is None:
        if images is None:
            raise UserError("pixel statistics are needed: pass the images along with the precomputed features.")
        fs = FeatureSet(fs.features, fs.pooled, pixel_stats(images), fs.grid)
    if grid and fs.grid is None:
        if images is None:
            raise UserError("a spatial feature grid is needed: pass images or features computed with grid=True.")
        fs = compute_features(images, fs.features, grid=True, pixels=pixels)
    if images is not None and len(np.asarray(images)) != len(fs):
        raise UserError(f"got {len(np.asarray(images))} images but {len(fs)} rows of precomputed features.")
    return fs


# ----------------------------------------------------------------------------------------------- training


def _parse_cs(cs: str | Sequence[float]) -> list[float]:
    """The C grid from '0.001,0.01' or a sequence."""
    vals = [float(v) for v in (cs.split(",") if isinstance(cs, str) else cs)]
    if not vals or any(not (v > 0 and math.isfinite(v)) for v in vals):
        raise UserError(f"the C grid must be positive numbers, e.g. '0.001,0.01,0.1'; got {cs!r}.")
    return sorted(vals)


def _standardise(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and scale, float64: the std (1 for constant columns); pixel columns (index >= d) are up-weighted.

    The P pixel-statistic columns are scaled by sqrt(D / P) so that the two blocks carry equal total variance
    and the few pixel coefficients are not drowned by the L2 penalty shared with the D backbone coefficients.
    """
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    p = x.shape[1] - d
    if p > 0 and d > 0:
        scale[d:] /= math.sqrt(d / p)
    return mean, scale


def _fit_lr(z: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, float]:
    """Fit a class-balanced L2 logistic regression on standardised z; returns (coef, intercept).

    With fewer samples than columns the fit runs on the n x n design U S of z = U S V^T (from the eigenvectors
    of the Gram matrix z z^T; Newton steps) and maps back by w = V beta = z^T U S^-1 beta: the L2-penalised
    optimum lies in the row space of z and ||w|| = ||beta||, so this is the same model, found much faster.
    """
    from sklearn.linear_model import LogisticRegression

    if z.shape[1] > z.shape[0]:
        ev, u = np.linalg.eigh(z @ z.T)
        keep = ev > 1e-10 * max(float(ev.max()), 1e-300)
        u, sv = u[:, keep], np.sqrt(ev[keep])
        m = LogisticRegression(C=C, class_weight="balanced", solver="newton-cholesky", max_iter=1000, tol=1e-8)
        m.fit(u * sv, y)
        return z.T @ (u @ (m.coef_[0] / sv)), float(m.intercept_[0])
    m = LogisticRegression(C=C, class_weight="balanced", max_iter=10000, tol=1e-6)
    m.fit(z, y)
    return m.coef_[0].astype(np.float64), float(m.intercept_[0])


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC (ties count one half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def _folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold splits (train, test)."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


def _choose_c(x: np.ndarray, y: np.ndarray, d: int, cs: list[float], inner: int, seed: int) -> float:
    """C with the best inner-CV AUC (ties -> the smaller C); the middle of the grid when too few samples."""
    k = min(inner, int(y.sum()), int(len(y) - y.sum()))
    if len(cs) == 1 or k < 2:
        return cs[len(cs) // 2]
    scores = np.zeros(len(cs))
    for tr, te in _folds(y, k, seed + 1):
        mean, scale = _standardise(x[tr], d)
        ztr, zte = (x[tr] - mean) / scale, (x[te] - mean) / scale
        for j, C in enumerate(cs):
            coef, b = _fit_lr(ztr, y[tr], C)
            scores[j] += _auc(y[te], zte @ coef + b)
    return cs[int(np.argmax(scores + 1e-9 * np.arange(len(cs))[::-1]))]  # near-ties -> the smaller C


def _fit_model(
    x: np.ndarray, y: np.ndarray, d: int, cs: list[float], inner: int, seed: int
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, float]:
    """Choose C by inner CV, standardise, fit: (coef, intercept, mean, scale, C)."""
    C = _choose_c(x, y, d, cs, inner, seed)
    mean, scale = _standardise(x, d)
    coef, b = _fit_lr((x - mean) / scale, y, C)
    return coef, b, mean, scale, C


def _choose_threshold(y: np.ndarray, p: np.ndarray, rule: str | float) -> float:
    """Decision threshold from out-of-fold probabilities: 'f1' (max F1), 'youden' (max TPR - FPR) or a fixed number."""
    if not isinstance(rule, str) or rule.strip().lower() not in ("f1", "youden"):
        try:
            t = float(rule)
        except (TypeError, ValueError):
            raise UserError(f"decision threshold must be 'f1', 'youden' or a number in (0, 1); got {rule!r}.") from None
        if not 0.0 < t < 1.0:
            raise UserError(f"decision threshold must lie in (0, 1); got {t}.")
        return t
    rule = rule.strip().lower()
    cand = np.unique(p)[::-1]  # descending: predicting p >= t
    npos, nneg = int(y.sum()), int(len(y) - y.sum())
    best, best_i = -np.inf, 0
    for i, t in enumerate(cand):
        pred = p >= t
        tp = int((pred & (y == 1)).sum())
        fp = int((pred & (y == 0)).sum())
        if rule == "f1":
            score = 2 * tp / (2 * tp + fp + (npos - tp)) if tp else 0.0
        else:
            score = tp / npos - fp / nneg
        if score > best + 1e-12:
            best, best_i = score, i
    hi = float(cand[best_i])
    lo = float(cand[best_i + 1]) if best_i + 1 < len(cand) else 0.0
    return 0.5 * (hi + lo)  # midway to the next lower score: new samples just below hi are called artifacts too


def reliability_table(y: np.ndarray, p: np.ndarray, bins: int | None = None) -> list[dict[str, Any]]:
    """Calibration table: equal-width probability bins with count, mean predicted p and observed artifact rate."""
    bins = int(bins or _opt("calibration_bins"))
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        rows.append({
            "lo": float(edges[b]),
            "hi": float(edges[b + 1]),
            "n": n,
            "mean_prob": float(p[m].mean()) if n else None,
            "frac_artifact": float(y[m].mean()) if n else None,
        })
    return rows


def _metrics(y: np.ndarray, p: np.ndarray, threshold: float, bins: int) -> dict[str, Any]:
    """Precision, recall, F1, Brier, ECE and a reliability table of out-of-fold probabilities."""
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    table = reliability_table(y, p, bins)
    ece = sum(r["n"] * abs(r["mean_prob"] - r["frac_artifact"]) for r in table if r["n"]) / len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "brier": float(np.mean((p - y) ** 2)),
        "ece": float(ece),
        "reliability": table,
    }


def _check_labels(labels: Any, n: int) -> np.ndarray:
    """Labels as an int array of 0 (clean) / 1 (artifact), one per image."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise UserError(f"need one label per image: got {y.shape} labels for {n} images.")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if len(y) and not np.isin(y, (0, 1)).all():
        bad = sorted({str(v) for v in np.unique(y) if v not in (0, 1)})[:3]
        raise UserError(f"labels must be 0 (clean) or 1 (artifact); drop 'unsure' samples first (found {', '.join(bad)}).")
    return y.astype(np.int64)


def _one_blas_thread():
    """A context that limits BLAS to one thread (a no-op when threadpoolctl is missing)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on threadpoolctl
        from contextlib import nullcontext

        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _cross_validate(
    x: np.ndarray, y: np.ndarray, d: int, folds: list[tuple[np.ndarray, np.ndarray]], cs: list[float], inner: int, seed: int
) -> dict[str, Any]:
    """Out-of-fold probabilities, pooled and per-fold AUC and the C chosen in each outer fold."""
    oof = np.zeros(len(y))
    fold_auc, fold_c = [], []
    for tr, te in folds:
        coef, b, mean, scale, C = _fit_model(x[tr], y[tr], d, cs, inner, seed)
        s = ((x[te] - mean) / scale) @ coef + b
        oof[te] = 1.0 / (1.0 + np.exp(-s))
        fold_auc.append(_auc(y[te], s))
        fold_c.append(C)
    return {"oof": oof, "auc": _auc(y, oof), "fold_auc": fold_auc, "fold_c": fold_c}


def train_classifier(
    images: np.ndarray | None,
    labels: np.ndarray,
    features: str | None = None,
    seed: int | None = None,
    cv: int | None = None,
    *,
    precomputed: FeatureSet | np.ndarray | None = None,
    candidates: str | Sequence[str] | None = None,
    c_grid: str | Sequence[float] | None = None,
    inner_folds: int | None = None,
    threshold: str | float | None = None,
    min_gain: float | None = None,
    calibration_bins: int | None = None,
) -> ArtifactClassifier:
    """Train and cross-validate an artifact classifier from flagged (1) and clean (0) images or precomputed features."""
    features = features or (precomputed.features if isinstance(precomputed, FeatureSet) else _opt("backbone"))
    seed = int(_opt("cv_seed") if seed is None else seed)
    cv = int(_opt("cv_folds") if cv is None else cv)
    cands = candidates if candidates is not None else _opt("candidates")
    cands = [c.strip() for c in (cands.split(",") if isinstance(cands, str) else cands) if c.strip()]
    unknown = [c for c in cands if c not in MODELS]
    if not cands or unknown:
        raise UserError(f"unknown classifier model {unknown[0] if unknown else ''!r}; choose from {', '.join(MODELS)}.")
    cs = _parse_cs(c_grid if c_grid is not None else _opt("c_grid"))
    inner = int(_opt("inner_folds") if inner_folds is None else inner_folds)
    rule = _opt("decision_threshold") if threshold is None else threshold
    gain = float(_opt("min_gain") if min_gain is None else min_gain)
    bins = int(_opt("calibration_bins") if calibration_bins is None else calibration_bins)
    if cv < 2:
        raise UserError(f"cross-validation needs at least 2 folds; got {cv}.")

    n = len(precomputed) if precomputed is not None else len(_check_images(images))
    y = _check_labels(labels, n)
    n_pos, n_neg = int(y.sum()), int(n - y.sum())
    if min(n_pos, n_neg) < 2:
        raise UserError(
            f"need at least 2 flagged and 2 clean samples to train and cross-validate the classifier; "
            f"got {n_pos} flagged and {n_neg} clean."
        )
    k = min(cv, n_pos, n_neg)
    if images is not None:
        images = _check_images(images)
    need_pixels = "logreg+pixels" in cands
    skipped: dict[str, str] = {}
    if need_pixels and images is None and not (isinstance(precomputed, FeatureSet) and precomputed.pixels is not None):
        cands = [c for c in cands if c != "logreg+pixels"] or ["logreg"]
        skipped["logreg+pixels"] = "no images or pixel statistics were given"
        need_pixels = False
    fs = _resolve_features(images, precomputed, features, pixels=need_pixels)
    if fs.features != features:
        raise UserError(f"precomputed features are {fs.features!r} but features={features!r} was asked for.")

    designs = {
        "logreg": np.asarray(fs.pooled, np.float64),
        "logreg+pixels": None if fs.pixels is None else np.concatenate([np.asarray(fs.pooled, np.float64), fs.pixels], 1),
    }
    d = int(fs.pooled.shape[1])
    folds = _folds(y, k, seed)
    with _one_blas_thread():  # tiny matrices: threaded BLAS only adds contention (and run-to-run jitter)
        results = {name: _cross_validate(designs[name], y, d, folds, cs, inner, seed) for name in cands}
        chosen = cands[0]
        for name in cands[1:]:
            if results[name]["auc"] >= results[chosen]["auc"] + gain:
                chosen = name
        r = results[chosen]
        t = _choose_threshold(y, r["oof"], rule)
        coef, b, mean, scale, C = _fit_model(designs[chosen], y, d, cs, inner, seed)
    report: dict[str, Any] = {
        "model": chosen,
        "features": features,
        "auc": r["auc"],
        "auc_fold_mean": float(np.mean(r["fold_auc"])),
        "auc_fold_std": float(np.std(r["fold_auc"])),
        "threshold": t,
        "threshold_rule": str(rule),
        **_metrics(y, r["oof"], t, bins),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "cv_folds": k,
        "seed": seed,
        "C": C,
        "fold_C": r["fold_c"],
        "candidates": {name: {"auc": results[name]["auc"], "brier": float(np.mean((results[name]["oof"] - y) ** 2))}
                       for name in cands},
        "skipped": skipped,
        "min_gain": gain,
        "feature_dim": int(designs[chosen].shape[1]),
        "extractor": _backbone(features).extractor.fingerprint(),
    }
    return ArtifactClassifier(
        features=features,
        model=chosen,
        coef=coef,
        intercept=b,
        mean=mean,
        scale=scale,
        threshold=t,
        report=report,
        pixel_stats=PIXEL_STATS if chosen == "logreg+pixels" else None,
    )


# ----------------------------------------------------------------------------------------------- localisation


def _cell_logits(clf: ArtifactClassifier, grid: np.ndarray) -> np.ndarray:
    """Per-cell logits (N, h, w) of the backbone part: their mean over cells is the backbone part of the logit."""
    d = clf.n_backbone
    w = clf.coef[:d] / clf.scale[:d]
    g = np.asarray(grid, np.float64)
    return np.einsum("ndhw,d->nhw", g, w) - float(w @ clf.mean[:d])


def _pixel_logits(clf: ArtifactClassifier, images: np.ndarray) -> np.ndarray:
    """Per-pixel logit contribution (N, H, W) of the pixel-statistics part (zero for the plain model)."""
    n, h, w_, _ = images.shape
    if not clf.pixel_stats:
        return np.zeros((n, h, w_))
    d = clf.n_backbone
    wp = clf.coef[d:] / clf.scale[d:]
    return np.einsum("nphw,p->nhw", _pixel_maps(images), wp) - float(wp @ clf.mean[d:])


def localize(
    clf: ArtifactClassifier,
    images: np.ndarray,
    *,
    precomputed: FeatureSet | None = None,
    normalize: bool = True,
    batch: int | None = None,
) -> np.ndarray:
    """Class-activation maps (N, H, W) float32: per-image min-max normalised to [0, 1] (raw logit maps if not normalize)."""
    import torch.nn.functional as F

    images = _check_images(images)
    n, h, w, _ = images.shape
    batch = int(batch or _feature_batch())
    out = np.zeros((n, h, w), np.float32)
    if precomputed is not None and precomputed.grid is None:
        raise UserError("localize needs precomputed features with a spatial grid (compute_features(..., grid=True)).")
    if precomputed is not None and len(precomputed) != n:
        raise UserError(f"got {n} images but {len(precomputed)} rows of precomputed features.")
    for s in range(0, n, batch):
        ims = images[s:s + batch]
        if precomputed is not None:
            if precomputed.features != clf.features:
                raise UserError(
                    f"features were computed with {precomputed.features!r} but the classifier uses {clf.features!r}."
                )
            g = precomputed.grid[s:s + batch]
        else:
            if s == 0:
                clf.check_extractor()
            g = _backbone(clf.features)(ims, True)[1]
        cells = torch.from_numpy(_cell_logits(clf, g))[:, None]
        up = F.interpolate(cells, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
        m = up + _pixel_logits(clf, ims) + clf.intercept
        if normalize:
            lo = m.min(axis=(1, 2), keepdims=True)
            span = m.max(axis=(1, 2), keepdims=True) - lo
            m = np.where(span > 1e-12, (m - lo) / np.where(span > 1e-12, span, 1.0), 0.0)
        out[s:s + batch] = m
    return out


def pseudo_masks(
    clf: ArtifactClassifier,
    images: np.ndarray,
    top_fraction: float | None = None,
    *,
    maps: np.ndarray | None = None,
    precomputed: FeatureSet | None = None,
) -> np.ndarray:
    """Pseudo artifact masks (N, H, W) bool: the top `top_fraction` of each image's localisation map."""
    top_fraction = float(_opt("top_fraction") if top_fraction is None else top_fraction)
    if not 0.0 < top_fraction <= 1.0:
        raise UserError(f"top_fraction must lie in (0, 1]; got {top_fraction}.")
    if maps is None:
        maps = localize(clf, images, precomputed=precomputed)
    maps = np.asarray(maps)
    n, h, w = maps.shape
    k = max(1, int(round(top_fraction * h * w)))
    flat = maps.reshape(n, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]  # ties: lower pixel index first
    masks = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(masks, order, True, axis=1)
    return masks.reshape(n, h, w)


def differentiable_score(
    clf: ArtifactClassifier, value_range: str = "[-1,1]", logit: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch function: G's output (N, 1|3, H, W) in `value_range` -> p(artifact) (or its logit), differentiable."""
    import torch.nn.functional as F

    if value_range not in ("[-1,1]", "[0,1]"):
        raise UserError(f"generator output range must be '[-1,1]' or '[0,1]'; got {value_range!r}.")
    ext = _backbone(clf.features).extractor
    w = torch.from_numpy(clf.coef / clf.scale)
    offset = float((clf.coef / clf.scale) @ clf.mean) - clf.intercept

    def score(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise UserError(f"the artifact score needs images shaped (N, 1 or 3, H, W); got {tuple(x.shape)}.")
        x = x.float().expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.float()
        x255 = ((x + 1.0) * 127.5 if value_range == "[-1,1]" else x * 255.0).clamp(0.0, 255.0)
        z = x255
        if ext.size is not None and tuple(z.shape[2:]) != tuple(ext.size):
            # antialiased bicubic, as PIL's (the extractor's) resize, within about 1e-3 grey levels
            z = F.interpolate(z, size=ext.size, mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 255.0)
        z = ext._normalise(z.to(ext.device))  # the extractor's device (G's, when both follow the current device)
        if ext.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        feats = ext.net(z).reshape(x.shape[0], -1).double().to(x.device)
        if clf.pixel_stats:
            stats = _pixel_maps_t(x255.permute(0, 2, 3, 1).double() / 255.0).mean(dim=(2, 3))
            feats = torch.cat([feats, stats], dim=1)
        out = feats @ w.to(feats.device) - offset
        return out if logit else torch.sigmoid(out)

    return score


# ----------------------------------------------------------------------------------------------- active learning


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
