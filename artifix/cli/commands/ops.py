"""CI and operations: `artifix gate` (the release gate), `stats` (unit statistics, split under torchrun) and
`dashboard` (start the review dashboard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import dist
from ...gate import GateSettings, parse_criteria, run_gate
from ...io import check_output_folder, output_folder
from ...model.generator import spec_from_options
from ...units import scoring
from ...units.stats import unit_summary
from ..registry import Context, command
from ..serve import DASHBOARD_HELP, DASHBOARD_OPTIONS, start_dashboard
from .common import check_n, default_layer, load


@command("gate", "judge a release candidate against [gate] criteria (significant regressions only); exit 1 when it fails",
         {"generator": None, "sample": ["seed"], "gate": None,
          "metrics": ["features", "real", "real_n", "real_resize", "inception_weights", "bootstrap", "swd_n", "swd_bootstrap",
                      "kid_subsets", "kid_subset_size", "metrics_seed", "feature_batch", "torchscript_size", "torchscript_range"],
          "classify": ["classifier"], "run": ["out", "cache", "threads"]})
def cmd_gate(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    metric_keys = ("features", "real", "real_n", "real_resize", "inception_weights", "swd_n", "kid_subsets", "kid_subset_size",
                   "feature_batch", "torchscript_size", "torchscript_range", "cache")
    s = GateSettings(criteria=parse_criteria(o["criteria"], o["confidence"], o.get("classifier")), n=o["n"], seed=o["seed"],
                     metrics_seed=o["metrics_seed"], bootstrap=o["bootstrap"], swd_bootstrap=o["swd_bootstrap"],
                     baseline=o["baseline"], baseline_report=o["baseline_report"], measure_only=bool(o["measure_only"]),
                     out=o["out"] or "artifix-gate", metric_opts={k: o.get(k) for k in metric_keys})
    report = run_gate(s, spec_from_options(o), ctx.say)
    for r in report["criteria"]:
        ctx.say(f"{r['status'].upper():<8} {r['name']} ({r['tier']}): {r['reason']}")
    ctx.say(f"gate {report['status']}: report, JUnit XML and summary in {s.out}/")
    return report


@command("stats", "stream per-unit statistics of a layer (quantiles, moments, firing rates, top samples); splits under torchrun",
         {"generator": None, "sample": ["seed", "start", "batch", "layer"], "score": ["stats_n", "top"], "run": ["out", "threads"]})
def cmd_stats(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    if o["out"]:
        check_output_folder(o["out"])
    g = load(ctx)
    layer = default_layer(ctx, g)
    n = check_n(o["stats_n"], "--stats-n")
    stats = scoring.collect_stats(g, layer, o["seed"], n, check_n(o["batch"], "--batch"), start=o["start"])
    if not dist.is_main():
        return None
    result: dict[str, Any] = {"fingerprint": g.fingerprint, "layer": layer, "seed": o["seed"], "start": o["start"], "n": n,
                              "ranks": dist.world_size(), "units": unit_summary(stats, o["top"])}
    if o["out"]:
        with output_folder(o["out"], owns=["unit_stats.pt"], command="stats") as folder:
            stats.save(folder.path / "unit_stats.pt")
        path = Path(o["out"]) / "unit_stats.pt"
        result["file"] = str(path)
        ctx.say(f"wrote the statistics of {n} samples at {layer} to {path}")
    ctx.say(f"{layer}: {stats.channels} units over {n} samples; median firing rate "
            f"{float(stats.firing_rate().median()):.3f}" + (f" ({dist.world_size()} ranks)" if dist.active() else ""))
    return result


@command("dashboard", DASHBOARD_HELP, DASHBOARD_OPTIONS)
def cmd_dashboard(ctx: Context) -> dict[str, Any]:
    return start_dashboard(ctx.opts, ctx.say)
