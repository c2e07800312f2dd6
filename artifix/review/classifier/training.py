"""Training: a class-balanced L2 logistic regression, C chosen by inner cross-validation, out-of-fold calibration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from ...errors import UserError
from .backbone import PIXEL_STATS, FeatureSet, _backbone, _check_images, _opt, _resolve_features
from .model import MODELS, ArtifactClassifier


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
    return float(roc_auc_score(y, s))


def _folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Seeded stratified k-fold splits (train, test)."""
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
    """A context that limits BLAS to one thread (threadpoolctl: a dependency of scikit-learn)."""
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


@dataclass(frozen=True)
class _Settings:
    """The options of one training run, after defaults and validation."""

    features: str
    seed: int
    cv: int
    candidates: list[str]
    cs: list[float]
    inner: int
    rule: str | float
    gain: float
    bins: int


def _settings(
    features: str | None, precomputed: FeatureSet | np.ndarray | None, seed: int | None, cv: int | None,
    candidates: str | Sequence[str] | None, c_grid: str | Sequence[float] | None, inner_folds: int | None,
    threshold: str | float | None, min_gain: float | None, calibration_bins: int | None,
) -> _Settings:
    """The given options, else the `classify` defaults; UserError for an unknown model, a bad C grid or under 2 folds."""
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
    return _Settings(features, seed, cv, cands, cs, inner, rule, gain, bins)


def _training_data(
    images: np.ndarray | None, labels: np.ndarray, precomputed: FeatureSet | np.ndarray | None, st: _Settings
) -> tuple[FeatureSet, np.ndarray, list[str], dict[str, str]]:
    """Features, labels, the candidate models the inputs allow (logreg+pixels needs pixels) and why others were skipped."""
    n = len(precomputed) if precomputed is not None else len(_check_images(images))
    y = _check_labels(labels, n)
    n_pos, n_neg = int(y.sum()), int(n - y.sum())
    if min(n_pos, n_neg) < 2:
        raise UserError(
            f"need at least 2 flagged and 2 clean samples to train and cross-validate the classifier; "
            f"got {n_pos} flagged and {n_neg} clean."
        )
    if images is not None:
        images = _check_images(images)
    cands = st.candidates
    need_pixels = "logreg+pixels" in cands
    skipped: dict[str, str] = {}
    if need_pixels and images is None and not (isinstance(precomputed, FeatureSet) and precomputed.pixels is not None):
        cands = [c for c in cands if c != "logreg+pixels"] or ["logreg"]
        skipped["logreg+pixels"] = "no images or pixel statistics were given"
        need_pixels = False
    fs = _resolve_features(images, precomputed, st.features, pixels=need_pixels)
    if fs.features != st.features:
        raise UserError(f"precomputed features are {fs.features!r} but features={st.features!r} was asked for.")
    return fs, y, cands, skipped


@dataclass
class _Fit:
    """The model chosen by cross-validation, its out-of-fold results and its fit on every sample."""

    chosen: str
    results: dict[str, dict[str, Any]]  # per candidate: `_cross_validate`'s result
    threshold: float
    coef: np.ndarray
    intercept: float
    mean: np.ndarray
    scale: np.ndarray
    C: float
    dim: int  # columns of the chosen model's design matrix


def _select_and_fit(fs: FeatureSet, y: np.ndarray, cands: list[str], k: int, st: _Settings) -> _Fit:
    """Cross-validate every candidate on the same folds, keep the plain model unless another gains `gain` AUC, refit."""
    designs = {
        "logreg": np.asarray(fs.pooled, np.float64),
        "logreg+pixels": None if fs.pixels is None else np.concatenate([np.asarray(fs.pooled, np.float64), fs.pixels], 1),
    }
    d = int(fs.pooled.shape[1])
    folds = _folds(y, k, st.seed)
    with _one_blas_thread():  # tiny matrices: threaded BLAS only adds contention (and run-to-run jitter)
        results = {name: _cross_validate(designs[name], y, d, folds, st.cs, st.inner, st.seed) for name in cands}
        chosen = cands[0]
        for name in cands[1:]:
            if results[name]["auc"] >= results[chosen]["auc"] + st.gain:
                chosen = name
        t = _choose_threshold(y, results[chosen]["oof"], st.rule)
        coef, b, mean, scale, C = _fit_model(designs[chosen], y, d, st.cs, st.inner, st.seed)
    return _Fit(chosen, results, t, coef, b, mean, scale, C, int(designs[chosen].shape[1]))


def _report(fit: _Fit, y: np.ndarray, cands: list[str], skipped: dict[str, str], k: int, st: _Settings) -> dict[str, Any]:
    """The classifier's report: out-of-fold AUC, calibration, the chosen C, every candidate's scores and the extractor."""
    r = fit.results[fit.chosen]
    return {
        "model": fit.chosen,
        "features": st.features,
        "auc": r["auc"],
        "auc_fold_mean": float(np.mean(r["fold_auc"])),
        "auc_fold_std": float(np.std(r["fold_auc"])),
        "threshold": fit.threshold,
        "threshold_rule": str(st.rule),
        **_metrics(y, r["oof"], fit.threshold, st.bins),
        "n_pos": int(y.sum()),
        "n_neg": int(len(y) - y.sum()),
        "cv_folds": k,
        "seed": st.seed,
        "C": fit.C,
        "fold_C": r["fold_c"],
        "candidates": {name: {"auc": fit.results[name]["auc"], "brier": float(np.mean((fit.results[name]["oof"] - y) ** 2))}
                       for name in cands},
        "skipped": skipped,
        "min_gain": st.gain,
        "feature_dim": fit.dim,
        "extractor": _backbone(st.features).extractor.fingerprint(),
    }


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
    st = _settings(features, precomputed, seed, cv, candidates, c_grid, inner_folds, threshold, min_gain, calibration_bins)
    fs, y, cands, skipped = _training_data(images, labels, precomputed, st)
    k = min(st.cv, int(y.sum()), int(len(y) - y.sum()))
    fit = _select_and_fit(fs, y, cands, k, st)
    return ArtifactClassifier(
        features=st.features,
        model=fit.chosen,
        coef=fit.coef,
        intercept=fit.intercept,
        mean=fit.mean,
        scale=fit.scale,
        threshold=fit.threshold,
        report=_report(fit, y, cands, skipped, k, st),
        pixel_stats=PIXEL_STATS if fit.chosen == "logreg+pixels" else None,
    )
