"""Command handlers: thin glue between the CLI registry and the library stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from contextlib import nullcontext

from .cli import Context, command
from .trace import Trace
from .errors import UserError



def parse_units(text: str | int | list[int]) -> list[int]:
    """Parse '3,17' (or a list) into unit indices."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        return [int(u) for u in text]
    try:
        units = [int(u) for u in str(text).split(",") if u.strip()]
    except ValueError:
        raise UserError(f"units must be comma-separated integers like '3,17', got {text!r}.") from None
    if not units:
        raise UserError("no units given; pass units like '3,17'.")
    return units


def ablation_from_options(g, o: dict[str, Any]) -> dict[str, Any] | None:
    """The {layer: Ablation} edit described by --layer/--ablate/--alpha, validated against G."""
    from .trace import ablation, get_layer

    if o.get("ablate") is None:
        if o.get("layer"):
            get_layer(g.module, o["layer"])
        return None
    if not o.get("layer"):
        raise UserError("--ablate needs --layer to say which layer the units belong to.")
    get_layer(g.module, o["layer"])
    if not 0.0 <= o["alpha"] <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {o['alpha']}.")
    return {o["layer"]: ablation(parse_units(o["ablate"]), o["alpha"])}


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
    z, y = latents(g.spec, 0, [0, 1])
    rows = layer_shapes(g.module, z) if y is None else layer_shapes(g.module, z, y)
    if not ctx.json:
        width = max([len(r["layer"]) for r in rows] + [5])
        ctx.say(f"{'layer':<{width}}  {'type':<18} output shape (batch of 2)")
        for r in rows:
            ctx.say(f"{r['layer']:<{width}}  {r['type']:<18} {r['shape']}")
    return {"fingerprint": g.fingerprint, "layers": rows}


# ------------------------------------------------------------------------------------- labels / score


def default_layer(ctx: Context, g) -> str:
    """--layer, or the example's default layer when diagnosing the bundled example."""
    from .example import LAYER
    from .generator import EXAMPLE_FACTORY

    from .trace import get_layer

    if ctx.opts.get("layer"):
        get_layer(g.module, ctx.opts["layer"])  # fail before anything is written
        return ctx.opts["layer"]
    if g.spec.generator == EXAMPLE_FACTORY:
        return LAYER
    raise UserError("--layer is required for this generator; run 'artifix layers' to list its layers.")


def reviewer(ctx: Context) -> str:
    """--reviewer, else $USER, else 'reviewer'."""
    import os

    return ctx.opts.get("reviewer") or os.environ.get("USER") or "reviewer"


def open_run(ctx: Context, g, layer: str):
    """Open the label store and register (or find) the run of (G, layer, seed)."""
    from .labels import LabelStore

    from .generator import probe

    store = LabelStore(ctx.opts["store"])

    out_shape = probe(g)
    run_id = store.register_run(g.fingerprint, [layer], ctx.opts["seed"], max(ctx.opts.get("stats_n") or 0, ctx.opts.get("n") or 0),
                                meta={"spec": g.spec.to_json()}, image_size=(int(out_shape[2]), int(out_shape[3])))
    return store, run_id


def _flags_extra(p) -> None:
    p.add_argument("action", choices=["import", "export", "show"], help="import labels from a CSV/JSON/folder, export them, or show counts")
    p.add_argument("path", nargs="?", default=None, help="file or folder to import from / export to")


@command("flags", "import, export or count reviewers' flags and painted masks in the label store",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store", "reviewer"], "score": ["stats_n"]}, _flags_extra)
def cmd_flags(ctx: Context) -> dict[str, Any]:
    g = load(ctx)
    layer = default_layer(ctx, g)
    store, run_id = open_run(ctx, g, layer)
    action, path = ctx.args.action, ctx.args.path
    if action in ("import", "export") and not path:
        raise UserError(f"'artifix flags {action}' needs a path.")
    result: dict[str, Any] = {"run_id": run_id, "store": ctx.opts["store"]}
    if action == "import":
        if not Path(path).exists():
            raise UserError(f"{path} does not exist; give a flags CSV/JSON file or an export folder.")
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


def flagged_and_clean(store, run_id: int) -> tuple[list[int], list[int]]:
    """The run's samples whose current label is 'artifact', and those labelled 'clean' (sorted)."""
    from .session import flagged_and_clean as split

    return split(store, run_id)


def score_run(ctx: Context, g, layer: str, store, run_id: int, clf=None):
    """Score every unit of `layer` from the run's flags/masks (and a classifier, if given)."""
    from .session import score_run as score

    o = ctx.opts
    stats = cached_stats(ctx, g, layer, o["seed"], o["stats_n"])
    report = score(g, layer, store, run_id, stats, seed=o["seed"], clf=clf, exact_top=o["exact_top"],
                   collateral_weight=o["collateral_weight"], rare_rate=o["rare_rate"], say=ctx.say)
    return report, stats


@command("score", "rank the units of a layer that cause the flagged artifacts (IoU@IQR, AUC, causal effect, priors)",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store", "reviewer"], "score": None,
          "run": ["out", "cache", "threads"]})
def cmd_score(ctx: Context) -> dict[str, Any]:
    from .io import write_json_atomic, write_text_atomic
    from .report import unit_cards

    o = ctx.opts
    g = load(ctx)
    layer = default_layer(ctx, g)
    store, run_id = open_run(ctx, g, layer)
    clf = load_classifier(ctx, required=False)
    report, stats = score_run(ctx, g, layer, store, run_id, clf)
    out = Path(o["out"] or "artifix-out")
    top = report.table.head(o["top"])
    rows = top.to_dict("records")
    write_text_atomic(out / "unit_scores.csv", report.table.to_csv(index=False))
    write_json_atomic(out / "unit_scores.json", {"layer": layer, "components": report.components, "units": report.table.to_dict("records")})
    cards = unit_cards(g, stats, [int(u) for u in top.unit], o["seed"], out / "cards")
    from .session import propose_top

    propose_top(store, run_id, report.table, o["top"])
    if not ctx.json:
        cols = ["rank", "unit"] + [c for c in ("combined", "causal", "iou", "auc", "firing_rate") if c in top]
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
    from .classifier import ArtifactClassifier, review_queue, train_classifier
    from .generator import images_at

    o = ctx.opts
    g = load(ctx)
    layer = default_layer(ctx, g)
    store, run_id = open_run(ctx, g, layer)
    path = Path(o["classifier"])
    action = ctx.args.action
    if action == "train":
        flagged, clean = flagged_and_clean(store, run_id)
        ids = flagged + clean
        y = np.r_[np.ones(len(flagged)), np.zeros(len(clean))].astype(int)
        clf = train_classifier(images_at(g, o["seed"], ids), y)
        clf.save(path)
        r = clf.report
        ctx.say(f"trained on {r['n_pos']} flagged / {r['n_neg']} clean samples: cross-validated ROC-AUC {r['auc']:.3f}, "
                f"precision {r['precision']:.2f}, recall {r['recall']:.2f}, Brier {r['brier']:.3f}; saved to {path}")
        return {"run_id": run_id, "classifier": str(path), "report": r}
    clf = ArtifactClassifier.load(path) if path.exists() else None
    if clf is None and action == "predict":
        raise UserError(f"no artifact classifier at {path}; train one first with 'artifix classify train'.")
    ids = list(range(o["start"], o["start"] + _check_n(o["n"])))
    if action == "predict":
        probs = clf.predict_proba(images_at(g, o["seed"], ids))
        flagged = [i for i, p in zip(ids, probs) if p >= clf.threshold]
        ctx.say(f"{len(flagged)} of {len(ids)} samples look like artifacts (p >= {clf.threshold:.2f}); mean p = {probs.mean():.3f}")
        return {"run_id": run_id, "samples": ids, "probability": [round(float(p), 5) for p in probs],
                "artifact_rate": float(np.mean(probs >= clf.threshold))}
    from .session import review_queue as queue_for

    stats = cached_stats(ctx, g, layer, o["seed"], max(o["stats_n"], o["start"] + len(ids)))
    q = queue_for(g, layer, store, run_id, seed=o["seed"], start=o["start"], n=len(ids), k=o["review_k"], stats=stats,
                  clf=clf, cache=o.get("cache"))
    ctx.say("next samples to review: " + ", ".join(map(str, q.samples)))
    return {"run_id": run_id, "queue": q.samples, "priors": q.priors, "realism": q.realism}


@command("metrics", "FD / KID / SWD of the generator against reference data, with confidence intervals",
         {"generator": None, "sample": ["seed", "batch"], "metrics": None, "run": ["cache", "threads"]})
def cmd_metrics(ctx: Context) -> dict[str, Any]:
    from .generator import sample_batches
    from .metrics import compute_metrics

    o = ctx.opts
    g = load(ctx)
    n = _check_n(o["n"])
    if o["real"] is None and g.spec.generator != "artifix.example:make_generator":
        raise UserError("--real is required for your own generator: an image folder, an .npz array or a statistics file.")
    if o["real"] is not None and not Path(o["real"]).exists():
        raise UserError(f"reference data {o['real']} does not exist; give an image folder, a .npz/.npy uint8 array or a statistics .npz.")
    batches = (imgs.numpy() for _, imgs in sample_batches(g, o["seed"], 0, n, _check_n(o["batch"], "--batch")))
    names = ("metrics", "features", "real", "bootstrap", "confidence", "kid_subsets", "kid_subset_size", "fd_inf", "inception_weights",
             "real_n", "real_resize", "swd_n", "swd_bootstrap", "feature_batch")
    kwargs = {k: o[k] for k in names if k in o}
    res = compute_metrics(batches, n=n, seed=o["metrics_seed"], cache=o["cache"], progress=ctx.say, **kwargs)
    if not ctx.json:
        for name, r in res.items():
            ci = f" [{r['ci'][0]:.4g}, {r['ci'][1]:.4g}]" if r.get("ci") else ""
            ctx.say(f"{name:<24} {r['value']:.4g}{ci}")
    return {"fingerprint": g.fingerprint, "metrics": res}


@command("repair", "remove the approved units, prove the gain against a random-unit control, write a cleaned generator",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store"], "score": None, "repair": None,
          "classify": ["classifier"], "metrics": ["real"], "run": ["out", "cache", "threads"]})
def cmd_repair(ctx: Context) -> dict[str, Any]:
    from .repair import plan_auto, plan_from_store, repair

    o = ctx.opts
    g = load(ctx)
    layer = default_layer(ctx, g)
    if g.scripted:
        raise UserError("repair needs a Python generator (--generator 'module:callable'), not a TorchScript file.")
    store, run_id = open_run(ctx, g, layer)
    clf = load_classifier(ctx, required=False)
    if o["auto"]:
        report, _ = score_run(ctx, g, layer, store, run_id, clf)
        plan = plan_auto(report.table.unit.tolist(), layer, o["k"])
    else:
        plan = plan_from_store(store, run_id, layer)
    flagged, clean = flagged_and_clean(store, run_id)
    from .scoring import trace_batches

    channels = next(iter(trace_batches(g, layer, o["seed"], [0])))[1].shape[1]
    out = Path(o["out"] or "artifix-repair")
    manifest = repair(g, plan, out, seed=o["seed"], n=_check_n(o["repair_n"], "--repair-n"), flagged=flagged, clean=clean,
                      clf=clf, real=o["real"], channels=channels, say=ctx.say)
    ctx.say(f"wrote the cleaned generator, manifest.json, MODEL_CARD.md and report.md to {out}/")
    return manifest


# ------------------------------------------------------------------------------------------ dashboard

DASHBOARD_OPTIONS = {"generator": None, "sample": ["seed", "start", "layer"], "labels": None, "score": None,
                     "classify": ["classifier", "review_k"], "repair": ["repair_n"], "metrics": ["real"],
                     "run": ["out", "cache", "threads"], "dashboard": None}


@command("dashboard", "start the review dashboard (Streamlit) on the bundled example or your run; localhost only by default",
         DASHBOARD_OPTIONS)
def cmd_dashboard(ctx: Context) -> dict[str, Any]:
    import subprocess

    from .serve import is_local, launch_command, launch_env

    o = ctx.opts
    cmd = launch_command(o)
    if not is_local(o["host"]):
        ctx.say(f"warning: the dashboard listens on {o['host']}: anyone who can reach this address can label and approve "
                "as any reviewer name; put it behind an authenticating proxy.")
    ctx.say(f"artifix dashboard on http://{o['host']}:{o['port']}/ (store {o['store']}); Ctrl+C stops it")
    code = subprocess.call(cmd, env=launch_env(o))
    return {"exit_code": 0 if code in (0, -2, 130) else 3, "url": f"http://{o['host']}:{o['port']}/"}
