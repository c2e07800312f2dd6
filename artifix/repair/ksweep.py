"""The k sweep: remove the first 1, 2, ... units of the ranking order; stop when the next unit no longer helps
beyond its paired confidence interval."""

from __future__ import annotations

from typing import Any, Mapping

from .. import intervals, log
from ..ledger import Ledger
from ..metrics import get_extractor, needs_features, paired_compare_many
from ..model.generator import LoadedGenerator
from ..model.trace import Ablation
from ..progress import Progress
from .measurement import _proba, _rate, paired_rate_diff
from .plan import RepairPlan, Say


def sweep(g: LoadedGenerator, plan: RepairPlan, seed: int, n: int, clf: Any = None, real: Any = None, metrics: str = "fd,swd",
          k_max: int | None = None, cache: str | None = None, say: Say = log.say,
          confidence: float = intervals.DEFAULT_CONFIDENCE, ledger: Ledger | None = None,
          metric_opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Remove the first 1, 2, ... units of the primary layer; stop when the next unit's paired gain is not significant.

    The stop rule uses the artifact rate (paired on the same seeds) when a classifier is given, else FD. Each row
    holds the cumulative metrics with intervals and the marginal change of adding that unit; `k_best` is the last k
    whose unit helped beyond its interval (0 when even the first did not). `metric_opts` go to the metrics as they
    are (e.g. swd_n, swd_bootstrap, bootstrap); the defaults table's values otherwise.
    """
    led = ledger or Ledger(g, seed, cache)
    ex = get_extractor(None)
    ids = list(range(n))
    order = plan.edits[plan.layer]
    k_max = len(order) if k_max is None else min(k_max, len(order))
    rows: list[dict[str, Any]] = []
    prev_edits: Mapping[str, Ablation] | None = None
    p_prev = _proba(clf, led, None, ids) if clf is not None else None
    base_rate = _rate(p_prev, clf.threshold, seed, confidence=confidence) if clf is not None else None
    k_best, stopped = 0, None
    bar = Progress(k_max, "k sweep")
    for k in range(1, k_max + 1):
        bar.update()
        sub = plan.prefix(k)
        cur = sub.ablations()
        say(f"sweep k={k}: removing {sub.edits[plan.layer]}")
        cmp = paired_compare_many(led.batches(prev_edits, ids), {"b": led.batches(cur, ids)}, n=n, metrics=metrics, real=real,
                                  seed=seed, cache=cache, features=ex, confidence=confidence, **dict(metric_opts or {}),
                                  precomputed={"a": led.features(prev_edits, ids, ex), "b": led.features(cur, ids, ex)}
                                  if needs_features(metrics) else None)["b"] if metrics else {}
        row: dict[str, Any] = {"k": k, "units": list(sub.edits[plan.layer]), "unit_added": int(order[k - 1])}
        for name, r in cmp.items():
            key = name.split("_")[0]
            row[key] = {"name": name, "value": r["b"], "ci": r.get("ci_b"), "marginal": r["diff"], "marginal_ci": r["ci"]}
        helped = None
        if clf is not None:
            p_cur = _proba(clf, led, cur, ids)
            d = paired_rate_diff(p_prev, p_cur, clf.threshold, seed + k, confidence=confidence)
            row["artifact_rate"] = {**_rate(p_cur, clf.threshold, seed, confidence=confidence), "marginal": d["diff"], "marginal_ci": d["ci"]}
            helped = d["ci"][1] < 0
            p_prev = p_cur
        elif "fd" in row:
            helped = row["fd"]["marginal_ci"] is not None and row["fd"]["marginal_ci"][1] < 0
        row["helped"] = bool(helped)
        rows.append(row)
        if prev_edits is not None:
            led.drop(prev_edits, ids)
        prev_edits = cur
        if helped:
            k_best = k
        else:
            stopped = k
            say(f"sweep: unit {order[k - 1]} (k={k}) did not help beyond its interval; stopping, k_best = {k_best}")
            break
    bar.close()
    return {"layer": plan.layer, "order": list(order[:k_max]), "criterion": "artifact_rate" if clf is not None else "fd",
            "before_artifact_rate": base_rate, "rows": rows, "k_best": k_best, "stopped_at": stopped, "n": n}
