"""Command handlers for natural artifacts: `artifix select` (set selection, layer comparison) and `artifix ab` (blind A/B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import UserError
from ...io import read_json, write_json_atomic, write_text_atomic
from ...labels import LabelStore
from ...model.generator import images_at
from ...model.trace import Trace, ablation
from ...repair import high_activation_samples
from ...report.card import model_card
from ...review import ab
from ...review.ab import export_study
from ...units.scoring import auc, trace_batches
from ...units.selection import candidate_layers, compare_layers, select_set, split_flags
from ..registry import Context, command
from .common import default_layer, flagged_and_clean, load, load_classifier, open_run, reviewer


def _flags(ctx: Context, g, layer: str):
    store, run_id = open_run(ctx, g, layer, missing=(f"the label store {ctx.opts['store']} has no flags for this generator, layer "
                                                     "and seed; import them with 'artifix flags import'."))
    flagged, clean = flagged_and_clean(store, run_id)
    return store, run_id, flagged, clean


def _subset(ids: list[int], k: int) -> list[int]:
    return ids if k <= 0 or len(ids) <= k else [ids[i] for i in np.linspace(0, len(ids) - 1, k).round().astype(int)]


def auc_pool(g, layer: str, seed: int, flagged: list[int], clean: list[int], k: int) -> list[int]:
    """The k units whose spatial max best separates flagged from clean samples (ROC-AUC), best first."""
    mx = torch.cat([a.flatten(2).amax(2) for _, a, _ in trace_batches(g, layer, seed, flagged + clean)])
    a = auc(mx[: len(flagged)], mx[len(flagged):]).double().numpy()
    return [int(u) for u in np.lexsort((np.arange(len(a)), -a))[:k]]


def _select_extra(p) -> None:
    p.add_argument("--layers", dest="select_layers_flag", default=None, help="alias of --select-layers: 'all' or a comma list")


@command("select", "choose the unit set to remove by greedy forward selection on the joint ablation; compare layers",
         {"generator": None, "sample": ["seed", "layer"], "labels": ["store"], "select": ["select_layers", "pool", "max_units",
          "pair_pool", "select_weight", "select_check", "select_flagged"], "classify": ["classifier"], "run": ["out", "cache", "threads"]}, _select_extra)
def cmd_select(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    if min(o["pool"], o["max_units"]) < 1 or o["pair_pool"] < 0:
        raise UserError("--pool and --max-units must be positive and --pair-pool >= 0.")
    if not 0 <= o["select_check"] < 1:
        raise UserError(f"--select-check must be in [0, 1) (the share of samples held out), got {o['select_check']}.")
    g = load(ctx)
    layer = default_layer(ctx, g)
    layers = candidate_layers(g, ctx.args.select_layers_flag or o["select_layers"] or layer)
    clf = load_classifier(ctx, required=True)
    store, run_id, flagged, clean = _flags(ctx, g, layer)
    if len(flagged) < 2:
        raise UserError(f"set selection needs at least 2 flagged samples; the run has {len(flagged)}.")
    f_ids, c_ids = _subset(flagged, o["select_flagged"]), _subset(clean, o["select_flagged"])
    ctx.say(f"set selection on {', '.join(layers)} from {len(f_ids)} flagged / {len(c_ids)} clean samples")
    (f_fit, _), (c_fit, _) = split_flags(f_ids, c_ids, o["select_check"], o["seed"])

    def one(l: str):
        pool = auc_pool(g, l, o["seed"], f_fit, c_fit, o["pool"])  # from the chosen part only: the held-out part judges
        return select_set(g, l, o["seed"], f_ids, c_ids, clf.predict_proba, pool=pool, max_units=o["max_units"],
                          collateral_weight=o["select_weight"], pair_pool=o["pair_pool"], check=o["select_check"], say=ctx.say)

    res = compare_layers(g, layers, one, ctx.say)
    best = res["proposed_layer"]
    out = Path(o["out"] or "artifix-out")
    result = {"fingerprint": g.fingerprint, "seed": o["seed"], "classifier": str(o["classifier"]), "flags_layer": layer, **res,
              "layer": best, "units": res["selections"][best]["units"] if best else []}
    write_json_atomic(out / "unit_set.json", result)
    if best:
        st, rid = open_run(ctx, g, best)
        st.propose_units(rid, [(best, int(u)) for u in result["units"]], "artifix", note="set selection (artifix select)")
    ctx.say(f"proposed: {best} units {result['units']}; written to {out / 'unit_set.json'} "
            "(remove them with 'artifix repair --unit-set ...')" if best else "no unit set helps beyond its interval in any layer")
    return result


# --------------------------------------------------------------------------------------------- blind A/B


def _ab_extra(p) -> None:
    p.add_argument("action", choices=["export", "import", "report"],
                   help="export a blind pair folder (+ separate key), import a filled sheet.csv, or report win rates")
    p.add_argument("path", nargs="?", default=None, help="import: the filled sheet.csv")


def _manifest(path: str | None) -> dict[str, Any]:
    if not path:
        raise UserError("--manifest is required: the manifest.json 'artifix repair' wrote.")
    m = read_json(path, f"cannot read the repair manifest {path}; give the manifest.json 'artifix repair' wrote.")
    if not isinstance(m, dict) or "edits" not in m or "random_control" not in m:
        raise UserError(f"{path} has no 'edits' and 'random_control'; is it a manifest.json written by 'artifix repair'?")
    return m


def edit_pairs(g, edits: dict[str, Any], seed: int, n: int, pool: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The n samples of 0..pool-1 where the edit's units fire most: (indices, before images, after images)."""
    ids = high_activation_samples(g, {l: e[0] for l, e in edits.items()}, seed, n, pool)
    before = images_at(g, seed, ids)
    with Trace(g.module, edit={l: ablation(u, a) for l, (u, a) in edits.items()}):
        after = images_at(g, seed, ids)
    return ids, before, after


def ab_export(g, m: dict[str, Any], seed: int, folder: str | Path, key: str | Path | None, n: int, n_control: int, pool: int,
              ab_seed: int) -> dict[str, Any]:
    """Render the repair's and the control's high-activation pairs and write the blind study (library entry of 'ab export')."""
    if m.get("fingerprint_before") not in (None, g.fingerprint):
        raise UserError(f"the manifest repaired generator {m['fingerprint_before']}, but the generator given is {g.fingerprint}.")
    repair = {l: (e["units"], e["alphas"]) for l, e in m["edits"].items()}
    control = {l: (u, 1.0) for l, u in m["random_control"].items() if u}
    before, after, samples = {}, {}, {}
    for kind, edits, k in (("repair", repair, n), ("control", control, n_control)):
        if k > 0:
            samples[kind], before[kind], after[kind] = edit_pairs(g, edits, seed, k, pool)
    return export_study(before, after, samples, folder, key, seed=ab_seed, meta={"fingerprint": g.fingerprint, "seed": seed,
                                                                                 "edits": m["edits"], "random_control": m["random_control"]})


@command("ab", "blind A/B preference study of a repair: export shuffled before/after pairs (control mixed in), import answers, report",
         {"generator": None, "sample": ["seed"], "labels": ["store", "reviewer"],
          "ab": ["manifest", "study", "ab_key", "ab_n", "ab_control_n", "ab_pool", "ab_seed"], "run": ["threads"]}, _ab_extra)
def cmd_ab(ctx: Context) -> dict[str, Any]:
    o = ctx.opts
    action = ctx.args.action
    if action == "export":
        if o["ab_n"] < 1 or o["ab_control_n"] < 0 or o["ab_pool"] < o["ab_n"]:
            raise UserError("--ab-n must be positive, --ab-control-n >= 0 and --ab-pool at least --ab-n.")
        m = _manifest(o["manifest"])
        res = ab_export(load(ctx), m, o["seed"], o["study"], o["ab_key"], o["ab_n"], o["ab_control_n"], o["ab_pool"], o["ab_seed"])
        ctx.say(f"wrote {res['n_pairs']} blind pairs to {res['folder']}/ (answer sheet.csv); the key is in {res['key']}: "
                "keep it away from the reviewers")
        return res
    study = ab.load_study(o["study"])
    if action == "import":
        if not ctx.args.path:
            raise UserError("'artifix ab import' needs the filled sheet.csv.")
        answers = ab.read_sheet(ctx.args.path, study["n_pairs"])
        with LabelStore(o["store"]) as store:
            store.add_ab_answers(study["study"], answers, reviewer(ctx))
        ctx.say(f"recorded {len(answers)} answers of {reviewer(ctx)} to study {study['study']} in {o['store']}")
        return {"study": study["study"], "recorded": len(answers), "reviewer": reviewer(ctx)}
    key = ab.load_key(o["ab_key"] or ab.default_key_path(o["study"]), study["study"])
    with LabelStore(o["store"]) as store:
        answers = store.ab_answers(study["study"], o.get("reviewer"))
    res = ab.score(key, answers)
    ctx.say(ab.summary_line(res))
    if o["manifest"]:
        record_preference(o["manifest"], res)
        ctx.say(f"recorded the preference result in {o['manifest']} and its MODEL_CARD.md")
    return res


def record_preference(manifest_path: str | Path, res: dict[str, Any]) -> None:
    """Put an A/B result into a repair's manifest.json (key 'preference') and rewrite its MODEL_CARD.md."""
    m = _manifest(str(manifest_path))
    m["preference"] = res
    write_json_atomic(manifest_path, m)
    if "export" in m and "metrics" in m:  # a full repair manifest: its model card gains the A/B table
        write_text_atomic(Path(manifest_path).parent / "MODEL_CARD.md", model_card(m))



