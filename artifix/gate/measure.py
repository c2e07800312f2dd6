"""Measuring: sample the candidate (and the baseline on the same seeds) and measure what the criteria read."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from .. import intervals
from ..errors import RuntimeFailure
from ..ledger import Ledger
from ..metrics import compute_metrics, get_extractor, paired_compare_many
from ..metrics.extractor import Extractor
from ..model.generator import sample_batches
from ..model.trace import Trace, ablation
from ..review.classifier import FeatureSet, pixel_stats
from .inputs import GateSettings, dist_metrics


def _binomial(k: int, n: int) -> dict[str, Any]:
    """A rate k/n with its standard error (`intervals.binomial_se`: Laplace-smoothed, so that 0/n still has a non-zero se)."""
    return {"value": k / n, "se": intervals.binomial_se(k, n), "n": n, "count": int(k), "df": None}


def _feature_tap(inner: Any, limit: int) -> Any:
    """An extractor that computes what `inner` computes and keeps the rows of the first `limit` images it sees.

    The metrics consume the generated images before the reference, so the rows kept are the generated
    images' features, which the artifact classifier then reuses instead of running the backbone again.
    """
    class FeatureTap(Extractor):
        def __init__(self) -> None:
            self.inner, self.limit, self.rows = inner, limit, []
            self.name, self.tag, self.dim, self.size = inner.name, inner.tag, inner.dim, inner.size
            self.net, self.device = inner.net, inner.device

        def fingerprint(self) -> dict[str, Any]:
            return self.inner.fingerprint()

        def __call__(self, images: Any) -> np.ndarray:
            f = self.inner(images)
            seen = sum(len(r) for r in self.rows)
            if seen < self.limit:
                self.rows.append(f[: self.limit - seen])
            return f

        def features(self) -> np.ndarray:
            return np.concatenate(self.rows) if self.rows else np.zeros((0, self.dim), np.float32)

    return FeatureTap()


def _sample(g: Any, seed: int, n: int, batch: int = 64) -> list[np.ndarray]:
    return [im.numpy() for _, im in sample_batches(g, seed, 0, n, batch)]


def _artifact_hits(clf: Any, images: np.ndarray, pooled: np.ndarray | None, extractor_name: str | None) -> np.ndarray:
    """Per-sample artifact calls (p >= the classifier's threshold), reusing the metrics' features when they match."""
    if pooled is not None and extractor_name == clf.features and len(pooled) == len(images):
        fs = FeatureSet(clf.features, pooled, pixel_stats(images) if clf.pixel_stats else None)
        return clf.predict_proba(precomputed=fs) >= clf.threshold
    return clf.predict_proba(images) >= clf.threshold


def _dist_key(metric: str, results: Mapping[str, Mapping[str, Any]]) -> str:
    """The name of the one result of `metric` (fd / fid / kid / swd), found by its fields (metric family, features), not its name."""
    family = "fd" if metric == "fid" else metric
    found = [n for n, r in results.items() if r.get("metric") == family and not r.get("extrapolated")
             and (metric != "fid" or r.get("features") == "inception")]
    if len(found) != 1:
        raise RuntimeFailure(f"expected one {metric} result among {list(results)}.")
    return found[0]


def measure(s: GateSettings, cand: Any, base: Any, res: Mapping[str, Any], say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Every measurement the criteria read: the candidate's value and se, and (with a baseline checkpoint) the paired difference."""
    out: dict[str, dict[str, Any]] = {}
    say(f"sampling {s.n} images of the candidate (seed {s.seed})" + (" and of the baseline on the same seeds" if base else ""))
    ids = list(range(s.n))
    cache = s.metric_opts.get("cache")
    led_c = Ledger(cand, s.seed, cache)  # unedited sets: rendered (and extracted) once, reused from disk by the next gate
    led_b = Ledger(base, s.seed, cache) if base is not None else None
    c_imgs = led_c.batches(None, ids)
    b_imgs = led_b.batches(None, ids) if led_b is not None else None
    c_all = np.concatenate(c_imgs)
    metrics = dist_metrics(s.criteria)
    c_feat = b_feat = None
    ext_name = None
    if metrics:
        o = s.metric_opts
        ext = get_extractor(o.get("features"), batch=o.get("feature_batch"), inception_weights=o.get("inception_weights"),
                            torchscript_size=o.get("torchscript_size"), torchscript_range=o.get("torchscript_range"))
        tap = _feature_tap(ext, s.n * (2 if base is not None else 1))
        ext_name = ext.name
        kw = dict(n=s.n, metrics=",".join(metrics), features=tap, seed=s.metrics_seed, bootstrap=s.bootstrap, confidence=max(c.confidence for c in s.criteria),
                  swd_bootstrap=s.swd_bootstrap, progress=say,
                  **{k: o.get(k) for k in ("real", "real_n", "real_resize", "swd_n", "kid_subsets", "kid_subset_size", "cache")})
        kw["swd_n"] = min(int(kw["swd_n"] or s.n), s.n)
        if base is not None:
            b_feat, c_feat = led_b.features(None, ids, ext), led_c.features(None, ids, ext)
            r = paired_compare_many(b_imgs, {"b": c_imgs}, precomputed={"a": b_feat, "b": c_feat}, **{**kw, "features": ext})["b"]
            for m in metrics:
                name = _dist_key(m, r)
                e = r[name]
                df = (s.swd_bootstrap if m == "swd" else s.bootstrap) - 1
                out[m] = {"metric": name, "paired": True,
                          "candidate": {"value": e["b"], "se": e["se_b"], "n": e["n"], "df": df},
                          "baseline": {"value": e["a"], "se": e["se_a"], "n": e["n"], "df": df},
                          "diff": {"value": e["diff"], "se": e["se"], "df": df}}
        else:
            r = compute_metrics(iter(c_imgs), **kw)
            c_feat = tap.features()
            for m in metrics:
                name = _dist_key(m, r)
                df = (s.swd_bootstrap if m == "swd" else s.bootstrap) - 1
                out[m] = {"metric": name, "paired": False,
                          "candidate": {"value": r[name]["value"], "se": r[name]["se"], "n": r[name]["n"], "df": df}}
        if "fd" in out and any(c.metric == "fid" for c in s.criteria):
            out["fid"] = out.pop("fd")
    for path, (clf, sha) in res["classifiers"].items():
        key = next(c.key for c in s.criteria if c.classifier == path)
        say(f"artifact rate by the classifier {path}")
        hc = _artifact_hits(clf, c_all, c_feat, ext_name)
        m = {"metric": "artifact_rate", "classifier": path, "classifier_sha256": sha, "threshold": float(clf.threshold),
             "paired": base is not None, "candidate": _binomial(int(hc.sum()), len(hc))}
        if base is not None:
            hb = _artifact_hits(clf, np.concatenate(b_imgs), b_feat, ext_name)
            d = hc.astype(float) - hb.astype(float)
            m["baseline"] = _binomial(int(hb.sum()), len(hb))
            m["diff"] = {"value": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d))), "df": len(d) - 1}
        out[key] = m
    for path, pr in res.get("preferences", {}).items():
        key = next(c.key for c in s.criteria if c.ab == path)
        r = pr["repair"]
        out[key] = {"metric": "preference", "ab": path, "ab_sha256": pr["sha256"], "study": pr["study"], "paired": False,
                    "ties": r["ties"], "tie_rate": r["ties"] / max(r["wins"] + r["losses"] + r["ties"], 1), "control": pr["control"],
                    "candidate": _binomial(r["wins"], r["wins"] + r["losses"])}
    for path, mf in res["manifests"].items():
        key = next(c.key for c in s.criteria if c.manifest == path)
        say(f"units removed by {path}: ablating " + "; ".join(f"{l} {u}" for l, u in mf["removed"].items()) + " again on the candidate")
        with Trace(cand.module, edit={l: ablation(u) for l, u in mf["removed"].items()}):
            again = np.concatenate(_sample(cand, s.seed, s.n))
        change = np.abs(again.astype(np.int16) - c_all.astype(np.int16)).reshape(len(c_all), -1).max(1)
        tol = min(c.tolerance for c in s.criteria if c.manifest == path)
        k = int((change > tol).sum())
        out[key] = {"metric": "units_removed", "manifest": path, "manifest_sha256": mf["sha256"], "layer": mf["layer"],
                    "units": mf["units"], "removed": mf["removed"], "tolerance": tol, "paired": False, "max_pixel_change": int(change.max()),
                    "candidate": _binomial(k, len(change))}
    return out
