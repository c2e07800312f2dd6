"""Typed, versioned results that stages hand each other, with to/from JSON.

- `MetricResult(value, se, ci, n, protocol)`: one measured number with its standard error and interval;
- `PairedResult(a, b, diff)`: a before/after pair on the same samples;
- `Edit(units, alphas)` and `RepairManifest(edits: {layer: Edit}, ...)`: what a repair removed, on every layer.

`from_json` accepts what `to_json` writes and the dictionaries `artifix repair` has always written
(`manifest.json`: "edits" per layer, or the older single "layer"/"units"/"alphas").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import UserError

RESULTS_VERSION = 1


@dataclass(frozen=True)
class MetricResult:
    """One measurement: value, standard error (None without replicates), interval, sample count and protocol name."""

    value: float
    se: float | None = None
    ci: tuple[float, float] | None = None
    n: int = 0
    protocol: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"value": self.value, "se": self.se, "ci": None if self.ci is None else list(self.ci), "n": self.n,
                "protocol": self.protocol, "version": RESULTS_VERSION}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "MetricResult":
        """Read a MetricResult (or a metrics dict with value/se/ci/n)."""
        ci = d.get("ci")
        return cls(float(d["value"]), None if d.get("se") is None else float(d["se"]), None if not ci else (float(ci[0]), float(ci[1])),
                   int(d.get("n") or 0), str(d.get("protocol") or d.get("name") or ""))


@dataclass(frozen=True)
class PairedResult:
    """Before (a) and after (b) on the same samples, and their difference b - a."""

    a: MetricResult
    b: MetricResult
    diff: MetricResult

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"a": self.a.to_json(), "b": self.b.to_json(), "diff": self.diff.to_json(), "version": RESULTS_VERSION}

    @classmethod
    def from_compare(cls, e: Mapping[str, Any], protocol: str = "") -> "PairedResult":
        """From one entry of `metrics.paired_compare` (a, b, diff with ci_a, ci_b, ci and se_a, se_b, se)."""
        def one(v: str, se: str, ci: str) -> MetricResult:
            c = e.get(ci)
            return MetricResult(float(e[v]), None if e.get(se) is None else float(e[se]), None if not c else (float(c[0]), float(c[1])),
                                int(e.get("n") or 0), protocol)

        return cls(one("a", "se_a", "ci_a"), one("b", "se_b", "ci_b"), one("diff", "se", "ci"))


@dataclass(frozen=True)
class Edit:
    """The units of one layer a repair edits, with their strengths (1 = fully removed)."""

    units: tuple[int, ...]
    alphas: tuple[float, ...]

    @property
    def removed(self) -> list[int]:
        """The fully removed units (alpha >= 1), sorted."""
        return sorted(u for u, a in zip(self.units, self.alphas) if a >= 1.0)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"units": list(self.units), "alphas": list(self.alphas)}


def _edit(d: Any, where: str) -> Edit:
    try:
        units = tuple(int(u) for u in d["units"])
        alphas = tuple(float(a) for a in (d.get("alphas") or [1.0] * len(units)))
    except (TypeError, ValueError, KeyError):
        raise UserError(f"{where}: 'units' and 'alphas' must be lists of numbers.") from None
    if len(alphas) != len(units):
        raise UserError(f"{where} lists {len(units)} units but {len(alphas)} alphas.")
    return Edit(units, alphas)


@dataclass(frozen=True)
class RepairManifest:
    """What a repair did: the edits on every layer (primary layer first), the random control and the raw manifest."""

    edits: dict[str, Edit]
    primary: str
    control: dict[str, list[int]] = field(default_factory=dict)
    skipped_measures: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def removed(self) -> dict[str, list[int]]:
        """Fully removed units per layer (layers with none left out)."""
        return {l: e.removed for l, e in self.edits.items() if e.removed}

    def to_json(self) -> dict[str, Any]:
        """JSON form (the keys `artifix repair` writes for the edits)."""
        e = self.edits[self.primary]
        return {"layer": self.primary, "units": list(e.units), "alphas": list(e.alphas), "layers": list(self.edits),
                "edits": {l: x.to_json() for l, x in self.edits.items()}, "random_control": self.control,
                "skipped_measures": list(self.skipped_measures), "results_version": RESULTS_VERSION}

    @classmethod
    def from_json(cls, m: Any, where: str = "repair manifest") -> "RepairManifest":
        """Read a manifest dict; a UserError naming `where` when it is not one."""
        if not isinstance(m, Mapping):
            raise UserError(f"{where} is not a JSON object; is it a manifest.json written by 'artifix repair'?")
        raw_edits = m.get("edits")
        if isinstance(raw_edits, Mapping) and raw_edits:
            edits = {str(l): _edit(d, f"{where} (layer {l})") for l, d in raw_edits.items()}
            primary = str(m.get("layer") or next(iter(edits)))
        elif isinstance(m.get("layer"), str) and isinstance(m.get("units"), list):
            primary = m["layer"]
            edits = {primary: _edit(m, where)}
        else:
            raise UserError(f"{where} has no 'layer' and 'units'; is it a manifest.json written by 'artifix repair'?")
        if primary not in edits:
            raise UserError(f"{where}: its layer {primary} is not among its edits {list(edits)}.")
        edits = {primary: edits[primary], **{l: e for l, e in edits.items() if l != primary}}
        control = {str(l): [int(u) for u in us] for l, us in (m.get("random_control") or {}).items()} \
            if isinstance(m.get("random_control"), Mapping) else {}
        return cls(edits, primary, control, tuple(m.get("skipped_measures") or ()), m)


def rate_row(label: str, r: Mapping[str, Any]) -> dict[str, Any]:
    """One artifact-rate row: the paired difference when the result has one, else after - before (no interval)."""
    rd, cd = r.get("repair_diff"), r.get("control_diff")
    before, after, control = r["before"]["value"], r["after"]["value"], r["control"]["value"]
    return {"metric": label, "before": before, "after": after,
            "change": rd["diff"] if rd else after - before, "change_ci": rd.get("ci") if rd else None,
            "control_change": cd["diff"] if cd else control - before, "control_ci": cd.get("ci") if cd else None}


def metric_rows(sub: Mapping[str, Any], rate_label: str = "artifact rate") -> list[dict[str, Any]]:
    """The before/after table of one subset of a repair's metrics: metric, before, after, change and the control's change.

    One row per distribution metric (paired on the same seeds), then the artifact rate (paired difference), then the
    pixel change; `change_ci` / `control_ci` are [lo, hi] or None. The model card and the dashboard both render these rows.
    """
    rows = []
    for name, r in (sub.get("repair") or {}).items():
        c = (sub.get("control") or {}).get(name, {})
        rows.append({"metric": name, "before": r.get("a"), "after": r.get("b"), "change": r.get("diff"), "change_ci": r.get("ci"),
                     "control_change": c.get("diff"), "control_ci": c.get("ci")})
    if sub.get("artifact_rate"):
        rows.append(rate_row(rate_label, sub["artifact_rate"]))
    pc = sub.get("pixel_change")
    if pc:
        rows.append({"metric": "pixel change", "before": 0.0, "after": pc["repair"]["value"], "change": pc["repair"]["value"],
                     "change_ci": pc["repair"].get("ci"), "control_change": pc["control"]["value"], "control_ci": pc["control"].get("ci")})
    return rows
