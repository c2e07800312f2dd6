"""The proof of a repair: paired before/after measurements on the same seeds, beside a random-unit control.

`measure`: FD (and FID when Inception weights are given), KID and SWD with paired intervals, and the
classifier's artifact rate, on (a) random samples and (b) the samples where the removed units fire most
(GAN Dissection's high-activation subset), always beside a random-unit control of the same size per layer;
plus the artifact rate on the flagged samples and the mean pixel change. `fd_recovery` is the share of a
known damage that a repair undoes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .. import intervals, log
from ..ledger import Ledger
from ..metrics import get_extractor, needs_features, paired_compare_many
from ..model.generator import LoadedGenerator
from ..model.trace import Ablation
from ..progress import track
from ..review.classifier import ArtifactClassifier, _backbone
from ..units.scoring import trace_batches
from .plan import RepairPlan, Say, _edits


def _rate(p: np.ndarray, thr: float, seed: int, reps: int = 1000, confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Artifact rate (p >= thr) with a percentile bootstrap interval at `confidence`."""
    iv = intervals.percentile_bootstrap((np.asarray(p) >= thr).astype(float), confidence, seed, reps)
    return {"value": iv.value, "ci": iv.ci if iv.n else [float("nan"), float("nan")], "se": iv.se, "n": iv.n, "confidence": iv.confidence}


def paired_rate_diff(p_a: np.ndarray, p_b: np.ndarray, thr: float, seed: int, reps: int = 2000,
                     confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Artifact rate of b minus a on the same samples, with a paired percentile bootstrap interval at `confidence`."""
    iv = intervals.paired_bootstrap((np.asarray(p_a) >= thr).astype(float), (np.asarray(p_b) >= thr).astype(float), confidence, seed, reps)
    return {"diff": iv.value, "ci": iv.ci, "se": iv.se, "significant": bool(iv.hi < 0 or iv.lo > 0), "n": iv.n,
            "confidence": iv.confidence}


def pixel_change(before: list[np.ndarray], after: list[np.ndarray], seed: int, confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, Any]:
    """Mean over samples of the mean |after - before| / 255 (reference-free: how much the edit changes the images)."""
    per = np.concatenate([np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(1) / 255.0
                          for b, a in zip(before, after)])
    iv = intervals.percentile_bootstrap(per, confidence, seed)
    return {"value": iv.value, "ci": iv.ci, "se": iv.se, "n": iv.n, "confidence": iv.confidence}


def high_activation_samples(g: LoadedGenerator, units: Mapping[str, Sequence[int]], seed: int, n: int, pool: int) -> list[int]:
    """The n samples of 0..pool-1 where the given units fire most (sum over layers of each unit's spatial max)."""
    score = np.zeros(pool)
    for layer, us in units.items():
        for idx, acts, _ in trace_batches(g, layer, seed, list(range(pool))):
            score[list(idx)] += acts[:, list(us)].flatten(2).amax(2).sum(1).double().numpy()
    return sorted(int(i) for i in np.argsort(-score, kind="stable")[:n])


def _inception_weights(path: str | None) -> str | None:
    p = path or os.environ.get("ARTIFIX_INCEPTION_WEIGHTS")
    return p if p and Path(p).is_file() else None


def _compare(led: Ledger, ids: Sequence[int], sets: Mapping[str, Mapping[str, Ablation] | None], n: int, metrics: str, real: Any,
             seed: int, inception: str | None, cache: str | None,
             confidence: float = intervals.DEFAULT_CONFIDENCE) -> dict[str, dict[str, Any]]:
    """Paired metrics of each edited set in `sets` against the unedited one on samples `ids` ({} each when no metric is
    asked): every set rendered and extracted once (the feature ledger), 'before' measured once for all of them."""
    out: dict[str, dict[str, Any]] = {name: {} for name in sets}
    if not metrics:
        return out
    spaces = [get_extractor(None)]
    if inception and "fd" in metrics:
        spaces.append(get_extractor("inception", inception_weights=inception))
    for k, ex in enumerate(spaces):
        pre = ({"a": led.features(None, ids, ex), **{name: led.features(e, ids, ex) for name, e in sets.items()}}
               if needs_features(metrics if k == 0 else "fd") else None)  # SWD alone reads pixels: no features extracted
        res = paired_compare_many(led.batches(None, ids), {name: led.batches(e, ids) for name, e in sets.items()},
                                  precomputed=pre, n=n, metrics=metrics if k == 0 else "fd", features=ex, real=real, seed=seed,
                                  cache=cache, confidence=confidence)
        for name in sets:
            out[name].update(res[name])
    return out


def _proba(clf: Any, led: Ledger, edits: Mapping[str, Ablation] | None, ids: Sequence[int]) -> np.ndarray:
    """The classifier's p(artifact) on a ledger set, reading the backbone features the metrics extracted."""
    if not isinstance(clf, ArtifactClassifier):  # any other scorer with predict_proba(images) sees the images
        return np.asarray(clf.predict_proba(led.images(edits, ids)))
    clf.check_extractor()
    feats = led.features(edits, ids, _backbone(clf.features).extractor)
    return clf.predict_proba(led.images(edits, ids), precomputed=feats)


def measure(g: LoadedGenerator, plan: RepairPlan, control: Mapping[str, Sequence[int]], seed: int, n: int, flagged: Sequence[int],
            clf: Any = None, real: Any = None, metrics: str = "fd,kid,swd", *, high_pool: int = 0,
            inception_weights: str | None = None, cache: str | None = None, say: Say = log.say,
            confidence: float = intervals.DEFAULT_CONFIDENCE, ledger: Ledger | None = None) -> dict[str, Any]:
    """Paired before/after metrics on the same seeds for the repair and the random-unit control (random and high-activation sets)."""
    led = ledger or Ledger(g, seed, cache)
    edits, ctrl_edits = plan.ablations(), _edits(control)
    sets = {"after": edits, "control": ctrl_edits}
    inception = _inception_weights(inception_weights)
    subsets: dict[str, Sequence[int] | int] = {"random": n}
    if high_pool > n:
        subsets["high_activation"] = high_activation_samples(g, plan.edits, seed, n, high_pool)
    res: dict[str, Any] = {"n": n, "seed": seed, "confidence": float(confidence), "subsets": {}}
    for name, ids in track(subsets.items(), len(subsets), "repair proof"):
        idx = list(range(ids)) if isinstance(ids, int) else list(ids)
        say(f"{name} samples ({n}): before, after and random control, each rendered and extracted once")
        cmp = _compare(led, idx, sets, n, metrics, real, seed, inception, cache, confidence)
        before, after, ctrl = ([led.images(e, idx)] for e in (None, edits, ctrl_edits))
        sub: dict[str, Any] = {"samples": ids if isinstance(ids, int) else f"top {n} of {high_pool} by the removed units' activation",
                               "repair": cmp["after"], "control": cmp["control"],
                               "pixel_change": {"repair": pixel_change(before, after, seed, confidence),
                                                "control": pixel_change(before, ctrl, seed, confidence)}}
        if clf is not None:
            p = {k: _proba(clf, led, e, idx) for k, e in (("before", None), ("after", edits), ("control", ctrl_edits))}
            sub["artifact_rate"] = {k: _rate(v, clf.threshold, seed, confidence=confidence) for k, v in p.items()}
            sub["artifact_rate"]["repair_diff"] = paired_rate_diff(p["before"], p["after"], clf.threshold, seed, confidence=confidence)
            sub["artifact_rate"]["control_diff"] = paired_rate_diff(p["before"], p["control"], clf.threshold, seed, confidence=confidence)
        res["subsets"][name] = sub
        if name != "random":  # the random sets stay for the caller's grids; the others are done
            for e in (None, edits, ctrl_edits):
                led.drop(e, idx)
    # the random-sample results also at top level (what the model card's table shows first)
    res["repair"], res["control"] = res["subsets"]["random"]["repair"], res["subsets"]["random"]["control"]
    if "artifact_rate" in res["subsets"]["random"]:
        res["artifact_rate"] = res["subsets"]["random"]["artifact_rate"]
    if clf is not None and flagged:
        ids = list(flagged)
        res["artifact_rate_flagged"] = {k: _rate(_proba(clf, led, e, ids), clf.threshold, seed, confidence=confidence)
                                        for k, e in (("before", None), ("after", edits), ("control", ctrl_edits))}
    res["ledger"] = {"rendered": led.renders, "extracted": led.extractions, "disk_hits": led.disk_hits}
    return res



def fd_recovery(clean: LoadedGenerator, damaged: LoadedGenerator, manifest: dict[str, Any], seed: int = 0,
                real: Any = None, cache: str | None = None) -> dict[str, Any]:
    """Share of the FD damage (damaged vs clean generator, paired on the same seeds) that the repair and its control undo."""
    n = int(manifest["metrics"]["n"])
    ids, ex = list(range(n)), get_extractor(None)
    a, b = Ledger(clean, seed, cache), Ledger(damaged, seed, cache)  # the damaged set is the repair's cached 'before'
    res = paired_compare_many(a.batches(None, ids), {"b": b.batches(None, ids)}, n=n, metrics="fd", real=real, seed=seed,
                              cache=cache, features=ex, precomputed={"a": a.features(None, ids, ex), "b": b.features(None, ids, ex)})["b"]
    name, damage = next(iter(res.items()))
    fixed, ctrl = manifest["metrics"]["repair"][name], manifest["metrics"]["control"][name]
    d = damage["diff"]
    return {"metric": name, "damage": {"diff": d, "ci": damage["ci"], "clean": damage["a"], "damaged": damage["b"]},
            "repair": -fixed["diff"] / d if d else float("nan"), "control": -ctrl["diff"] / d if d else float("nan"),
            "after": fixed["b"], "control_after": ctrl["b"]}
