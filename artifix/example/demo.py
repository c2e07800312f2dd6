"""The end-to-end demo on the bundled example: plant artifact units, review, score, approve, remove, measure.

Every step calls the same library functions as the CLI commands and the dashboard. The generator under
diagnosis is the example GAN with K planted artifact units (a known ground truth), reviewed by a
simulated reviewer who flags samples whose pixels the planted units changed and paints where.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import log
from ..io import check_output_folder, save_torch_atomic, output_folder, write_json_atomic, write_text_atomic
from ..labels import LabelStore
from ..model.generator import images_at, load_generator, sample
from ..model.images import grid, save_png
from ..profiles import profile_for
from ..repair import fd_recovery, plan_from_store, repair
from ..report.tables import table_markdown
from ..report.unitviz import unit_cards
from ..review import classifier
from ..units.scoring import recall_at_k, score_units, collect_stats
from ..workflow import propose_top, segmenter_for
from .demo_natural import natural_story
from .model import CHECKPOINT
from .planted import PlantedSite, low_impact_units, plant_defects, simulate_reviewer

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
    metrics: str = "fd,kid,swd"  # the repair's before/after metrics
    high_pool: int | None = None  # the repair's high-activation pool (default 4 x metrics_n; 0 = skip that subset)
    collateral_n: int = 200  # samples for the repair's collateral check (0 = skip)
    rate: float = 0.005  # planted units fire in this top fraction of positions: blotches in most samples, a visible FD change
    steps: list[str] = field(default_factory=list)


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = log.say) -> dict[str, Any]:
    """Run the whole story and write pictures, tables and a report into cfg.out (one transaction); returns the summary."""
    with output_folder(check_output_folder(cfg.out), command="demo") as folder:
        inner = replace(cfg, out=folder.path)
        summary = _run_demo_into(inner, say)
    cfg.planted_units = inner.planted_units
    return folder.final(summary)


@dataclass
class _Ranking:
    """The scored units of the planted layer and the top k approved: k is the number of planted units."""

    stats: Any
    table: Any
    ranking: list[int]
    k: int
    recall: float
    random_recall: float
    approved: list[int]


def _plant(g: Any, cfg: DemoConfig, say: Callable[[str], None]) -> Any:
    """Step 2: plant the artifact units (by default 3 seeded picks among the layer's lowest-impact units)."""
    if cfg.planted_units is None:
        pool = low_impact_units(g, PlantedSite(relu=cfg.layer))
        cfg.planted_units = tuple(sorted(int(u) for u in np.random.default_rng(100).choice(pool, 3, replace=False)))
    say(f"[2/6] planting {len(cfg.planted_units)} artifact units in layer {cfg.layer} (ground truth {list(cfg.planted_units)})")
    bad = plant_defects(g, list(cfg.planted_units), rate=cfg.rate)
    save_png(cfg.out / "planted_samples.png", grid(sample(bad, cfg.seed, 0, 64), scale=2))
    return bad


def _review(g: Any, bad: Any, cfg: DemoConfig, say: Callable[[str], None]) -> tuple[Any, LabelStore, int]:
    """Step 3: the simulated reviewer's flags and painted masks, recorded in a label store in cfg.out."""
    say(f"[3/6] simulated reviewer scans {cfg.scan} samples: flags up to {cfg.n_flag} with artifacts (painting them) and {cfg.n_clean} clean")
    review = simulate_reviewer(g, bad, cfg.seed, cfg.scan, cfg.n_flag, cfg.n_clean)
    store_path = cfg.out / "labels.sqlite"
    store = LabelStore(str(store_path))
    run_id = store.register_run(bad.fingerprint, [cfg.layer], cfg.seed, cfg.stats_n, meta={"demo": True}, image_size=(64, 64))
    store.set_flags(run_id, {i: "artifact" for i in review.artifact}, DEMO_REVIEWER)
    store.set_flags(run_id, {i: "clean" for i in review.clean}, DEMO_REVIEWER)
    for i, m in review.masks.items():
        store.set_mask(run_id, i, DEMO_REVIEWER, m)
    return review, store, run_id


def _score_and_approve(bad: Any, cfg: DemoConfig, review: Any, store: LabelStore, run_id: int,
                       say: Callable[[str], None]) -> _Ranking:
    """Steps 4 and 5: score the layer's units from the review, write the table and cards, approve the top k."""
    out = cfg.out
    say(f"[4/6] scoring the {cfg.layer} units from {len(review.artifact)} flagged / {len(review.clean)} clean samples")
    stats = collect_stats(bad, cfg.layer, cfg.seed, cfg.stats_n)
    report = score_units(bad, cfg.layer, cfg.seed, stats, review.artifact, review.clean, review.masks)
    table = report.table
    k = len(cfg.planted_units)
    ranking = [int(u) for u in table.unit]
    recall = recall_at_k(ranking, list(cfg.planted_units))
    random_recall = k / stats.channels  # expected recall@k of a random unit set
    write_text_atomic(out / "unit_scores.csv", table.to_csv(index=False))
    unit_cards(bad, stats, ranking[:k + 2], cfg.seed, out / "cards")
    top = table.head(k)
    propose_top(store, run_id, table, k, note="top of the ranking")  # with their scores: the Approvals page's cautions read them

    say(f"[5/6] approving the top {k} units as {DEMO_APPROVER} (recall@{k} of the planted units: {recall:.2f})")
    for u in top.unit:
        store.decide_unit(run_id, cfg.layer, int(u), "approved", DEMO_APPROVER, note="demo approval")
    approved = [a.unit for a in store.approved_units(run_id)]
    return _Ranking(stats, table, ranking, k, recall, random_recall, approved)


def _repair(g: Any, bad: Any, cfg: DemoConfig, review: Any, store: LabelStore, run_id: int, channels: int,
            say: Callable[[str], None]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Step 6: train the classifier on the review, repair the planted generator, measure the FD change undone."""
    out = cfg.out
    say("[6/6] training the artifact classifier, then repairing: remove the approved units, measure, export")
    ids = review.artifact + review.clean
    clf = classifier.train_classifier(images_at(bad, cfg.seed, ids), np.r_[np.ones(len(review.artifact)), np.zeros(len(review.clean))].astype(int))
    ck = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    ck["netG_state_dict"] = bad.module.state_dict()
    save_torch_atomic(ck, out / "planted.pt")  # the generator under repair, in the example's checkpoint layout
    plan = plan_from_store(store, run_id, cfg.layer)
    manifest = repair(bad, plan, out / "cleaned", seed=cfg.seed, n=cfg.metrics_n, flagged=review.artifact, clean=review.clean,
                      clf=clf, channels=channels, checkpoint=out / "planted.pt", segmenter=segmenter_for(profile_for(g.spec)),
                      metrics=cfg.metrics, high_pool=cfg.high_pool, collateral_n=cfg.collateral_n,
                      say=lambda m: say("      " + m))
    if "fd" not in cfg.metrics:  # the FD recovery reads the repair's FD rows
        say("      FD recovery skipped: the repair measured no FD")
        return clf, manifest, None
    recovery = fd_recovery(g, bad, manifest, seed=cfg.seed)
    say(f"      the planting moved FD by {recovery['damage']['diff']:+.2f}; removing the approved units undoes {100 * recovery['repair']:.0f} % "
        f"of that change, the random-unit control {100 * recovery['control']:.0f} %")
    return clf, manifest, recovery


def _recovery_line(recovery: dict[str, Any] | None) -> str:
    """The report's sentence on how much of the planting's FD change the repair and the control undo."""
    if recovery is None:
        return "**FD change undone:** not measured (the repair's metrics hold no FD)."
    d = recovery["damage"]
    return (f"**FD change undone:** the planting moved `{recovery['metric']}` from {d['clean']:.1f} to {d['damaged']:.1f} "
            f"({d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}], paired on the same seeds); removing the approved units "
            f"undoes {100 * recovery['repair']:.0f} % of that change (FD after: {recovery['after']:.1f}), the random-unit "
            f"control {100 * recovery['control']:.0f} % (FD {recovery['control_after']:.1f}).")


def _report_markdown(g: Any, cfg: DemoConfig, natural: dict[str, Any], review: Any, r: _Ranking,
                     recovery: dict[str, Any] | None, clf: Any) -> str:
    """report.md: the natural story, the samples, the review, the ranked units, before / after and the repair."""
    out, k, table = cfg.out, r.k, r.table
    cols = ["rank", "unit", "combined", "causal", "iou", "auc", "firing_rate"]
    md = ["# artifix demo report", "", *natural["markdown"],
          f"Generator: bundled example `{g.fingerprint}` with {k} planted artifact units in `{cfg.layer}`: {list(cfg.planted_units)}.", "",
          "## Samples", "", "Example GAN | with planted artifact units", "---|---", "![](samples.png) | ![](planted_samples.png)", "",
          f"## Review: {len(review.artifact)} flagged (all painted), {len(review.clean)} clean", "",
          f"## Ranked units (recall@{k} = {r.recall:.2f}; a random set of {k} units: {r.random_recall:.3f} expected)", "",
          table_markdown(table.head(2 * k).to_dict("records"), [c for c in cols if c in table]), "",
          "Unit cards (top activating samples, plain and with the unit's map): " + ", ".join(f"[{u}](cards/unit_{cfg.layer}_{u}.png)" for u in r.ranking[:k]), "",
          "## Before / after", "", "Rows: planted generator; approved units removed; random-unit control.", "",
          "![flagged](cleaned/before_after_flagged.png)", "", "![clean](cleaned/before_after_clean.png)", ""]
    md += ["## Repair (the cleaned generator is in `cleaned/`)", "", (out / "cleaned" / "MODEL_CARD.md").read_text().split("\n", 2)[2], "",
           _recovery_line(recovery), "",
           f"Artifact classifier trained on the review: cross-validated ROC-AUC {clf.report['auc']:.3f}. The flagged samples "
           "were its training data, so their 'before' artifact rate is in-sample (optimistic); the random-sample rates are not.", ""]
    return "\n".join(md)


def _run_demo_into(cfg: DemoConfig, say: Callable[[str], None]) -> dict[str, Any]:
    """The demo's steps, writing into cfg.out (a temporary folder renamed into place by run_demo)."""
    t0 = time.time()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    g = load_generator()
    say(f"[1/6] example generator {g.fingerprint}: sampling a grid")
    save_png(out / "samples.png", grid(sample(g, cfg.seed, 0, 64), scale=2))
    natural = natural_story(g, out, say)  # part 1: the example's own defects; the planted story below is part 2
    bad = _plant(g, cfg, say)
    review, store, run_id = _review(g, bad, cfg, say)
    counts = store.counts(run_id)
    r = _score_and_approve(bad, cfg, review, store, run_id, say)
    clf, manifest, recovery = _repair(g, bad, cfg, review, store, run_id, r.stats.channels, say)
    metrics = {"classifier_cv_auc": clf.report["auc"], "fd_recovery": recovery, **manifest["metrics"]}
    store.close()
    summary = {
        "generator": g.fingerprint, "planted": bad.fingerprint, "layer": cfg.layer, "planted_units": list(cfg.planted_units),
        "flagged": len(review.artifact), "clean": len(review.clean), "painted": len(review.masks), "label_counts": counts,
        "ranking_top": r.ranking[: 2 * r.k], "recall_at_k": r.recall, "random_recall_at_k": r.random_recall,
        "random_units": manifest["random_control_units"], "approved": r.approved, "metrics": metrics,
        "seconds": round(time.time() - t0, 1), "natural": {k: v for k, v in natural.items() if k != "markdown"},
    }
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.md", _report_markdown(g, cfg, natural, review, r, recovery, clf))
    return summary
