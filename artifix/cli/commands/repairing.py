"""Measuring and repairing: `artifix metrics` (FD / KID / SWD with intervals) and `artifix repair` (remove units, prove it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import dist, workflow as W
from ...errors import UserError
from ...io import read_json, write_json_atomic, write_text_atomic
from ...metrics import compute_metrics
from ...metrics.folders import extractor_from_options, metrics_of_folder
from ...metrics.reference import check_real
from ...model.generator import sample_batches
from ...model.trace import get_layer
from ...profiles import profile_for
from ...repair import RepairPlan, check_repair_out, combine, plan_auto, plan_from_store, repair, sequential_auto
from ...report.card import model_card
from ...review.classifier import ArtifactClassifier
from ...units.scoring import trace_batches
from ..registry import Context, command
from .common import check_n, default_layer, flagged_and_clean, load, load_classifier, open_run, require_hooks, score_run


@command("metrics", "FD / KID / SWD of the generator against reference data, with confidence intervals",
         {"generator": None, "sample": ["seed", "batch"], "metrics": None, "run": ["cache", "threads"]})
def cmd_metrics(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    if o.get("images"):
        return metrics_of_folder(ctx)
    g = load(ctx)
    n = check_n(o["n"])
    W.require_reference(profile_for(g.spec), o["real"], "metrics")
    if o["real"] is not None and not Path(o["real"]).exists():
        raise UserError(f"reference data {o['real']} does not exist; give an image folder, a .npz/.npy uint8 array or a statistics .npz.")
    check_real(o["real"], n=o.get("real_n"), resize=o.get("real_resize"), features=o.get("features"),
               class_id=o.get("real_class"))  # before sampling or extracting features
    first, count = dist.shard_range(0, n)  # under torchrun each rank samples its block; rank 0 merges
    batches = (imgs.numpy() for _, imgs in sample_batches(g, o["seed"], first, count, check_n(o["batch"], "--batch")))
    names = ("metrics", "features", "real", "bootstrap", "confidence", "kid_subsets", "kid_subset_size", "fd_inf", "inception_weights",
             "real_n", "real_resize", "swd_n", "swd_bootstrap", "feature_batch", "real_class")
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


def plan_from_set(path: str | Path, g) -> Any:
    """A repair plan from the unit_set.json 'artifix select' wrote; the proposed layer is the plan's layer."""
    s = read_json(path, f"cannot read the unit set {path}; give the unit_set.json 'artifix select' wrote.")
    if not s.get("layer") or not s.get("units"):
        raise UserError(f"the unit set {path} proposes no units (no layer had a set that helped).")
    if s.get("fingerprint") != g.fingerprint:
        raise UserError(f"the unit set {path} was chosen for generator {s.get('fingerprint')}, not this one ({g.fingerprint}).")
    return RepairPlan({s["layer"]: [int(u) for u in s["units"]]}, "set-selection"), s



def _repair_layers(ctx: Context, g, primary: str) -> tuple[Any, dict[str, Any] | None, list[str]]:
    """The set selection's plan and record (--unit-set; else None, None) and the validated --layers (default: the primary)."""
    o = ctx.opts
    set_plan = unit_set = None
    if o.get("unit_set"):  # 'artifix select' chose the units and proposes their layer
        set_plan, unit_set = plan_from_set(o["unit_set"], g)
        ctx.say(f"set selection proposes layer {set_plan.layer} (of {', '.join(r['layer'] for r in unit_set['rows'])}): "
                f"removing units {set_plan.edits[set_plan.layer]}")
    layers = [l.strip() for l in str(o["layers"]).split(",") if l.strip()] if o["layers"] else [primary]
    for layer in layers:
        get_layer(g.module, layer)
    if len(set(layers)) != len(layers):
        raise UserError(f"--layers names a layer twice ({o['layers']}); name each layer once.")
    return set_plan, unit_set, layers


def _channels(g, layers: list[str], seed: int) -> dict[str, int]:
    """The number of units of each layer, from one traced sample (cheap)."""
    return {l: next(iter(trace_batches(g, l, seed, [0])))[1].shape[1] for l in layers}


def _check_k(ctx: Context, g, layers: list[str]) -> None:
    """With --auto, --k must be positive and leave each layer as many other units for the random control."""
    o = ctx.opts
    if o["auto"] and o["k"] <= 0:
        raise UserError(f"--k must be a positive number of units, got {o['k']}.")
    for layer, c in _channels(g, layers, o["seed"]).items():
        if o["auto"] and 2 * o["k"] > c:  # the k removed units plus a random control of k other units
            raise UserError(f"--k {o['k']} is too many for layer {layer}: it has {c} units and the random control needs "
                            f"as many others, so --k can be at most {c // 2}.")


def _repair_run(ctx: Context, g, primary: str, profile: Any) -> tuple[Any, Any, int]:
    """The artifact classifier (--classifier, else the bundled review's) and the label store's run of the primary layer."""
    o = ctx.opts
    clf = load_classifier(ctx, required=False)
    if o["optimise_alpha"] and clf is None and not is_bundled_example(g, primary, o["seed"]):
        raise UserError("--optimise-alpha needs the artifact classifier; train one with 'artifix classify train'.")
    missing = None if o["auto"] or is_bundled_example(g, primary, o["seed"]) else (
        f"no approved units of layer {primary} in the label store {o['store']}; approve some (dashboard) "
        "or pass --auto --k K to take the top of the ranking.")
    store, run_id = open_run(ctx, g, primary, missing=missing)  # the flags (and the primary layer's approvals) live here
    if maybe_bundled_review(ctx, g, store, run_id, primary) and clf is None:
        clf = ArtifactClassifier.load(profile.review.classifier_file)
        ctx.say(f"using the bundled review's artifact classifier ({profile.review.classifier_file})")
    return clf, store, run_id


def _repair_plan(ctx: Context, g, layers: list[str], primary: str, store, run_id: int, clf) -> Any:
    """The units to remove: the top of each layer's ranking (--auto) or the approved units of every layer."""
    o = ctx.opts

    def ranking(layer: str, earlier: dict | None = None) -> list[int]:
        report, _ = score_run(ctx, g, layer, store, run_id, clf, use_cache=not earlier)
        return [int(u) for u in report.table.unit]

    if o["auto"]:
        return sequential_auto(g, layers, o["k"], ranking, ctx.say) if len(layers) > 1 else plan_auto(ranking(primary), primary, o["k"])
    plans = []
    for layer in layers:
        st, rid = (store, run_id) if layer == primary else open_run(ctx, g, layer, missing=(
            f"no approved units of layer {layer} in the label store {o['store']}; approve some or drop it from --layers."))
        plans.append(plan_from_store(st, rid, layer, ranking(layer) if o["sweep"] and layer == layers[0] else None))
    return combine(plans)


def _record_set_selection(out: Path, manifest: dict[str, Any], unit_set: dict[str, Any]) -> None:
    """Add the set selection behind the plan to the manifest and rewrite manifest.json and MODEL_CARD.md."""
    manifest["set_selection"] = {k: unit_set.get(k) for k in ("proposed_layer", "rows", "selections", "classifier")}
    write_json_atomic(out / "manifest.json", manifest)
    write_text_atomic(out / "MODEL_CARD.md", model_card(manifest))


@command("repair", "remove the approved units, prove the gain against a random-unit control, write a cleaned generator",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store"], "score": None, "repair": None,
          "classify": ["classifier"], "metrics": ["real", "inception_weights", "confidence"], "dissect": ["segmenter", "segmenter_classes"],
          "select": ["unit_set"], "run": ["out", "cache", "threads"]})
def cmd_repair(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    g = load(ctx)
    require_hooks(g, "repair")
    primary = default_layer(ctx, g)
    set_plan, unit_set, layers = _repair_layers(ctx, g, primary)
    n = check_n(o["repair_n"], "--repair-n")
    W.check_confidence(o["confidence"])
    out = Path(o["out"] or "artifix-repair")
    check_repair_out(g, out)  # a folder that cannot be replaced is refused before any work
    check_real(o["real"])  # a bad reference is reported before hours of sampling
    profile = profile_for(g.spec)
    measures = W.repair_measures(profile, o["real"])
    _check_k(ctx, g, layers)
    clf, store, run_id = _repair_run(ctx, g, primary, profile)
    plan = set_plan if set_plan is not None else _repair_plan(ctx, g, layers, primary, store, run_id, clf)
    flagged, clean = flagged_and_clean(store, run_id)
    channels = _channels(g, plan.layers, o["seed"])
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
        _record_set_selection(out, manifest, unit_set)
    ctx.say(f"wrote the cleaned generator, manifest.json, MODEL_CARD.md and report.md to {out}/")
    return manifest
