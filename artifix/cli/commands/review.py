"""The review loop: `artifix flags` (labels in and out), `score` (rank the units), `demo` (the whole story on the
bundled example) and `classify` (train, predict, the review queue)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ... import dist, workflow as W
from ...errors import UserError
from ...example.demo import DemoConfig, run_demo
from ...io import check_output_folder, output_folder, write_json_atomic, write_text_atomic
from ...labels import LabelStore
from ...model.generator import images_at, probe
from ...report.unitviz import unit_cards
from ...review.classifier import ArtifactClassifier
from ..registry import Context, command
from .common import cached_stats, check_n, default_layer, load, load_classifier, open_run, reviewer, score_run


def _flags_extra(p) -> None:
    p.add_argument("action", choices=["import", "export", "show"], help="import labels from a CSV/JSON/folder, export them, or show counts")
    p.add_argument("path", nargs="?", default=None, help="file or folder to import from / export to")


def check_import(ctx: Context, g, layer: str, path: str) -> None:
    """Validate an import completely in a throwaway in-memory store, so a bad file never touches the real one."""
    n = max(ctx.opts.get("stats_n") or 0, ctx.opts.get("n") or 0)
    location = str(ctx.opts["store"])
    if "://" in location or Path(location).expanduser().is_file():  # an existing run may cover more samples
        with LabelStore(location) as real:
            run = real.find_run(g.fingerprint, [layer], ctx.opts["seed"])
            n = max(n, run.n) if run is not None else n
    out_shape = probe(g)
    with LabelStore(":memory:") as scratch:
        run_id = scratch.register_run(g.fingerprint, [layer], ctx.opts["seed"], n,
                                      image_size=(int(out_shape[2]), int(out_shape[3])))
        scratch.import_labels(run_id, path, reviewer=reviewer(ctx))  # noqa: the same import the real store runs


@command("flags", "import, export or count reviewers' flags and painted masks in the label store",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store", "reviewer"], "score": ["stats_n"]}, _flags_extra)
def cmd_flags(ctx: Context) -> dict[str, Any]:
    g = load(ctx)
    layer = default_layer(ctx, g)
    action, path = ctx.args.action, ctx.args.path
    if action in ("import", "export") and not path:
        raise UserError(f"'artifix flags {action}' needs a path.")
    if action == "import":
        if not Path(path).exists():
            raise UserError(f"{path} does not exist; give a flags CSV/JSON file or an export folder.")
        check_import(ctx, g, layer, path)  # before the store is created or the run registered
    store, run_id = open_run(ctx, g, layer)
    result: dict[str, Any] = {"run_id": run_id, "store": ctx.opts["store"]}
    if action == "import":
        result["imported"] = store.import_labels(run_id, path, reviewer=reviewer(ctx))
        ctx.say(f"imported labels from {path} into run {run_id}")
    elif action == "export":
        result["exported"] = str(store.export_labels(run_id, path))
        ctx.say(f"exported labels of run {run_id} to {path}/")
    result["counts"] = store.counts(run_id)
    if action == "show" and not ctx.json:
        ctx.say(", ".join(f"{k}: {v}" for k, v in result["counts"].items()))
    return result


@command("score", "rank the units of a layer that cause the flagged artifacts (IoU@IQR, AUC, causal effect, priors)",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store", "reviewer"], "score": None, "select": ["high_q"],
          "classify": ["classifier"], "run": ["out", "cache", "threads"]})
def cmd_score(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    out = check_output_folder(o["out"] or "artifix-out")  # before any work
    g = load(ctx)
    layer = default_layer(ctx, g)
    clf = load_classifier(ctx, required=False)  # a bad classifier file is reported before the store is touched
    store, run_id = open_run(ctx, g, layer)
    report, stats = score_run(ctx, g, layer, store, run_id, clf)
    if not dist.is_main():  # under torchrun the ranks shared the work; rank 0 writes and reports
        return None
    top = report.table.head(o["top"])
    rows = top.to_dict("records")
    captions = ({int(r.unit): f"unit {int(r.unit)}: its top-{o['high_q']} samples' mean p(artifact) {r.high_prob_raw:.2f} "
                 f"(layer average {report.table.high_prob_raw.mean():.2f})" for r in top.itertuples()}
                if "high_prob_raw" in top else None)
    with output_folder(out, owns=["unit_scores.csv", "unit_scores.json", "cards"], command="score") as folder:
        write_text_atomic(folder.path / "unit_scores.csv", report.table.to_csv(index=False))
        write_json_atomic(folder.path / "unit_scores.json", {"layer": layer, "components": report.components,
                                                             "units": report.table.to_dict("records")})
        cards = folder.final(unit_cards(g, stats, [int(u) for u in top.unit], o["seed"], folder.path / "cards",
                                        captions=captions))
    W.propose_top(store, run_id, report.table, o["top"])
    if not ctx.json:
        cols = ["rank", "unit"] + [c for c in ("combined", "causal", "iou", "auc", "high", "high_prob_raw", "firing_rate") if c in top]
        ctx.say(top[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        ctx.say(f"scored {len(report.table)} units of {layer} from {report.n_flagged} flagged / {report.n_clean} clean samples "
                f"({report.n_masks - report.n_pseudo} painted"
                + (f", {report.n_pseudo} localised by the classifier" if report.n_pseudo else "")
                + f"); table in {out}/unit_scores.csv, cards in {out}/cards/")
    return {"run_id": run_id, "layer": layer, "components": report.components, "n_flagged": report.n_flagged,
            "n_clean": report.n_clean, "n_masks": report.n_masks, "n_pseudo": report.n_pseudo, "top": rows, "cards": [str(p) for p in cards]}


@command("demo", "the whole story on the bundled example: plant artifact units, review, score, approve, remove, measure",
         {"run": ["out", "threads"]})
def cmd_demo(ctx: Context) -> dict[str, Any]:
    cfg = DemoConfig(out=Path(ctx.opts["out"] or "artifix-demo"))
    summary = run_demo(cfg, ctx.say)
    ctx.say(f"done in {summary['seconds']}s: report in {cfg.out}/report.md")
    return summary


def _classify_extra(p) -> None:
    p.add_argument("action", choices=["train", "predict", "queue"],
                   help="train on the run's flags, predict artifact probabilities for samples, or list the next samples to review")


@command("classify", "train the automatic artifact classifier from the flags, predict with it, or build the review queue",
         {"generator": None, "sample": ["seed", "n", "start", "layer"], "labels": ["store"], "score": ["stats_n"],
          "classify": ["classifier", "review_k"], "run": ["threads", "cache"]}, _classify_extra)
def cmd_classify(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    g = load(ctx)
    layer = default_layer(ctx, g)
    path = Path(o["classifier"])
    action = ctx.args.action
    clf = ArtifactClassifier.load(path) if action != "train" and path.exists() else None  # checked before the store is touched
    if clf is None and action == "predict":
        raise UserError(f"no artifact classifier at {path}; train one first with 'artifix classify train'.")
    store, run_id = open_run(ctx, g, layer, missing=W.not_enough_labels(f"the label store {o['store']}", 0, 0) if action == "train" else None)
    if action == "train":  # fewer than 2 + 2 labels is refused before rendering anything or writing the classifier
        clf = W.train_from_store(g, store, run_id, o["seed"], path, where=f"the label store {o['store']}")
        r = clf.report
        ctx.say(f"trained on {r['n_pos']} flagged / {r['n_neg']} clean samples: cross-validated ROC-AUC {r['auc']:.3f}, "
                f"precision {r['precision']:.2f}, recall {r['recall']:.2f}, Brier {r['brier']:.3f}; saved to {path}")
        return {"run_id": run_id, "classifier": str(path), "report": r}
    ids = list(range(o["start"], o["start"] + check_n(o["n"])))
    if action == "predict":
        probs = clf.predict_proba(images_at(g, o["seed"], ids))
        flagged = [i for i, p in zip(ids, probs) if p >= clf.threshold]
        ctx.say(f"{len(flagged)} of {len(ids)} samples look like artifacts (p >= {clf.threshold:.2f}); mean p = {probs.mean():.3f}")
        return {"run_id": run_id, "samples": ids, "probability": [round(float(p), 5) for p in probs],
                "artifact_rate": float(np.mean(probs >= clf.threshold))}
    stats = cached_stats(ctx, g, layer, o["seed"], max(o["stats_n"], o["start"] + len(ids)))
    q = W.review_queue(g, layer, store, run_id, seed=o["seed"], start=o["start"], n=len(ids), k=o["review_k"], stats=stats,
                  clf=clf, cache=o.get("cache"), real=o.get("real"))
    ctx.say("next samples to review: " + ", ".join(map(str, q.samples)))
    return {"run_id": run_id, "queue": q.samples, "priors": q.priors, "realism": q.realism}
