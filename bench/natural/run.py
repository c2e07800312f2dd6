"""The natural-artifact benchmark on the bundled example (docs/natural-artifacts.md).

Stage `prepare` (after the blind flags by eye in data/example/natural/flags.csv were written):
  1. classifier A trained on the training half's flags; its ROC-AUC on the held-out half;
     classifier B trained on the held-out half only (it measures every artifact rate below);
  2. are the defects unit-shaped? per layer, each unit's flagged-vs-clean AUC (training half) and the per-unit
     high-activation score (mean p_A over the unit's top-q samples, against the layer's average);
  3. set selection with classifier A on the training half, on every ReLU layer; the proposed layer's set;
  4. the repair measured on FRESH samples (seed 1) beside a random-unit control: artifact rate by classifier B
     on random and on high-activation samples, FD / SWD with paired intervals (repair.measure);
  5. a blind A/B study (seed 2 samples) exported with 'artifix ab'-s library function; the key goes elsewhere.
Stage `score` (after the pairs were judged by eye and the answers written): the A/B win rates from the key.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from artifix.review.classifier import train_classifier
from artifix.model.generator import images_at, load_generator
from artifix.units.highact import high_activation
from artifix.repair import RepairPlan, measure, random_control
from artifix.units.scoring import auc, collect_stats, trace_batches
from artifix.units.selection import compare_layers, select_set, split_flags

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "data" / "example" / "natural"
LAYERS = ["main.2", "main.5", "main.8", "main.11"]


def flags() -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """{'artifact': [...], 'clean': [...]} of the training and the held-out half."""
    lab = {int(r["sample"]): r["label"] for r in csv.DictReader(open(DATA / "flags.csv"))}
    split = json.loads((DATA / "split.json").read_text())
    out = []
    for half in ("train", "heldout"):
        ids = split[half]
        out.append({k: sorted(i for i in ids if lab[i] == k) for k in ("artifact", "clean")})
    return out[0], out[1]


def classifiers(g, train: dict, held: dict, say) -> tuple:
    """Classifier A (training half) with its held-out AUC, classifier B (held-out half only)."""
    from sklearn.metrics import roc_auc_score

    def fit(h: dict):
        ids = h["artifact"] + h["clean"]
        y = np.r_[np.ones(len(h["artifact"])), np.zeros(len(h["clean"]))].astype(int)
        return train_classifier(images_at(g, 0, ids), y, seed=0), ids, y

    a, _, _ = fit(train)
    b, hid, hy = fit(held)
    p = a.predict_proba(images_at(g, 0, hid))
    res = {"A_cv_auc": a.report["auc"], "A_heldout_auc": float(roc_auc_score(hy, p)), "B_cv_auc": b.report["auc"],
           "A_threshold": a.threshold, "B_threshold": b.threshold,
           "n": {"train": {k: len(v) for k, v in train.items()}, "heldout": {k: len(v) for k, v in held.items()}}}
    say(f"classifier A: CV AUC {res['A_cv_auc']:.3f}, held-out AUC {res['A_heldout_auc']:.3f}; classifier B: CV AUC {res['B_cv_auc']:.3f}")
    return a, b, res


def unit_shape(g, train: dict, clf, say, stats_n: int = 1000, q: int = 20) -> dict:
    """Per layer: the units' flagged-vs-clean AUC and the high-activation score spread."""
    out = {}
    for layer in LAYERS:
        f, c = train["artifact"], train["clean"]
        import torch

        mx = torch.cat([a.flatten(2).amax(2) for _, a, _ in trace_batches(g, layer, 0, f + c)])
        u_auc = auc(mx[: len(f)], mx[len(f):]).double().numpy()
        stats = collect_stats(g, layer, 0, stats_n)
        h = high_activation(stats, q, lambda ids: images_at(g, 0, ids), prob_fn=clf.predict_proba)
        raw = h.scores["high_prob_raw"]
        out[layer] = {"units": int(len(u_auc)), "auc_max": float(u_auc.max()), "auc_ge_0.75": int((u_auc >= 0.75).sum()),
                      "auc_le_0.25": int((u_auc <= 0.25).sum()), "high_prob_layer_mean": float(raw.mean()),
                      "high_prob_max": float(raw.max()), "high_prob_min": float(raw.min()), "high_top5": h.ranking()[:5],
                      "auc_top5": [int(u) for u in np.argsort(-u_auc, kind="stable")[:5]]}
        say(f"{layer}: max unit AUC {u_auc.max():.3f}, {out[layer]['auc_ge_0.75']} units >= 0.75; high-activation p: "
            f"layer mean {raw.mean():.3f}, worst unit {raw.max():.3f}, best {raw.min():.3f}")
    return out


def prepare(args, say) -> None:
    t0 = time.time()
    g = load_generator()
    train, held = flags()
    clf_a, clf_b, res = classifiers(g, train, held, say)
    res["unit_shape"] = unit_shape(g, train, clf_a, say)
    from artifix.cli.commands.natural import auc_pool

    f_ids, c_ids = train["artifact"][: args.sel_n], train["clean"][: args.sel_n]
    (f_fit, _), (c_fit, _) = split_flags(f_ids, c_ids, args.check, 0)  # the pool from the chosen part, as 'artifix select' does

    def one(layer: str):
        pool = auc_pool(g, layer, 0, f_fit, c_fit, args.pool)
        return select_set(g, layer, 0, f_ids, c_ids, clf_a.predict_proba, pool=pool, max_units=args.max_units,
                          collateral_weight=1.0, pair_pool=args.pair_pool, check=args.check, say=say)

    comp = compare_layers(g, LAYERS, one, say)
    res["selection"] = comp
    res["selection_args"] = {"sel_n": args.sel_n, "pool": args.pool, "max_units": args.max_units, "pair_pool": args.pair_pool,
                             "check": args.check}
    if not comp["proposed_layer"]:
        out_file(args).write_text(json.dumps(res, indent=1, default=float))
        say(f"no layer has a unit set that helps on the held-out samples: nothing to repair; wrote {out_file(args)}")
        return
    layer = comp["proposed_layer"]
    units = comp["selections"][layer]["units"]
    plan = RepairPlan({layer: units}, "set-selection")
    channels = {l: res["unit_shape"][l]["units"] for l in LAYERS}
    control = random_control(plan, channels, seed=0)
    say(f"repair: {layer} {units}; random control {control[layer]}; measuring on fresh samples (seed 1)")
    m = measure(g, plan, control, seed=1, n=args.n, flagged=[], clf=clf_b, metrics="fd,swd", high_pool=4 * args.n, say=say)
    res["repair"] = {"layer": layer, "units": units, "control": control, "metrics": m}
    manifest = {"fingerprint_before": g.fingerprint, "edits": plan.to_json(), "random_control": control, "layer": layer, "units": units}
    from artifix.cli.commands.natural import ab_export

    res["ab_export"] = ab_export(g, manifest, seed=2, folder=args.study, key=args.key, n=args.ab_n, n_control=args.ab_control_n,
                                 pool=args.ab_pool, ab_seed=18)
    overview(Path(args.study))
    res["seconds"] = round(time.time() - t0, 1)
    out_file(args).write_text(json.dumps(res, indent=1, default=float))
    say(f"wrote {out_file(args)} in {res['seconds']} s; judge {args.study}/overview_*.png, then run the 'score' stage")


def overview(folder: Path, per: int = 30) -> None:
    """Numbered sheets of the study's pairs (what the reviewer looks at; no key involved)."""
    from PIL import Image, ImageDraw

    s = json.loads((folder / "study.json").read_text())
    for s0 in range(0, s["n_pairs"], per):
        tiles = [Image.open(folder / p["both"]) for p in s["pairs"][s0:s0 + per]]
        w, h = tiles[0].size
        canvas = Image.new("RGB", (5 * (w + 12), 6 * (h + 16)), (255, 255, 255))
        d = ImageDraw.Draw(canvas)
        for k, t in enumerate(tiles):
            x, y = (k % 5) * (w + 12), (k // 5) * (h + 16)
            canvas.paste(t, (x, y + 14))
            d.text((x + 2, y + 1), f"pair {s0 + k}", fill=(0, 0, 0))
        canvas.save(folder / f"overview_{s0:03d}.png")


def score(args, say) -> None:
    from artifix.review import ab

    s = ab.load_study(args.study)
    answers = ab.read_sheet(DATA / f"ab_answers{args.tag}.csv", s["n_pairs"])  # written by eye before this stage runs
    key = ab.load_key(args.key, s["study"])
    res = ab.score(key, answers)
    say(ab.summary_line(res))
    out = json.loads(out_file(args).read_text())
    out["ab"] = res
    out_file(args).write_text(json.dumps(out, indent=1, default=float))


def out_file(args) -> Path:
    """data/example/natural/results<tag>.json."""
    return DATA / f"results{args.tag}.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["prepare", "score"])
    p.add_argument("--tag", default="", help="suffix of this run's files (results<tag>.json, ab_answers<tag>.csv, the study and key)")
    p.add_argument("--study", default=None, help="default bench/natural/out/ab-study<tag>")
    p.add_argument("--key", default=None, help="default data/example/natural/ab-key<tag>.json")
    p.add_argument("--check", type=float, default=0.5, help="share of the selection's samples held out for its stop rule")
    p.add_argument("--sel-n", type=int, default=30)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--max-units", type=int, default=8)
    p.add_argument("--pair-pool", type=int, default=5)
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--ab-n", type=int, default=60)
    p.add_argument("--ab-control-n", type=int, default=30)
    p.add_argument("--ab-pool", type=int, default=600)
    a = p.parse_args()
    a.study = a.study or str(HERE / "out" / f"ab-study{a.tag}")
    a.key = a.key or str(DATA / f"ab-key{a.tag}.json")
    say = lambda m: print(m, flush=True)  # noqa: E731
    prepare(a, say) if a.stage == "prepare" else score(a, say)


if __name__ == "__main__":
    main()
