"""Experiment: the natural benchmark's repair with mean ablation (a removed unit is set to its mean activation over
samples and positions) beside the zero ablation it uses now, same units, same random control, same fresh samples.

Why: zeroing any two units of main.8 made FD and SWD worse (the random control too), and raised the artifact rate of
the random control. A zeroed unit darkens what it feeds; a unit held at its mean keeps the layer's first moment.
Reads data/example/natural/results<tag>.json for the units and the control; writes data/example/natural/mean-ablation<tag>.json.

    python bench/natural/mean_ablation.py --tag=-check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import artifix.repair.measurement as M
from artifix.model.generator import load_generator
from artifix.model.trace import ablation
from artifix.repair import RepairPlan, measure
from artifix.units.scoring import collect_stats

from run import DATA, classifiers, flags


def _mean_edits(units, means):
    """{layer: Ablation} holding each unit at means[layer][unit] instead of 0."""
    return {l: ablation(u, 1.0, replacement=means[l][list(u)]) for l, u in units.items() if len(u)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tag", default="-check")
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--stats-n", type=int, default=1000)
    args = p.parse_args()
    t0 = time.time()
    rec = json.loads((DATA / f"results{args.tag}.json").read_text())["repair"]
    layer, units, control = rec["layer"], rec["units"], rec["control"]
    g = load_generator()
    train, held = flags()
    _, clf_b, _ = classifiers(g, train, held, print)
    means = {layer: collect_stats(g, layer, 0, args.stats_n).mean.float()}
    out = {"layer": layer, "units": units, "control": control, "means": {layer: {u: float(means[layer][u]) for u in units + control[layer]}}}
    zero_edits = M._edits  # measure() builds the control's edits with it; the mean run swaps it, then it is put back
    try:
        for mode in ("zero", "mean"):
            plan = RepairPlan({layer: units}, "set-selection")
            if mode == "mean":
                plan.ablations = lambda: _mean_edits(plan.edits, means)  # this plan's edits, units held at their means
                M._edits = lambda us, alphas=None: _mean_edits(us, means)
            out[mode] = measure(g, plan, control, seed=1, n=args.n, flagged=[], clf=clf_b, metrics="fd,swd", high_pool=4 * args.n,
                                say=print)
    finally:
        M._edits = zero_edits
    out["seconds"] = round(time.time() - t0, 1)
    dest = DATA / f"mean-ablation{args.tag}.json"
    dest.write_text(json.dumps(out, indent=1, default=float))
    for mode in ("zero", "mean"):
        for sub, s in out[mode]["subsets"].items():
            ar = s["artifact_rate"]
            fd = next(k for k in s["repair"] if k.startswith("fd")); sw = next(k for k in s["repair"] if k.startswith("swd"))
            print(f"{mode:5s} {sub:16s} rate {ar['before']['value']:.3f} -> {ar['after']['value']:.3f} "
                  f"({ar['repair_diff']['diff']:+.3f} {ar['repair_diff']['ci']}) control {ar['control_diff']['diff']:+.3f} {ar['control_diff']['ci']} | "
                  f"FD {s['repair'][fd]['diff']:+.2f} {s['repair'][fd]['ci']} ctrl {s['control'][fd]['diff']:+.2f} | "
                  f"SWD {s['repair'][sw]['diff']:+.2f} ctrl {s['control'][sw]['diff']:+.2f}")
    print("wrote", dest, out["seconds"], "s")


if __name__ == "__main__":
    main()
