"""`run_gate`: validate, measure, judge and write the report of one gate run."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import __version__
from ..errors import UserError
from ..io import sha256_file
from ..model import generator
from ..model.trace import get_layer
from ..profiles import profile_for
from ..provenance import provenance
from ..report.gate import write_outputs
from ..verdict import gate_verdict
from .criteria import DIST_METRICS, FORMAT, FORMAT_VERSION
from .inputs import GateSettings, dist_metrics, validate
from .judge import judge
from .measure import measure


def run_gate(s: GateSettings, cand_spec: Any, say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Validate, measure, judge and write the report, JUnit XML and Markdown summary; returns the report (with exit_code)."""
    t0 = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    res = validate(s)
    cand = generator.load_generator(cand_spec)  # looked up at call time (tests replace it)
    if cand.scripted and res["manifests"]:
        raise UserError("units_removed needs a Python generator (--generator 'module:callable') to hook its layers, not a TorchScript file.")
    for mf in res["manifests"].values():
        for layer in mf["removed"]:
            get_layer(cand.module, layer)
    if any(c.metric in DIST_METRICS for c in s.criteria) and not (s.metric_opts.get("real") or profile_for(cand_spec).has_reference):
        raise UserError("--real is required for FD / KID / SWD criteria on your own generator: an image folder, .npz array or statistics file.")
    if s.metric_opts.get("real") is not None and not Path(str(s.metric_opts["real"])).exists():
        raise UserError(f"reference data {s.metric_opts['real']} does not exist; give an image folder, a .npz/.npy uint8 array or a statistics .npz.")
    base = None
    if s.baseline:
        field_name = "generator" if cand.scripted else "checkpoint"
        base = generator.load_generator(replace(cand_spec, **{field_name: s.baseline}))
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
