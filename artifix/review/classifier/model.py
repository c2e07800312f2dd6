"""The trained artifact classifier: p(artifact | image), and its one-file format (tensors + JSON, weights-only loadable)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from ...errors import UserError
from ...io import save_torch_atomic, sha256_file
from .backbone import PIXEL_STAT_NAMES, PIXEL_STATS, FeatureSet, _backbone, _resolve_features

FORMAT = "artifix-classifier"
FORMAT_VERSION = 1
MODELS: tuple[str, ...] = ("logreg", "logreg+pixels")


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
        save_torch_atomic(self.to_dict(), path)
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
        clf.source = {"path": str(path.resolve()), "sha256": sha256_file(path)}  # provenance of reports that use it
        return clf


def _json_default(o: Any) -> Any:
    """JSON for numpy scalars and arrays."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
