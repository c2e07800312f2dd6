"""What the before/after numbers mean, in words: improved, worse or not significant per metric at the run's confidence.

Pure functions over the results artifix already writes (a repair manifest's `metrics`, a gate report's criteria):
nothing is measured here. Every metric gets one verdict from its paired interval of the change; when the metrics
disagree one sentence says so and names the measure that sees artifacts (a parameter: the profile may set it; the
bundled example's is the artifact rate); every measure that was not taken gets a note saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

IMPROVED, WORSE, NOT_SIGNIFICANT, NO_INTERVAL = "improved", "worse", "not significant", "no interval"
ARTIFACT_METRIC = "artifact_rate"  # the measure that sees artifacts, unless a profile says otherwise
NAMES = {"fd": "FD", "fid": "FID", "kid": "KID", "swd": "SWD", "artifact_rate": "artifact rate"}


@dataclass(frozen=True)
class MetricVerdict:
    """One metric's change after the repair (b - a) with its interval, and what it means."""

    metric: str  # the result's name, e.g. fd_effnetl0_1000
    change: float
    ci: tuple[float, float] | None
    verdict: str  # improved / worse / not significant / no interval
    control: str | None = None  # the random-unit control's verdict on the same metric

    @property
    def family(self) -> str:
        """The metric without its protocol suffix: fd, kid, swd, fid, artifact_rate."""
        return ARTIFACT_METRIC if self.metric.startswith(ARTIFACT_METRIC) else self.metric.split("_")[0]

    def sentence(self) -> str:
        """'FD improved (-6.80 [-8.10, -5.40])'."""
        ci = "" if self.ci is None else f" [{self.ci[0]:+.3g}, {self.ci[1]:+.3g}]"
        ctl = "" if self.control is None else f"; random control {self.control}"
        return f"{label(self.metric)} {self.verdict} ({self.change:+.3g}{ci}{ctl})"


@dataclass
class Verdict:
    """All metrics' verdicts of one before/after result, the disagreement sentence and the notes on skipped measures."""

    metrics: list[MetricVerdict]
    confidence: float
    artifact_metric: str = ARTIFACT_METRIC
    disagreement: str | None = None
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line: every metric's verdict at the run's confidence."""
        if not self.metrics:
            return "Verdict: nothing was measured."
        return f"Verdict at {self.confidence:.0%} confidence: " + "; ".join(m.sentence() for m in self.metrics) + "."

    def lines(self) -> list[str]:
        """The verdict line, the disagreement sentence (if any) and one note per skipped measure."""
        return [self.line()] + ([self.disagreement] if self.disagreement else []) + [f"Not measured: {s}" for s in self.skipped]

    def markdown(self) -> str:
        """The lines as a Markdown block (for report.md, the model card and the gate summary)."""
        return "\n\n".join(f"**{x}**" if i == 0 else x for i, x in enumerate(self.lines()))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form for manifests and reports."""
        return {"confidence": self.confidence, "artifact_metric": self.artifact_metric, "disagreement": self.disagreement,
                "skipped": list(self.skipped), "line": self.line(),
                "metrics": [{"metric": m.metric, "change": m.change, "ci": list(m.ci) if m.ci else None, "verdict": m.verdict,
                             "control": m.control} for m in self.metrics]}


def units_phrase(n: int) -> str:
    """'1 unit', '3 units'."""
    return f"{n} unit" if n == 1 else f"{n} units"


def label(metric: str) -> str:
    """A metric's display name: 'FD (fd_effnetl0_1000)', 'artifact rate'."""
    fam = ARTIFACT_METRIC if metric.startswith(ARTIFACT_METRIC) else metric.split("_")[0]
    name = NAMES.get(fam, fam)
    return name if metric in (fam, ARTIFACT_METRIC) else f"{name} ({metric})"


def classify(change: float | None, ci: Sequence[float] | None, lower_is_better: bool = True) -> str:
    """improved / worse when the interval of the change excludes 0 on that side, else not significant (no interval: say so)."""
    if change is None or ci is None or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return NO_INTERVAL
    lo, hi = (float(ci[0]), float(ci[1])) if lower_is_better else (-float(ci[1]), -float(ci[0]))
    if hi < 0:
        return IMPROVED
    if lo > 0:
        return WORSE
    return NOT_SIGNIFICANT


def _one(name: str, r: Mapping[str, Any], c: Mapping[str, Any] | None) -> MetricVerdict:
    ci = r.get("ci")
    return MetricVerdict(name, float(r["diff"]), (float(ci[0]), float(ci[1])) if ci else None, classify(r.get("diff"), ci),
                         classify(c.get("diff"), c.get("ci")) if c else None)


def disagreement(metrics: Sequence[MetricVerdict], artifact_metric: str = ARTIFACT_METRIC) -> str | None:
    """One sentence when some metrics improved and others got worse; it names the measure that sees artifacts."""
    better = [m for m in metrics if m.verdict == IMPROVED]
    worse = [m for m in metrics if m.verdict == WORSE]
    if not (better and worse):
        return None
    names = lambda ms: " and ".join(label(m.metric) for m in ms)  # noqa: E731
    art = next((m for m in metrics if m.family == artifact_metric), None)
    what = NAMES.get(artifact_metric, artifact_metric)
    tail = (f"The {what} is the measure that sees artifacts here, and it {art.verdict}: weigh it first."
            if art is not None else
            f"The {what}, the measure that sees artifacts here, was not measured, so this run cannot tell whether the artifacts went away.")
    return f"The metrics disagree: {names(better)} improved while {names(worse)} got worse. {tail}"


def skipped_measures(m: Mapping[str, Any], artifact_metric: str = ARTIFACT_METRIC) -> list[str]:
    """A note for each measure a repair manifest lacks, and why (no classifier, no Inception weights, no segmenter, ...)."""
    met = m.get("metrics") or {}
    names = set((met.get("repair") or {}))
    out = [f"{x.upper()}: no reference data (--real) for this generator, so nothing compares the samples with real images."
           for x in m.get("skipped_measures") or []]
    if artifact_metric == ARTIFACT_METRIC and "artifact_rate" not in met:
        out.append("artifact rate: no artifact classifier was given (train one: Review → Classifier, or "
                   "`artifix classify train`), so nothing here measures the artifacts themselves.")
    if names and not any(n.startswith("fid_inception") or n.startswith("fd_inception") for n in names):
        out.append("standard FID (Inception-v3): no Inception weights file (--inception-weights); FD uses the offline feature space.")
    if "high_activation" not in (met.get("subsets") or {"high_activation": 1}):
        out.append("metrics on the high-activation samples: the candidate pool was not larger than the sample count (--high-pool).")
    if m.get("collateral") is None:
        out.append("collateral on concepts: no segmenter for this generator (--segmenter).")
    return out


def repair_verdict(m: Mapping[str, Any], artifact_metric: str = ARTIFACT_METRIC, subset: str | None = None) -> Verdict:
    """The verdict of a repair manifest (or of one of its sample subsets): every metric, the random control, skipped notes."""
    met = m.get("metrics") or {}
    sub = (met.get("subsets") or {}).get(subset) if subset else met
    sub = sub or {}
    rep, ctl = sub.get("repair") or {}, sub.get("control") or {}
    out = [_one(name, r, ctl.get(name)) for name, r in rep.items() if r.get("diff") is not None]
    conf = next((float(r["confidence"]) for r in rep.values() if r.get("confidence")), 0.95)
    ar = sub.get("artifact_rate")
    if ar and ar.get("repair_diff"):
        out.append(_one("artifact_rate", ar["repair_diff"], ar.get("control_diff")))
    return Verdict(out, conf, artifact_metric, disagreement(out, artifact_metric), skipped_measures(m, artifact_metric))


def gate_verdict(report: Mapping[str, Any], artifact_metric: str = ARTIFACT_METRIC) -> Verdict:
    """The verdict of a gate report's criteria against a baseline (absolute limits have no before/after: noted)."""
    out, skipped = [], []
    conf = 0.95
    for r in report.get("criteria") or []:
        if r.get("status") == "measured":
            skipped.append(f"{r['name']}: measured only (--measure-only), not compared with a baseline.")
        elif r.get("against") != "baseline":
            skipped.append(f"{r['name']}: an absolute limit, so there is no before/after change.")
        else:
            conf = float(r.get("confidence") or conf)
            out.append(MetricVerdict(str(r["metric"]), float(r["change"]), tuple(r["ci"]),
                                     classify(r["change"], r["ci"], r.get("direction", "lower") == "lower")))
    return Verdict(out, conf, artifact_metric, disagreement(out, artifact_metric), skipped)
