"""What a gate run depends on: `GateSettings`, validated before anything is sampled, and the files it reads."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import UserError
from ..io import check_output_folder, read_json, sha256_file
from ..results import RepairManifest
from ..review.classifier import ArtifactClassifier
from .criteria import DIST_METRICS, FORMAT, FORMAT_VERSION, Criterion


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
    if s.bootstrap < 2 and any(c.metric in DIST_METRICS for c in s.criteria):
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


def _read_json(path: str, what: str, missing: str) -> Any:
    """The JSON in the file `path`; a UserError naming `what` when it is missing (`missing` says what to do) or not JSON."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {path} does not exist; {missing}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e}).") from None


def read_manifest(path: str) -> dict[str, Any]:
    """Fully removed units of every layer of a repair's manifest.json (`results.RepairManifest`); a UserError when unusable."""
    m = _read_json(path, "repair manifest", "point 'manifest' at the manifest.json that 'artifix repair' wrote.")
    mf = RepairManifest.from_json(m, f"repair manifest {path}")
    removed = mf.removed
    if not removed:
        raise UserError(f"repair manifest {path} removes no unit fully (alpha 1), so there is nothing to check stays removed.")
    return {"layer": mf.primary, "units": removed.get(mf.primary, []), "removed": removed, "sha256": sha256_file(Path(path))}


def read_preference(path: str) -> dict[str, Any]:
    """The repair's blind A/B result (wins / losses / ties) from an 'ab report' JSON or a manifest holding one."""
    m = read_json(path, f"cannot read the A/B result {path}; write it with 'artifix ab report --json' (or --manifest).")
    r = (m.get("preference") or m) if isinstance(m, dict) else {}
    rep = r.get("repair") if isinstance(r, dict) else None
    if not isinstance(rep, dict) or not all(isinstance(rep.get(k), int) for k in ("wins", "losses", "ties")):
        raise UserError(f"{path} holds no A/B result of the repair (wins, losses, ties); run 'artifix ab report'.")
    if rep["wins"] + rep["losses"] == 0:
        raise UserError(f"{path}: no decided A/B pair (every answer was 'same' or none was given), so no win rate to judge.")
    return {"study": r.get("study"), "repair": rep, "control": r.get("control"), "sha256": sha256_file(path)}


def read_baseline_report(path: str, s: GateSettings, res: Mapping[str, Any]) -> dict[str, Any]:
    """A stored gate report whose protocol matches this run and which measured every metric the criteria compare."""
    rep = _read_json(path, "baseline report", "check --baseline-report.")
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
