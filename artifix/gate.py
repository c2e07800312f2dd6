"""Release gate: judge a candidate generator against criteria, with significance, and write CI-friendly outputs.

A criterion names a metric, the direction that is better, a threshold, a required confidence and a tier:

    [[gate.criteria]]
    metric = "kid"            # fd | fid | kid | swd | artifact_rate | units_removed | preference
    against = "baseline"      # "baseline" (threshold = allowed worsening) or "absolute" (threshold = limit)
    threshold = 0.01          # a number, or "5%" of the baseline's value (against = "baseline" only)
    direction = "lower"       # which way is better (all built-in metrics: lower)
    confidence = 0.95
    tier = "fail"             # "fail" fails the gate; "warn" only reports

The decision rule, in "badness" units (the value for direction = lower, minus it for higher): with e the
estimate, se its standard error and z the two-sided normal quantile of the confidence, a criterion has
regressed when e - z * se > limit, i.e. the whole interval lies beyond the threshold on the bad side. A
point estimate beyond the threshold whose interval still reaches it is reported as inconclusive and passes.
z is Student's t with B - 1 degrees of freedom when se comes from B bootstrap replicates (Welch-Satterthwaite
for the sum of two such variances), since an se estimated from few replicates is itself noisy; the normal
quantile is used for the binomial se of rates.
- against a baseline checkpoint: both generators are sampled on the same seeds; e is the paired difference
  (candidate - baseline) and se the paired bootstrap se (FD / KID / SWD, `metrics.paired_compare`) or
  std(d_i) / sqrt(n) of the per-sample differences d_i of the classifier's artifact calls.
- against a stored baseline report (a gate report of the baseline release, e.g. written with
  --measure-only): the samples are independent, so e = candidate - baseline and se = sqrt(se_c^2 + se_b^2)
  from the two reports' standard errors; the protocol (n, features, reference, metrics seed, ...) must match.
- absolute: e is the candidate's value and se its bootstrap (or binomial) standard error.
An unchanged model fails a criterion with probability about P(Z > q + margin / se): with threshold 0 that is
(1 - confidence) / 2, so set a margin of the order of the noise (e.g. "2%" for a large n) and, against a
stored report, a higher confidence such as 0.99: the baseline's own error is one draw shared by every later run.

"units_removed" reads a repair's manifest.json (layer + units) and measures, on the candidate's samples,
the fraction of samples whose image changes (some pixel by more than `tolerance` levels of 255) when the
listed units are ablated again. Removed units that stay removed give exactly 0, whether the removal was
baked into the layer's own output or into its consumer's weights (as artifix's export does for ReLU layers).

Everything is seeded, so the same inputs give the same report; wall-clock facts sit under the "run" key.
"""

from __future__ import annotations

import json
import math
import os
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import __version__, defaults, intervals, plots
from .profiles import profile_for
from .results import RepairManifest
from .errors import RuntimeFailure, UserError
from .images import save_png
from .io import check_output_folder, output_folder, sha256_file, write_json_atomic, write_text_atomic
from .provenance import markdown as provenance_markdown
from .provenance import provenance
from .verdict import gate_verdict

FORMAT = "artifix-gate-report"
FORMAT_VERSION = 1
GATE_METRICS = ("fd", "fid", "kid", "swd", "artifact_rate", "units_removed", "preference")
DIRECTIONS = ("lower", "higher")
TIERS = ("fail", "warn")
AGAINST = ("baseline", "absolute")
CRITERION_KEYS = ("name", "metric", "against", "threshold", "direction", "confidence", "tier", "classifier",
                  "manifest", "tolerance", "ab")
REPORT_NAME, JUNIT_NAME, SUMMARY_NAME = "gate-report.json", "junit.xml", "summary.md"
FOREST_NAME = "forest.png"
_DIST_METRICS = ("fd", "fid", "kid", "swd")


@dataclass(frozen=True)
class Criterion:
    """One validated gate criterion."""

    name: str
    metric: str
    against: str
    threshold: float
    percent: bool  # threshold is a percentage of the baseline's value
    direction: str
    confidence: float
    tier: str
    classifier: str | None = None  # artifact_rate
    manifest: str | None = None  # units_removed
    tolerance: float = 1.0  # units_removed: pixel levels (of 255) a change must exceed
    ab: str | None = None  # preference: an 'artifix ab report --json' result or a manifest.json holding one

    @property
    def key(self) -> str:
        """The measurement this criterion reads (several criteria may share one)."""
        if self.metric == "artifact_rate":
            return f"artifact_rate[{Path(self.classifier or '').as_posix()}]"
        if self.metric == "units_removed":
            return f"units_removed[{Path(self.manifest or '').as_posix()}]"
        if self.metric == "preference":
            return f"preference[{Path(self.ab or '').as_posix()}]"
        return self.metric


def _bad(where: str, text: str) -> UserError:
    return UserError(f"[gate] {where}: {text}")


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise _bad(where, f"{what} must be a finite number, got {value!r}.")
    return float(value)


def parse_criteria(raw: Any, confidence: float, classifier: str | None) -> list[Criterion]:
    """Validate the `[[gate.criteria]]` tables (or a JSON list of objects) into Criterion objects."""
    if isinstance(raw, str):
        raw = _parse_json_criteria(raw)
    if not raw:
        raise UserError("no gate criteria: add [[gate.criteria]] tables to artifix.toml (see docs/ci/artifix.toml) "
                        "or pass --criteria as a JSON list.")
    if not isinstance(raw, list) or not all(isinstance(c, Mapping) for c in raw):
        raise UserError("[gate] criteria must be a list of tables ([[gate.criteria]]), each with at least 'metric'.")
    out: list[Criterion] = []
    for i, c in enumerate(raw):
        where = f"criterion {i + 1}" + (f" ({c['name']!r})" if isinstance(c.get("name"), str) else "")
        unknown = sorted(set(c) - set(CRITERION_KEYS))
        if unknown:
            raise _bad(where, f"unknown key {unknown[0]!r}; known keys: {', '.join(CRITERION_KEYS)}.")
        metric = c.get("metric")
        if metric not in GATE_METRICS:
            raise _bad(where, f"metric must be one of {', '.join(GATE_METRICS)}, got {metric!r}.")
        direction = c.get("direction", "higher" if metric == "preference" else "lower")
        if direction not in DIRECTIONS:
            raise _bad(where, f"direction must be 'lower' or 'higher' (which way is better), got {direction!r}.")
        tier = c.get("tier", "fail")
        if tier not in TIERS:
            raise _bad(where, f"tier must be 'fail' or 'warn', got {tier!r}.")
        against = c.get("against", "absolute" if metric in ("units_removed", "preference") else "baseline")
        if against not in AGAINST:
            raise _bad(where, f"against must be 'baseline' or 'absolute', got {against!r}.")
        if metric in ("units_removed", "preference") and against != "absolute":
            raise _bad(where, f"{metric} is judged on the candidate alone; use against = 'absolute' (or leave it out).")
        if (metric == "preference") != ("ab" in c):
            raise _bad(where, "preference needs ab = 'path/to/ab-result.json' ('artifix ab report --json' or a manifest with it)"
                       if metric == "preference" else "'ab' only applies to metric = 'preference'.")
        conf = _number(c.get("confidence", confidence), where, "confidence")
        if not 0.0 < conf < 1.0:
            raise _bad(where, f"confidence must be between 0 and 1 (e.g. 0.95), got {conf}.")
        thr_raw = c.get("threshold", 0.0 if against == "baseline" or metric == "units_removed" else 0.5 if metric == "preference" else None)
        if thr_raw is None:
            raise _bad(where, f"an absolute criterion needs a threshold (the limit the {metric} must stay within).")
        percent = isinstance(thr_raw, str)
        if percent:
            text = thr_raw.strip()
            if not text.endswith("%"):
                raise _bad(where, f"threshold must be a number or a percentage like '5%', got {thr_raw!r}.")
            try:
                thr = float(text[:-1]) / 100.0
            except ValueError:
                raise _bad(where, f"threshold must be a number or a percentage like '5%', got {thr_raw!r}.") from None
            if against != "baseline":
                raise _bad(where, "a percentage threshold is relative to the baseline; use against = 'baseline' or a number.")
        else:
            thr = _number(thr_raw, where, "threshold")
        if against == "baseline" and thr < 0:
            raise _bad(where, f"threshold is the allowed worsening against the baseline and must be >= 0, got {thr_raw!r}.")
        clf = mf = None
        if metric == "artifact_rate":
            clf = str(c.get("classifier") or classifier or defaults.get("classify", "classifier"))
        elif "classifier" in c:
            raise _bad(where, "'classifier' only applies to metric = 'artifact_rate'.")
        if metric == "units_removed":
            if not c.get("manifest"):
                raise _bad(where, "units_removed needs manifest = 'path/to/manifest.json' (written by 'artifix repair').")
            mf = str(c["manifest"])
        elif "manifest" in c:
            raise _bad(where, "'manifest' only applies to metric = 'units_removed'.")
        tol = _number(c.get("tolerance", 1.0), where, "tolerance")
        if "tolerance" in c and metric != "units_removed":
            raise _bad(where, "'tolerance' only applies to metric = 'units_removed'.")
        name = c.get("name", metric if metric not in ("artifact_rate", "units_removed", "preference") else None)
        crit = Criterion(str(name or metric), metric, against, thr, percent, direction, conf, tier, clf, mf, tol,
                         str(c["ab"]) if metric == "preference" else None)
        if name is None:
            crit = replace(crit, name=crit.key)
        out.append(crit)
    names = [c.name for c in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"[gate]: two criteria are named {dup[0]!r}; give each a unique name.")
    if sum(c.metric in ("fd", "fid") for c in out) and {c.metric for c in out} >= {"fd", "fid"}:
        raise UserError("[gate]: use either 'fd' or 'fid' (one feature space per gate run), not both.")
    return out


def _parse_json_criteria(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--criteria must be a JSON list of criteria like '[{{\"metric\": \"kid\"}}]': {e.msg} at column {e.colno}.") from None
    if isinstance(value, dict):
        value = [value]
    return value


def parse_criteria_option(value: Any) -> Any:
    """The `criteria` option's parser: a TOML list passes through, CLI text is JSON."""
    return _parse_json_criteria(value) if isinstance(value, str) else value


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class GateSettings:
    """Everything a gate run depends on, validated before anything is sampled or written."""

    criteria: list[Criterion]
    n: int
    seed: int
    metrics_seed: int
    bootstrap: int
    swd_bootstrap: int
    baseline: str | None = None  # baseline release checkpoint
    baseline_report: str | None = None  # stored gate report of the baseline release
    measure_only: bool = False
    out: str = "artifix-gate"
    metric_opts: dict[str, Any] = field(default_factory=dict)  # features, real, real_n, swd_n, kid_*, ...

    def protocol(self) -> dict[str, Any]:
        """What makes two reports' measurements comparable (the sampling seed excluded: it may differ)."""
        o = self.metric_opts
        return {"n": self.n, "metrics_seed": self.metrics_seed, "features": o.get("features"),
                "real": None if o.get("real") is None else str(o.get("real")), "real_n": o.get("real_n"),
                "swd_n": min(int(o.get("swd_n") or self.n), self.n), "kid_subsets": o.get("kid_subsets"),
                "kid_subset_size": o.get("kid_subset_size")}


def dist_metrics(criteria: Sequence[Criterion]) -> list[str]:
    """The FD / KID / SWD metrics the criteria need, as `metrics.parse_metrics` names them."""
    return [m for m in ("fd", "kid", "swd") if any(c.metric == m or (m == "fd" and c.metric == "fid") for c in criteria)]


def validate(s: GateSettings) -> dict[str, Any]:
    """Check paths, files and the stored baseline report; returns the loaded resources (classifiers, manifests, report)."""
    if s.n < 2:
        raise UserError(f"--n must be at least 2 samples per generator, got {s.n}.")
    if s.bootstrap < 2 and any(c.metric in _DIST_METRICS for c in s.criteria):
        raise UserError(f"the gate needs bootstrap intervals: --bootstrap must be at least 2 (e.g. 100), got {s.bootstrap}.")
    if s.swd_bootstrap < 2 and any(c.metric == "swd" for c in s.criteria):
        raise UserError(f"the SWD criterion needs --swd-bootstrap of at least 2 (e.g. 20), got {s.swd_bootstrap}.")
    if s.baseline and s.baseline_report:
        raise UserError("give either --baseline (a checkpoint, sampled on the same seeds) or --baseline-report, not both.")
    needs_base = [c for c in s.criteria if c.against == "baseline"]
    if needs_base and not (s.baseline or s.baseline_report) and not s.measure_only:
        raise UserError(f"criterion {needs_base[0].name!r} compares with the baseline; pass --baseline CHECKPOINT or "
                        "--baseline-report REPORT.json (or set them in [gate]).")
    if s.baseline and not Path(s.baseline).is_file():
        raise UserError(f"baseline checkpoint {s.baseline} does not exist; check --baseline.")
    out = Path(s.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the gate's report, JUnit XML and summary.")
    check_output_folder(out)  # before any sampling
    if any(c.metric == "fid" for c in s.criteria) and s.metric_opts.get("features") != "inception":
        raise UserError("metric 'fid' is the FD in the Inception space: set [metrics] features = 'inception' (with its weights) "
                        "or use metric 'fd'.")
    res: dict[str, Any] = {"classifiers": {}, "manifests": {}, "baseline_report": None}
    for c in s.criteria:
        if c.metric == "artifact_rate" and c.classifier not in res["classifiers"]:
            from .classifier import ArtifactClassifier

            if not Path(c.classifier).is_file():
                raise UserError(f"criterion {c.name!r}: no artifact classifier at {c.classifier}; train one with "
                                "'artifix classify train' or set 'classifier' in the criterion.")
            clf = ArtifactClassifier.load(c.classifier)
            clf.check_extractor()
            res["classifiers"][c.classifier] = (clf, sha256_file(c.classifier))
        if c.metric == "units_removed" and c.manifest not in res["manifests"]:
            res["manifests"][c.manifest] = read_manifest(c.manifest)
        if c.metric == "preference":
            res.setdefault("preferences", {})[c.ab] = read_preference(c.ab)
    if s.baseline_report:
        res["baseline_report"] = read_baseline_report(s.baseline_report, s, res)
    return res


def read_manifest(path: str) -> dict[str, Any]:
    """Fully removed units of every layer of a repair's manifest.json (`results.RepairManifest`); a UserError when unusable."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"repair manifest {path} does not exist; point 'manifest' at the manifest.json that 'artifix repair' wrote.")
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"repair manifest {path} is not valid JSON ({e}).") from None
    mf = RepairManifest.from_json(m, f"repair manifest {path}")
    removed = mf.removed
    if not removed:
        raise UserError(f"repair manifest {path} removes no unit fully (alpha 1), so there is nothing to check stays removed.")
    return {"layer": mf.primary, "units": removed.get(mf.primary, []), "removed": removed, "sha256": sha256_file(p)}


def read_preference(path: str) -> dict[str, Any]:
    """The repair's blind A/B result (wins / losses / ties) from an 'ab report' JSON or a manifest holding one."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"cannot read the A/B result {path}; write it with 'artifix ab report --json' (or --manifest).") from None
    r = (m.get("preference") or m) if isinstance(m, dict) else {}
    rep = r.get("repair") if isinstance(r, dict) else None
    if not isinstance(rep, dict) or not all(isinstance(rep.get(k), int) for k in ("wins", "losses", "ties")):
        raise UserError(f"{path} holds no A/B result of the repair (wins, losses, ties); run 'artifix ab report'.")
    if rep["wins"] + rep["losses"] == 0:
        raise UserError(f"{path}: no decided A/B pair (every answer was 'same' or none was given), so no win rate to judge.")
    return {"study": r.get("study"), "repair": rep, "control": r.get("control"), "sha256": sha256_file(path)}


def read_baseline_report(path: str, s: GateSettings, res: Mapping[str, Any]) -> dict[str, Any]:
    """A stored gate report whose protocol matches this run and which measured every metric the criteria compare."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"baseline report {path} does not exist; check --baseline-report.")
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"baseline report {path} is not valid JSON ({e}).") from None
    if not isinstance(rep, dict) or rep.get("format") != FORMAT or not isinstance(rep.get("measurements"), dict):
        raise UserError(f"baseline report {path} is not an artifix gate report; write one with 'artifix gate --measure-only'.")
    if rep.get("version") != FORMAT_VERSION:
        raise UserError(f"baseline report {path} has gate report version {rep.get('version')!r}; this artifix reads {FORMAT_VERSION}.")
    theirs, ours = rep.get("protocol") or {}, s.protocol()
    diff = [k for k in ours if theirs.get(k) != ours[k]]
    if diff:
        k = diff[0]
        raise UserError(f"baseline report {path} was measured with {k} = {theirs.get(k)!r} but this run uses {ours[k]!r}; "
                        "measurements are only comparable under the same protocol, so rerun one of them.")
    for c in s.criteria:
        if c.against != "baseline":
            continue
        m = rep["measurements"].get(c.key)
        if not isinstance(m, dict) or not isinstance(m.get("candidate"), dict):
            raise UserError(f"baseline report {path} has no measurement {c.key!r} for criterion {c.name!r}; "
                            "record it with the same criteria.")
        if c.metric == "artifact_rate" and m.get("classifier_sha256") != res["classifiers"][c.classifier][1]:
            raise UserError(f"baseline report {path} measured {c.key!r} with another classifier file; "
                            "use the same classifier for both.")
    return rep


# ----------------------------------------------------------------------------------------------- measuring


def _z(confidence: float) -> float:
    return intervals.z(confidence)


def _quantile(confidence: float, df: float | None) -> float:
    """Two-sided quantile: Student's t with `df` degrees of freedom (se estimated from few replicates), else normal."""
    if df is None or not math.isfinite(df):
        return _z(confidence)
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, max(float(df), 1.0)))


def _welch_df(se_a: float, df_a: float | None, se_b: float, df_b: float | None) -> float | None:
    """Welch-Satterthwaite degrees of freedom of se = sqrt(se_a^2 + se_b^2); None (normal) when both are exact."""
    if df_a is None and df_b is None:
        return None
    terms = [se ** 4 / df for se, df in ((se_a, df_a), (se_b, df_b)) if df is not None and se > 0]
    total = (se_a ** 2 + se_b ** 2) ** 2
    return total / sum(terms) if terms and total > 0 else None


def _binomial(k: int, n: int) -> dict[str, Any]:
    """A rate k/n with its standard error (`intervals.binomial_se`: Laplace-smoothed, so that 0/n still has a non-zero se)."""
    return {"value": k / n, "se": intervals.binomial_se(k, n), "n": n, "count": int(k), "df": None}


def _feature_tap(inner: Any, limit: int) -> Any:
    """An extractor that computes what `inner` computes and keeps the rows of the first `limit` images it sees.

    The metrics consume the generated images before the reference, so the rows kept are the generated
    images' features, which the artifact classifier then reuses instead of running the backbone again.
    """
    from .metrics.features import Extractor

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
    from .generator import sample_batches

    return [im.numpy() for _, im in sample_batches(g, seed, 0, n, batch)]


def _artifact_hits(clf: Any, images: np.ndarray, pooled: np.ndarray | None, extractor_name: str | None) -> np.ndarray:
    """Per-sample artifact calls (p >= the classifier's threshold), reusing the metrics' features when they match."""
    from .classifier import FeatureSet, pixel_stats

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
    from .ledger import Ledger
    from .metrics import compute_metrics, get_extractor, paired_compare_many
    from .trace import Trace, ablation

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


# ----------------------------------------------------------------------------------------------- judging


def judge(c: Criterion, m: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply the decision rule of one criterion to its measurement (and a stored baseline's, if any)."""
    sign = 1.0 if c.direction == "lower" else -1.0
    cand = m["candidate"]
    row: dict[str, Any] = {"name": c.name, "metric": c.metric, "measurement": m.get("metric", c.metric), "tier": c.tier,
                           "direction": c.direction, "against": c.against, "confidence": c.confidence,
                           "candidate": cand["value"], "candidate_se": cand["se"]}
    if c.against == "absolute":
        est, se, df = cand["value"], cand["se"], cand.get("df")
        bad, allowed = sign * est, sign * c.threshold  # in "badness" units: larger is worse
        row.update(threshold=c.threshold, baseline=None, comparison="absolute")
    else:
        if "diff" in m:
            base_v, est, se, comp = m["baseline"]["value"], m["diff"]["value"], m["diff"]["se"], "paired"
            df = m["diff"].get("df")
        else:
            if stored.get("metric", c.metric) != m.get("metric", c.metric):  # type: ignore[union-attr]
                raise RuntimeFailure(f"the baseline report measured {stored.get('metric')!r} but this run {m.get('metric')!r}.")  # type: ignore[union-attr]
            b = stored["candidate"]  # type: ignore[index]
            base_v = b["value"]
            est, se, comp = cand["value"] - base_v, math.sqrt(cand["se"] ** 2 + b["se"] ** 2), "unpaired (stored report)"
            df = _welch_df(cand["se"], cand.get("df"), b["se"], b.get("df"))
        allowed = c.threshold * abs(base_v) if c.percent else c.threshold  # the allowed worsening
        bad = sign * est
        row.update(baseline=base_v, threshold=f"{c.threshold * 100:g}%" if c.percent else c.threshold,
                   allowed_worsening=allowed, change=est, change_se=se, comparison=comp)
    z = _quantile(c.confidence, df)
    row["ci"], row["df"], row["quantile"] = [est - z * se, est + z * se], df, z
    tol = 1e-12 * max(1.0, abs(allowed))
    regressed = bad - z * se > allowed + tol  # even the best end of the interval is beyond the threshold
    row["regressed"] = bool(regressed)
    row["inconclusive"] = bool(not regressed and bad > allowed + tol)
    row["status"] = ("fail" if c.tier == "fail" else "warn") if regressed else "pass"
    row["reason"] = _reason(c, row)
    return row


def _fmt(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def _reason(c: Criterion, r: Mapping[str, Any]) -> str:
    side = "above" if c.direction == "lower" else "below"
    lo, hi = r["ci"]
    what = f"change {r['change']:+.4g} [{lo:+.4g}, {hi:+.4g}]" if c.against == "baseline" else f"value {r['candidate']:.4g} [{lo:.4g}, {hi:.4g}]"
    lim = (f"an allowed worsening of {_fmt(r['threshold'])}" if c.against == "baseline" else f"the limit {_fmt(r['threshold'])}")
    pct = f"{c.confidence:.0%}"
    if r["regressed"]:
        return f"{what} at {pct} confidence lies wholly {side} {lim}: a significant regression."
    if r["inconclusive"]:
        return f"{what} at {pct} confidence: the estimate is beyond {lim} but not significantly, so it passes."
    return f"{what} at {pct} confidence is within {lim}."


# ----------------------------------------------------------------------------------------------- running


def run_gate(s: GateSettings, cand_spec: Any, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Validate, measure, judge and write the report, JUnit XML and Markdown summary; returns the report (with exit_code)."""
    from .generator import load_generator
    from .trace import get_layer

    t0 = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res = validate(s)
    cand = load_generator(cand_spec)
    if cand.scripted and res["manifests"]:
        raise UserError("units_removed needs a Python generator (--generator 'module:callable') to hook its layers, not a TorchScript file.")
    for mf in res["manifests"].values():
        for layer in mf["removed"]:
            get_layer(cand.module, layer)
    if any(c.metric in _DIST_METRICS for c in s.criteria) and not (s.metric_opts.get("real") or profile_for(cand_spec).has_reference):
        raise UserError("--real is required for FD / KID / SWD criteria on your own generator: an image folder, .npz array or statistics file.")
    if s.metric_opts.get("real") is not None and not Path(str(s.metric_opts["real"])).exists():
        raise UserError(f"reference data {s.metric_opts['real']} does not exist; give an image folder, a .npz/.npy uint8 array or a statistics .npz.")
    base = None
    if s.baseline:
        field_name = "generator" if cand.scripted else "checkpoint"
        base = load_generator(replace(cand_spec, **{field_name: s.baseline}))
        if cand.scripted != base.scripted:
            raise UserError("the baseline and the candidate must be the same kind of file (both checkpoints or both TorchScript).")
    measured = measure(s, cand, base if not s.measure_only else None, res, say)
    stored = res["baseline_report"]
    rows = []
    for c in s.criteria:
        if s.measure_only:
            m = measured[c.key]["candidate"]
            rows.append({"name": c.name, "metric": c.metric, "tier": c.tier, "status": "measured", "regressed": False,
                         "candidate": m["value"], "candidate_se": m["se"],
                         "reason": f"measured {m['value']:.4g} (se {m['se']:.3g}); not judged (--measure-only)."})
        else:
            rows.append(judge(c, measured[c.key], stored["measurements"][c.key] if stored and c.against == "baseline" else None))
    failed = [r for r in rows if r["status"] == "fail"]
    report = {
        "format": FORMAT, "version": FORMAT_VERSION, "artifix_version": __version__,
        "status": "fail" if failed else ("measured" if s.measure_only else "pass"),
        "exit_code": 1 if failed else 0,
        "candidate": {"fingerprint": cand.fingerprint, "spec": cand_spec.to_json(),
                      "checkpoint_sha256": _maybe_sha(cand_spec.checkpoint or cand_spec.generator)},
        "baseline": ({"kind": "checkpoint", "path": s.baseline, "fingerprint": base.fingerprint, "sha256": sha256_file(s.baseline)}
                     if base is not None else {"kind": "report", "path": s.baseline_report,
                                               "fingerprint": stored.get("candidate", {}).get("fingerprint"),
                                               "seed": stored.get("seed")} if stored else None),
        "seed": s.seed, "protocol": s.protocol(), "bootstrap": s.bootstrap, "swd_bootstrap": s.swd_bootstrap,
        "criteria": rows, "measurements": measured,
        "counts": {k: sum(r["status"] == k for r in rows) for k in ("pass", "warn", "fail", "measured")},
        "run": {"started": started, "seconds": round(time.time() - t0, 1)},
        "provenance": _provenance(s, res),
    }
    report["verdict"] = gate_verdict(report).to_json()
    write_outputs(report, Path(s.out))
    return report


def _provenance(s: GateSettings, res: Mapping[str, Any]) -> dict[str, Any]:
    """Reference data, feature space, classifier, version and device of this gate run (no flags: the gate reads none)."""
    p = provenance(real=s.metric_opts.get("real"), clf=next((clf for clf, _ in res["classifiers"].values()), None))
    p["reference"]["n"] = s.metric_opts.get("real_n") or p["reference"].get("n")
    p["feature_space"] = {m: str(s.metric_opts.get("features") or "effnet-lite0") if m != "swd" else "pixels (Laplacian pyramid patches)"
                          for m in dist_metrics(s.criteria)}
    p["flags"] = None
    return p


def _maybe_sha(path: str | None) -> str | None:
    return sha256_file(path) if path and Path(path).is_file() else None


def write_outputs(report: Mapping[str, Any], out: Path) -> None:
    """The JSON report, JUnit XML and Markdown summary into `out`; the summary is appended to $GITHUB_STEP_SUMMARY too."""
    md = markdown_summary(report)
    rows = plots.gate_rows(report["criteria"])
    with output_folder(out, command="gate") as folder:  # the files appear together, or not at all
        if rows:  # a picture of each criterion's worsening with its interval beside its allowed worsening
            img = plots.forest_plot(rows, "Candidate against baseline (interval at each criterion's confidence)",
                                    "worsening, % of the baseline's value (red: allowed worsening)", ("change", None))
            save_png(folder.path / FOREST_NAME, np.asarray(img))
            md += f"\n![each criterion's change with its interval ({FOREST_NAME} in the gate's folder)]({FOREST_NAME})\n"
        write_json_atomic(folder.path / REPORT_NAME, report)
        write_text_atomic(folder.path / JUNIT_NAME, junit_xml(report))
        write_text_atomic(folder.path / SUMMARY_NAME, md)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a", encoding="utf-8") as fh:
            fh.write(md + "\n")


def junit_xml(report: Mapping[str, Any]) -> str:
    """JUnit XML with one test case per criterion (fail -> <failure>; warn -> a note in <system-out>)."""
    rows = report["criteria"]
    suite = ET.Element("testsuite", name="artifix gate", tests=str(len(rows)),
                       failures=str(sum(r["status"] == "fail" for r in rows)), errors="0", skipped="0")
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=f"artifix.gate.{r['metric']}", name=r["name"])
        if r["status"] == "fail":
            ET.SubElement(case, "failure", message=r["reason"], type="regression").text = r["reason"]
        else:
            ET.SubElement(case, "system-out").text = f"{r['status'].upper()}: {r['reason']}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


_ICON = {"pass": "✅ pass", "fail": "❌ fail", "warn": "⚠️ warn", "measured": "📏 measured"}


def markdown_summary(report: Mapping[str, Any]) -> str:
    """A short Markdown summary: verdict, what was compared, and one table row per criterion."""
    rows = report["criteria"]
    c = report["counts"]
    verdict = {"pass": "passed", "fail": "FAILED", "measured": "measured (no verdict)"}[report["status"]]
    base = report.get("baseline")
    against = ("no baseline" if not base else
               f"baseline checkpoint `{base['path']}` (paired, same seeds)" if base["kind"] == "checkpoint"
               else f"stored baseline report `{base['path']}` (unpaired)")
    lines = [f"## artifix gate: {verdict}", "",
             f"Candidate `{report['candidate']['fingerprint']}` against {against}; {report['protocol']['n']} samples, "
             f"seed {report['seed']}. {c['pass']} passed, {c['warn']} warned, {c['fail']} failed.", "",
             "| criterion | tier | candidate | baseline | change [CI] | threshold | result |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "measured":
            lines.append(f"| {r['name']} | {r['tier']} | {r['candidate']:.4g} ± {r['candidate_se']:.2g} | | | | {_ICON['measured']} |")
            continue
        lo, hi = r["ci"]
        if r["against"] == "baseline":
            basev, change, thr = f"{r['baseline']:.4g}", f"{r['change']:+.4g} [{lo:+.4g}, {hi:+.4g}]", f"worsening ≤ {_fmt(r['threshold'])}"
        else:
            basev, change, thr = "", f"[{lo:.4g}, {hi:.4g}]", ("≤ " if r["direction"] == "lower" else "≥ ") + _fmt(r["threshold"])
        note = " (inconclusive)" if r.get("inconclusive") else ""
        lines.append(f"| {r['name']} | {r['tier']} | {r['candidate']:.4g} | {basev} | {change} | {thr} | {_ICON[r['status']]}{note} |")
    lines += ["", "A criterion fails only when its whole confidence interval lies beyond the threshold (significant regression)."]
    if report.get("criteria") is not None:
        lines += ["", gate_verdict(report).markdown()]
    if report.get("provenance"):
        lines += ["", provenance_markdown(report["provenance"]).replace("## Provenance", "### Provenance")]
    return "\n".join(lines) + "\n"
