"""Planted-defect benchmark: does artifix find K planted artifact units from <= 30 flagged samples?

    python bench/bench_planted.py [--trials 5] [--k 3] [--json]

Each trial plants K units of the example GAN's layer main.8, drawn (seeded) among its 16 lowest-impact units
(planting rewrites a unit, so it goes where little else is lost), lets the simulated reviewer
flag <= 30 samples with visible blotches (painting where pixels changed) and 30 clean ones, scores all
64 units, and reports recall@K of the ranking, with and without painted regions, next to the expected
recall of a random unit set of the same size (K/64).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from artifix.model.generator import load_generator
from artifix.example.planted import low_impact_units, plant_defects, simulate_reviewer
from artifix.units.scoring import collect_stats, recall_at_k, score_units


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    g = load_generator()
    pool = low_impact_units(g)  # plant where it does not destroy what G already draws
    rows = []
    for t in range(args.trials):
        t0 = time.time()
        truth = sorted(int(u) for u in np.random.default_rng(100 + t).choice(pool, args.k, replace=False))
        bad = plant_defects(g, truth, seed=t)
        review = simulate_reviewer(g, bad, seed=t, n_scan=400, n_flag=30, n_clean=30)
        stats = collect_stats(bad, "main.8", t, 1000)
        painted = score_units(bad, "main.8", t, stats, review.artifact, review.clean, review.masks)
        flags_only = score_units(bad, "main.8", t, stats, review.artifact, review.clean, None)
        rows.append({"trial": t, "planted": truth, "flagged": len(review.artifact),
                     "recall_painted": recall_at_k(painted.table.unit.tolist(), truth),
                     "recall_flags_only": recall_at_k(flags_only.table.unit.tolist(), truth),
                     "top": painted.table.unit.tolist()[: args.k], "seconds": round(time.time() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    summary = {"k": args.k, "trials": args.trials,
               "mean_recall_painted": float(np.mean([r["recall_painted"] for r in rows])),
               "mean_recall_flags_only": float(np.mean([r["recall_flags_only"] for r in rows])),
               "random_expected_recall": args.k / 64, "rows": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"recall@{args.k}: painted {summary['mean_recall_painted']:.2f}, flags only {summary['mean_recall_flags_only']:.2f}, "
              f"random {summary['random_expected_recall']:.3f} ({args.trials} trials)")


if __name__ == "__main__":
    main()
