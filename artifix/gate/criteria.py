"""Gate criteria: the `[[gate.criteria]]` tables (or a JSON list) validated into `Criterion` objects."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from .. import defaults
from ..errors import UserError

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
DIST_METRICS = ("fd", "fid", "kid", "swd")


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
