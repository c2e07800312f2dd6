"""Command handlers: thin glue between the CLI registry and the library stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contextlib import nullcontext

from . import workflow as W
from .registry import Context, command
from .errors import UserError
from .io import check_output_folder, output_folder
from .profiles import profile_for
from .trace import Trace



def parse_units(text: str | int | list[int]) -> list[int]:
    """Parse '3,17' (or a list) into unit indices: non-negative and distinct (`workflow.parse_units`)."""
    return W.parse_units(text)


def ablation_from_options(g, o: dict[str, Any]) -> dict[str, Any] | None:
    """The {layer: Ablation} edit described by --layer/--ablate/--alpha, validated against G."""
    from .trace import ablation, get_layer

    if o.get("ablate") is None:
        if o.get("layer"):
            require_hooks(g, "--layer")
            get_layer(g.module, o["layer"])
        return None
    if not o.get("layer"):
        raise UserError("--ablate needs --layer to say which layer the units belong to.")
    require_hooks(g, "--ablate")
    get_layer(g.module, o["layer"])
    if not 0.0 <= o["alpha"] <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {o['alpha']}.")
    return {o["layer"]: ablation(parse_units(o["ablate"]), o["alpha"])}


def require_hooks(g, what: str) -> None:
    """Refuse in one sentence when G cannot carry hooks (a TorchScript file)."""
    from .adapters import REFUSAL

    if g.scripted or (g.adapter is not None and not g.adapter.hookable):
        raise UserError(REFUSAL.format(what=what))


def load(ctx: Context):
    """Load the generator the settings describe (default: the bundled example)."""
    from .generator import load_generator, spec_from_options

    return load_generator(spec_from_options(ctx.opts))


def _check_n(n: int, what: str = "--n") -> int:
    if n <= 0:
        raise UserError(f"{what} must be a positive number of samples, got {n}.")
    return n


@command("sample", "sample the generator with fixed seeds and write a grid PNG (and optionally each image)",
         {"generator": None, "sample": ["seed", "n", "start", "batch", "class_id", "grid", "images", "layer", "ablate", "alpha"],
          "run": ["threads"]})
def cmd_sample(ctx: Context) -> dict[str, Any]:
    from .generator import sample_batches
    from .images import grid, save_png
    from .progress import track

    o = ctx.opts
    n, batch = _check_n(o["n"]), _check_n(o["batch"], "--batch")
    if o["start"] < 0:
        raise UserError(f"--start must be >= 0, got {o['start']}.")
    g = load(ctx)
    edit = ablation_from_options(g, o)
    out_dir = Path(o["images"]) if o["images"] else None
    keep: list[np.ndarray] = []
    written = 0
    with Trace(g.module, edit=edit) if edit else nullcontext():
        batches = list(track(sample_batches(g, o["seed"], o["start"], n, batch, o["class_id"]), n, "sampling", lambda b: len(b[0])))
    for idx, imgs in batches:
        arr = imgs.numpy()
        if len(keep) * batch < 256:
            keep.append(arr)
        if out_dir is not None:
            for i, im in zip(idx, arr):
                save_png(out_dir / f"{i:06d}.png", im if im.shape[-1] == 3 else im[..., 0])
                written += 1
    shown = np.concatenate(keep)[:256]
    result: dict[str, Any] = {"fingerprint": g.fingerprint, "seed": o["seed"], "start": o["start"], "n": n,
                              "image_shape": list(shown.shape[1:])}
    if o["grid"]:
        save_png(o["grid"], grid(shown, scale=2 if shown.shape[1] <= 64 else 1))
        result["grid"] = str(o["grid"])
        ctx.say(f"wrote a grid of {len(shown)} samples to {o['grid']}")
    if out_dir is not None:
        result["images"] = str(out_dir)
        ctx.say(f"wrote {written} images to {out_dir}/")
    return result


@command("layers", "list every hookable layer of the generator with its output shape",
         {"generator": None})
def cmd_layers(ctx: Context) -> dict[str, Any]:
    from .generator import latents
    from .trace import layer_shapes

    g = load(ctx)
    require_hooks(g, "listing layers")
    z, y = latents(g.spec, 0, [0, 1])
    if g.adapter is not None and g.adapter.name != "module":  # the family's calling convention, not module(z)
        rows = layer_shapes(g.module, z, y, call=g)
    else:
        rows = layer_shapes(g.module, z) if y is None else layer_shapes(g.module, z, y)
    defaults_ = g.adapter.default_layers(g.module) if g.adapter is not None else []
    if not ctx.json:
        width = max([len(r["layer"]) for r in rows] + [5])
        ctx.say(f"{'layer':<{width}}  {'type':<18} output shape (batch of 2)")
        for r in rows:
            mark = "  (default)" if defaults_ and r["layer"] == defaults_[0] else ""
            ctx.say(f"{r['layer']:<{width}}  {r['type']:<18} {r['shape']}{mark}")
    return {"fingerprint": g.fingerprint, "layers": rows, "adapter": g.spec.adapter, "default_layer": defaults_[0] if defaults_ else None}


# ------------------------------------------------------------------------------------- labels / score


def default_layer(ctx: Context, g) -> str:
    """--layer, or the generator profile's default layer (`workflow.resolve_layer`)."""
    require_hooks(g, "scoring, flags and repair")
    return W.resolve_layer(g, profile_for(g.spec), ctx.opts.get("layer"))


def reviewer(ctx: Context) -> str:
    """--reviewer, else $USER, else 'reviewer'."""
    return W.reviewer_name(ctx.opts.get("reviewer"))


def workspace(ctx: Context, g, layer: str) -> W.Workspace:
    """The workspace of these settings on an already loaded generator and resolved layer."""
    ws = W.open_workspace({**ctx.opts, "layer": layer}, g, need_layer=False)
    ws.layer = layer
    return ws


def open_run(ctx: Context, g, layer: str, missing: str | None = None):
    """Open the label store and register (or find) the run of (G, layer, seed).

    With `missing` (a sentence), only find the run: when the store file or the run does not exist yet,
    raise UserError(missing) without creating or writing anything.
    """
    ws = workspace(ctx, g, layer)
    try:
        if missing is not None:
            run_id = W.find_run(ws, layer, missing)  # before ws.store: a missing store file is never created
        else:
            run_id = W.register_run(ws, max(ctx.opts.get("stats_n") or 0, ctx.opts.get("n") or 0), layer)
        return ws.store, run_id
    except UserError:
        ws.close()
        raise


def _flags_extra(p) -> None:
    p.add_argument("action", choices=["import", "export", "show"], help="import labels from a CSV/JSON/folder, export them, or show counts")
    p.add_argument("path", nargs="?", default=None, help="file or folder to import from / export to")


def check_import(ctx: Context, g, layer: str, path: str) -> None:
    """Validate an import completely in a throwaway in-memory store, so a bad file never touches the real one."""
    from .generator import probe
    from .labels import LabelStore

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


def cached_stats(ctx: Context, g, layer: str, seed: int, n: int):
    """Unit statistics for (G, layer, seed, n) from the cache folder (see scoring.cached_stats)."""
    from .scoring import cached_stats as cached

    return cached(g, layer, seed, n, ctx.opts.get("cache") or ".artifix-cache")


flagged_and_clean = W.flagged_and_clean


def score_run(ctx: Context, g, layer: str, store, run_id: int, clf=None, use_cache: bool = True):
    """Score every unit of `layer` from the run's flags/masks (and a classifier, if given); no stats cache under edits."""
    o = ctx.opts
    stats = W.unit_stats(g, layer, o["seed"], o["stats_n"], o.get("cache"), use_cache)
    report = W.score_run(g, layer, store, run_id, stats, seed=o["seed"], clf=clf, exact_top=o["exact_top"],
                   collateral_weight=o["collateral_weight"], rare_rate=o["rare_rate"], say=ctx.say, high_q=int(o.get("high_q") or 0))
    return report, stats


@command("score", "rank the units of a layer that cause the flagged artifacts (IoU@IQR, AUC, causal effect, priors)",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store", "reviewer"], "score": None, "select": ["high_q"],
          "classify": ["classifier"], "run": ["out", "cache", "threads"]})
def cmd_score(ctx: Context) -> dict[str, Any]:
    from .io import write_json_atomic, write_text_atomic
    from .report import unit_cards

    o = ctx.opts
    out = check_output_folder(o["out"] or "artifix-out")  # before any work
    g = load(ctx)
    layer = default_layer(ctx, g)
    clf = load_classifier(ctx, required=False)  # a bad classifier file is reported before the store is touched
    store, run_id = open_run(ctx, g, layer)
    report, stats = score_run(ctx, g, layer, store, run_id, clf)
    from . import dist

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
                f"({report.n_masks} painted); table in {out}/unit_scores.csv, cards in {out}/cards/")
    return {"run_id": run_id, "layer": layer, "components": report.components, "n_flagged": report.n_flagged,
            "n_clean": report.n_clean, "n_masks": report.n_masks, "top": rows, "cards": [str(p) for p in cards]}


def load_classifier(ctx: Context, required: bool = True):
    """The trained artifact classifier at --classifier, or None when absent and not required."""
    path = Path(ctx.opts.get("classifier") or "artifix-classifier.pt")
    if not path.exists():
        if required:
            raise UserError(f"no artifact classifier at {path}; train one with 'artifix classify train'.")
        return None
    from .classifier import ArtifactClassifier

    return ArtifactClassifier.load(path)


@command("demo", "the whole story on the bundled example: plant artifact units, review, score, approve, remove, measure",
         {"run": ["out", "threads"]})
def cmd_demo(ctx: Context) -> dict[str, Any]:
    from .demo import DemoConfig, run_demo

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
    from .classifier import ArtifactClassifier
    from .generator import images_at

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
    ids = list(range(o["start"], o["start"] + _check_n(o["n"])))
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


@command("metrics", "FD / KID / SWD of the generator against reference data, with confidence intervals",
         {"generator": None, "sample": ["seed", "batch"], "metrics": None, "run": ["cache", "threads"]})
def cmd_metrics(ctx: Context) -> dict[str, Any]:
    from .generator import sample_batches
    from .metrics import compute_metrics

    o = ctx.opts
    if o.get("images"):
        from .metrics.folders import metrics_of_folder

        return metrics_of_folder(ctx)
    g = load(ctx)
    n = _check_n(o["n"])
    W.require_reference(profile_for(g.spec), o["real"], "metrics")
    if o["real"] is not None and not Path(o["real"]).exists():
        raise UserError(f"reference data {o['real']} does not exist; give an image folder, a .npz/.npy uint8 array or a statistics .npz.")
    from .metrics.reference import check_real
    from . import dist

    check_real(o["real"], n=o.get("real_n"), resize=o.get("real_resize"), features=o.get("features"),
               class_id=o.get("real_class"))  # before sampling or extracting features
    first, count = dist.shard_range(0, n)  # under torchrun each rank samples its block; rank 0 merges
    batches = (imgs.numpy() for _, imgs in sample_batches(g, o["seed"], first, count, _check_n(o["batch"], "--batch")))
    names = ("metrics", "features", "real", "bootstrap", "confidence", "kid_subsets", "kid_subset_size", "fd_inf", "inception_weights",
             "real_n", "real_resize", "swd_n", "swd_bootstrap", "feature_batch", "real_class")
    from .metrics.folders import extractor_from_options

    kwargs = {**{k: o[k] for k in names if k in o}, "features": extractor_from_options(o)}  # --torchscript-size too
    res = compute_metrics(batches, n=n, seed=o["metrics_seed"], cache=o["cache"], progress=ctx.say, sharded=True, **kwargs)
    if not dist.is_main():
        return None
    if not ctx.json:
        for name, r in res.items():
            ci = f" [{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]" if r.get("ci") else ""
            ctx.say(f"{name:<24} {r['value']:.4g}{ci}")
    return {"fingerprint": g.fingerprint, "metrics": res}


def is_bundled_example(g, layer: str, seed: int = 0) -> bool:
    """Whether the generator profile's bundled review was recorded for this generator, layer and seed."""
    return W.bundled_review_for(profile_for(g.spec), g.fingerprint, layer, seed) is not None


def maybe_bundled_review(ctx: Context, g, store, run_id: int, layer: str) -> bool:
    """Fill an empty run with the profile's bundled review when it fits (G, layer, seed); True when this run holds it."""
    profile = profile_for(g.spec)
    added = W.import_bundled_review(profile, store, run_id, g.fingerprint, layer, ctx.opts["seed"])
    if added:
        ctx.say(f"the label store had no labels for the bundled example: imported the maintainers' review "
                f"({added['flags'].get('flags', '?')} flags; units {added['approved']} approved by {added['reviewer']}); "
                f"see {profile.review.directory}/")
    return bool(added) or W.holds_bundled_review(profile, store, run_id, g.fingerprint, layer, ctx.opts["seed"])


@command("repair", "remove the approved units, prove the gain against a random-unit control, write a cleaned generator",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store"], "score": None, "repair": None,
          "classify": ["classifier"], "metrics": ["real", "inception_weights", "confidence"], "dissect": ["segmenter", "segmenter_classes"],
          "select": ["unit_set"], "run": ["out", "cache", "threads"]})
def cmd_repair(ctx: Context) -> dict[str, Any]:
    from .repair import combine, plan_auto, plan_from_store, repair, sequential_auto
    from .scoring import trace_batches
    from .trace import get_layer

    o = ctx.opts
    g = load(ctx)
    require_hooks(g, "repair")
    primary = default_layer(ctx, g)
    set_plan = unit_set = None
    if o.get("unit_set"):  # 'artifix select' chose the units and proposes their layer
        from .commands_natural import plan_from_set

        set_plan, unit_set = plan_from_set(o["unit_set"], g)
        ctx.say(f"set selection proposes layer {set_plan.layer} (of {', '.join(r['layer'] for r in unit_set['rows'])}): "
                f"removing units {set_plan.edits[set_plan.layer]}")
    layers = [l.strip() for l in str(o["layers"]).split(",") if l.strip()] if o["layers"] else [primary]
    for layer in layers:
        get_layer(g.module, layer)
    if len(set(layers)) != len(layers):
        raise UserError(f"--layers names a layer twice ({o['layers']}); name each layer once.")
    n = _check_n(o["repair_n"], "--repair-n")
    W.check_confidence(o["confidence"])
    out = Path(o["out"] or "artifix-repair")
    from .repair import check_repair_out

    check_repair_out(g, out)  # a folder that cannot be replaced is refused before any work
    from .metrics.reference import check_real

    check_real(o["real"])  # a bad reference is reported before hours of sampling
    profile = profile_for(g.spec)
    measures = W.repair_measures(profile, o["real"])
    if o["auto"] and o["k"] <= 0:
        raise UserError(f"--k must be a positive number of units, got {o['k']}.")
    channels = {l: next(iter(trace_batches(g, l, o["seed"], [0])))[1].shape[1] for l in layers}  # one sample: cheap
    for layer, c in channels.items():
        if o["auto"] and 2 * o["k"] > c:  # the k removed units plus a random control of k other units
            raise UserError(f"--k {o['k']} is too many for layer {layer}: it has {c} units and the random control needs "
                            f"as many others, so --k can be at most {c // 2}.")
    clf = load_classifier(ctx, required=False)
    if o["optimise_alpha"] and clf is None and not is_bundled_example(g, primary, o["seed"]):
        raise UserError("--optimise-alpha needs the artifact classifier; train one with 'artifix classify train'.")
    missing = None if o["auto"] or is_bundled_example(g, primary, o["seed"]) else (
        f"no approved units of layer {primary} in the label store {o['store']}; approve some (dashboard) "
        "or pass --auto --k K to take the top of the ranking.")
    store, run_id = open_run(ctx, g, primary, missing=missing)  # the flags (and the primary layer's approvals) live here
    if maybe_bundled_review(ctx, g, store, run_id, primary) and clf is None:
        from .classifier import ArtifactClassifier

        clf = ArtifactClassifier.load(profile.review.classifier_file)
        ctx.say(f"using the bundled review's artifact classifier ({profile.review.classifier_file})")

    def ranking(layer: str, earlier: dict | None = None) -> list[int]:
        report, _ = score_run(ctx, g, layer, store, run_id, clf, use_cache=not earlier)
        return [int(u) for u in report.table.unit]

    if set_plan is not None:
        plan = set_plan
    elif o["auto"]:
        plan = sequential_auto(g, layers, o["k"], ranking, ctx.say) if len(layers) > 1 else plan_auto(ranking(primary), primary, o["k"])
    else:
        plans = []
        for layer in layers:
            st, rid = (store, run_id) if layer == primary else open_run(ctx, g, layer, missing=(
                f"no approved units of layer {layer} in the label store {o['store']}; approve some or drop it from --layers."))
            plans.append(plan_from_store(st, rid, layer, ranking(layer) if o["sweep"] and layer == layers[0] else None))
        plan = combine(plans)
    flagged, clean = flagged_and_clean(store, run_id)
    channels = {l: next(iter(trace_batches(g, l, o["seed"], [0])))[1].shape[1] for l in plan.layers}
    high_pool = 4 * n if o["high_pool"] is None else o["high_pool"]
    segmenter = W.segmenter_for(profile, o.get("segmenter"), o.get("segmenter_classes"))
    if measures.sentence():
        ctx.say(measures.sentence())
    manifest = repair(g, plan, out, seed=o["seed"], n=n, flagged=flagged, clean=clean, clf=clf, real=measures.real, channels=channels,
                      metrics=measures.metrics, skipped=measures.skipped, confidence=o["confidence"],
                      high_pool=high_pool, optimise=o["optimise_alpha"], run_sweep=o["sweep"], sweep_n=o["sweep_n"],
                      inception_weights=o.get("inception_weights"), segmenter=segmenter, collateral_n=o["collateral_n"],
                      cache=o.get("cache"), say=ctx.say)
    if unit_set is not None:
        from .io import write_json_atomic

        from .io import write_text_atomic
        from .repair import model_card

        manifest["set_selection"] = {k: unit_set.get(k) for k in ("proposed_layer", "rows", "selections", "classifier")}
        write_json_atomic(out / "manifest.json", manifest)
        write_text_atomic(out / "MODEL_CARD.md", model_card(manifest))
    ctx.say(f"wrote the cleaned generator, manifest.json, MODEL_CARD.md and report.md to {out}/")
    return manifest


# ------------------------------------------------------------------------------ concept dissection (issue 11)


def _segmenter_from_options(o: dict[str, Any], g) -> Any:
    """The segmenter --segmenter names, else the generator profile's; a UserError when there is none."""
    return W.segmenter_for(profile_for(g.spec), o.get("segmenter"), o.get("segmenter_classes"), required=True)


def _dissect_layers(o: dict[str, Any], g) -> list[str]:
    return W.dissect_layers(profile_for(g.spec), o.get("layers"))


def _ace_layer(o: dict[str, Any], g, layers: list[str]) -> str:
    return W.ace_layer(g, profile_for(g.spec), o.get("ace_layer") or o.get("layer"), layers)


def _concepts(o: dict[str, Any], seg) -> list[str]:
    from .dissect import class_index

    names = W.split_names(o.get("concepts"))
    if not names:
        return [c for c in ("tree", "building") if c in seg.classes]
    for c in names:
        class_index(seg.classes, c)
    return names


@command("dissect", "label every unit of some layers with its best-matching concept (IoU), count interpretable units per layer, "
         "and check concepts causally (ablate their top units vs random units)",
         {"generator": None, "sample": ["seed", "batch", "layer"],
          "dissect": ["layers", "dissect_n", "segmenter", "segmenter_classes", "iou_min", "concepts", "ace_layer", "ace_units", "ace_n"],
          "metrics": ["confidence"],
          "run": ["out", "cache", "threads"]})
def cmd_dissect(ctx: Context) -> dict[str, Any]:
    from . import dissect as D
    from .images import save_png
    from .io import write_json_atomic, write_text_atomic

    o = ctx.opts
    n, batch = _check_n(o["dissect_n"], "--dissect-n"), _check_n(o["batch"], "--batch")
    if o["ace_n"] < 0 or o["ace_units"] <= 0:
        raise UserError("--ace-n must be >= 0 and --ace-units positive.")
    W.check_confidence(o["confidence"])
    if not 0 <= o["iou_min"] < 1:
        raise UserError(f"--iou-min must be in [0, 1), got {o['iou_min']}.")
    out = check_output_folder(o["out"] or "artifix-dissect")
    g = load(ctx)
    layers = D._check_layers(g, _dissect_layers(o, g))  # fail on a bad layer before loading or sampling anything
    seg = _segmenter_from_options(o, g)
    concepts = _concepts(o, seg)
    ace_layer = _ace_layer(o, g, layers) if concepts and o["ace_n"] else None
    run_layers = layers + ([ace_layer] if ace_layer and ace_layer not in layers else [])
    ctx.say(f"dissecting {', '.join(run_layers)} on {n} samples against {len(seg.classes)} classes ({seg.source})")
    res = D.cached_dissect(g, run_layers, seg, o["seed"], n, o["cache"] or ".artifix-cache", batch)
    for d in res.values():
        d.iou_min = o["iou_min"]
    ace = []
    for c in concepts if ace_layer else []:
        units = res[ace_layer].top_units(c, o["ace_units"])
        ctx.say(f"causal check: ablating the top {len(units)} '{c}' units of {ace_layer} on {o['ace_n']} samples (+ random control)")
        ace.append(D.ablation_effect(g, ace_layer, units, seg, c, o["seed"], o["ace_n"], confidence=o["confidence"]))
    shown = {k: res[k] for k in layers}
    rows = [r for d in shown.values() for r in d.best()]
    import pandas as pd

    with output_folder(out, command="dissect") as folder:
        tmp = folder.path
        write_text_atomic(tmp / "dissection.csv", pd.DataFrame(rows).to_csv(index=False))
        write_json_atomic(tmp / "dissection.json", {"fingerprint": g.fingerprint, "segmenter": seg.source, "classes": list(seg.classes),
                                                    "seed": o["seed"], "n": n, "layers": [d.to_json() for d in res.values()],
                                                    "summary": D.summary_rows(shown), "ace": ace})
        save_png(tmp / "dissection.png", D.charts(shown))
        for name, d in shown.items():
            save_png(tmp / f"chart_{name}.png", D.chart(d))
        write_text_atomic(tmp / "dissection.md", D.report_markdown(shown, ace, concepts=concepts))
    if not ctx.json:
        for r in D.summary_rows(shown):
            per = ", ".join(f"{c} {r[c]}" for c in seg.classes if r[c])
            ctx.say(f"{r['layer']}: {r['interpretable']} of {r['units']} units interpretable ({per})")
        for a in ace:
            ctx.say(f"ablating the top {len(a['units'])} '{a['concept']}' units of {a['layer']} removes {a['removed_fraction']:.1%} "
                    f"of its pixels ({a['confidence']:.0%} CI {a['removed_ci'][0]:.1%}..{a['removed_ci'][1]:.1%}); "
                    f"{len(a['control_units'])} random units remove {a['control_removed_fraction']:.1%}")
        ctx.say(f"wrote dissection.md, dissection.csv, dissection.json and dissection.png to {out}/")
    return {"fingerprint": g.fingerprint, "segmenter": seg.source, "n": n, "summary": D.summary_rows(shown), "ace": ace,
            "out": str(out)}


def parse_region(text: str | None, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) mask from 'x0,y0,x1,y1' in image pixels (x1, y1 exclusive); the whole image when None."""
    h, w = size
    m = np.zeros((h, w), bool)
    if not text:
        m[:] = True
        return m
    try:
        x0, y0, x1, y1 = (int(v) for v in str(text).split(","))
    except ValueError:
        raise UserError(f"--region must be 'x0,y0,x1,y1' in pixels, got {text!r}.") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise UserError(f"--region {text} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}.")
    m[y0:y1, x0:x1] = True
    return m


@command("paint", "add or remove a concept's units in a region of one sample (GANpaint) and write the before/after PNG",
         {"generator": None, "sample": ["seed", "batch", "layer"],
          "dissect": ["dissect_n", "segmenter", "segmenter_classes", "ace_units", "concept", "units", "region", "mode", "index"],
          "run": ["out", "cache", "threads"]})
def cmd_paint(ctx: Context) -> dict[str, Any]:
    from . import dissect as D
    from .images import grid, save_png

    o = ctx.opts
    out = check_output_folder(o["out"] or "artifix-out")
    g = load(ctx)
    layer = default_layer(ctx, g)
    if o["index"] < 0:
        raise UserError(f"--index must be >= 0, got {o['index']}.")
    if o["mode"] not in ("add", "remove"):
        raise UserError(f"--mode must be 'add' or 'remove', got {o['mode']!r}.")
    if o["units"]:
        units = parse_units(o["units"])
    elif o["concept"]:
        seg = _segmenter_from_options(o, g)
        D.class_index(seg.classes, o["concept"])
        d = D.cached_dissect(g, [layer], seg, o["seed"], _check_n(o["dissect_n"], "--dissect-n"), o["cache"] or ".artifix-cache",
                             _check_n(o["batch"], "--batch"))[layer]
        units = d.top_units(o["concept"], o["ace_units"])
    else:
        raise UserError("say what to paint: --concept NAME (its top units) or --units '3,17'.")
    before = D.images_with(g, o["seed"], [o["index"]])[0]
    mask = parse_region(o["region"], before.shape[:2])
    before, after = D.paint(g, layer, units, mask, o["mode"], o["seed"], o["index"])
    outline = W.region_outline(before, mask)
    name = f"paint_{layer}_{o['index']}_{o['mode']}.png"
    with output_folder(out, owns=[name], command="paint") as folder:
        save_png(folder.path / name, grid(np.stack([outline, after]), ncol=2, scale=4))
    path = out / name
    ctx.say(f"{o['mode']} {len(units)} units of {layer} in sample {o['index']}: before (region outlined) | after -> {path}")
    return {"layer": layer, "units": units, "mode": o["mode"], "index": o["index"], "region": o["region"], "png": str(path)}


# ------------------------------------------------------------------------------------------------- gate


@command("gate", "judge a release candidate against [gate] criteria (significant regressions only); exit 1 when it fails",
         {"generator": None, "sample": ["seed"], "gate": None,
          "metrics": ["features", "real", "real_n", "real_resize", "inception_weights", "bootstrap", "swd_n", "swd_bootstrap",
                      "kid_subsets", "kid_subset_size", "metrics_seed", "feature_batch", "torchscript_size", "torchscript_range"],
          "classify": ["classifier"], "run": ["out", "cache", "threads"]})
def cmd_gate(ctx: Context) -> dict[str, Any]:
    from .gate import GateSettings, parse_criteria, run_gate
    from .generator import spec_from_options

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


# ------------------------------------------------------------------------------------- stats (scale-out)


@command("stats", "stream per-unit statistics of a layer (quantiles, moments, firing rates, top samples); splits under torchrun",
         {"generator": None, "sample": ["seed", "start", "batch", "layer"], "score": ["stats_n", "top"], "run": ["out", "threads"]})
def cmd_stats(ctx: Context) -> dict[str, Any]:
    from . import dist
    from .scoring import collect_stats
    from .stats import unit_summary

    o = ctx.opts
    if o["out"]:
        check_output_folder(o["out"])
    g = load(ctx)
    layer = default_layer(ctx, g)
    n = _check_n(o["stats_n"], "--stats-n")
    stats = collect_stats(g, layer, o["seed"], n, _check_n(o["batch"], "--batch"), start=o["start"])
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


# ------------------------------------------------------------------------------------------ dashboard

DASHBOARD_OPTIONS = {"generator": None, "sample": ["seed", "start", "layer"], "labels": None, "score": None,
                     "classify": ["classifier", "review_k"], "repair": ["repair_n", "sweep", "sweep_n", "high_pool"],
                     "metrics": ["real", "inception_weights"], "dissect": ["segmenter", "segmenter_classes", "dissect_n", "ace_units"],
                     "run": ["out", "cache", "threads"], "dashboard": None, "ab": ["study", "ab_key"]}


@command("dashboard", "start the review dashboard (Streamlit) on the bundled example or your run; localhost only by default",
         DASHBOARD_OPTIONS)
def cmd_dashboard(ctx: Context) -> dict[str, Any]:
    import os
    import subprocess
    import sys

    from .serve import is_local, launch_command, launch_env

    o = ctx.opts
    cmd = launch_command(o)
    if not is_local(o["host"]):
        ctx.say(f"warning: the dashboard listens on {o['host']}: anyone who can reach this address can label and approve "
                "as any reviewer name; put it behind an authenticating proxy.")
    ctx.say(f"artifix dashboard on http://{o['host']}:{o['port']}/ (store {o['store']}); Ctrl+C stops it")
    if os.name == "posix":  # become the server: a signal to this process (Ctrl+C, kill) reaches Streamlit itself
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, launch_env(o))
    code = subprocess.call(cmd, env=launch_env(o))
    return {"exit_code": 0 if code in (0, -2, 130) else 3, "url": f"http://{o['host']}:{o['port']}/"}
