"""The decision rule: a criterion has regressed when its whole interval lies beyond the threshold on the bad side."""

from __future__ import annotations

import math
from typing import Any, Mapping

from scipy.special import stdtrit  # Student's t quantile (scipy.stats itself is about 0.7 s of import)

from .. import intervals
from ..errors import RuntimeFailure
from .criteria import Criterion


def _z(confidence: float) -> float:
    return intervals.z(confidence)


def _quantile(confidence: float, df: float | None) -> float:
    """Two-sided quantile: Student's t with `df` degrees of freedom (se estimated from few replicates), else normal."""
    if df is None or not math.isfinite(df):
        return _z(confidence)
    return float(stdtrit(max(float(df), 1.0), 0.5 + confidence / 2.0))


def _welch_df(se_a: float, df_a: float | None, se_b: float, df_b: float | None) -> float | None:
    """Welch-Satterthwaite degrees of freedom of se = sqrt(se_a^2 + se_b^2); None (normal) when both are exact."""
    if df_a is None and df_b is None:
        return None
    terms = [se ** 4 / df for se, df in ((se_a, df_a), (se_b, df_b)) if df is not None and se > 0]
    total = (se_a ** 2 + se_b ** 2) ** 2
    return total / sum(terms) if terms and total > 0 else None


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
