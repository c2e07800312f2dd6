"""The end-to-end demo on the bundled example: plant artifact units, review, score, approve, remove, measure.

Every step calls the same library functions as the CLI commands and the dashboard. The generator under
diagnosis is the example GAN with K planted artifact units (a known ground truth), reviewed by a
simulated reviewer who flags samples whose pixels the planted units changed and paints where.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


from .generator import LoadedGenerator, load_generator, sample
from .images import grid, save_png
from .io import write_json_atomic, write_text_atomic
from .labels import LabelStore
from .planted import PlantedSite, low_impact_units, plant_defects, simulate_reviewer
from .scoring import recall_at_k, score_units, collect_stats
from .report import table_markdown, unit_cards

DEMO_REVIEWER = "demo-reviewer"
DEMO_APPROVER = "demo-approver"


@dataclass
class DemoConfig:
    """Sizes of the demo run (defaults keep it to a few minutes on 2 CPU cores)."""

    out: Path = Path("artifix-demo")
    layer: str = "main.8"
    planted_units: tuple[int, ...] | None = None  # default: 3 of the layer's 16 lowest-impact units (seeded)
    seed: int = 0
    scan: int = 400
    n_flag: int = 30
    n_clean: int = 30
    stats_n: int = 2000
    metrics_n: int = 500
    steps: list[str] = field(default_factory=list)


def demo_metrics(clean: LoadedGenerator, planted: LoadedGenerator, cfg: DemoConfig, approved: list[int],
                 random_units: list[int], say: Callable[[str], None] = print) -> dict[str, Any]:
    """FD / KID against the example's reference scenes for: clean example, planted, repaired, random-unit control."""
    from .generator import sample_batches
    from .metrics import compute_metrics
    from .trace import Trace, ablation

    def measure(g: LoadedGenerator, units: list[int] | None) -> dict[str, Any]:
        with Trace(g.module, edit={cfg.layer: ablation(units)}) if units else nullcontext():
            batches = [imgs.numpy() for _, imgs in sample_batches(g, cfg.seed, 0, cfg.metrics_n, 64)]
        return compute_metrics(iter(batches), n=cfg.metrics_n, metrics="fd,kid,swd", seed=cfg.seed, swd_bootstrap=5)

    res: dict[str, Any] = {}
    for name, g, units in (("example", clean, None), ("planted", planted, None), ("repaired", planted, approved),
                           ("random_control", planted, random_units)):
        say(f"      metrics: {name}")
        res[name] = measure(g, units)
    fd = next(k for k in res["planted"] if k.startswith("fd_"))
    for metric in (fd, next(k for k in res["planted"] if k.startswith("swd_"))):
        damage = res["planted"][metric]["value"] - res["example"][metric]["value"]
        for name in ("repaired", "random_control"):
            gain = res["planted"][metric]["value"] - res[name][metric]["value"]
            # undefined when planting did not make the metric worse: report it as such, never as a gain
            res[name][metric.split("_")[0] + "_damage_recovered"] = gain / damage if damage > 0 else None
    res["fd_metric"] = fd
    return res


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print, metrics_fn: Callable[..., dict] | None = demo_metrics) -> dict[str, Any]:
    """Run the whole story and write pictures, tables and a report into cfg.out; returns the summary."""
    t0 = time.time()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    g = load_generator()
    say(f"[1/6] example generator {g.fingerprint}: sampling a grid")
    save_png(out / "samples.png", grid(sample(g, cfg.seed, 0, 64), scale=2))

    if cfg.planted_units is None:
        pool = low_impact_units(g, PlantedSite(relu=cfg.layer))
        cfg.planted_units = tuple(sorted(int(u) for u in np.random.default_rng(100).choice(pool, 3, replace=False)))
    say(f"[2/6] planting {len(cfg.planted_units)} artifact units in layer {cfg.layer} (ground truth {list(cfg.planted_units)})")
    bad = plant_defects(g, list(cfg.planted_units))
    save_png(out / "planted_samples.png", grid(sample(bad, cfg.seed, 0, 64), scale=2))

    say(f"[3/6] simulated reviewer scans {cfg.scan} samples: flags up to {cfg.n_flag} with artifacts (painting them) and {cfg.n_clean} clean")
    review = simulate_reviewer(g, bad, cfg.seed, cfg.scan, cfg.n_flag, cfg.n_clean)
    store_path = out / "labels.sqlite"
    store = LabelStore(str(store_path))
    run_id = store.register_run(bad.fingerprint, [cfg.layer], cfg.seed, cfg.stats_n, meta={"demo": True}, image_size=(64, 64))
    store.set_flags(run_id, {i: "artifact" for i in review.artifact}, DEMO_REVIEWER)
    store.set_flags(run_id, {i: "clean" for i in review.clean}, DEMO_REVIEWER)
    for i, m in review.masks.items():
        store.set_mask(run_id, i, DEMO_REVIEWER, m)
    counts = store.counts(run_id)

    say(f"[4/6] scoring the {cfg.layer} units from {len(review.artifact)} flagged / {len(review.clean)} clean samples")
    stats = collect_stats(bad, cfg.layer, cfg.seed, cfg.stats_n)
    report = score_units(bad, cfg.layer, cfg.seed, stats, review.artifact, review.clean, review.masks)
    table = report.table
    k = len(cfg.planted_units)
    ranking = [int(u) for u in table.unit]
    recall = recall_at_k(ranking, list(cfg.planted_units))
    rng = np.random.default_rng(cfg.seed)
    others = [u for u in range(stats.channels) if u not in ranking[:k]]  # the control never touches the approved units
    random_units = sorted(int(u) for u in rng.choice(others, k, replace=False))
    random_recall = recall_at_k(random_units, list(cfg.planted_units))
    cols = ["rank", "unit", "combined", "causal", "iou", "auc", "firing_rate"]
    write_text_atomic(out / "unit_scores.csv", table.to_csv(index=False))
    unit_cards(bad, stats, ranking[:k + 2], cfg.seed, out / "cards")
    top = table.head(k)
    store.propose_units(run_id, [(cfg.layer, int(u)) for u in top.unit], "artifix", note="top of the ranking")

    say(f"[5/6] approving the top {k} units as {DEMO_APPROVER} (recall@{k} of the planted units: {recall:.2f})")
    for u in top.unit:
        store.decide_unit(run_id, cfg.layer, int(u), "approved", DEMO_APPROVER, note="demo approval")
    approved = [a.unit for a in store.approved_units(run_id)]

    say("[6/6] before/after pictures" + (" and metrics" if metrics_fn else ""))
    from .trace import Trace, ablation

    ids = review.artifact[:8] + review.clean[:8]
    from .scoring import _images

    before = _images(bad, cfg.seed, ids)
    with Trace(bad.module, edit={cfg.layer: ablation(approved)}):
        after = _images(bad, cfg.seed, ids)
    with Trace(bad.module, edit={cfg.layer: ablation(random_units)}):
        control = _images(bad, cfg.seed, ids)
    save_png(out / "before_after.png", grid(np.concatenate([before, after, control]), ncol=len(ids), scale=2))
    metrics = metrics_fn(g, bad, cfg, approved, random_units, say) if metrics_fn else {}
    store.close()
    summary = {
        "generator": g.fingerprint, "planted": bad.fingerprint, "layer": cfg.layer, "planted_units": list(cfg.planted_units),
        "flagged": len(review.artifact), "clean": len(review.clean), "painted": len(review.masks), "label_counts": counts,
        "ranking_top": ranking[: 2 * k], "recall_at_k": recall, "random_recall_at_k": random_recall, "random_units": random_units,
        "approved": approved, "metrics": metrics, "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(out / "summary.json", summary)
    md = ["# artifix demo report", "",
          f"Generator: bundled example `{g.fingerprint}` with {k} planted artifact units in `{cfg.layer}`: {list(cfg.planted_units)}.", "",
          "## Samples", "", "Example GAN | with planted artifact units", "---|---", "![](samples.png) | ![](planted_samples.png)", "",
          f"## Review: {len(review.artifact)} flagged (all painted), {len(review.clean)} clean", "",
          f"## Ranked units (recall@{k} = {recall:.2f}; a random set of {k} units: {random_recall:.2f})", "",
          table_markdown(table.head(2 * k).to_dict("records"), [c for c in cols if c in table]), "",
          "Unit cards (top activating samples, plain and with the unit's map): " + ", ".join(f"[{u}](cards/unit_{cfg.layer}_{u}.png)" for u in ranking[:k]), "",
          "## Before / after", "", "Rows: planted generator; approved units removed; random-unit control. "
          "Left 8 columns: flagged samples, right 8: clean samples.", "", "![](before_after.png)", ""]
    if metrics:
        fd = metrics["fd_metric"]
        kid = fd.replace("fd_", "kid_")
        swd = next(k for k in metrics["planted"] if k.startswith("swd_"))
        ci = "[{:.1f}, {:.1f}]".format
        rows = [{"generator": name, fd: metrics[name][fd]["value"], "FD 95% CI": ci(*metrics[name][fd]["ci"]),
                 kid: metrics[name][kid]["value"], swd: metrics[name][swd]["value"], "SWD 95% CI": ci(*metrics[name][swd]["ci"]),
                 "FD damage recovered": metrics[name].get("fd_damage_recovered"),
                 "SWD damage recovered": metrics[name].get("swd_damage_recovered")}
                for name in ("example", "planted", "repaired", "random_control")]
        md += [f"## Metrics against the example's reference scenes (N = {cfg.metrics_n})", "",
               table_markdown(rows, ["generator", fd, "FD 95% CI", kid, swd, "SWD 95% CI", "FD damage recovered", "SWD damage recovered"]),
               "A recovered fraction is empty when planting did not make that metric worse.", ""]
    write_text_atomic(out / "report.md", "\n".join(md))
    return summary


